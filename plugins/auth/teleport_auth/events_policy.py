"""Which audit events a cluster host may emit (``POST /v1/events``), and what auth stamps on them.

Nodes and proxies deliver their audit events to auth through their spool
(:mod:`teleport_core.state.audit_spool`). Auth trusts nothing in such an event about *who* emitted it:

* **Who may emit.** Only cluster hosts (host certificates with a system role), as in Teleport;
  a user certificate is refused even with a role allowing ``create`` on ``event``.
* **Which types.** Each system role may emit only the event types it produces
  (:data:`HOST_EVENTS`), each with one of the codes Teleport defines for that type
  (:data:`teleport_core.state.audit.CODES`): a Node its sessions, commands, forwards and SSH refusals;
  a Proxy its refusals and reverse tunnels. ``Auth`` (another auth server of the cluster) may
  emit anything, unchanged.
* **Stamped by auth.** ``server_id`` (the host UUID of the certificate), ``server_role`` (its
  system role; ours, Teleport has no such field), ``server_hostname`` (the nodename auth recorded
  for the host at its join: :mod:`teleport_auth.hosts`; else its last heartbeat) and
  ``cluster_name`` are set by auth. A body ``server_id`` that names another host is refused
  (as Teleport's ``ValidateServerMetadata``); the other stamped fields are overwritten silently.
  What an event says about users (``user``, ``login`` ...) is the host's account: a node
  authenticates the users of its sessions.

A refused emission is answered 403 and audited (``auth`` failure, T3007W, naming the host and
the event type); the emitter's spool drops a refused event instead of retrying it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping

import attrs

from teleport_auth.authz import host_uuid
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.state.audit import CODES, AuditEvent
from teleport_core.state.nodes import NodeInfo

SERVER_ROLE = "server_role"
"""The field auth stamps with the emitting host's system role (``Node``, ``Proxy``)."""

#: What a node emits (plugins/node): its SSH sessions and what happened in them, and its refusals.
NODE_EVENTS = frozenset({
    "session.start", "session.end", "session.data", "session.upload", "resize",
    "session.join", "session.leave",  # joiners of its live sessions (party.py)
    "exec", "scp", "port", "client.disconnect", "auth",
})
#: What a proxy emits (plugins/proxy): its refusals and the reverse tunnels nodes open to it.
PROXY_EVENTS = frozenset({"auth", "reverse_tunnel.connect", "reverse_tunnel.disconnect"})
#: What a proxy emits for an agentless (``sub_kind: openssh``) node it runs sessions for: the node's
#: session events, with ``server_id`` naming that node (auth stamps ``forwarded_by`` with the proxy).
AGENTLESS_EVENTS = frozenset({"session.start", "session.end", "session.data", "session.upload", "exec", "scp",
                              "port"})
#: The event types each system role may emit; ``None``: anything (auth servers).
HOST_EVENTS: Mapping[str, frozenset[str] | None] = {"Node": NODE_EVENTS, "Proxy": PROXY_EVENTS, "Auth": None}


def codes_of(event_type: str) -> frozenset[str]:
    """The codes Teleport defines for ``event_type`` (one per outcome)."""
    return frozenset(code for (kind, _outcome), code in CODES.items() if kind == event_type)


def _q(text: object) -> str:
    return json.dumps(text, ensure_ascii=False)


def system_roles(identity: Identity) -> list[str]:
    return [role for role in identity.roles if role in HOST_EVENTS] if identity.kind is IdentityKind.HOST else []


def speaks_for(identity: Identity, event: AuditEvent) -> str:
    """The agentless node a proxy's ``event`` claims to be about (its ``server_id``), or "" when the
    event is not an agentless node's session event from a proxy. The caller checks the node is a
    registered ``openssh`` node and passes the result to :func:`refusal` and :func:`stamp`."""
    if "Proxy" not in system_roles(identity) or event.event not in AGENTLESS_EVENTS:
        return ""
    server_id = str(event.fields.get("server_id", ""))
    return server_id if server_id and server_id != host_uuid(identity) else ""


def refusal(identity: Identity, event: AuditEvent, agentless: str = "") -> str:
    """Why ``identity`` may not emit ``event``, or "" when it may. ``agentless``: the registered
    openssh node a proxy emits this session event for (:func:`speaks_for`, checked by the caller)."""
    if identity.kind is not IdentityKind.HOST:
        return (f"access denied to user {_q(identity.name)}: only cluster hosts (Node, Proxy, Auth) "
                f"emit audit events")
    who = f"access denied to host {_q(identity.name)}"
    roles = system_roles(identity)
    if not roles:
        return f"{who}: no system role (Node, Proxy or Auth) in its certificate"
    if "Auth" in roles:
        return ""
    allowed = frozenset().union(*(HOST_EVENTS[role] or () for role in roles))
    if agentless and "Proxy" in roles and event.event in AGENTLESS_EVENTS:
        allowed = allowed | AGENTLESS_EVENTS
    role = "/".join(roles)
    if event.event not in allowed:
        return (f"{who}: a {role} may not emit {_q(event.event)} events "
                f"(it emits {', '.join(sorted(allowed))})")
    if event.code not in codes_of(event.event):
        return (f"{who}: event {_q(event.event)} with code {_q(event.code)} "
                f"(its codes: {', '.join(sorted(codes_of(event.event)))})")
    server_id = event.fields.get("server_id", "")
    own = host_uuid(identity)
    if server_id and server_id != own and server_id != agentless:
        # a host speaks for itself only (recording uploads trust session.start's server_id)
        return f"{who}: an event with server_id {_q(server_id)} is not its own ({_q(own)})"
    return ""


def stamp(event: AuditEvent, identity: Identity, hostname: str, cluster_name: str,
          agentless: NodeInfo | None = None) -> AuditEvent:
    """``event`` with the emitting host's ``server_id``, ``server_role``, ``server_hostname`` and
    ``cluster_name`` set by auth (auth servers' events are returned unchanged). A proxy's session
    event for the agentless node ``agentless`` keeps that node as ``server_id`` and
    ``server_hostname``, with ``server_sub_kind: openssh`` and ``forwarded_by`` (the proxy's UUID,
    Teleport's field), which owns the session's record and recording."""
    roles = system_roles(identity)
    if "Auth" in roles:
        return event
    fields = dict(event.fields)
    if agentless is not None:
        fields.update({"server_id": agentless.uuid, SERVER_ROLE: "/".join(roles), "server_hostname": agentless.nodename,
                       "server_sub_kind": agentless.sub_kind, "forwarded_by": host_uuid(identity),
                       "cluster_name": cluster_name})
        return attrs.evolve(event, fields=fields)
    fields.pop("forwarded_by", None)  # only auth says a host forwarded an event
    fields.pop("server_sub_kind", None)
    fields.update({"server_id": host_uuid(identity), SERVER_ROLE: "/".join(roles),
                   "server_hostname": hostname, "cluster_name": cluster_name})
    return attrs.evolve(event, fields=fields)


Lookup = Callable[[str, str], Awaitable[str]]


class HostNameCache:
    """The name auth recorded for a host (``lookup(system_role, host_uuid)``, "" when unknown),
    cached for ``ttl`` seconds: every event of a host needs it. Misses are not cached."""

    def __init__(self, lookup: Lookup, ttl: float = 30.0, size: int = 4096) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._size = size
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}

    async def get(self, role: str, uuid: str) -> str:
        key = (role, uuid)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        name = await self._lookup(role, uuid)
        if name:
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[key] = (name, now + self._ttl)
        return name
