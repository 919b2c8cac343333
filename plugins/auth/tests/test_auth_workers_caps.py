"""Auth worker processes share one ``max_connections`` (teleport_core.net.shared_caps): connections
held open on several of three auth processes fill the host's cap, every further one is refused
before its handshake whichever process the kernel hands it to (and audited), and once some close,
exactly as many are admitted again. A real ``teleport start`` with three auth processes on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, load_identity_dir
from teleport_core.net.shared_caps import host_connections
from teleport_core.testing.processes import TeleportProcess, child_pids, free_port
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

WORKERS = 3
CAP = 9
CLOSED = 3  # held connections closed to make room again


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeleportProcess]:
    config = {"auth_service": {"cluster_name": "caps.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "workers": WORKERS,
                               "connection_limits": {"max_connections": CAP, "max_startups": CAP}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path_factory.mktemp("workers-caps"), "auth", config)
    process.start(timeout=180)
    try:
        yield process
    finally:
        process.stop()


def connect(port: int) -> ssl.SSLSocket | None:
    """A new connection that completed its handshake and one request (kept alive, held open), or
    None when the server closed it before the handshake (refused)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a connection flood needs no identity
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        tls = context.wrap_socket(raw, server_hostname=AUTH_SERVER_NAME)
    except (ssl.SSLError, OSError):  # EOF or reset during the handshake
        raw.close()
        return None
    tls.sendall(f"GET /v1/ping HTTP/1.1\r\nHost: {AUTH_SERVER_NAME}\r\n\r\n".encode())
    head = tls.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return tls


def server_pids(auth: TeleportProcess, held: list[ssl.SSLSocket]) -> set[int]:
    """The auth processes holding the server end of ``held`` (``/proc``: socket inodes by TCP peer)."""
    port = int(auth.config["auth_service"]["listen_addr"].rpartition(":")[2])
    clients = {conn.getsockname()[1] for conn in held}
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(fields[i].rpartition(":")[2], 16) for i in (1, 2))
        if local == port and remote in clients:
            inodes.add(f"socket:[{fields[9]}]")
    leader = auth.proc.pid if auth.proc is not None else 0
    found = set()
    for pid in (leader, *child_pids(leader)):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if str(fd.readlink()) in inodes:
                        found.add(pid)
    return found


def refusals(auth: TeleportProcess) -> list[dict[str, Any]]:
    async def search() -> list[dict[str, Any]]:
        async with AuthClient(auth.config["auth_service"]["listen_addr"],
                              [load_identity_dir(auth.data_dir / "keys" / "auth")]) as admin:
            return list((await admin.search_events(limit=5000, type="auth"))["events"])

    return [e for e in asyncio.run(search()) if "max_connections" in e.get("error", "")]


def test_the_cap_holds_for_every_auth_process_together(auth: TeleportProcess) -> None:
    port = int(auth.config["auth_service"]["listen_addr"].rpartition(":")[2])
    counts = auth.data_dir / "auth-connections"
    wait_for(lambda: counts.exists() and host_connections(counts) == 0, "no connection counted before the test")
    held: list[ssl.SSLSocket] = []
    try:
        for _attempt in range(8):  # the kernel picks the accepting process: fill again until two took part
            for _ in range(CAP):
                conn = connect(port)
                assert conn is not None, f"refused with {len(held)} of {CAP} connections open"
                held.append(conn)
            assert host_connections(counts) == CAP
            if len(server_pids(auth, held)) >= 2:
                break
            for conn in held:
                conn.close()
            held.clear()
            wait_for(lambda: host_connections(counts) == 0, "the connections of a one-process fill given back")
        assert len(server_pids(auth, held)) >= 2, "the held connections were all in one process, 8 times"
        # each of these is accepted by whichever process the kernel picks, some with room of their own
        assert [connect(port) for _ in range(2 * CAP)] == [None] * (2 * CAP)
        for conn in held[:CLOSED]:
            conn.close()
        del held[:CLOSED]
        wait_for(lambda: host_connections(counts) == CAP - CLOSED, "the closed connections given back")
        for _ in range(CLOSED):
            conn = connect(port)
            assert conn is not None, "a connection refused though some closed"
            held.append(conn)
        assert connect(port) is None
        assert host_connections(counts) == CAP
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: host_connections(counts) == 0, "every connection given back")
    audited = wait_for(lambda: refusals(auth), "the refusals audited")
    assert all(e["code"] == "T3007W" and e["addr.remote"].startswith("127.0.0.1:") for e in audited), audited
    assert "auth_service: 9 connections (max_connections) are open in this host's processes" in audited[0]["error"]
    assert counts.stat().st_mode & 0o777 == 0o600
