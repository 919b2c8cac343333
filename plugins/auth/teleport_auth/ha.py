"""Several auth servers on one cluster state: they must write audit events and recordings to the
same shared places, or the audit log and the recordings split between them.

Each auth server announces itself in the shared backend under ``/auth_servers/<host uuid>``
(expiring after :data:`ANNOUNCE_TTL`, refreshed every :data:`REFRESH`), with its
``teleport.storage.audit_events_uri`` and ``audit_sessions_uri`` in a comparable form (see
:func:`comparable`) and whether each is local (a ``file://`` path under its own ``data_dir``,
which includes the defaults). At start, once announced, it looks at the other live auth servers:
when either side keeps audit events or recordings local, or the two sides name different
destinations, it refuses to start with a :class:`~teleport_core.errors.ConfigError` naming the
keys and the shared options, and withdraws its announcement. A running auth server that sees
such a peer appear logs an ERROR (the peer refuses itself). A graceful stop withdraws the
announcement; after a crash it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import attrs

from teleport_auth.state import AuthState, host_uuid
from teleport_core.config.model import TeleportConfig
from teleport_core.errors import CompareFailed, ConfigError, NotFound, TeleportError
from teleport_core.state.backend import Backend, Item, range_end, utcnow

if TYPE_CHECKING:
    import structlog

AUTH_SERVERS_PREFIX = b"/auth_servers/"
ANNOUNCE_TTL = dt.timedelta(seconds=60)
REFRESH = 15.0  # seconds between announcements (four per TTL: a missed one or two is harmless)
CONFIG_KEY = "teleport.storage"
SHARED_OPTIONS = (
    "set teleport.storage.audit_events_uri and teleport.storage.audit_sessions_uri to the same shared "
    "destinations on every auth server: a shared directory outside data_dir that every auth server mounts "
    "(e.g. audit_events_uri: ['file:///mnt/shared/audit'] and audit_sessions_uri: "
    "'file:///mnt/shared/records'), S3 for the recordings (audit_sessions_uri: 's3://bucket/prefix?region=...'), "
    "or a high-availability audit backend once a plugin provides one"
)


def _file_path(uri: str) -> str:
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost"):  # file://relative/dir: not what the sinks take, compare as written
        path = parts.netloc + path
    return path


def comparable(uri: str) -> str:
    """``uri`` in a form two auth servers can compare: for ``file://`` the normalised path (its
    query only picks a sub-directory of the same log: ``server_id``); otherwise the scheme in lower
    case, the location, the path without a trailing ``/`` and the query parameters sorted."""
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file://" + os.path.normpath(_file_path(uri))
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")


def is_local(uri: str, data_dir: Path) -> bool:
    """True for a ``file://`` URI naming ``data_dir`` or a path under it (symlinks resolved):
    storage no other auth server sees."""
    if urlsplit(uri.strip()).scheme.lower() != "file":
        return False
    path = _file_path(uri)
    if not path.startswith("/"):
        return True  # relative to this process's directory: this server's own
    resolved, home = Path(os.path.realpath(path)), Path(os.path.realpath(data_dir))
    return resolved == home or home in resolved.parents


@attrs.frozen
class Destination:
    """One audit destination as announced: its comparable URI, and whether it is local."""

    uri: str
    local: bool

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "local": self.local}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Destination:
        return cls(str(data["uri"]), bool(data["local"]))


@attrs.frozen
class Announcement:
    """What an auth server announces about itself under ``/auth_servers/<host uuid>``."""

    host_uuid: str
    nodename: str
    addr: str
    events: tuple[Destination, ...]
    sessions: Destination
    expires: dt.datetime

    @property
    def name(self) -> str:
        return f"{self.nodename} ({self.host_uuid})"

    def to_json(self) -> bytes:
        return json.dumps({
            "host_uuid": self.host_uuid, "nodename": self.nodename, "addr": self.addr,
            "audit_events_uri": [d.to_dict() for d in self.events],
            "audit_sessions_uri": self.sessions.to_dict(),
            "expires": self.expires.astimezone(dt.UTC).isoformat(),
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes) -> Announcement:
        data = json.loads(value)
        return cls(str(data["host_uuid"]), str(data["nodename"]), str(data.get("addr", "")),
                   tuple(Destination.from_dict(d) for d in data["audit_events_uri"]),
                   Destination.from_dict(data["audit_sessions_uri"]), dt.datetime.fromisoformat(data["expires"]))


def announcement(config: TeleportConfig, host_uuid: str, addr: str, expires: dt.datetime) -> Announcement:
    """This auth server's announcement, from its config."""
    storage = config.storage
    events = tuple(Destination(comparable(u), is_local(u, config.data_dir)) for u in storage.audit_events_uri)
    sessions = Destination(comparable(storage.audit_sessions_uri), is_local(storage.audit_sessions_uri,
                                                                             config.data_dir))
    return Announcement(host_uuid, config.nodename, addr, events, sessions, expires)


def _uris(destinations: Sequence[Destination]) -> str:
    return "[" + ", ".join(d.uri for d in destinations) + "]"


