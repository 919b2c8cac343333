"""Remote port forwarding (``ssh -R``) at our node with the real OpenSSH client: ``tcpip-forward``
opens a loopback listener on the node, each connection comes back as a ``forwarded-tcpip``
channel, ``cancel-tcpip-forward`` (``ssh -O cancel``) and the end of the connection close it; the
role's ``port_forwarding`` decides, refusals are audited (``port``, T3003E)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Auth, Node, free_port, run, ssh_argv

from teleport_core.testing.processes import background
from teleport_core.testing.sockets import echo_server, listening, roundtrip
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def users(auth: Auth, tmp_path_factory: pytest.TempPathFactory, os_user: str) -> dict[str, Path]:
    auth.run(lambda admin: admin.upsert_role({
        "kind": "role", "version": "v5", "metadata": {"name": "no-forwarding"},
        "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                 "options": {"port_forwarding": False}}}))
    tmp = tmp_path_factory.mktemp("rfwd")
    (tmp / "known_hosts").write_text(auth.known_hosts())
    return {"rita": auth.user(tmp, "rita", ["access"], ["root", os_user]),
            "nora": auth.user(tmp, "nora", ["no-forwarding"], ["root"])}


def argv(node: Node, key: Path, *args: str, login: str = "root") -> list[str]:
    return ssh_argv(key.parent, node.port, key, login, *args)


def allocated(proc: subprocess.Popen[str]) -> int:
    """The port of ssh's ``Allocated port N for remote forward to HOST:PORT`` (``-R 0:...``)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("Allocated port ") or len(seen) > 20:
            break
    assert seen and seen[-1].startswith("Allocated port "), "".join(seen)
    return int(seen[-1].split()[2])


def port_events(auth: Auth, user: str) -> list[dict[str, Any]]:
    return [e for e in auth.events(type="port") if e.get("user") == user and e.get("forward") == "remote"]


