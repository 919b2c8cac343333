"""The event allow-lists of hosts match what the node and proxy code really emits (so they cannot
drift), the policy's decisions and stamps, and the host policy on recordings."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from teleport_auth.authz import decide_host
from teleport_auth.events_policy import (
    AGENTLESS_EVENTS,
    HOST_EVENTS,
    NODE_EVENTS,
    PROXY_EVENTS,
    SERVER_ROLE,
    codes_of,
    refusal,
    speaks_for,
    stamp,
)

from teleport_core.policy.access import AccessRequest, Identity, IdentityKind
from teleport_core.state.audit import CODES, AuditEvent, new_event

CLUSTER = "example.com"
UUID = "5c3f7e1a-2b0d-4a7e-9c1b-0d9e8f7a6b5c"
EVENT_TYPES = {kind for kind, _ in CODES}


#: kernel modules that emit events through the host that calls them (a session's end: node and proxy)
SHARED_EMITTERS = ("teleport_core.recording.events",)


def emitted(name: str) -> set[str]:
    """Event types named as a literal first argument of an ``*emit*``/``*event*`` call in the
    installed package ``name`` (the checkout's, or the wheel's), and in the kernel's
    :data:`SHARED_EMITTERS` it imports."""
    package = Path(importlib.import_module(name).__file__ or "").parent
    paths = list(package.glob("*.py"))
    for module in SHARED_EMITTERS:
        if any(module in path.read_text() for path in paths):
            paths.append(Path(importlib.import_module(module).__file__ or ""))
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            first = node.args[0]
            if ("emit" in name or "event" in name) and isinstance(first, ast.Constant) and first.value in EVENT_TYPES:
                found.add(first.value)
    return found


def test_allow_lists_are_exactly_what_nodes_and_proxies_emit() -> None:
    node = emitted("teleport_node")
    proxy = emitted("teleport_proxy")
    assert {"session.start", "exec", "auth"} <= node and "reverse_tunnel.connect" in proxy  # the scan works
    assert node == NODE_EVENTS, f"teleport_node emits {sorted(node)}: update NODE_EVENTS in events_policy"
    # with the session events of the agentless OpenSSH nodes it speaks for (teleport_proxy.forwarder)
    assert proxy == PROXY_EVENTS | AGENTLESS_EVENTS, \
        f"teleport_proxy emits {sorted(proxy)}: update PROXY_EVENTS or AGENTLESS_EVENTS in events_policy"
    assert AGENTLESS_EVENTS <= NODE_EVENTS
    assert set(HOST_EVENTS) == {"Node", "Proxy", "Auth"} and HOST_EVENTS["Auth"] is None
    assert all(codes_of(kind) for kind in NODE_EVENTS | PROXY_EVENTS)


def host(role: str) -> Identity:
    return Identity(f"{UUID}.{CLUSTER}", IdentityKind.HOST, roles=(role,), cluster=CLUSTER)


def test_refusals_and_stamps() -> None:
    node, proxy, auth = host("Node"), host("Proxy"), host("Auth")
    login = new_event("user.login", user="admin", success=True)
    assert 'a Node may not emit "user.login" events' in refusal(node, login)
    assert 'a Proxy may not emit "user.login" events' in refusal(proxy, login)
    assert refusal(auth, login) == ""
    assert 'a Proxy may not emit "session.start"' in refusal(proxy, new_event("session.start", sid="s"))
    assert refusal(proxy, new_event("reverse_tunnel.connect")) == ""
    forged_code = AuditEvent("exec", "T1000I", "uid-1", login.time, {})
    assert 'event "exec" with code "T1000I" (its codes: T3002E, T3002I)' in refusal(node, forged_code)
    other = new_event("exec", server_id="another-host")
    assert 'an event with server_id "another-host" is not its own' in refusal(node, other)
    user = Identity("alice", IdentityKind.USER, roles=("editor",))
    assert "only cluster hosts (Node, Proxy, Auth) emit audit events" in refusal(user, new_event("exec"))
    stranger = Identity(f"{UUID}.{CLUSTER}", IdentityKind.HOST, roles=("Admin",), cluster=CLUSTER)
    assert "no system role" in refusal(stranger, new_event("exec"))

    body = new_event("exec", command="id", server_hostname="auth1", cluster_name="elsewhere", **{SERVER_ROLE: "Auth"})
    assert refusal(node, body) == ""
    stamped = stamp(body, node, "node1", CLUSTER)
    assert stamped.fields["server_id"] == UUID and stamped.fields[SERVER_ROLE] == "Node"
    assert stamped.fields["server_hostname"] == "node1" and stamped.fields["cluster_name"] == CLUSTER
    assert stamped.fields["command"] == "id" and stamped.uid == body.uid and stamped.code == body.code
    assert stamp(body, auth, "x", CLUSTER) is body  # auth servers' events are theirs as sent


def test_hosts_never_list_or_read_recordings_as_themselves() -> None:
    for role in ("Node", "Proxy"):
        for verb in ("list", "read"):
            decision = decide_host(AccessRequest(host(role), verb, "session"))
            assert not decision.allowed and f"system role {role} does not allow {verb} on session" in decision.reason
    assert decide_host(AccessRequest(host("Node"), "create", "session")).allowed  # its own uploads
    # a proxy uploads the recordings of agentless sessions it ran (teleport_auth.uploads checks the owner)
    assert decide_host(AccessRequest(host("Proxy"), "create", "session")).allowed
    assert not decide_host(AccessRequest(host("Proxy"), "update", "session")).allowed
    assert decide_host(AccessRequest(host("Auth"), "read", "session")).allowed


def test_a_proxy_emits_session_events_only_for_a_registered_agentless_node() -> None:
    from teleport_core.state.nodes import NodeInfo

    proxy, node = host("Proxy"), host("Node")
    agentless = NodeInfo("plain-uuid", "plain", "10.0.0.1:22", sub_kind="openssh")
    start = new_event("session.start", sid="s", server_id="plain-uuid", forwarded_by="forged", user="alice")
    assert speaks_for(proxy, start) == "plain-uuid" and speaks_for(node, start) == ""
    # without the caller's check that plain-uuid is a registered openssh node: refused
    assert 'a Proxy may not emit "session.start"' in refusal(proxy, start)
    assert refusal(proxy, start, "plain-uuid") == ""
    assert "is not its own" in refusal(proxy, new_event("session.start", sid="s", server_id="other"), "plain-uuid")
    assert "may not emit" in refusal(proxy, new_event("resize", server_id="plain-uuid"), "plain-uuid")
    stamped = stamp(start, proxy, "proxy1", CLUSTER, agentless)
    assert stamped.fields["server_id"] == "plain-uuid" and stamped.fields["server_hostname"] == "plain"
    assert stamped.fields["forwarded_by"] == UUID and stamped.fields["server_sub_kind"] == "openssh"
    # a node cannot claim it forwarded an event
    own = stamp(new_event("exec", forwarded_by="someone", server_sub_kind="openssh"), node, "node1", CLUSTER)
    assert "forwarded_by" not in own.fields and "server_sub_kind" not in own.fields
