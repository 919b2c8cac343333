"""Live sessions: the ``session_tracker`` record (Teleport's) and the keeper a host runs for its sessions.

A tracker says who is on which host right now: session ID, kind (``ssh``), state (``pending``
until a moderated session may start, ``running``, ``terminated``), the host (UUID, hostname,
address), the login, the owner and the owner's roles (``join_sessions`` policies match them:
:mod:`teleport_core.policy.joining`), the participants with their mode and last activity, the
terminal size, reason and invited users. Auth stores it in cluster state under
``/session_trackers/<sid>`` with an expiry (1 h, as Teleport, extended while the session runs),
so a tracker whose host died vanishes on its own.

Only the host that runs a session writes its tracker (a node; a proxy for an agentless OpenSSH
node): :class:`TrackerKeeper` creates it at the start, extends its expiry, applies changes by
compare-and-swap (``revision``) retried on conflict, and removes it at the end, from a
background task, so a session never waits for auth (and auth being unreachable never ends or
stalls one: changes are kept and sent when auth answers again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from teleport_core.errors import AlreadyExists, CompareFailed, NotFound

KIND = "session_tracker"
VERSION = "v1"
SESSION_KINDS = ("ssh",)
STATES = ("pending", "running", "terminated")
MODES = ("observer", "peer", "moderator")
#: how long a tracker lives without being extended (Teleport's)
TTL = dt.timedelta(hours=1)
#: how often a running session's tracker has its expiry pushed back: well before it lapses
EXTEND_EVERY = dt.timedelta(minutes=10)
#: a participant's ``last_active`` moves at most this often (typing never costs an auth call each)
ACTIVITY_EVERY = dt.timedelta(seconds=30)
#: the longest string field auth stores (hostnames, reasons ...)
MAX_TEXT = 4096
MAX_PARTICIPANTS = 1000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(value: Any, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field}: expected an RFC 3339 time, got {value!r}") from None
    else:
        raise ValueError(f"{field}: expected an RFC 3339 time, got {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _text(data: Mapping[str, Any], key: str, field: str, *, required: bool = False) -> str:
    value = data.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise ValueError(f"{field}: required")
    if len(value) > MAX_TEXT or any(ord(c) < 0x20 and c not in "\t" for c in value):
        raise ValueError(f"{field}: at most {MAX_TEXT} characters, no control characters")
    return value


def _texts(data: Mapping[str, Any], key: str, field: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: expected a list of strings")
    if len(value) > MAX_PARTICIPANTS:
        raise ValueError(f"{field}: at most {MAX_PARTICIPANTS} items")
    return tuple(_text({"v": v}, "v", f"{field}[{i}]", required=True) for i, v in enumerate(value))


def _choice(value: str, choices: Sequence[str], field: str) -> str:
    if value not in choices:
        raise ValueError(f"{field}: expected one of {', '.join(choices)}, got {value!r}")
    return value


@attrs.frozen
class Participant:
    """Someone in a session: ``id`` is this participation's (a user may join twice)."""

    id: str
    user: str
    mode: str = "peer"
    last_active: dt.datetime = attrs.field(factory=_now)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "mode": self.mode, "last_active": _iso(self.last_active)}

    @classmethod
    def from_dict(cls, data: Any, field: str = "participant") -> Participant:
        if not isinstance(data, Mapping):
            raise ValueError(f"{field}: expected a mapping")
        return cls(id=_text(data, "id", f"{field}.id", required=True),
                   user=_text(data, "user", f"{field}.user", required=True),
                   mode=_choice(_text(data, "mode", f"{field}.mode") or "peer", MODES, f"{field}.mode"),
                   last_active=_time(data.get("last_active") or _iso(_now()), f"{field}.last_active"))


def _participants(value: Sequence[Participant]) -> tuple[Participant, ...]:
    return tuple(value)


