"""A web terminal to a node behind a reverse tunnel: a real ``teleport start`` node with
``teleport.proxy_server`` (no listening port; it dials the proxy's tunnel port). The proxy reaches
it through the tunnel, as for ``tsh ssh``; the node records the session with ``client: web``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from terminal_helpers import WSClient, session_cookie
from web_helpers import LOGIN, WebCluster, running_cluster

from teleport_core.testing.processes import stop_process
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TELEPORT = str(Path(sys.executable).with_name("teleport"))
NODENAME = "tunnelled-node"


@pytest.fixture(scope="module")
def tunnelled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebCluster, str]]:
    root = tmp_path_factory.mktemp("tunnel")
    with running_cluster(root / "cluster") as cluster:
        cluster.signup("alice", ["dev"])
        token = cluster.call("create_token", ["node"])["token"]
        folder = root / "node"
        folder.mkdir()
        config = folder / "teleport.yaml"
        config.write_text(yaml.safe_dump({
            "version": "v3",
            "teleport": {"data_dir": str(folder / "data"), "nodename": NODENAME, "proxy_server": cluster.web,
                         "auth_token": token, "ca_pin": cluster.call("status")["ca_pin"],
                         "log": {"output": str(folder / "node.log")}},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"enabled": True, "labels": {"env": "test"}},
        }))
        with open(folder / "stderr.log", "ab") as stderr:
            node = subprocess.Popen([TELEPORT, "start", "-c", str(config), "--insecure"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            found = wait_for(lambda: next((n for n in cluster.call("get_nodes") if n["nodename"] == NODENAME), None),
                             what="the node to register", timeout=240)
            wait_for(lambda: node.poll() is None and cluster.proxy.tunnel.connected(found["uuid"]),
                     what="the reverse tunnel", timeout=120)
            yield cluster, str(found["uuid"])
        finally:
            stop_process(node)


def test_a_web_terminal_reaches_a_node_through_its_reverse_tunnel(tunnelled: tuple[WebCluster, str]) -> None:
    cluster, uuid = tunnelled
    assert next(n for n in cluster.call("get_nodes") if n["uuid"] == uuid).get("tunnel") is True
    with cluster.logged_in("alice") as web:
        cookie = session_cookie(web)
    terminal = WSClient(cluster, cookie, {"node": uuid, "login": LOGIN})
    try:
        session = terminal.next()
        assert session["type"] == "session" and session["hostname"] == NODENAME, session
        terminal.send_bytes(b"echo tunnel-$((6*7)); exit\r")
        terminal.output_until(b"tunnel-42\r\n")
        while not (isinstance(end := terminal.next(), dict) and end.get("type") == "end"):
            pass
        assert end["reason"] == "session ended: exit status 0"
    finally:
        terminal.close()
    start = wait_for(lambda: cluster.events("session.start", user="alice", server_id=uuid), what="session.start")
    assert start[0]["client"] == "web" and start[0]["server_hostname"] == NODENAME