def conflicts(mine: Announcement, other: Announcement) -> list[str]:
    """Why ``mine`` and ``other`` cannot serve one cluster together (empty: they can)."""
    reasons: list[str] = []
    for side, who in ((mine, "this server's"), (other, f"{other.nodename}'s")):
        for key, found in (("audit_events_uri", [d for d in side.events if d.local]),
                           ("audit_sessions_uri", [side.sessions] if side.sessions.local else [])):
            for destination in found:
                reasons.append(f"{key} {destination.uri} is under {who} data_dir, seen by no other auth server")
    if {d.uri for d in mine.events} != {d.uri for d in other.events}:
        reasons.append(f"audit_events_uri differs: {_uris(mine.events)} here, {_uris(other.events)} on "
                       f"{other.nodename}")
    if mine.sessions.uri != other.sessions.uri:
        reasons.append(f"audit_sessions_uri differs: {mine.sessions.uri} here, {other.sessions.uri} on "
                       f"{other.nodename}")
    return reasons


def refusal(found: Sequence[tuple[Announcement, list[str]]]) -> ConfigError:
    """The error of an auth server that may not start beside the announced ones in ``found``."""
    others = ", ".join(f"{a.name}" + (f" at {a.addr}" if a.addr else "") for a, _ in found)
    reasons = "; ".join(dict.fromkeys(r for _, rs in found for r in rs))
    return ConfigError(CONFIG_KEY, (
        f"another auth server shares this cluster state ({others}), and the auth servers of one cluster must "
        f"write audit events and session recordings to the same shared places, or the audit log and the "
        f"recordings split between them: {reasons}. To run several auth servers, {SHARED_OPTIONS}"))


class AuthServers:
    """This auth server's announcement and the check against the other live ones."""

    def __init__(self, backend: Backend, config: TeleportConfig, host_uuid: str, addr: str,
                 log: structlog.stdlib.BoundLogger, *, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.backend = backend
        self.config = config
        self.host_uuid = host_uuid
        self.addr = addr
        self.log = log
        self.now = now
        self._warned: dict[str, str] = {}  # peer uuid -> reasons already logged
        self._revision = ""  # of our last announcement

    @property
    def key(self) -> bytes:
        return AUTH_SERVERS_PREFIX + self.host_uuid.encode()

    def mine(self) -> Announcement:
        return announcement(self.config, self.host_uuid, self.addr, self.now() + ANNOUNCE_TTL)

    async def live(self) -> list[Announcement]:
        """Every announced auth server whose announcement has not expired, this one included."""
        return await live_auth_servers(self.backend, self.now())

    async def announce(self) -> Announcement:
        mine = self.mine()
        stored = await self.backend.put(Item(self.key, mine.to_json(), expires=mine.expires))
        self._revision = stored.revision
        return mine

    async def withdraw(self) -> None:
        """Delete the announcement unless another process announced under this host's uuid
        since (the new process of a graceful reload shares the data_dir and the uuid)."""
        with contextlib.suppress(NotFound, CompareFailed):
            await self.backend.conditional_delete(self.key, self._revision)

    async def join(self) -> asyncio.Task[None]:
        """Announce this auth server, refuse to start (:class:`ConfigError`, announcement
        withdrawn) beside a live one it would split the audit with; the refresh task."""
        mine = await self.announce()
        found = [(other, reasons) for other in await self.live() if other.host_uuid != self.host_uuid
                 if (reasons := conflicts(mine, other))]
        if found:
            with contextlib.suppress(TeleportError, OSError):
                await self.withdraw()
            raise refusal(found)
        return asyncio.create_task(self.refresh(), name="auth-server-announce")

    async def refresh(self) -> None:
        """Announce again every :data:`REFRESH` seconds; log an ERROR for a peer this one
        conflicts with (once per peer and reasons); withdraw on cancellation (a stop)."""
        try:
            while True:
                await asyncio.sleep(REFRESH)
                try:
                    mine = await self.announce()
                    for other in await self.live():
                        reasons = conflicts(mine, other) if other.host_uuid != self.host_uuid else []
                        if reasons and self._warned.get(other.host_uuid) != "; ".join(reasons):
                            self._warned[other.host_uuid] = "; ".join(reasons)
                            self.log.error("another auth server shares this cluster state with different or "
                                           "local audit storage: the audit log and recordings split",
                                           peer=other.name, reasons="; ".join(reasons))
                except (TeleportError, OSError) as exc:
                    self.log.warning("cannot announce this auth server in the cluster state; will retry",
                                     error=str(exc), retry_in=f"{REFRESH:g}s")
        except asyncio.CancelledError:
            with contextlib.suppress(TeleportError, OSError, TimeoutError):
                await asyncio.wait_for(self.withdraw(), 5)
            raise


async def live_auth_servers(backend: Backend, now: dt.datetime | None = None) -> list[Announcement]:
    """Every auth server whose announcement has not expired (``tctl status`` lists them)."""
    moment = now or utcnow()
    found = []
    for item in await backend.get_range(AUTH_SERVERS_PREFIX, range_end(AUTH_SERVERS_PREFIX)):
        try:
            entry = Announcement.from_json(item.value)
        except (ValueError, KeyError, TypeError):
            continue  # not one of ours (or a later version's): not comparable
        if entry.expires > moment:
            found.append(entry)
    return found


async def join_auth_servers(service: AuthState) -> asyncio.Task[None]:
    """Called by :meth:`AuthService.start` once the backend is open: announce, check, refresh."""
    settings = service.settings
    listen = str(settings.public_addrs[0] if settings.public_addrs else settings.listen_addr)
    servers = AuthServers(service.backend, service.ctx.config, service.host_uuid or host_uuid(service.ctx.data_dir),
                          listen, service.log)
    return await servers.join()