def _strings(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


def _dicts(value: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    return tuple(dict(v) for v in value)


@attrs.frozen
class SessionTracker:
    """One live session (see the module docstring). ``revision``: the stored version (auth sets it)."""

    session_id: str
    server_id: str  # the UUID of the host the session runs on (the node; for agentless nodes, theirs)
    owner: str  # the user who started it
    login: str
    kind: str = "ssh"
    state: str = "running"
    created: dt.datetime = attrs.field(factory=_now)
    expires: dt.datetime = attrs.field(factory=lambda: _now() + TTL)
    hostname: str = ""
    address: str = ""
    cluster: str = ""
    owner_roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    participants: tuple[Participant, ...] = attrs.field(default=(), converter=_participants)
    terminal_size: str = ""  # "W:H", "" without a terminal
    interactive: bool = False
    command: str = ""  # an exec session's command
    reason: str = ""
    invited: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: the owner's ``require_session_join`` policies (Teleport's host policies), as role documents write them
    host_policies: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_dicts)
    recording: str = ""  # the recording mode the session runs under
    client: str = ""  # "web": the web terminal opened it
    revision: str = attrs.field(default="", eq=False)

    @property
    def users(self) -> list[str]:
        """The participants' user names, each once, the owner first."""
        return list(dict.fromkeys([p.user for p in self.participants]))

    def with_participant(self, participant: Participant) -> SessionTracker:
        others = tuple(p for p in self.participants if p.id != participant.id)
        return attrs.evolve(self, participants=(*others, participant))

    def without_participant(self, participant_id: str) -> SessionTracker:
        return attrs.evolve(self, participants=tuple(p for p in self.participants if p.id != participant_id))

    def attributes(self) -> dict[str, Any]:
        """The fields role ``where:`` rules on ``session_tracker`` read (``tracker.*``, RFD 82)."""
        return {"tracker": {"session_id": self.session_id, "kind": self.kind, "participants": self.users,
                            "state": self.state, "hostname": self.hostname, "address": self.address,
                            "login": self.login, "cluster": self.cluster, "host_user": self.owner,
                            "host_roles": list(self.owner_roles)}}

    def to_dict(self) -> dict[str, Any]:
        """The resource form (``tsh sessions ls --format=json``, the API, the backend)."""
        spec: dict[str, Any] = {
            "session_id": self.session_id, "kind": self.kind, "state": self.state, "created": _iso(self.created),
            "expires": _iso(self.expires), "hostname": self.hostname, "address": self.address,
            "server_id": self.server_id, "cluster_name": self.cluster, "login": self.login,
            "host_user": self.owner, "host_roles": list(self.owner_roles),
            "participants": [p.to_dict() for p in self.participants], "terminal_size": self.terminal_size,
            "interactive": self.interactive, "command": self.command, "reason": self.reason,
            "invited": list(self.invited), "host_policies": [dict(p) for p in self.host_policies],
            "recording": self.recording, "client": self.client,
        }
        out: dict[str, Any] = {"kind": KIND, "version": VERSION,
                               "metadata": {"name": self.session_id, "expires": _iso(self.expires)}, "spec": spec}
        if self.revision:
            out["metadata"]["revision"] = self.revision
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SessionTracker:
        """Read the resource form back; ``ValueError`` names the field that is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("expected a session_tracker resource (a mapping)")
        if data.get("kind", KIND) != KIND:
            raise ValueError(f"kind: expected {KIND!r}, got {data.get('kind')!r}")
        spec = data.get("spec")
        if not isinstance(spec, Mapping):
            raise ValueError("spec: expected a mapping")
        meta: Mapping[str, Any] = data["metadata"] if isinstance(data.get("metadata"), Mapping) else {}
        raw_participants = spec.get("participants") or []
        if not isinstance(raw_participants, list) or len(raw_participants) > MAX_PARTICIPANTS:
            raise ValueError(f"spec.participants: expected a list of at most {MAX_PARTICIPANTS}")
        policies = spec.get("host_policies") or []
        if not isinstance(policies, list) or not all(isinstance(p, Mapping) for p in policies):
            raise ValueError("spec.host_policies: expected a list of mappings")
        interactive = spec.get("interactive", False)
        if not isinstance(interactive, bool):
            raise ValueError("spec.interactive: expected true or false")
        from teleport_core.state.sessions import check_session_id

        sid = _text(spec, "session_id", "spec.session_id", required=True)
        try:
            check_session_id(sid)
        except Exception as exc:  # its message says why
            raise ValueError(f"spec.session_id: {exc}") from None
        return cls(
            session_id=sid,
            server_id=_text(spec, "server_id", "spec.server_id", required=True),
            owner=_text(spec, "host_user", "spec.host_user", required=True),
            login=_text(spec, "login", "spec.login"),
            kind=_choice(_text(spec, "kind", "spec.kind") or "ssh", SESSION_KINDS, "spec.kind"),
            state=_choice(_text(spec, "state", "spec.state") or "running", STATES, "spec.state"),
            created=_time(spec.get("created") or _iso(_now()), "spec.created"),
            expires=_time(spec.get("expires") or meta.get("expires") or _iso(_now() + TTL), "spec.expires"),
            hostname=_text(spec, "hostname", "spec.hostname"),
            address=_text(spec, "address", "spec.address"),
            cluster=_text(spec, "cluster_name", "spec.cluster_name"),
            owner_roles=_texts(spec, "host_roles", "spec.host_roles"),
            participants=[Participant.from_dict(p, f"spec.participants[{i}]") for i, p in enumerate(raw_participants)],
            terminal_size=_text(spec, "terminal_size", "spec.terminal_size"),
            interactive=interactive,
            command=_text(spec, "command", "spec.command"),
            reason=_text(spec, "reason", "spec.reason"),
            invited=_texts(spec, "invited", "spec.invited"),
            host_policies=[dict(p) for p in policies],
            recording=_text(spec, "recording", "spec.recording"),
            client=_text(spec, "client", "spec.client"),
            revision=str(meta.get("revision", "") or ""),
        )


# -- the keeper ------------------------------------------------------------------------------------


class TrackerClient(Protocol):
    """What the keeper needs from auth, trackers in their resource form
    (:class:`teleport_core.api.client.AuthClient` has it)."""

    async def create_session_tracker(self, tracker: dict[str, Any]) -> dict[str, Any]: ...

    async def get_session_tracker(self, sid: str) -> dict[str, Any]: ...

    async def update_session_tracker(self, tracker: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_session_tracker(self, sid: str) -> None: ...


Change = Callable[[SessionTracker], SessionTracker]


class TrackedSession:
    """One session's tracker as its host sees it. Every method is cheap, thread-safe and never
    waits for auth: it changes the local copy and lets the keeper's task send the change."""

    def __init__(self, keeper: TrackerKeeper, tracker: SessionTracker) -> None:
        self.keeper = keeper
        self._lock = threading.Lock()
        self._tracker = tracker
        self._pending: list[Change] = []
        self._activity: dict[str, dt.datetime] = {}
        self.ended = False
        self.owner_id = ""  # the owner's participant ID (set by the host that registered it)
        self.touched = 0.0  # monotonic time the host last passed on the owner's activity
        self.created = False  # auth has it
        self.removed = False  # auth removed it (the session ended)

    @property
    def session_id(self) -> str:
        return self._tracker.session_id

    @property
    def tracker(self) -> SessionTracker:
        """The local copy: what auth has, or will have once the pending changes are sent."""
        with self._lock:
            return self._tracker

    def change(self, fn: Change) -> None:
        """Apply ``fn`` locally now and to auth's copy (compare-and-swap, retried) soon."""
        with self._lock:
            if self.ended:
                return
            self._tracker = fn(self._tracker)
            self._pending.append(fn)
        self.keeper.wake(self)

    def add_participant(self, user: str, mode: str = "peer", participant_id: str = "") -> Participant:
        participant = Participant(participant_id or str(uuid.uuid4()), user, _choice(mode, MODES, "mode"))
        self.change(lambda t: t.with_participant(participant))
        return participant

    def remove_participant(self, participant_id: str) -> None:
        self._activity.pop(participant_id, None)
        self.change(lambda t: t.without_participant(participant_id))

    def set_state(self, state: str) -> None:
        _choice(state, STATES, "state")
        self.change(lambda t: attrs.evolve(t, state=state))

    def resize(self, width: int, height: int) -> None:
        size = f"{width}:{height}"
        if self.tracker.terminal_size != size:
            self.change(lambda t: attrs.evolve(t, terminal_size=size))

    def touch(self, participant_id: str) -> None:
        """The participant typed: ``last_active`` moves at most every ``keeper.activity_every``,
        and rides along with the next write (no auth call of its own)."""
        now = _now()
        last = self._activity.get(participant_id)
        if last is not None and now - last < self.keeper.activity_every:
            return
        self._activity[participant_id] = now

        def active(t: SessionTracker) -> SessionTracker:
            found = [p for p in t.participants if p.id == participant_id]
            return t.with_participant(attrs.evolve(found[0], last_active=now)) if found else t

        with self._lock:
            if self.ended:
                return
            self._tracker = active(self._tracker)
            self._pending.append(active)

    def end(self) -> None:
        """The session is over: the keeper removes the tracker (retried until auth answers)."""
        with self._lock:
            if self.ended:
                return
            self.ended = True
            self._tracker = attrs.evolve(self._tracker, state="terminated")
        self.keeper.wake(self)

    def _take(self) -> tuple[SessionTracker, list[Change]]:
        with self._lock:
            pending, self._pending = self._pending, []
            return self._tracker, pending

    def _put_back(self, changes: list[Change]) -> None:
        with self._lock:
            self._pending[:0] = changes

    def _dirty(self) -> bool:
        with self._lock:
            return bool(self._pending)


