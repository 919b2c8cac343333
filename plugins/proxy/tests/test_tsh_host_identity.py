"""Attacker: the machine tsh reaches is not the node the user asked for (issue 11, classes 1 and 6,
tsh's side).

A node "spoof-victim" is registered at 127.0.0.1:P, but the sshd listening there presents the
host certificate of another host of the cluster ("spoof-attacker", a valid certificate from the
real host CA, whose principals include 127.0.0.1 and localhost as every host's do). Before,
tsh checked no principal for an IP address or a label selector and would log in there. Now it
requires the victim's host UUID among the certificate's principals for every kind of target
(IP, UUID, nodename, label), on TLS routing and on the proxy's SSH port, while the real nodes
stay reachable the same ways. tsh also requires the proxy to be a ``Proxy``: a Node certificate
on the web port (X.509) or the SSH port (SSH host certificate) is refused before anything is sent.

These refusals happen in tsh, on the user's machine, which has no audit log: they are local
errors (tsh exits 1 with the reason).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, Sshd, free_port

from teleport_core.testing.impostor import RecordingTLSServer, forge_tls_host_cert

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # slow: scheduled among the first files

PASSWORD = "correct horse battery staple"


class Spoof:
    def __init__(self, victim: str, attacker: str, sshd: Sshd) -> None:
        self.victim = victim  # the victim's host UUID
        self.attacker = attacker
        self.sshd = sshd


@pytest.fixture(scope="module")
def dana(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env.signup("dana", ["dev"], [LOGIN], PASSWORD)
    home = tmp_path_factory.mktemp("dana-tsh")
    result = env.login(home, "dana")
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="module")
def spoof(env: Env) -> Iterator[Spoof]:
    port = free_port()
    victim, _ = env.join_node("spoof-victim", f"127.0.0.1:{port}", {"env": "test", "spoof": "victim"})
    attacker, key = env.join_node("spoof-attacker", f"127.0.0.1:{free_port()}", {"env": "elsewhere"})
    user_ca = env.call("get_cert_authority", "user")["ssh_public_keys"]
    sshd = Sshd(env.root / "spoof-sshd", port, attacker, key, user_ca)  # the attacker's certificate at P
    try:
        yield Spoof(victim.host_uuid, attacker.host_uuid, sshd)
    finally:
        sshd.stop()
        for host in (victim.host_uuid, attacker.host_uuid):  # other modules share the cluster
            env.call("delete_node", host)


def edited(home: Path, dest: Path, **changes: Any) -> Path:
    """A copy of the tsh profile in ``home`` with ``changes`` to its profile.json."""
    shutil.copytree(home, dest)
    meta_path = dest / "profiles" / "127.0.0.1" / "profile.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **changes}))
    return dest


def refused_for(result: Any, victim: str) -> None:
    assert result.returncode != 0
    assert "pwned" not in result.stdout
    assert f"not valid for {victim}" in result.stderr, result.stderr


def test_every_kind_of_target_must_be_named_by_the_node_certificate(env: Env, dana: Path, spoof: Spoof,
                                                                    tmp_path: Path) -> None:
    ssh_port = edited(dana, tmp_path / "ssh-port", tls_routing=False)  # the proxy:host:port subsystem
    port = spoof.sshd.port
    for home in (dana, ssh_port):
        by_ip = env.tsh(home, "ssh", f"{LOGIN}@127.0.0.1:{port}", "echo", "pwned")
        refused_for(by_ip, spoof.victim)
        assert f"refusing the server reached for 127.0.0.1 (host {spoof.victim})" in by_ip.stderr
        refused_for(env.tsh(home, "ssh", "-p", str(port), f"{LOGIN}@127.0.0.1", "echo", "pwned"), spoof.victim)
        refused_for(env.tsh(home, "ssh", f"{LOGIN}@{spoof.victim}", "echo", "pwned"), spoof.victim)
        refused_for(env.tsh(home, "ssh", f"{LOGIN}@spoof-victim", "echo", "pwned"), spoof.victim)
        by_label = env.tsh(home, "ssh", f"{LOGIN}@spoof=victim", "echo", "pwned")
        refused_for(by_label, spoof.victim)
        assert by_label.stderr.startswith("[spoof-victim] ERROR: refusing the server reached for"), by_label.stderr
        # scp and port forwarding take the same path
        refused_for(env.tsh(home, "scp", f"{LOGIN}@127.0.0.1:/etc/hostname", str(tmp_path / "x"), "-P", str(port)),
                    spoof.victim)

        # the real nodes, the same ways
        sshd = env.sshd  # type: ignore[attr-defined]
        for target in (f"127.0.0.1:{sshd.port}", env.sshd_uuid, "sshd-node", f"sshd-node.{CLUSTER}"):  # type: ignore[attr-defined]
            ok = env.tsh(home, "ssh", f"{LOGIN}@{target}", "echo", "hello")
            assert (ok.returncode, ok.stdout) == (0, "hello\n"), (target, ok.stderr)
        both = env.tsh(home, "ssh", f"{LOGIN}@group=real", "echo", "hi")
        assert both.returncode == 0, both.stderr
        assert sorted(both.stdout.splitlines()) == ["[sshd-node] hi", "[sshd-two] hi"]


def test_a_node_certificate_on_the_proxy_web_port_gets_nothing(env: Env, dana: Path, tmp_path: Path) -> None:
    """A host of the cluster posing as the proxy's web port: its X.509 certificate chains to the
    host CA and names 127.0.0.1, but its system role is Node. tsh sends it neither the dial line
    (TLS routing) nor an API request (tsh ls), nor, logging in again with --insecure where it
    knows the host CA from an earlier profile, the password."""
    ca = env.auth_handle.process.services["auth_service"].host_ca.active
    cert, key = forge_tls_host_cert(ca.tls_cert, ca.tls_private_key, role="Node", cluster=CLUSTER,
                                    dns_names=["teleport.cluster.local"])
    with RecordingTLSServer(cert, key, alpn=["teleport-proxy-ssh", "http/1.1"]) as fake:
        home = edited(dana, tmp_path / "fake-web", web_addr=fake.addr)
        dialed = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "echo", "pwned")
        listed = env.tsh(home, "ls")
        again = env.tsh(home, "login", f"--proxy={fake.addr}", "--insecure", "--user=dana", stdin=f"{PASSWORD}\n")
    for result in (dialed, listed, again):
        assert result.returncode == 1
        assert f"the server at {fake.addr} presented a Node certificate, not the proxy's" in result.stderr, \
            result.stderr
    assert len(fake.connections) >= 3
    assert fake.received == [], "tsh sent something to a node posing as the proxy"


def test_a_node_host_certificate_on_the_proxy_ssh_port_is_refused(env: Env, dana: Path, spoof: Spoof,
                                                                  tmp_path: Path) -> None:
    home = edited(dana, tmp_path / "fake-ssh", tls_routing=False, ssh_addr=f"127.0.0.1:{spoof.sshd.port}")
    result = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "echo", "pwned")
    assert result.returncode == 1
    assert "pwned" not in result.stdout
    assert (f"refusing the proxy at 127.0.0.1:{spoof.sshd.port}: the server presented a host certificate for "
            "role 'Node', not 'Proxy'") in result.stderr, result.stderr
