"""The host registry: what auth decided each joined host is.

A host (node, proxy, auth server) does not choose its identity: at its first join auth assigns
its host UUID and records the names its certificates carry; renewals re-issue exactly those
names, heartbeats must name the recorded nodename, and no other host may claim them.

Backend keys:

* ``/hosts/<uuid>`` -> ``{"uuid", "nodename", "roles": {<system role>: {"principals",
  "dns_names", "ip_addresses"}}, "token_roles", "joined", "expires", "owns_nodename"}``,
  expiring with the host's newest certificate (a renewal moves the expiry).
* ``/hostnames/<nodename>`` -> the UUID of the host that holds that nodename: the uniqueness
  index. A join writes both items in one :meth:`Backend.atomic_write` conditioned on neither
  existing, so of two hosts joining with one nodename (through one auth server or several
  sharing the backend) exactly one succeeds. The other names a host asks for are checked
  against the records when it joins (:meth:`HostRegistry.conflict`), not in that write.

Several roles of one host (a process running ``proxy`` and ``node``) share one record and one
UUID: the first role joins with a token, the others join presenting the first role's
certificate, for roles the token admitted (``token_roles``). Auth servers record themselves at
start (``owns_nodename`` is false when another host already held the name).

Names a host may ask for (:func:`check_request`): its nodename, public/advertise addresses and
listen IPs, each non-empty, without wildcards (``*``, ``?``), spaces, commas or control
characters, nothing equal to or under ``teleport.cluster.local`` (only auth servers carry that
name, and they record themselves), nothing that looks like a host UUID (bare or
``<uuid>.<cluster>``). :meth:`HostRegistry.conflict` then refuses a name another host holds:
its UUID, nodename (bare or ``.<cluster>``) or one of its recorded names; the loopback names
every certificate carries (``localhost``, ``127.0.0.1``, ``::1``) are shared by all, and
proxies share their public names with each other (HA proxies behind one name).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from teleport_core.errors import AccessDenied, AlreadyExists, CompareFailed, NotFound, TeleportError
from teleport_core.state.backend import Action, Backend, Condition, Item, range_end, utcnow

HOSTS_PREFIX = b"/hosts/"
HOSTNAMES_PREFIX = b"/hostnames/"
API_DOMAIN = "teleport.cluster.local"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_NAME = 253
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f,*?]")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
WRITE_ATTEMPTS = 5


class InvalidHostName(TeleportError):
    """A name a joining host asked for is not acceptable (400)."""


class HostConflict(AccessDenied):
    """A name a joining host asked for belongs to another host (403)."""


class UnknownHost(AccessDenied):
    """A host certificate whose host UUID auth has no record of (removed, or never joined)."""


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def looks_like_uuid(name: str) -> bool:
    return bool(_UUID.match(name))


def check_name(what: str, name: Any, cluster: str) -> str:
    """``name`` if a host may carry it (see the module docstring), else :class:`InvalidHostName`."""
    if not isinstance(name, str) or not name:
        raise InvalidHostName(f"{what}: a name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidHostName(f"{what} {_q(name[:40])}...: longer than {MAX_NAME} characters")
    if _BAD_CHARS.search(name):
        raise InvalidHostName(f"{what} {_q(name)}: wildcards (* ?), spaces, commas and control characters "
                              "are not allowed")
    lowered = name.lower().rstrip(".")
    if lowered == API_DOMAIN or lowered.endswith("." + API_DOMAIN):
        raise InvalidHostName(f"{what} {_q(name)}: {API_DOMAIN} names the auth servers only")
    head = lowered.removesuffix("." + cluster.lower()) if cluster else lowered
    if looks_like_uuid(head):
        raise InvalidHostName(f"{what} {_q(name)}: looks like a host UUID; auth assigns host UUIDs")
    return name


@attrs.frozen
class HostNames:
    """The names one role of a host carries: SSH ``principals`` (besides its UUID and nodename),
    X.509 ``dns_names`` and ``ip_addresses``."""

    principals: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    def all(self) -> set[str]:
        return {*self.principals, *self.dns_names, *self.ip_addresses}

    def to_dict(self) -> dict[str, list[str]]:
        return {"principals": list(self.principals), "dns_names": list(self.dns_names),
                "ip_addresses": list(self.ip_addresses)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HostNames:
        return cls(tuple(data.get("principals", ())), tuple(data.get("dns_names", ())),
                   tuple(data.get("ip_addresses", ())))


def check_request(nodename: Any, principals: Iterable[Any], dns_names: Iterable[Any], ip_addresses: Iterable[Any],
                  cluster: str) -> HostNames:
    """Validate what a joining host asks for (:class:`InvalidHostName` naming the first bad one);
    the names, de-duplicated, IPs normalized."""
    check_name("nodename", nodename, cluster)
    ips = []
    for value in ip_addresses:
        try:
            ips.append(str(ipaddress.ip_address(str(value).strip("[]"))))
        except ValueError:
            raise InvalidHostName(f"ip_addresses: {_q(str(value))} is not an IP address") from None
    return HostNames(
        tuple(dict.fromkeys(check_name("principal", p, cluster) for p in principals)),
        tuple(dict.fromkeys(check_name("DNS name", d, cluster) for d in dns_names)),
        tuple(dict.fromkeys(ips)),
    )


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


@attrs.frozen
class HostRecord:
    """One registered host (see the module docstring)."""

    uuid: str
    nodename: str
    roles: Mapping[str, HostNames]
    token_roles: tuple[str, ...]
    joined: dt.datetime
    expires: dt.datetime
    owns_nodename: bool = True
    revision: str = ""

    def claimed(self, cluster: str, role: str = "") -> set[str]:
        """Every name this host holds, lower case (loopback names excepted), as seen by a host
        asking for names for ``role``: proxies share their public names (several proxies of a
        cluster behind one load balancer name), never their UUIDs or nodenames."""
        names = {self.uuid, f"{self.uuid}.{cluster}", self.nodename, f"{self.nodename}.{cluster}"}
        for held_by, role_names in self.roles.items():
            if not (role == held_by == "Proxy"):
                names |= role_names.all()
        return {n.lower() for n in names} - LOOPBACK_NAMES

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "nodename": self.nodename,
                "roles": {role: names.to_dict() for role, names in self.roles.items()},
                "token_roles": list(self.token_roles), "joined": _iso(self.joined), "expires": _iso(self.expires),
                "owns_nodename": self.owns_nodename}

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, item: Item) -> HostRecord:
        data = json.loads(item.value)
        return cls(data["uuid"], data["nodename"],
                   {role: HostNames.from_dict(names) for role, names in data["roles"].items()},
                   tuple(data.get("token_roles", ())), dt.datetime.fromisoformat(data["joined"]),
                   dt.datetime.fromisoformat(data["expires"]), bool(data.get("owns_nodename", True)), item.revision)


def host_key(uuid: str) -> bytes:
    return HOSTS_PREFIX + uuid.encode()


def nodename_key(nodename: str) -> bytes:
    return HOSTNAMES_PREFIX + nodename.lower().encode()


def free_hint(uuid: str) -> str:
    return f"to free it, remove that host with: tctl rm node/{uuid}"


class HostRegistry:
    """Host records in the backend; ``cluster`` is the cluster name (for ``<name>.<cluster>``)."""

    def __init__(self, backend: Backend, cluster: str) -> None:
        self.backend = backend
        self.cluster = cluster

    @staticmethod
    def new_uuid() -> str:
        return str(uuidlib.uuid4())

    async def get(self, uuid: str) -> HostRecord:
        """The live record; :class:`UnknownHost` when there is none."""
        try:
            return HostRecord.decode(await self.backend.get(host_key(uuid)))
        except NotFound:
            raise UnknownHost(f"host {_q(uuid)} is not registered (removed, or its registration expired); "
                              "it must join the cluster again with a token") from None

    async def list(self) -> list[HostRecord]:
        return [HostRecord.decode(item) for item in await self.backend.get_range(HOSTS_PREFIX, range_end(HOSTS_PREFIX))]

    async def conflict(self, uuid: str, nodename: str, names: HostNames, role: str = "") -> None:
        """:class:`HostConflict` if another host holds ``nodename`` or one of ``names`` (asked
        for ``role``; see :meth:`HostRecord.claimed`); the message says which host and how to
        free the name."""
        cluster = self.cluster
        wanted = {nodename.lower(), f"{nodename}.{cluster}".lower(), *(n.lower() for n in names.all())}
        wanted -= LOOPBACK_NAMES
        for record in await self.list():
            if record.uuid == uuid:
                continue
            taken = record.claimed(cluster, role) & wanted
            if not taken:
                continue
            name = sorted(taken)[0]
            if name in (nodename.lower(), f"{nodename}.{cluster}".lower()) and (
                    name in (record.nodename.lower(), f"{record.nodename}.{cluster}".lower())):
                raise HostConflict(f"nodename {_q(nodename)} is already registered by host {record.uuid}; "
                                   f"{free_hint(record.uuid)}")
            raise HostConflict(f"the name {_q(name)} belongs to host {record.uuid} ({_q(record.nodename)}); "
                               f"a host may not carry another host's names ({free_hint(record.uuid)})")

    async def create(self, nodename: str, role: str, names: HostNames, token_roles: Iterable[str],
                     expires: dt.datetime) -> HostRecord:
        """Register a new host under a new UUID, claiming ``nodename`` atomically."""
        record = HostRecord(self.new_uuid(), nodename, {role: names}, tuple(token_roles), utcnow(), expires)
        await self.conflict(record.uuid, nodename, names, role)
        conditions = [Condition.not_exists(host_key(record.uuid)), Condition.not_exists(nodename_key(nodename))]
        actions = [Action.put(Item(host_key(record.uuid), record.encode(), expires)),
                   Action.put(Item(nodename_key(nodename), record.uuid.encode(), expires))]
        try:
            await self.backend.atomic_write(conditions, actions)
        except CompareFailed:
            holder = await self._holder(nodename)
            raise HostConflict(f"nodename {_q(nodename)} is already registered by host {holder}; "
                               f"{free_hint(holder)}") from None
        return record

    async def _holder(self, nodename: str) -> str:
        try:
            return (await self.backend.get(nodename_key(nodename))).value.decode()
        except NotFound:
            return "(unknown: it was just removed; try again)"

    async def _write(self, record: HostRecord) -> HostRecord:
        """Replace ``record`` if it is unchanged since read (its revision), its nodename index with it."""
        conditions = [Condition.revision_is(host_key(record.uuid), record.revision)]
        actions = [Action.put(Item(host_key(record.uuid), record.encode(), record.expires))]
        if record.owns_nodename:
            key = nodename_key(record.nodename)
            conditions.append(Condition.value_is(key, record.uuid.encode()))
            actions.append(Action.put(Item(key, record.uuid.encode(), record.expires)))
        revision = await self.backend.atomic_write(conditions, actions)
        return attrs.evolve(record, revision=revision)

    async def add_role(self, uuid: str, role: str, nodename: str, names: HostNames, expires: dt.datetime,
                       *, need_token_role: bool = True) -> HostRecord:
        """A registered host joins with one more system role (presenting its certificate of
        another role): same UUID and nodename; the role must be one its token admitted."""
        for _ in range(WRITE_ATTEMPTS):
            record = await self.get(uuid)
            if nodename != record.nodename:
                raise InvalidHostName(f"nodename {_q(nodename)}: host {uuid} is registered as "
                                      f"{_q(record.nodename)}; every role of a host has its nodename")
            if need_token_role and role not in record.token_roles:
                raise AccessDenied(f"host {uuid} ({_q(record.nodename)}) joined with a token for "
                                   f"{', '.join(record.token_roles) or 'no role'}, not {role}; "
                                   f"join with a token that admits {role.lower()}")
            await self.conflict(uuid, nodename, names, role)
            updated = attrs.evolve(record, roles={**record.roles, role: names},
                                   expires=max(record.expires, expires))
            try:
                return await self._write(updated)
            except CompareFailed:
                continue
        raise HostConflict(f"host {uuid} changed concurrently; try again")

    async def renewed(self, uuid: str, role: str, expires: dt.datetime) -> HostRecord:
        """The record of ``uuid`` for a renewal as ``role`` (:class:`UnknownHost` when it has no
        such role), its expiry moved to ``expires`` (the renewed certificate's)."""
        for _ in range(WRITE_ATTEMPTS):
            record = await self.get(uuid)
            if role not in record.roles:
                raise UnknownHost(f"host {uuid} ({_q(record.nodename)}) is not registered with role {role}")
            if expires <= record.expires:
                return record
            try:
                return await self._write(attrs.evolve(record, expires=expires))
            except CompareFailed:
                continue
        raise HostConflict(f"host {uuid} changed concurrently; try again")

    async def record_self(self, uuid: str, nodename: str, role: str, names: HostNames,
                          expires: dt.datetime) -> HostRecord:
        """An auth server records itself at start (no token, names not validated: auth decides
        its own); keeps its other roles. Returns the record (``owns_nodename`` false when
        another host holds the nodename)."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                record = await self.get(uuid)
            except UnknownHost:
                record = HostRecord(uuid, nodename, {}, (), utcnow(), expires, owns_nodename=False)
            if record.nodename != nodename:  # renamed: release the old name
                await self._release(record)
                record = attrs.evolve(record, nodename=nodename, owns_nodename=False)
            if not record.owns_nodename:
                try:
                    await self.backend.create(Item(nodename_key(nodename), uuid.encode(), expires))
                    record = attrs.evolve(record, owns_nodename=True)
                except AlreadyExists:
                    record = attrs.evolve(record, owns_nodename=await self._holder(nodename) == uuid)
            updated = attrs.evolve(record, roles={**record.roles, role: names}, expires=max(record.expires, expires))
            try:
                if updated.revision:
                    return await self._write(updated)
                stored = await self.backend.create(Item(host_key(uuid), updated.encode(), updated.expires))
                return attrs.evolve(updated, revision=stored.revision)
            except (CompareFailed, AlreadyExists):
                continue
        raise HostConflict(f"host {uuid} changed concurrently; try again")

    async def _release(self, record: HostRecord) -> None:
        if record.owns_nodename:
            key = nodename_key(record.nodename)
            with contextlib.suppress(CompareFailed, NotFound):
                await self.backend.atomic_write([Condition.value_is(key, record.uuid.encode())], [Action.delete(key)])

    async def remove(self, uuid: str) -> HostRecord | None:
        """``tctl rm node/<uuid>``: delete the host's record and free its nodename; an auth
        server's record only loses its other roles (auth servers are not removed this way).
        Returns the removed record, None when there was none."""
        for _ in range(WRITE_ATTEMPTS):
            try:
                record = await self.get(uuid)
            except UnknownHost:
                return None
            try:
                if "Auth" in record.roles:
                    await self._write(attrs.evolve(record, roles={"Auth": record.roles["Auth"]}))
                    return record
                await self.backend.conditional_delete(host_key(uuid), record.revision)
            except (CompareFailed, NotFound):
                continue
            await self._release(record)
            return record
        raise HostConflict(f"host {uuid} changed concurrently; try again")
