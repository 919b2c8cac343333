"""The proxy's SSH listener serves each connection from its paramiko transport's thread alone
(no second thread waiting in ``accept()``): sessions still open and splice, each connection holds
its ``connection_limits`` ticket until it ends, and a client that hangs up mid-handshake or
sends garbage gives its place back."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, profile_ssh_config, running_env

from teleport_core.testing.waiting import wait_for

PASSWORD = "threads-password-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory) as e:
        yield e


@pytest.fixture(scope="module")
def home(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env.signup("threads", ["dev"], [LOGIN], PASSWORD)
    return env.logged_in(tmp_path_factory, "threads")


def conn_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "proxy-ssh-conn"]


def test_subsystem_sessions_on_the_ssh_port_back_to_back(env: Env, home: Path, tmp_path: Path) -> None:
    """tsh without TLS routing: a session channel, then the ``proxy:`` subsystem on it. The
    channel is held by the proxy between the two (paramiko maps channels weakly)."""
    ssh_port = tmp_path / "tsh"
    shutil.copytree(home, ssh_port)
    meta_path = ssh_port / "profiles" / "127.0.0.1" / "profile.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "tls_routing": False}))
    for i in range(5):
        done = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@sshd-node",
                               f"echo run-{i}"], capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "TELEPORT_HOME": str(ssh_port), "SSH_AUTH_SOCK": ""})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"run-{i}"


def test_open_session_holds_its_ticket_without_a_waiting_thread(env: Env, home: Path, tmp_path: Path) -> None:
    config = profile_ssh_config(home, tmp_path / "ssh_config")
    server = env.proxy.ssh
    assert server is not None
    wait_for(lambda: server.gate.total == 0, "no SSH connection open at the proxy")
    client = subprocess.Popen(["ssh", "-F", str(config), "-J", f"threads@127.0.0.1:{env.ssh_port}",
                               f"{LOGIN}@sshd-node.{CLUSTER}", "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"ping\n"  # spliced both ways through the proxy
        assert server.gate.total == 1 and server.gate.users == 1  # counted in max_connections and max_users
        assert server.connections == 1
        assert conn_threads() == []  # the transport's thread is the connection's only one
    finally:
        client.stdin.close()
        client.wait(60)
    assert client.returncode == 0
    wait_for(lambda: server.gate.total == 0 and server.connections == 0, "the ticket given back at the end")


def test_clients_that_hang_up_or_send_garbage_give_their_place_back(env: Env) -> None:
    server = env.proxy.ssh
    assert server is not None
    wait_for(lambda: server.gate.total == 0, "no SSH connection open at the proxy")
    socks = [socket.create_connection(("127.0.0.1", env.ssh_port)) for _ in range(3)]
    wait_for(lambda: server.gate.total == 3 and server.gate.unauthenticated == 3, "three unauthenticated")
    socks[0].close()  # before the version line
    socks[1].sendall(b"SSH-2.0-garbage\r\n" + os.urandom(4096))  # a broken key exchange
    socks[2].sendall(b"this is not ssh\r\n" * 64)
    wait_for(lambda: server.gate.total == 0 and server.gate.unauthenticated == 0 and server.connections == 0,
             "every place given back")
    for sock in socks:
        sock.close()
    assert conn_threads() == []
    # and the listener still serves
    with socket.create_connection(("127.0.0.1", env.ssh_port)) as sock:
        assert sock.recv(64).startswith(b"SSH-2.0-")
