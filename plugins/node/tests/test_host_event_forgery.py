"""An attacker on a node host holds the node's identity (its data_dir keys) and posts audit
events to auth, or slips them into the node's audit spool. Auth stores only the event types a
node produces, stamped with the node's certificate (``server_id``, ``server_role``,
``server_hostname`` from auth's records), refuses and audits the rest (T3007W naming the host
and the event type), and the node's real session events still arrive, stamped. The node's
identity can neither list nor read recordings. Real auth server, ``teleport start`` node
process, OpenSSH client."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from node_helpers import CLUSTER, Auth, Node, run, ssh_argv

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import AccessDenied
from teleport_core.state.audit import AuditEvent, new_event
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e


def as_node(node: Node, fn: Any) -> Any:
    """``fn(client)`` with the node's own identity, read from its data directory."""

    async def body() -> Any:
        async with AuthClient(node.auth.addr, [load_identity_dir(node.data_dir / "data" / "keys" / "node")]) as c:
            return await fn(c)

    return asyncio.run(body())


def node_uuid(node: Node) -> str:
    return (node.data_dir / "data" / "keys" / "node" / "host_uuid").read_text().strip()


def refusals(auth: Auth, *needles: str) -> list[dict[str, Any]]:
    return [e for e in auth.events(type="auth") if all(n in e.get("error", "") for n in needles)]


def stored(auth: Auth, uid: str) -> list[dict[str, Any]]:
    return [e for e in auth.events() if e["uid"] == uid]


def test_forged_events_from_the_node_identity_are_refused_or_stamped(auth: Auth, node: Node, tmp_path: Path) -> None:
    own = node_uuid(node)
    host = f"{own}.{CLUSTER}"
    wait_for(lambda: [n for n in auth.run(lambda a: a.get_nodes()) if n["uuid"] == own], what="node heartbeat")

    # a successful login of admin, as auth would write it: refused, audited, not stored
    login = new_event("user.login", user="admin", method="local", success=True, server_id=own).to_dict()
    with pytest.raises(AccessDenied, match='a Node may not emit "user.login" events'):
        as_node(node, lambda c: c.emit_event(login))
    [denial] = refusals(auth, 'may not emit "user.login"')
    assert denial["code"] == "T3007W" and denial["user"] == host and denial["path"] == "/v1/events"
    assert not stored(auth, login["uid"])

    # an event in another host's name: refused (as before), audited
    other = str(uuid.uuid4())
    start = new_event("session.start", sid=str(uuid.uuid4()), server_id=other, user="alice", login="root").to_dict()
    with pytest.raises(AccessDenied, match="is not its own"):
        as_node(node, lambda c: c.emit_event(start))
    assert refusals(auth, f'server_id "{other}" is not its own')[-1]["user"] == host
    assert not stored(auth, start["uid"])

    # a node event type carrying another type's code: refused, audited
    disguised = AuditEvent("exec", "T1000I", str(uuid.uuid4()), dt.datetime.now(dt.UTC), {"command": "id"}).to_dict()
    with pytest.raises(AccessDenied, match='with code "T1000I"'):
        as_node(node, lambda c: c.emit_event(disguised))
    assert refusals(auth, 'event "exec" with code "T1000I"')[-1]["user"] == host

    # without server_id, claiming to be auth: stored, but stamped with what auth knows of the node
    bare = new_event("exec", command="attacker-without-server-id", user="mallory", server_hostname="auth1",
                     server_role="Auth", cluster_name="elsewhere").to_dict()
    as_node(node, lambda c: c.emit_event(bare))
    [kept] = stored(auth, bare["uid"])
    assert (kept["server_id"], kept["server_role"], kept["server_hostname"], kept["cluster_name"]) == (
        own, "Node", "node1", CLUSTER)

    # the node's identity cannot list or read recordings (audited)
    with pytest.raises(AccessDenied, match="system role Node does not allow list on session"):
        as_node(node, lambda c: c.list_recordings())
    sid = str(uuid.uuid4())
    with pytest.raises(AccessDenied, match="system role Node does not allow read on session"):
        as_node(node, lambda c: c.download_recording(sid, tmp_path / "stolen.cast"))
    paths = {e["path"] for e in refusals(auth, "does not allow") if e["user"] == host}
    assert {"/v1/sessions", f"/v1/sessions/{sid}/recording"} <= paths
    assert not (tmp_path / "stolen.cast").exists()


def test_a_user_certificate_cannot_emit_events(auth: Auth, node: Node, tmp_path: Path) -> None:
    role = {"kind": "role", "version": "v5", "metadata": {"name": "event-writer"},
            "spec": {"allow": {"rules": [{"resources": ["event"], "verbs": ["create"]}]}}}
    auth.run(lambda admin: admin.upsert_role(role))
    auth.user(tmp_path, "wendy", ["event-writer"], [])

    async def sign(admin: AuthClient) -> dict[str, Any]:
        from teleport_core.pki import keys

        key = keys.generate_private_key("ed25519")
        answer = await admin.sign_user_cert("wendy", keys.public_key_openssh(key))
        return {"key": keys.private_key_pem(key), **answer}

    from teleport_core.api.client import Credentials
    from teleport_core.pki.identity import LocalIdentity

    answer = auth.run(sign)
    identity = LocalIdentity(answer["key"], answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"])
    event = new_event("user.login", user="admin", success=True).to_dict()

    async def emit() -> None:
        async with AuthClient(auth.addr, credentials=Credentials(identity.client_context(), identity, "test")) as c:
            await c.emit_event(event)

    with pytest.raises(AccessDenied, match="only cluster hosts"):
        asyncio.run(emit())
    assert refusals(auth, 'user "wendy": only cluster hosts')[-1]["code"] == "T3007W"
    assert not stored(auth, event["uid"])


def test_a_forged_line_in_the_spool_is_dropped_and_real_events_arrive_stamped(auth: Auth, node: Node,
                                                                              tmp_path: Path) -> None:
    own = node_uuid(node)
    before = len(refusals(auth, 'may not emit "user.login"'))
    forged = new_event("user.login", user="admin", method="local", success=True).to_dict()
    spool = node.data_dir / "data" / "log" / "audit-spool" / "events.jsonl"
    with open(spool, "ab") as handle:  # an attacker with the node's files appends to its outbox
        handle.write(json.dumps(forged).encode() + b"\n")

    key = auth.user(tmp_path, "stella", ["access"], ["root"])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    result = run(ssh_argv(tmp_path, node.port, key, "root", "echo stamped-by-auth"))
    assert result.returncode == 0 and result.stdout == "stamped-by-auth\n", result.stderr

    [exec_event] = wait_for(lambda: [e for e in auth.events(type="exec") if e.get("command") == "echo stamped-by-auth"],
                            what="the session's exec event")
    session = wait_for(lambda: (lambda found: found if {"session.start", "session.end"} <= set(found) else None)(
        {e["event"]: e for e in auth.events(sid=exec_event["sid"])}), what="session start and end")
    for event in (exec_event, session["session.start"], session["session.end"]):
        assert (event["server_id"], event["server_role"], event["server_hostname"]) == (own, "Node", "node1")
        assert event["user"] == "stella"
    # the forged line was refused once (audited), dropped, and did not hold back what followed it
    assert not stored(auth, forged["uid"])
    assert len(refusals(auth, 'may not emit "user.login"')) == before + 1
    wait_for(lambda: "audit event refused by the auth server, dropped" in node.log(), what="the drop in the node log")
    assert node.log().count(forged["uid"]) == 1