def test_remote_forward_carries_connections_back_to_the_client(auth: Auth, node: Node, users: dict[str, Path]) -> None:
    with echo_server() as echo, background(argv(node, users["rita"], "-N", "-o", "ExitOnForwardFailure=yes",
                                                "-R", f"0:127.0.0.1:{echo}")) as proc:
        port = allocated(proc)  # the node picks: no other process here can take the port first
        payload = os.urandom(500_000)
        assert roundtrip(port, payload) == payload
        threads = [threading.Thread(target=lambda: roundtrip(port, b"x" * 1000)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    # the connection ended: the node closed the listener
    wait_for(lambda: not listening(port), what="the listener to close with the connection")
    [event] = wait_for(lambda: port_events(auth, "rita"), what="the audited remote forward")
    assert event["code"] == "T3003I" and event["addr.local"] == f"127.0.0.1:{port}" and event["login"] == "root"


def test_port_zero_is_allocated_and_reported(node: Node, users: dict[str, Path]) -> None:
    with echo_server() as echo, background(argv(node, users["rita"], "-N", "-o", "ExitOnForwardFailure=yes",
                                                "-R", f"0:127.0.0.1:{echo}")) as proc:
        assert roundtrip(allocated(proc), b"allocated") == b"allocated"


def test_any_requested_address_listens_on_loopback_only(auth: Auth, node: Node, users: dict[str, Path]) -> None:
    with echo_server() as echo, background(argv(node, users["rita"], "-N", "-o", "ExitOnForwardFailure=yes",
                                                "-R", f"0.0.0.0:0:127.0.0.1:{echo}")) as proc:
        port = allocated(proc)  # the node picks (a guessed free port may be taken by another process first)
        assert roundtrip(port, b"loopback") == b"loopback"
        bound = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False)
        if bound.returncode == 0:
            local = [line.split()[3] for line in bound.stdout.splitlines()]  # the local address column
            assert local == [f"127.0.0.1:{port}"], bound.stdout
    assert any(e["addr.local"] == f"127.0.0.1:{port}" for e in port_events(auth, "rita"))


def test_cancel_closes_the_listener_while_the_connection_stays(node: Node, users: dict[str, Path],
                                                              tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    port = free_port()
    master = argv(node, users["rita"], "-N", "-M", "-S", str(control))
    with echo_server() as echo, background(master) as proc:
        wait_for(lambda: control.exists() or proc.poll() is not None, what="the control socket")
        spec = f"{port}:127.0.0.1:{echo}"
        added = run(["ssh", "-S", str(control), "-O", "forward", "-R", spec, "ignored"])
        assert added.returncode == 0, added.stderr
        assert roundtrip(port, b"before cancel") == b"before cancel"
        cancelled = run(["ssh", "-S", str(control), "-O", "cancel", "-R", spec, "ignored"])
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(lambda: not listening(port), what="the cancelled listener to close")
        assert proc.poll() is None  # the connection itself goes on
        again = run(["ssh", "-S", str(control), "-O", "forward", "-R", spec, "ignored"])
        assert again.returncode == 0, again.stderr
        assert roundtrip(port, b"forwarded again") == b"forwarded again"


def test_refused_when_the_role_disallows_port_forwarding(auth: Auth, node: Node, users: dict[str, Path]) -> None:
    # the role was just created: until the node's role watcher has it, nora's login itself is refused
    wait_for(lambda: run(argv(node, users["nora"], "true")).returncode == 0, what="the node to know role no-forwarding")
    port = free_port()
    result = run(argv(node, users["nora"], "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:9",
                      login="root"))
    assert result.returncode == 255
    assert f"remote port forwarding failed for listen port {port}" in result.stderr
    assert not listening(port)
    [event] = wait_for(lambda: [e for e in port_events(auth, "nora") if e["code"] == "T3003E"],
                       what="the audited refusal")
    assert event["addr.local"] == f"127.0.0.1:{port}"
    assert event["error"] == "port forwarding is not allowed: the certificate does not permit port forwarding"


def test_a_privileged_port_needs_a_root_login(auth: Auth, node: Node, users: dict[str, Path], os_user: str) -> None:
    result = run(argv(node, users["rita"], "-N", "-o", "ExitOnForwardFailure=yes", "-R", "1022:127.0.0.1:9",
                      login=os_user))
    assert result.returncode == 255
    assert "remote port forwarding failed for listen port 1022" in result.stderr
    events = wait_for(lambda: [e for e in port_events(auth, "rita") if e["code"] == "T3003E"],
                      what="the audited refusal")
    assert "port 1022 is privileged: only a root login may listen on it" in events[-1]["error"]


def test_a_port_in_use_is_refused(node: Node, users: dict[str, Path]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run(argv(node, users["rita"], "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:9"))
    assert result.returncode == 255 and f"remote port forwarding failed for listen port {port}" in result.stderr


def test_data_sent_with_eof_and_close_in_one_burst_reaches_the_socket(node: Node, users: dict[str, Path]) -> None:
    """A client that answers a forwarded connection with data, EOF and close at once (paramiko
    then marks the node's channel closed while that data still waits in its buffer): every byte
    reaches the node's socket before it closes. The node used to end the forward on "channel
    closed" and drop what was still buffered (seen as an empty echo, about one run in ten)."""
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key_file(str(users["rita"]))
    pkey.load_certificate(str(users["rita"]) + "-cert.pub")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", node.port, username="root", pkey=pkey, allow_agent=False, look_for_keys=False)
    payload = os.urandom(300_000)

    def answer(channel: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
        channel.sendall(payload)
        channel.shutdown_write()
        channel.close()

    try:
        transport = client.get_transport()
        assert transport is not None
        port = transport.request_port_forward("127.0.0.1", 0, handler=answer)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                chunks = []
                while data := sock.recv(65536):
                    chunks.append(data)
            assert b"".join(chunks) == payload
    finally:
        client.close()
