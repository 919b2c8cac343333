"""OpenSSH clients with OpenSSH's default algorithms and with a hardening guide's lists, against
our proxy (``ssh -J``) and our node (behind the proxy, and directly): each connects, and
``ssh -vv``'s ``kex:`` lines prove what was negotiated, one algorithm family at a time. Where
paramiko lacks what a client insists on, the failure is asserted with OpenSSH's message, so
docs/security.md ("Hardened OpenSSH clients") stays true. The lists: teleport_core/net/sshalgos.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, one_process_config, profile_ssh_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "hard-node"
NODE = f"{LOGIN}@{NODENAME}.{CLUSTER}"

# ssh-audit's hardening guide and Mozilla's "modern" OpenSSH client settings (OpenSSH 9.x)
HARDENED = (
    "KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,"
    "diffie-hellman-group16-sha512,diffie-hellman-group18-sha512",
    "Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,"
    "aes128-ctr",
    "MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com",
    "HostKeyAlgorithms sk-ssh-ed25519-cert-v01@openssh.com,ssh-ed25519-cert-v01@openssh.com,"
    "rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com,sk-ssh-ed25519@openssh.com,ssh-ed25519,"
    "rsa-sha2-512,rsa-sha2-256",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not shutil.which("ssh"):
        missing("OpenSSH ssh is not installed (apt-get install openssh-client)")
    root = tmp_path_factory.mktemp("hardened")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), what="the node's heartbeat")
        e.node_port = cluster.process.services["ssh_service"].ssh_addr[1]  # type: ignore[attr-defined]
        yield e


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "alice")


def negotiated(stderr: str) -> list[dict[str, str]]:
    """One dict per SSH connection in ``ssh -vv`` output, in order (with ``-J``: the proxy, then
    the node): kex, hostkey, cipher and mac (server to client)."""
    kex = re.findall(r"debug1: kex: algorithm: (\S+)", stderr)
    hostkey = re.findall(r"debug1: kex: host key algorithm: (\S+)", stderr)
    s2c = re.findall(r"debug1: kex: server->client cipher: (\S+) MAC: (\S+)", stderr)
    return [{"kex": k, "hostkey": h, "cipher": c, "mac": m} for k, h, (c, m) in zip(kex, hostkey, s2c, strict=False)]


def ssh(env: Env, alice: Path, tmp_path: Path, *, everywhere: tuple[str, ...] = (), proxy: tuple[str, ...] = (),
        node: tuple[str, ...] = (), direct: bool = False) -> subprocess.CompletedProcess[str]:
    """``ssh -vv`` running ``echo`` on the node, through the proxy (``-J``) or ``direct``ly, with
    ssh_config lines for every hop, the proxy's hop only and the node's hop only."""
    config = profile_ssh_config(alice, tmp_path / "base_config")
    blocks = [f"Host 127.0.0.1\n{''.join(f'    {line}' + chr(10) for line in proxy)}" if proxy else "",
              f"Host *.{CLUSTER} node-direct\n{''.join(f'    {line}' + chr(10) for line in node)}" if node else "",
              f"Host *\n{''.join(f'    {line}' + chr(10) for line in everywhere)}" if everywhere else ""]
    path = tmp_path / "ssh_config"
    path.write_text("".join(blocks) + config.read_text())  # first match wins: the specific lines first
    if direct:
        argv = ["ssh", "-vv", "-F", str(path), "-p", str(env.node_port),  # type: ignore[attr-defined]
                "-o", f"HostKeyAlias={NODENAME}.{CLUSTER}", f"{LOGIN}@127.0.0.1", "echo hardened-ok"]
    else:
        argv = ["ssh", "-vv", "-F", str(path), "-J", f"alice@127.0.0.1:{env.ssh_port}", NODE, "echo hardened-ok"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SSH_AUTH_SOCK": ""})


def connected(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "hardened-ok\n"
    return negotiated(result.stderr)


def test_openssh_defaults(env: Env, alice: Path, tmp_path: Path) -> None:
    """OpenSSH's own defaults: the RFC 8731 name is what it picks (it lists it before the
    @libssh.org alias); the proxy hop gets AES-CTR with an encrypt-then-MAC, the node AES-GCM."""
    proxy_hop, node_hop = connected(ssh(env, alice, tmp_path))
    assert proxy_hop["kex"] == node_hop["kex"] == "curve25519-sha256"
    assert proxy_hop["hostkey"] == node_hop["hostkey"] == "ssh-ed25519-cert-v01@openssh.com"
    assert (proxy_hop["cipher"], proxy_hop["mac"]) == ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
    assert (node_hop["cipher"], node_hop["mac"]) == ("aes128-gcm@openssh.com", "<implicit>")
    [direct] = connected(ssh(env, alice, tmp_path, direct=True))
    assert direct["kex"] == "curve25519-sha256" and direct["cipher"] == "aes128-gcm@openssh.com"


def test_hardening_guide_lists(env: Env, alice: Path, tmp_path: Path) -> None:
    proxy_hop, node_hop = connected(ssh(env, alice, tmp_path, everywhere=HARDENED))
    for hop in (proxy_hop, node_hop):
        assert hop == {"kex": "curve25519-sha256", "hostkey": "ssh-ed25519-cert-v01@openssh.com",
                       "cipher": "aes256-gcm@openssh.com", "mac": "<implicit>"}
    [direct] = connected(ssh(env, alice, tmp_path, everywhere=HARDENED, direct=True))
    assert direct == proxy_hop


@pytest.mark.parametrize("kex", ["curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
                                 "ecdh-sha2-nistp521", "diffie-hellman-group16-sha512",
                                 "diffie-hellman-group14-sha256"])
def test_each_key_exchange(env: Env, alice: Path, tmp_path: Path, kex: str) -> None:
    hops = connected(ssh(env, alice, tmp_path, everywhere=(f"KexAlgorithms {kex}",)))
    assert [hop["kex"] for hop in hops] == [kex, kex]


def test_each_cipher_and_mac(env: Env, alice: Path, tmp_path: Path) -> None:
    """Ciphers and MACs one at a time on the proxy's hop (it offers AES-CTR, so MACs are
    negotiated there), AES-GCM on the node's."""
    for cipher in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com"):
        hops = connected(ssh(env, alice, tmp_path, everywhere=(f"Ciphers {cipher}",)))
        assert [hop["cipher"] for hop in hops] == [cipher, cipher]
    for cipher in ("aes128-ctr", "aes192-ctr", "aes256-ctr"):
        for mac in ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256",
                    "hmac-sha2-512"):
            proxy_hop, node_hop = connected(ssh(env, alice, tmp_path, proxy=(f"Ciphers {cipher}", f"MACs {mac}")))
            assert (proxy_hop["cipher"], proxy_hop["mac"]) == (cipher, mac)
            assert node_hop["cipher"] == "aes128-gcm@openssh.com"


