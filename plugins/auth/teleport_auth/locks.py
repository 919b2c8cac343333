"""Locks in cluster state: ``/locks/<name>`` -> the lock as JSON, expiring with the lock.

:class:`LockStore` keeps an in-memory snapshot for the checks every API request makes: like
:class:`~teleport_auth.authz.RoleAuthorizer`, with :meth:`LockStore.watch` running the snapshot
is reused until a backend event under ``/locks/`` (from any auth server sharing the backend)
or a local write invalidates it; without a watcher every check re-reads (one range read).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence

from teleport_auth.watching import invalidate_on_change
from teleport_core.errors import NotFound
from teleport_core.logs import get_logger
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.locks import InvalidLock, Lock, lock_in_force, lock_to_dict, parse_lock
from teleport_core.state.backend import Backend, Item, range_end

LOCKS_PREFIX = b"/locks/"


def lock_key(name: str) -> bytes:
    if not name or "/" in name or any(ch.isspace() for ch in name):
        raise InvalidLock("metadata.name", f"expected a name without spaces or slashes, got {json.dumps(name)}")
    return LOCKS_PREFIX + name.encode()


def host_uuid_of(identity: Identity) -> str:
    """The host UUID of a host identity named ``<hostUUID>.<cluster>`` (else empty)."""
    if identity.kind is not IdentityKind.HOST:
        return ""
    name = identity.name
    if identity.cluster and name.endswith("." + identity.cluster):
        return name[: -len(identity.cluster) - 1]
    return name.partition(".")[0]


class LockStore:
    """Locks under ``/locks/<name>``, and a snapshot of them for the per-request checks."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._snapshot: tuple[Lock, ...] | None = None
        self._generation = 0
        self._valid = False
        self._watching = False
        self._log = get_logger("auth")
        #: called before the snapshot is trusted (auth workers: catch up with other processes' writes)
        self.before_read: Callable[[], None] | None = None

    # -- writes and reads ----------------------------------------------------------------------------

    async def upsert(self, lock: Lock) -> bool:
        """Create or replace ``lock``; True when it replaced one. The item expires with the lock."""
        item = Item(lock_key(lock.name), json.dumps(lock_to_dict(lock), sort_keys=True).encode(), lock.expires)
        try:
            try:
                await self.backend.get(item.key)
                existed = True
            except NotFound:
                existed = False
            await self.backend.put(item)
            return existed
        finally:
            self.invalidate()

    async def get(self, name: str) -> Lock:
        try:
            item = await self.backend.get(lock_key(name))
        except NotFound:
            raise NotFound(f"lock {json.dumps(name)} not found") from None
        return parse_lock(json.loads(item.value), f"backend key {item.key.decode(errors='replace')}")

    async def list(self) -> list[Lock]:
        """Every stored lock that has not expired, oldest first."""
        items = await self.backend.get_range(LOCKS_PREFIX, range_end(LOCKS_PREFIX))
        locks = []
        for item in items:
            try:
                lock = parse_lock(json.loads(item.value))
            except (ValueError, InvalidLock) as exc:  # never let one bad item unlock everyone else
                self._log.error("unreadable lock in cluster state", key=item.key.decode(errors="replace"),
                                error=str(exc))
                continue
            if not lock.expired():
                locks.append(lock)
        return sorted(locks, key=lambda lock: (lock.created, lock.name))

    async def delete(self, name: str) -> None:
        try:
            await self.backend.delete(lock_key(name))
        except NotFound:
            raise NotFound(f"lock {json.dumps(name)} not found") from None
        finally:
            self.invalidate()

    # -- the snapshot --------------------------------------------------------------------------------

    def invalidate(self) -> None:
        self._generation += 1
        self._valid = False

    async def current(self) -> Sequence[Lock]:
        """The locks as of now (the snapshot while a watcher keeps it valid, else a fresh read)."""
        if self.before_read is not None:
            self.before_read()
        if self._watching and self._valid and self._snapshot is not None:
            return self._snapshot
        generation = self._generation
        locks = tuple(await self.list())
        self._snapshot = locks
        self._valid = generation == self._generation
        return locks

    async def watch(self, retry_delay: float = 1.0) -> None:
        """Keep the snapshot valid across auth servers (a task for the auth service's lifetime)."""
        await invalidate_on_change(self.backend, LOCKS_PREFIX, self.invalidate, self._set_watching, "lock",
                                   self._log, retry_delay)

    def _set_watching(self, value: bool) -> None:
        self._watching = value

    async def in_force(self, identity: Identity, *, login: str = "", issued: dt.datetime | None = None) -> Lock | None:
        """The lock refusing ``identity`` (its name and roles; a host's UUID as ``node``), if any.

        ``issued`` overrides the identity's own issue time (a certificate about to be issued: now).
        """
        when = issued if issued is not None else identity.issued
        if identity.kind is IdentityKind.HOST:
            return lock_in_force(await self.current(), node=host_uuid_of(identity), issued=when)
        return lock_in_force(await self.current(), user=identity.name, roles=identity.roles, login=login,
                             issued=when, access_requests=identity.active_requests)
