"""Authorization of API requests and SSH logins: roles for users, a fixed policy for hosts.

:class:`RoleAuthorizer` answers ``teleport_authorize`` synchronously from an in-memory
snapshot of ``/roles/``. Call ``await authorizer.load(identity)`` before the hook runs (the
auth API does it per request); it re-reads the roles only when the snapshot may be stale:

* Without :meth:`RoleAuthorizer.watch` running, every ``load`` re-reads ``/roles/`` (one
  range read), so decisions always see the latest roles.
* With ``watch`` running (one task per auth server), the snapshot is reused until a backend
  event under ``/roles/`` (from any auth server sharing the backend) or a write through the
  local :class:`~teleport_auth.rolestore.RoleStore` invalidates it; the next ``load`` re-reads.
  Events only invalidate (never patch the snapshot), so a late event cannot roll it back.

Hosts (``IdentityKind.HOST``, system role ``Node``/``Proxy``/``Auth`` in ``identity.roles``)
get :data:`HOST_POLICIES`, like Teleport's built-in system roles; hosts never get SSH logins.
A user whose role does not exist is denied everything, so deleting a deny role cannot widen
anyone's access by accident. Every returned decision carries its reason. Rules with ``where:``
are evaluated against the user and the request's item (``name``, ``labels``, ``attributes``);
a ``filtered`` listing is allowed by them and its caller checks each item.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from teleport_auth.rolestore import ROLES_PREFIX, RoleStore
from teleport_auth.watching import invalidate_on_change
from teleport_core.errors import AccessDenied
from teleport_core.logs import get_logger
from teleport_core.policy.access import AccessRequest, Decision, Identity, IdentityKind
from teleport_core.policy.predicate import environment
from teleport_core.policy.roles import WILDCARD, Role, RoleSet

SSH_VERB = "ssh"


@attrs.frozen
class HostRule:
    """Allows ``verbs`` on ``kinds`` to a host; ``own_only``: only on the resource named by its host UUID."""

    kinds: tuple[str, ...]
    verbs: tuple[str, ...]
    own_only: bool = False

    def matches(self, kind: str, verb: str) -> bool:
        return (WILDCARD in self.kinds or kind in self.kinds) and (WILDCARD in self.verbs or verb in self.verbs)


_CLUSTER_READ = ("node", "role", "user", "cert_authority", "cluster_name", "auth_server", "proxy", "lock")

#: The built-in policy of each system role (Teleport's builtin Node/Proxy/Auth roles).
#: Node: read what RBAC on the node needs (nodes, roles, users, CA public keys ...), heartbeat
#: its own node entry, emit events, upload its sessions' recordings (not list or read any).
#: Proxy: the same for its own proxy entry, plus reading invite tokens to serve ``/web/invite``,
#: and no recordings of its own. Auth: everything (but SSH logins). Which event types each may
#: emit: teleport_auth.events_policy.
HOST_POLICIES: Mapping[str, tuple[HostRule, ...]] = {
    "Node": (
        HostRule(_CLUSTER_READ, ("list", "read")),
        HostRule(("node",), ("create", "update"), own_only=True),
        HostRule(("event",), ("create",)),
        HostRule(("session",), ("create", "update")),  # upload its own recordings, never list or read them
        # its own sessions' trackers only (server_id: its UUID; teleport_auth.api.trackers checks each)
        HostRule(("session_tracker",), ("create", "update", "delete", "read", "list")),
    ),
    "Proxy": (
        HostRule((*_CLUSTER_READ, "user_token"), ("list", "read")),
        HostRule(("user_token",), ("update",)),  # complete a signup from the invite page
        HostRule(("login",), ("create",)),  # forward users' password logins
        HostRule(("web_session",), ("create", "read", "update", "delete")),  # web UI sessions (api/websessions.py)
        HostRule(("proxy",), ("create", "update"), own_only=True),
        HostRule(("event",), ("create",)),
        # trusted clusters: the leaf proxy dials its roots' tunnels; the root proxy checks leaves'
        # tunnels against remote_cluster and records their heartbeats
        HostRule(("trusted_cluster", "remote_cluster"), ("list", "read")),
        HostRule(("remote_cluster",), ("update",)),
        # live sessions: reads all; writes only for agentless OpenSSH nodes (teleport_auth.api.trackers)
        HostRule(("session_tracker",), ("create", "update", "delete", "read", "list")),
        # upload the recordings of the agentless OpenSSH nodes' sessions it ran (only those whose
        # record it owns: teleport_auth.uploads); it lists and reads recordings only for a user
        # whose certificate it forwards (teleport_auth.recordings.acting_identity), never as itself
        HostRule(("session",), ("create",)),
    ),
    "Auth": (HostRule((WILDCARD,), (WILDCARD,)),),
}


def host_uuid(identity: Identity) -> str:
    """The host UUID of a host identity named ``<hostUUID>.<cluster>``."""
    name = identity.name
    if identity.cluster and name.endswith("." + identity.cluster):
        return name[: -len(identity.cluster) - 1]
    return name.partition(".")[0]


@functools.lru_cache(maxsize=4096)  # names in reasons, made for every decision (one per item of a listing)
def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def decide_host(request: AccessRequest) -> Decision:
    """The fixed policy for a host identity."""
    identity = request.identity
    who = f"access denied to host {_q(identity.name)}"  # cached: this runs for every item of a host's listing
    if request.verb == SSH_VERB:
        return Decision.deny(f"{who}: hosts cannot log in over SSH")
    system_roles = [role for role in identity.roles if role in HOST_POLICIES]
    if not system_roles:
        return Decision.deny(f"{who}: no system role (Node, Proxy or Auth) in its certificate")
    own = host_uuid(identity)
    refused_own = False
    for role in system_roles:
        for rule in HOST_POLICIES[role]:
            if not rule.matches(request.kind, request.verb):
                continue
            if rule.own_only and request.name != own:
                refused_own = True
                continue
            return Decision.allow(f"system role {role} allows {request.verb} on {request.kind}")
    if refused_own:
        return Decision.deny(
            f"{who}: a {'/'.join(system_roles)} may {request.verb} only its own {request.kind} ({_q(own)})"
        )
    return Decision.deny(f"{who}: system role {'/'.join(system_roles)} does not allow {request.verb} on {request.kind}")


class MissingRole(AccessDenied):
    """An identity names a role that does not exist."""


_RolesetKey = tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]


class RoleAuthorizer:
    """RBAC for the ``teleport_authorize`` hook: ``await load(identity)``, then ``decide(request)``."""

    def __init__(self, store: RoleStore, *, cache_size: int = 4096) -> None:
        self.store = store
        self.cache_size = cache_size
        self._roles: Mapping[str, Role] | None = None
        self._rolesets: dict[_RolesetKey, RoleSet] = {}
        self._generation = 0  # bumped by every invalidation
        self._valid = False  # the snapshot reflects every invalidation so far
        self._watching = False  # a watcher is live: events will invalidate the snapshot
        self._started = 0  # sequence of refreshes started / installed
        self._installed = 0
        self._log = get_logger("auth")
        #: called before the snapshot is trusted (auth workers: catch up with other processes' writes)
        self.before_read: Callable[[], None] | None = None
        store.add_listener(self.invalidate)

    # -- the snapshot --------------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Mark the snapshot stale: the next :meth:`load` re-reads the roles."""
        self._generation += 1
        self._valid = False

    @property
    def watching(self) -> bool:
        return self._watching

    async def refresh(self) -> None:
        """Re-read every role (one range read) and install the snapshot."""
        self._started += 1
        sequence, generation = self._started, self._generation
        roles = await self.store.list()
        if sequence < self._installed:
            return  # a later refresh already installed newer roles
        self._installed = sequence
        self._roles = {role.name: role for role in roles}
        self._rolesets = {}
        self._valid = generation == self._generation

    async def load(self, identity: Identity | None = None) -> None:
        """Make :meth:`decide` current for ``identity`` (re-reads unless a watcher keeps the snapshot valid)."""
        if self.before_read is not None:
            self.before_read()
        if not (self._watching and self._valid and self._roles is not None):
            await self.refresh()

    async def watch(self, retry_delay: float = 1.0) -> None:
        """Keep the snapshot valid across auth servers: run as a task for the auth service's lifetime.

        Every event under ``/roles/`` invalidates; a closed watcher is reopened after ``retry_delay``.
        """
        await invalidate_on_change(self.store.backend, ROLES_PREFIX, self.invalidate, self._set_watching, "role",
                                   self._log, retry_delay)

    def _set_watching(self, value: bool) -> None:
        self._watching = value

    # -- decisions ----------------------------------------------------------------------------------

    def roleset(self, identity: Identity) -> RoleSet:
        """The user's :class:`RoleSet` from the snapshot; :class:`MissingRole` when a role is absent."""
        if self._roles is None:
            raise AccessDenied(f"access denied to user {_q(identity.name)}: roles are not loaded yet")
        key: _RolesetKey = (identity.roles, tuple(sorted(identity.traits.items())))
        cached = self._rolesets.get(key)
        if cached is not None:
            return cached
        roles = []
        for name in identity.roles:
            role = self._roles.get(name)
            if role is None:
                raise MissingRole(f"access denied to user {_q(identity.name)}: role {_q(name)} does not exist")
            roles.append(role)
        roleset = RoleSet(roles, identity.traits)
        if len(self._rolesets) >= self.cache_size:
            self._rolesets.clear()
        self._rolesets[key] = roleset
        return roleset

    async def roleset_for(self, identity: Identity) -> RoleSet:
        """:meth:`load` then :meth:`roleset` (for certificate issuance: logins, TTL, options)."""
        await self.load(identity)
        return self.roleset(identity)

    def decide_alike(self, identity: Identity, verb: str, kind: str) -> Decision | None:
        """The decision :meth:`decide` makes on every item of a listing of ``kind`` (``verb``, no
        labels or login), when the items cannot change it: a user whose roles have no ``where`` rule
        for it (or who is denied before any rule is read); None when it depends on the item (a host's
        policy may read its name: it is decided per item)."""
        if identity.kind is IdentityKind.HOST or verb == SSH_VERB:
            return None
        try:
            roleset = self.roleset(identity)
        except AccessDenied as exc:
            return Decision.deny(str(exc))
        if roleset.rules_read_items(kind, verb):
            return None
        decision = roleset.check_rule(kind, verb)
        if decision.allowed:
            return decision
        return Decision.deny(f"access denied to user {_q(identity.name)}: {decision.reason}")

    def decide(self, request: AccessRequest) -> Decision:
        """Allow or deny ``request``, always with a reason (usable from ``teleport_authorize``)."""
        identity = request.identity
        if identity.kind is IdentityKind.HOST:
            return decide_host(request)
        try:
            roleset = self.roleset(identity)
        except AccessDenied as exc:
            return Decision.deny(str(exc))
        if request.verb == SSH_VERB:
            if request.kind != "node":
                decision = Decision.deny(f"ssh applies to nodes, not {request.kind}")
            else:
                decision = roleset.check_login(request.login, request.labels)
        else:
            def env() -> dict[str, Any]:
                return environment(user=identity.name, roles=identity.roles, traits=identity.traits,
                                   name=request.name, labels=request.labels, item=request.attributes)

            decision = roleset.check_rule(request.kind, request.verb, env, filtered=request.filtered)
        if decision.allowed:
            return decision
        return Decision.deny(f"access denied to user {_q(identity.name)}: {decision.reason}")
