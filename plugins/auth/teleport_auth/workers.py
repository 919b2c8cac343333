"""Auth worker processes (``auth_service.workers: N``): what keeps every decision right.

The kernel's :mod:`teleport_core.net.workers` runs the processes (the leader, worker 0, is the
``teleport start`` the user ran; it starts workers 1..N-1 on the auth listening socket and
restarts them). This module is what auth adds:

* **Fresh caches.** Roles, locks and users are answered from memory. Each process registers
  its three caches with a :class:`~teleport_core.state.change_feed.ChangeFeed` and catches up
  before trusting a snapshot (one ``PRAGMA data_version`` when nothing changed; the new
  ``events`` rows when something did), so a lock, role or user change committed through any
  worker is applied before the next request's checks in every other worker. Only SQLite has
  that marker here: ``workers`` above 1 on another backend is refused at start
  (:func:`check_backend`).
* **Fresh CAs.** The same catch-up counts changes of this cluster's two CA documents
  (:class:`CAChanges`); before a request's caller is identified (and so before anything is
  signed for it) the process reloads its CAs when one changed, so no worker accepts or signs
  with the keys of a rotation phase another worker just left.
* **Singletons** run in the leader only (:data:`LEADER_ONLY`); every worker runs the
  per-process parts (its caches' watchers, the CA watcher that reloads the CAs after a
  rotation, its own audit spool ``<folder>.<pid>``, the access-request hook announcer).
* **One connection cap.** ``max_connections`` of the auth listener counts the connections of every
  auth process on the host together (:func:`connection_cap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from teleport_auth.authority import CAType, ca_key
from teleport_auth.locks import LOCKS_PREFIX
from teleport_auth.rolestore import ROLES_PREFIX
from teleport_auth.users import USERS_PREFIX
from teleport_core.errors import ConfigError
from teleport_core.net.shared_caps import ConnectionCap, SharedConnectionCap
from teleport_core.state.change_feed import ChangeFeed, open_change_feed

if TYPE_CHECKING:
    from teleport_auth.authz import RoleAuthorizer
    from teleport_auth.locks import LockStore
    from teleport_auth.users import UserStore
    from teleport_core.state.backend import Backend

SHARED_CAPS_FILE = "auth-connections"  # under data_dir: the auth processes' open connections, per process

#: background work of the auth service that runs in the leader (worker 0) only: each acts on the
#: cluster (or this host's shared entries) once, not once per process
LEADER_ONLY = (
    "the HA announcement and its audit-split check (/auth_servers/<host uuid>)",
    "the built-in roles' creation and upgrade",
    "the host registry's entry of this auth server",
    "CA rotation's automatic phase changes (auth-ca-auto-rotate)",
    "the access-request sweeper (expired requests removed, audited, announced)",
    "the streamed-recording sweep (node-sync recordings whose host was lost)",
    "the session-storage check at start",
)


def check_backend(backend: Backend, workers: int) -> ChangeFeed | None:
    """The change feed the caches catch up with when ``workers`` > 1 (None for one process);
    :class:`ConfigError` when the backend has no change marker: a worker could then answer
    from a snapshot that misses a lock another worker just stored."""
    if workers <= 1:
        return None
    feed = open_change_feed(backend)
    if feed is None:
        kind = type(getattr(backend, "inner", backend)).__name__
        raise ConfigError(
            "auth_service.workers",
            f"{workers} auth worker processes need the sqlite backend (storage.type: sqlite), whose change "
            f"marker lets each worker apply another's writes before it trusts its caches; {kind} has none "
            "yet, so a lock stored through one worker could miss a certificate another issues. "
            "Use workers: 1 (or several auth servers) with this backend",
        )
    return feed


def keep_fresh(feed: ChangeFeed, *, locks: LockStore, authorizer: RoleAuthorizer, users: UserStore) -> None:
    """Invalidate each cache on any process's change under its prefix, before it is read."""
    feed.watch(LOCKS_PREFIX, locks.invalidate)
    feed.watch(ROLES_PREFIX, authorizer.invalidate)
    feed.watch(USERS_PREFIX, users.invalidate)
    for cache in (locks, authorizer, users):
        cache.before_read = feed.catch_up


@attrs.define
class CAChanges:
    """Changes of the cluster's CA documents the change feed saw (``seen``) and how many of them
    this process's CAs include (``applied``). A reload that starts after the feed counted a change
    reads that change's commit (the feed reads a commit's ``events`` row only once it is
    committed), so it may mark every change counted before it began as applied."""

    feed: ChangeFeed
    seen: int = 0
    applied: int = 0

    def invalidate(self) -> None:
        self.seen += 1

    def pending(self) -> int:
        """Catch up with every commit so far; the ``seen`` count a reload must reach, 0 when the
        CAs in memory are current."""
        self.feed.catch_up()
        return self.seen if self.applied < self.seen else 0


def watch_cas(feed: ChangeFeed, cluster_name: str) -> CAChanges:
    """Count the changes of ``cluster_name``'s user and host CA documents, by any process."""
    changes = CAChanges(feed)
    for kind in CAType:
        feed.watch(ca_key(kind, cluster_name), changes.invalidate)
    return changes


def connection_cap(max_connections: int, workers: int, data_dir: Path) -> ConnectionCap:
    """The auth listener's ``max_connections``: counted in memory by one process; with ``workers`` > 1,
    in ``data_dir/auth-connections``, which every auth process on the host (and a graceful reload's
    next generation) counts in, so the cap configured is the host's."""
    if workers <= 1:
        return ConnectionCap(max_connections, "auth_service")
    return SharedConnectionCap(max_connections, "auth_service", data_dir / SHARED_CAPS_FILE)
