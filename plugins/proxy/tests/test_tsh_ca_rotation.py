"""End to end: after a host CA rotation, tsh with a profile written before it tells the user to
log in again (instead of "not a proxy of this cluster"), on TLS routing and on the proxy's SSH
port; ``tsh login`` (no flags: the profile's proxy and user) fixes it. One teleport process:
auth, proxy and our node; the rotation goes through every manual phase."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import LOGIN, Env, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD = "a long enough password 789"
NODENAME = "rotating-node"
OLD_CA = "ERROR: your certificates were issued by an old CA: run tsh login again"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with start_cluster(one_process_config(tmp_path, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(tmp_path, cluster, cluster)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        deadline = time.monotonic() + 60
        while not e.call("get_nodes") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield e


def rotate(env: Env, phase: str) -> dict[str, Any]:
    async def body() -> dict[str, Any]:
        async with env.admin() as admin:
            return await admin.rotate_cert_authority("host", phase=phase, mode="manual")

    return asyncio.run(body())


def host_cert_signer(port: int) -> str:
    """The base64 key of the CA that signed the SSH host certificate served on ``port``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh

    scan = subprocess.run(["ssh-keyscan", "-c", "-T", "30", "-p", str(port), "127.0.0.1"], capture_output=True,
                          text=True, timeout=90, check=False)
    for line in scan.stdout.splitlines():
        fields = line.split()  # [host] type key: the host is left out by some versions
        kinds = [i for i, f in enumerate(fields[:-1]) if f.endswith("-cert-v01@openssh.com")]
        if kinds:
            cert = ssh.load_ssh_public_identity(f"{fields[kinds[0]]} {fields[kinds[0] + 1]}".encode())
            assert isinstance(cert, ssh.SSHCertificate)
            return bytes(cert.signature_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)).split()[1].decode()
    return ""


def test_a_profile_from_before_a_host_ca_rotation_says_to_log_in_again(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    assert env.login(home, "alice").returncode == 0
    works = env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo", "before")
    assert works.returncode == 0 and works.stdout == "before\n", works.stderr
    ssh_port = tmp_path / "tsh-ssh-port"  # the same profile, through the proxy's SSH port
    shutil.copytree(home, ssh_port)
    meta = ssh_port / "profiles" / "127.0.0.1" / "profile.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tls_routing": False}))

    old_ca = env.call("get_cert_authority", "host")["ssh_public_keys"]
    for phase in ("init", "update_clients", "update_servers"):
        rotate(env, phase)
    [new_ca] = [k for k in env.call("get_cert_authority", "host")["ssh_public_keys"] if k not in old_ca]
    [node] = env.call("get_nodes")
    for port in (int(node["addr"].rpartition(":")[2]), env.ssh_port):  # the node and the proxy renew
        wait_for(lambda port=port: host_cert_signer(port) == new_ca.split()[1], f"a certificate from the new CA "
                 f"on port {port}")
    rotate(env, "standby")

    def refused(folder: Path) -> bool:
        result = env.tsh(folder, "ssh", f"{LOGIN}@{NODENAME}", "echo", "after")
        return result.returncode == 1 and result.stderr.startswith(OLD_CA)

    wait_for(lambda: refused(home), "tsh (TLS routing) saying the certificates are from an old CA")
    wait_for(lambda: refused(ssh_port), "tsh (proxy SSH port) saying the certificates are from an old CA")
    message = env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "true").stderr
    assert "not a proxy of this cluster" not in message and f"the proxy at {env.web}" in message

    again = env.tsh(home, "login", stdin=f"{PASSWORD}\n")  # the profile's proxy, user and --insecure
    assert again.returncode == 0, again.stderr
    fixed = env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo", "after")
    assert fixed.returncode == 0 and fixed.stdout == "after\n", fixed.stderr
