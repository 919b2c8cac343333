"""Idle SSH connections at the node cost (almost) no wake-ups: paramiko's transport thread polls
once a second (``IDLE_POLL``), not every 0.1 s, so 500 idle sessions are not 5,000 GIL
acquisitions a second. Counted as the node process's voluntary context switches while 20
connections sit in their handshake (a count, which a loaded machine can only make smaller),
and the connections are still served and ended as before."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import Auth, Node

pytestmark = pytest.mark.e2e

CONNECTIONS = 20
WINDOW = 3.0


@pytest.fixture(scope="module")
def quiet(auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(auth, tmp_path_factory.mktemp("quiet")).start()
    yield node
    node.stop()


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # a thread that just ended
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def wakeups(pid: int) -> int:
    before = switches(pid)
    time.sleep(WINDOW)
    return switches(pid) - before


def test_idle_connections_do_not_wake_the_node_ten_times_a_second(quiet: Node) -> None:
    assert quiet.proc is not None
    pid = quiet.proc.pid
    baseline = wakeups(pid)
    socks = [socket.create_connection(("127.0.0.1", quiet.port), timeout=10) for _ in range(CONNECTIONS)]
    try:
        for sock in socks:
            assert sock.recv(64).startswith(b"SSH-2.0-")  # each has its transport thread, waiting for us
        extra = wakeups(pid) - baseline
        # at paramiko's 0.1 s: about CONNECTIONS * WINDOW * 10 = 600; at 1 s about 60
        assert extra < CONNECTIONS * WINDOW * 5, (extra, baseline)
    finally:
        for sock in socks:
            sock.close()
    # the listener still serves, and a client that hung up is gone (its place given back)
    with socket.create_connection(("127.0.0.1", quiet.port), timeout=10) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-")