class TrackerKeeper:
    """Keeps a host's trackers in auth from one asyncio task (:meth:`run`), fed from any thread.

    ``start_session`` registers a tracker and returns its :class:`TrackedSession`; the task
    creates it in auth, sends changes (read, apply, write with the read ``revision``; a conflict
    reads again), extends each running tracker's expiry every ``extend_every`` (the new expiry
    ``ttl`` from then), and removes it when the session ends. When auth cannot be reached the
    work stays queued and is retried every ``retry`` seconds; the session goes on (logged once
    per outage)."""

    def __init__(self, client: TrackerClient, loop: asyncio.AbstractEventLoop, log: Any, *,
                 ttl: dt.timedelta = TTL, extend_every: dt.timedelta = EXTEND_EVERY,
                 activity_every: dt.timedelta = ACTIVITY_EVERY, retry: float = 5.0,
                 conflicts: int = 5) -> None:
        self.client = client
        self.loop = loop
        self.log = log
        self.ttl = ttl
        self.extend_every = extend_every
        self.activity_every = activity_every
        self.retry = retry
        self.conflicts = conflicts
        self.sessions: dict[str, TrackedSession] = {}
        self._ready: set[str] = set()
        self._event: asyncio.Event | None = None
        self._extended: dict[str, dt.datetime] = {}
        self._failing = False
        self._stopping = False
        self.writes = 0  # calls sent to auth (figures: the keeper's cost)

    def start_session(self, tracker: SessionTracker) -> TrackedSession:
        """Register a new session's tracker (any thread); created in auth by the task."""
        tracker = attrs.evolve(tracker, expires=_now() + self.ttl)
        session = TrackedSession(self, tracker)
        self.sessions[tracker.session_id] = session
        self.wake(session)
        return session

    def remove(self, sid: str) -> None:
        """Remove a tracker this host left in auth (a session an earlier run's crash cut short)."""
        session = TrackedSession(self, SessionTracker(sid, "", "", ""))
        session.created = session.ended = True
        self.sessions[sid] = session
        self.wake(session)

    def wake(self, session: TrackedSession) -> None:
        self.loop.call_soon_threadsafe(self._mark, session.session_id)

    def _mark(self, sid: str) -> None:
        self._ready.add(sid)
        if self._event is not None:
            self._event.set()

    async def run(self) -> None:
        """The task: send what changed, extend expiries, remove ended sessions' trackers."""
        self._event = asyncio.Event()
        if self._ready:
            self._event.set()
        tick = min(self.extend_every.total_seconds(), self.retry)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout=tick)
            self._event.clear()
            await self.flush()
            if self._stopping and not self.sessions:
                return

    async def flush(self) -> None:
        """One pass over every session that has work (or whose expiry is due)."""
        now = _now()
        due = {sid for sid, at in self._extended.items() if now - at >= self.extend_every}
        sids, self._ready = self._ready | due, set()
        retry = False
        for sid in sids:
            session = self.sessions.get(sid)
            if session is None:
                continue
            try:
                await self._sync(session, extend=sid in due)
            except NotFound:  # removed in auth already
                self._forget(session)
            except Exception as exc:  # auth unreachable or refusing: keep it, try again
                retry = True
                self._ready.add(sid)
                if not self._failing:
                    self._failing = True
                    self.log.warning("cannot update the session tracker in auth; sessions go on, retrying",
                                     sid=sid, error=str(exc) or type(exc).__name__)
        if retry:
            self.loop.call_later(self.retry, self._retry_now)
        elif sids and self._failing:
            self._failing = False
            self.log.info("session trackers are in auth again")

    def _retry_now(self) -> None:
        if self._event is not None:
            self._event.set()

    def _forget(self, session: TrackedSession) -> None:
        self.sessions.pop(session.session_id, None)
        self._extended.pop(session.session_id, None)

    async def _sync(self, session: TrackedSession, *, extend: bool) -> None:
        if session.ended:
            if session.created:
                self.writes += 1
                with contextlib.suppress(NotFound):
                    await self.client.delete_session_tracker(session.session_id)
            session.removed = True
            self._forget(session)
            return
        if not session.created:
            local, _ = session._take()
            local = attrs.evolve(local, expires=_now() + self.ttl)
            self.writes += 1
            try:
                await self.client.create_session_tracker(local.to_dict())
            except AlreadyExists:  # an earlier try got through (its answer was lost): make it ours again
                session._put_back([lambda _current: local])
                self.wake(session)
            session.created = True
            self._extended[session.session_id] = _now()
            return
        if not extend and not session._dirty():
            return
        local, changes = session._take()
        expires = _now() + self.ttl
        try:
            for _attempt in range(self.conflicts):
                try:
                    self.writes += 1
                    current = SessionTracker.from_dict(await self.client.get_session_tracker(session.session_id))
                except NotFound:  # expired while auth was away (or removed): the local copy is the truth
                    self.writes += 1
                    await self.client.create_session_tracker(attrs.evolve(local, expires=expires).to_dict())
                    break
                updated = current
                for fn in changes:
                    updated = fn(updated)
                updated = attrs.evolve(updated, expires=expires, revision=current.revision)
                try:
                    self.writes += 1
                    await self.client.update_session_tracker(updated.to_dict())
                    break
                except CompareFailed:
                    continue
            else:
                raise CompareFailed(f"session tracker {session.session_id}: changed {self.conflicts} times "
                                    "while being updated")
        except BaseException:
            session._put_back(changes)
            raise
        self._extended[session.session_id] = _now()

    async def stop(self, timeout: float = 5.0) -> None:
        """End every session's tracker and wait (at most ``timeout``) for auth to remove them."""
        self._stopping = True
        for session in list(self.sessions.values()):
            session.end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.sessions:
                    await self.flush()
                    if self.sessions:
                        await asyncio.sleep(0.2)
