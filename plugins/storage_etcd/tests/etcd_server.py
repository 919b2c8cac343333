"""Start real etcd servers on loopback for the tests (``etcd`` from Debian's ``etcd-server``)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from teleport_core.testing.prerequisites import missing
from teleport_core.testing.processes import free_port

START_TIMEOUT = 30.0


def etcd_binary() -> str:
    """The etcd executable; skips the test (fails under CI) when it is missing."""
    found = (
        os.environ.get("ETCD_BIN")
        or shutil.which("etcd")
        or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
    )
    if not found:
        missing("etcd is not installed (apt-get install etcd-server)")
    return found


class EtcdMember:
    """One etcd process; ``url`` is its client URL. ``start``/``stop``/``kill`` keep the data dir."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"

    def command(self) -> list[str]:
        args = [
            etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", "teleport-test",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]  # fmt: skip
        if self.tls:
            args += [
                "--cert-file", str(self.tls["cert"]),
                "--key-file", str(self.tls["key"]),
                "--trusted-ca-file", str(self.tls["ca"]),
                "--client-cert-auth",
            ]  # fmt: skip
        return args

    def start(self, wait: bool = True) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        verify: ssl.SSLContext | bool = True
        if self.tls:
            verify = ssl.create_default_context(cafile=str(self.tls["ca"]))
            verify.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                with httpx.Client(verify=verify, timeout=2) as client:
                    response = client.get(self.url + "/health")
                if response.status_code == 200 and response.json().get("health") == "true":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd {self.name} not healthy in {START_TIMEOUT} s: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def enable_root_auth(member: EtcdMember, password: str) -> None:
    """Turn on etcd's user authentication with one ``root`` user (every permission)."""
    for path, body in (
        ("auth/role/add", {"name": "root"}),
        ("auth/user/add", {"name": "root", "password": password}),
        ("auth/user/grant", {"user": "root", "role": "root"}),
        ("auth/enable", {}),
    ):
        response = httpx.post(f"{member.url}/v3/{path}", json=body, timeout=10)
        assert response.status_code == 200, response.text


def revoke_lease_of(member: EtcdMember, full_key: bytes) -> None:
    """Revoke the lease ``full_key`` is attached to, as another etcd client would (etcd deletes
    every key on it)."""
    key = base64.b64encode(full_key).decode()
    kv = httpx.post(f"{member.url}/v3/kv/range", json={"key": key}, timeout=10).json()["kvs"][0]
    revoked = httpx.post(f"{member.url}/v3/lease/revoke", json={"ID": kv["lease"]}, timeout=10)
    assert revoked.status_code == 200, revoked.text


def start_cluster(base: Path, size: int) -> list[EtcdMember]:
    """``size`` members forming one cluster, all healthy."""
    members = [EtcdMember(f"m{i}", base / f"m{i}") for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.initial_cluster = initial
        member.start(wait=False)
    try:
        for member in members:
            member.wait_ready()
    except BaseException:
        for member in members:
            member.kill()
        raise
    return members


def leader_first(members: list[EtcdMember]) -> list[EtcdMember]:
    """``members`` with the current raft leader first (the one whose loss costs an election)."""
    leader = httpx.post(members[0].url + "/v3/maintenance/status", json={}, timeout=5).json()["leader"]
    ordered = []
    for member in members:
        answer = httpx.post(member.url + "/v3/maintenance/status", json={}, timeout=5).json()
        ordered.append((answer["header"]["member_id"] != leader, member))
    return [m for _, m in sorted(ordered, key=lambda pair: pair[0])]


@pytest.fixture(scope="session", name="etcd")
def etcd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """One etcd server for the session (each test uses its own key prefix), removed afterwards.

    Test modules import it (``from etcd_server import etcd_fixture``); there is no conftest.py
    so that this folder's helpers never shadow another plugin's ``conftest`` module.
    """
    base: Path = tmp_path_factory.mktemp("etcd")
    member = EtcdMember("t", base / "data")
    member.start()
    try:
        yield member
    finally:
        member.kill()
