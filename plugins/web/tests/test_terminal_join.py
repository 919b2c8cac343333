"""Joining a live session from the web terminal (console/session/<sid>): the WebSocket with
``?session=<sid>&mode=<mode>`` joins as ``tsh join`` does; refusals are its ``end`` message.
Real cluster (auth, the proxy with teleport-web and our node), WebSockets driven by wsproto."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from terminal_helpers import NODENAME, WSClient, node_uuid, session_cookie, ws_handshake
from web_helpers import CLUSTER, LOGIN, WebCluster, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WATCHER = {"kind": "role", "version": "v7", "metadata": {"name": "watcher"},
           "spec": {"allow": {"node_labels": {"*": "*"},
                              "join_sessions": [{"name": "dev sessions", "roles": ["dev"], "kinds": ["ssh"],
                                                 "modes": ["observer", "peer"]}]}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    with running_cluster(tmp_path_factory.mktemp("web-join"), node=True) as c:
        c.call("upsert_role", WATCHER)
        for user, roles in (("alice", ["dev"]), ("bob", ["dev", "watcher"]), ("mallory", ["dev"])):
            c.signup(user, roles)
        node_uuid(c)
        yield c


def test_a_browser_joins_as_observer_and_sees_the_output(cluster: WebCluster) -> None:
    with cluster.logged_in("alice") as alice_web, cluster.logged_in("bob") as bob_web:
        alice = WSClient(cluster, session_cookie(alice_web), {"node": NODENAME, "login": LOGIN})
        try:
            assert alice.next()["type"] == "session"
            for attempt in range(30):
                alice.send_bytes(f'echo "SID=$TELEPORT_SESSION=END{attempt}"\r'.encode())
                seen = alice.output_until(f"END{attempt}\r".encode())
                if b"SID=" in seen and f"=END{attempt}\r".encode() in seen:
                    break
                time.sleep(0.2)
            sid = seen.rsplit(b"SID=", 1)[1].split(b"=END", 1)[0].decode()
            listed = bob_web.get(f"/web/cluster/{CLUSTER}/sessions").text  # the page links to the join
            assert f"/web/cluster/{CLUSTER}/console/session/{sid}?mode=observer" in listed
            bob = WSClient(cluster, session_cookie(bob_web), {"session": sid, "mode": "observer"})
            try:
                started = bob.next()
                assert started["type"] == "session" and started["session"] == sid, started
                bob.output_until(b"Joining session with participant mode: observer")
                alice.output_until(b"User bob joined the session with participant mode: observer.")
                alice.send_bytes(b"echo seen-by-$((6*7))-bob\r")
                bob.output_until(b"seen-by-42-bob\r")
                bob.send_bytes(b"\x03")  # Ctrl-C: the observer leaves
                alice.output_until(b"User bob left the session.")
            finally:
                bob.close()
            with cluster.logged_in("mallory") as mallory_web:  # no join_sessions: not even listed
                mallory = ws_handshake(cluster, cookie=session_cookie(mallory_web),
                                       query={"session": sid, "mode": "observer"})[1]
            ends = [m for m in mallory if isinstance(m, dict) and m.get("type") == "end"]
            assert ends and "not found" in ends[0]["reason"], mallory
            moderator = ws_handshake(cluster, cookie=session_cookie(bob_web),
                                     query={"session": sid, "mode": "moderator"})[1]
            ends = [m for m in moderator if isinstance(m, dict) and m.get("type") == "end"]
            assert ends and "no role allows joining" in ends[0]["reason"], moderator
            bad = ws_handshake(cluster, cookie=session_cookie(bob_web), query={"session": sid, "mode": "boss"})[1]
            assert {"type": "end", "reason": "mode: expected observer, peer or moderator, got 'boss'"} in bad
            alice.send_bytes(b"exit\r")
        finally:
            alice.close()
    joins = [e for e in cluster.events("session.join") if e.get("sid") == sid]
    assert {(e["user"], e["code"]) for e in joins} >= {("bob", "T2001I"), ("bob", "T2001W")}


def test_the_join_page_renders_the_terminal_for_the_session(cluster: WebCluster) -> None:
    with cluster.logged_in("bob") as web:
        page = web.get(f"/web/cluster/{CLUSTER}/console/session/5b0f1c2e-0000-4000-8000-000000000000",
                       params={"mode": "peer"})
    assert page.status_code == 200
    assert 'data-session="5b0f1c2e-0000-4000-8000-000000000000"' in page.text and 'data-mode="peer"' in page.text