def test_host_key_algorithm_certificate_only(env: Env, alice: Path, tmp_path: Path) -> None:
    hops = connected(ssh(env, alice, tmp_path, everywhere=("HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com",)))
    assert [hop["hostkey"] for hop in hops] == ["ssh-ed25519-cert-v01@openssh.com"] * 2


@pytest.mark.parametrize(("lines", "message"), [
    (("KexAlgorithms sntrup761x25519-sha512@openssh.com",), "no matching key exchange method found"),
    (("KexAlgorithms diffie-hellman-group18-sha512",), "no matching key exchange method found"),
    (("Ciphers chacha20-poly1305@openssh.com",), "no matching cipher found"),
    (("Ciphers aes256-ctr", "MACs umac-128-etm@openssh.com"), "no matching MAC found"),
    (("Ciphers aes256-cbc",), "no matching cipher found"),
    (("MACs hmac-sha1",), "no matching MAC found"),
    # paramiko wants a common MAC even for AES-GCM, which uses none: the server closes the connection
    # (a reset when it closes before reading all the client sent: which one is a matter of timing)
    (("Ciphers aes256-gcm@openssh.com", "MACs umac-128-etm@openssh.com"), "Connection (closed|reset) by 127.0.0.1"),
])
def test_what_paramiko_lacks_fails_clearly(env: Env, alice: Path, tmp_path: Path, lines: tuple[str, ...],
                                           message: str) -> None:
    """What docs/security.md says a client must allow: without it, OpenSSH's own clear message."""
    result = ssh(env, alice, tmp_path, proxy=lines)
    assert result.returncode == 255
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_the_node_offers_only_aes_gcm(env: Env, alice: Path, tmp_path: Path) -> None:
    """The node's data path is AES-GCM only (the client's order would pick AES-CTR, slower in
    paramiko): a client that allows only AES-CTR reaches the proxy but not the node."""
    result = ssh(env, alice, tmp_path, node=("Ciphers aes256-ctr,aes192-ctr,aes128-ctr",))
    assert result.returncode == 255
    assert "no matching cipher found" in result.stderr
    assert "server->client cipher: aes" in result.stderr  # the proxy's hop was established
