"""The node's SSH listener under a connection flood (``ssh_service.connection_limits``), played
against a real node process with the real OpenSSH client. Sources are loopback addresses
(127.0.0.2 ... are loopback too): the flood comes from 127.0.0.1, victims from others."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from node_helpers import Auth, Node, run, ssh_argv

pytestmark = pytest.mark.e2e

PER_SOURCE = 20
LIMITS = {"max_connections": 30, "max_users": 1, "max_startups": "25:30:30", "per_source_max_startups": PER_SOURCE,
          "login_grace_time": "3s"}


@pytest.fixture(scope="module")
def limited(auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(auth, tmp_path_factory.mktemp("limited"), connection_limits=LIMITS).start()
    yield node
    node.stop()


def connect(port: int, source: str) -> socket.socket:
    """A TCP connection from ``source`` that sends only an SSH banner."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(b"SSH-2.0-flood\r\n")
    return sock


def greeted(sock: socket.socket) -> bool:
    """True when the server sent its banner (admitted), False when it closed at once (refused)."""
    try:
        return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def admitted_until(port: int, source: str, timeout: float = 30) -> socket.socket:
    """A banner-only connection from ``source`` once the node admits one (earlier ones are freed asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = connect(port, source)
        if greeted(sock):
            return sock
        sock.close()
        assert time.monotonic() < deadline, f"{source} is still refused"
        time.sleep(0.2)


def refusal_event(auth: Auth, text: str, source: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        found = [e for e in auth.events(type="auth") if text in e.get("error", "")
                 and str(e.get("addr.remote", "")).startswith(source + ":")]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no auth event with {text!r}: {auth.events(type='auth')[-3:]}"
        time.sleep(0.2)


def ssh_ok(auth: Auth, node: Node, tmp: Path, key: Path, source: str) -> subprocess.CompletedProcess[str]:
    argv = ssh_argv(tmp, node.port, key, "root", "echo limits-ok", known_hosts=auth.known_hosts())
    return run([*argv[:1], "-b", source, *argv[1:]])


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def test_banner_flood_from_one_source_does_not_lock_out_another(auth: Auth, limited: Node, tmp_path: Path) -> None:
    flood = [connect(limited.port, "127.0.0.1") for _ in range(300)]
    try:
        held = [s for s in flood if greeted(s)]
        # the per-source cap: the flooding source holds at most PER_SOURCE unauthenticated connections
        assert len(held) <= PER_SOURCE
        assert len(flood) - len(held) >= 300 - PER_SOURCE
        # another source still gets in, and a real login from it works during the flood
        other = connect(limited.port, "127.0.0.2")
        assert greeted(other)
        other.close()
        key = auth.user(tmp_path, "alice", ["access"], ["root"])
        result = ssh_ok(auth, limited, tmp_path, key, "127.0.0.2")
        assert result.returncode == 0, result.stderr
        assert "limits-ok" in result.stdout
        # the refusal is audited (once per source a minute, not once per connection)
        event = refusal_event(auth, "per_source_max_startups", "127.0.0.1")
        assert event["code"] == "T3007W" and event["success"] is False
        refusals = [e for e in auth.events(type="auth") if "per_source_max_startups" in e.get("error", "")]
        assert len(refusals) <= 2
    finally:
        close_all(flood)


def test_grace_time_ends_an_idle_unauthenticated_connection(limited: Node) -> None:
    # key exchange done, no login: paramiko's own handshake timer has ended, only the grace time remains
    sock = socket.create_connection(("127.0.0.1", limited.port), timeout=10, source_address=("127.0.0.5", 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=20)
        assert transport.is_active() and not transport.is_authenticated()
        deadline = time.monotonic() + 30
        while transport.is_active():
            assert time.monotonic() < deadline, "the unauthenticated connection was not closed"
            time.sleep(0.2)
    finally:
        transport.close()


def test_max_connections(auth: Auth, limited: Node) -> None:
    held: list[socket.socket] = []
    try:
        held.append(admitted_until(limited.port, "127.0.0.3"))
        for source in ("127.0.0.3", "127.0.0.6"):
            attempts = 0
            while len(held) < 30 and attempts < 400:  # the last few may be dropped at random (max_startups)
                attempts += 1
                sock = connect(limited.port, source)
                if greeted(sock):
                    held.append(sock)
                else:
                    sock.close()
                if sum(1 for s in held if s.getsockname()[0] == source) >= PER_SOURCE:
                    break
        assert len(held) == 30
        extra = connect(limited.port, "127.0.0.4")
        assert not greeted(extra)
        extra.close()
        event = refusal_event(auth, "max_connections", "127.0.0.4")
        assert event["code"] == "T3007W"
    finally:
        close_all(held)
    admitted_until(limited.port, "127.0.0.4").close()  # freed again


def paramiko_login(node: Node, key: Path, source: str) -> paramiko.SSHClient:
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    pkey.load_certificate(str(key) + "-cert.pub")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10, source_address=(source, 0))
    client.connect("127.0.0.1", node.port, username="root", pkey=pkey, allow_agent=False, look_for_keys=False,
                   sock=sock)  # type: ignore[arg-type]
    return client


def test_max_users(auth: Auth, limited: Node, tmp_path: Path) -> None:
    bob = auth.user(tmp_path, "bob", ["access"], ["root"])
    carol = auth.user(tmp_path, "carol", ["access"], ["root"])
    first = paramiko_login(limited, bob, "127.0.0.7")
    try:
        second = paramiko_login(limited, bob, "127.0.0.7")  # the same user: still one user
        second.close()
        result = ssh_ok(auth, limited, tmp_path, carol, "127.0.0.8")
        assert result.returncode == 255 and "Permission denied" in result.stderr
        event = refusal_event(auth, "max_users", "127.0.0.8")
        assert event["user"] == "carol" and event["code"] == "T3007W"
    finally:
        first.close()
    deadline = time.monotonic() + 30
    while True:  # bob's connections end asynchronously at the node
        result = ssh_ok(auth, limited, tmp_path, carol, "127.0.0.8")
        if result.returncode == 0:
            break
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.5)
    assert "limits-ok" in result.stdout
