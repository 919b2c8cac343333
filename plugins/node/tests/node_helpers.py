"""Helpers of the node tests: a real auth server (in process), real node processes
(``teleport start``) and the real OpenSSH client, all on 127.0.0.1 with free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import ClusterHandle, start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.processes import free_port

CLUSTER = "node.test"
TOKEN = "static-node-token-0123456789abcdef"
TELEPORT = str(Path(sys.executable).with_name("teleport"))


def wait_port(port: int, timeout: float = 180.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


class Auth:
    """The auth server of the tests and an admin client to it."""

    def __init__(self, handle: ClusterHandle, data_dir: Path, port: int) -> None:
        self.handle = handle
        self.data_dir = data_dir
        self.addr = f"127.0.0.1:{port}"

    def run(self, fn: Any) -> Any:
        async def body() -> Any:
            async with AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")]) as admin:
                return await fn(admin)

        return asyncio.run(body())

    def pin(self) -> str:
        return str(self.run(lambda admin: admin.status())["ca_pin"])

    def known_hosts(self) -> str:
        return str(self.run(lambda admin: admin.get_cert_authority("host"))["known_hosts"])

    def events(self, **query: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = ""
        while True:
            page = self.run(lambda admin, cursor=cursor: admin.search_events(limit=5000, cursor=cursor, **query))
            out.extend(page["events"])
            cursor = page["next_cursor"]
            if not cursor:
                return out

    def user(self, tmp: Path, name: str, roles: list[str], logins: list[str], ttl: str = "1h") -> Path:
        """Create (or update) a user and write ``<tmp>/<name>`` + ``-cert.pub``; returns the key path."""

        async def body(admin: AuthClient) -> dict[str, Any]:
            try:
                await admin.create_user(name, roles, {"logins": logins})
            except Exception:
                await admin.update_user(name, roles=roles, traits={"logins": logins})
            key = keys.generate_private_key("ed25519")
            write_private(tmp / name, keys.private_key_openssh(key))
            return await admin.sign_user_cert(name, keys.public_key_openssh(key), ttl=ttl)

        certs = self.run(body)
        write_public(tmp / f"{name}-cert.pub", certs["ssh_cert"] + "\n")
        return tmp / name


def auth_config(data_dir: Path, port: int, recording: str = "node") -> dict[str, Any]:
    return {"teleport": {"data_dir": str(data_dir), "nodename": "auth1"},
            "auth_service": {"cluster_name": CLUSTER, "listen_addr": f"127.0.0.1:{port}",
                             "tokens": [f"node:{TOKEN}"], "session_recording": recording},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    data_dir = tmp_path_factory.mktemp("auth")
    port = free_port()
    with start_cluster(auth_config(data_dir, port), make_plugins(), timeout=60) as handle:
        yield Auth(handle, data_dir, port)


class Node:
    """A ``teleport start`` process running the node service."""

    def __init__(self, auth: Auth, data_dir: Path, *, labels: dict[str, str] | None = None,
                 nodename: str = "node1", commands: list[dict[str, Any]] | None = None,
                 connection_limits: dict[str, Any] | None = None, top: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``top``: more top-level config sections (``plugins:``); ``env``: more environment."""
        self.auth = auth
        self.env = {**os.environ, **(env or {})}
        self.data_dir = data_dir
        self.port = free_port()
        self.nodename = nodename
        self.config = data_dir / "teleport.yaml"
        data_dir.mkdir(parents=True, exist_ok=True)
        ssh: dict[str, Any] = {"listen_addr": f"127.0.0.1:{self.port}", "labels": labels or {"env": "test"}}
        if commands:
            ssh["commands"] = commands
        if connection_limits:
            ssh["connection_limits"] = connection_limits
        self.config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(data_dir / "data"), "nodename": nodename, "auth_server": auth.addr,
                         "auth_token": TOKEN, "ca_pin": auth.pin(), "log": {"output": str(data_dir / "node.log")}},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False}, "ssh_service": ssh,
            **(top or {})}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with open(self.data_dir / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([TELEPORT, "start", "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr, env=self.env)
        wait_port(self.port, proc=self.proc)
        return self

    def log(self) -> str:
        path = self.data_dir / "node.log"
        return (path.read_text() if path.exists() else "") + (self.data_dir / "stderr.log").read_text()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture(scope="module")
def node(auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = Node(auth, tmp_path_factory.mktemp("node"), labels={"env": "test", "team": "core"},
                   commands=[{"name": "kernel", "command": ["uname", "-s"], "period": "1h"}]).start()
    yield started
    started.stop()


def ssh_argv(tmp: Path, node_port: int, key: Path, login: str, *args: str, known_hosts: str = "",
             connect_timeout: int = 20, host_alias: str | None = f"node1.{CLUSTER}") -> list[str]:
    """The OpenSSH client with only a ``@cert-authority`` known_hosts line and our user cert."""
    hosts = tmp / "known_hosts"
    if known_hosts:
        hosts.write_text(known_hosts)
    return ["ssh", "-F", "/dev/null", "-p", str(node_port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            *(["-o", f"HostKeyAlias={host_alias}"] if host_alias else []),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-i", str(key), "-o", f"CertificateFile={key}-cert.pub", "-o", f"ConnectTimeout={connect_timeout}",
            f"{login}@127.0.0.1", *args]  # fmt: skip


def run(argv: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8"},
                          **kw)


OS_USER = "teleport-test"


@pytest.fixture(scope="session")
def os_user() -> str:
    """A non-root OS login for the node to drop to (created when missing; needs root)."""
    import pwd

    for _ in range(20):  # parallel test workers may create it at the same time: one wins, all see it
        try:
            pwd.getpwnam(OS_USER)
            return OS_USER
        except KeyError:
            if os.geteuid() != 0:
                missing("creating the test OS user needs root")
        # "*": no password, but not locked (sshd refuses locked accounts)
        made = subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-p", "*", OS_USER], capture_output=True, text=True,
                              check=False)
        if made.returncode not in (0, 9, 10):  # 9: made meanwhile by another worker, 10: /etc/passwd locked by it
            raise RuntimeError(f"useradd {OS_USER} failed: {made.stderr.strip()}")
        time.sleep(0.1 if made.returncode else 0)
    raise RuntimeError(f"useradd {OS_USER}: the user is still missing")


def craft_user_cert(tmp: Path, name: str, signer: Any, *, principals: list[str], roles: list[str],
                    valid_after: int, valid_before: int, cert_type: str = "user") -> Path:
    """A user certificate signed by ``signer`` (a CA private key), written as ``<tmp>/<name>[-cert.pub]``."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import ssh

    key = keys.generate_private_key("ed25519")
    write_private(tmp / name, keys.private_key_openssh(key))
    builder = (ssh.SSHCertificateBuilder()
               .public_key(key.public_key())  # type: ignore[arg-type]
               .serial(1)
               .type(ssh.SSHCertificateType.USER if cert_type == "user" else ssh.SSHCertificateType.HOST)
               .key_id(name.encode())
               .valid_principals([p.encode() for p in principals])
               .valid_after(valid_after)
               .valid_before(valid_before)
               .add_extension(b"permit-pty", b"")
               .add_extension(b"teleport-roles", json.dumps({"roles": roles}).encode()))
    cert = builder.sign(signer)
    write_public(tmp / f"{name}-cert.pub", cert.public_bytes() + b"\n")
    del serialization
    return tmp / name
