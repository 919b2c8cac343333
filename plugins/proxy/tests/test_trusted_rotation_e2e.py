"""CA rotation across a trust, end to end (issue 19): the root's user CA and the leaf's host CA rotated
through every phase (manual mode, as ``tctl auth rotate --manual --phase=...``) while a root user keeps
reaching the leaf's node through the leaf's tunnel. The two proxies exchange their clusters' CAs over the
tunnel; each hands the other side's to its auth (``POST /v1/remote_cas/rotate/external``). The root (auth
and proxy) runs as ``teleport start``; the leaf (auth, proxy, node) in this process. A compromised leaf
proxy answering with another cluster's CAs is refused at the root and audited there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import ssh as sshkeys
from test_trusted_clusters_e2e import LEAF, LOGIN, ROOT, Cluster, Env, joined

from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PHASES = ("init", "update_clients", "update_servers", "standby")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with joined(tmp_path_factory) as e:
        wait_for(e.leaf_online, "the leaf online at the root", timeout=120)
        yield e


def ssh(env: Env, home: Path, text: str) -> Any:
    return env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "echo", text, home=home)


def reaches_the_leaf(env: Env, home: Path, text: str = "through the trust") -> bool:
    done = ssh(env, home, text)
    return bool(done.returncode == 0 and done.stdout == f"{text}\n")


def keys(ca: dict[str, Any]) -> set[str]:
    return {" ".join(line.split()[:2]) for line in ca["ssh_public_keys"]}


def copy_at(cluster: Cluster, kind: str, of: str) -> dict[str, Any]:
    """``cluster``'s stored copy of cluster ``of``'s ``kind`` CA."""
    return dict(cluster.call("call", "GET", f"/v1/remote_cas/{kind}/{of}"))


def test_rotating_the_roots_user_ca_keeps_root_users_in_the_leaf(env: Env, tmp_path: Path) -> None:
    old = tmp_path / "old"
    env.login("alice", old)
    assert reaches_the_leaf(env, old)
    for phase in PHASES:
        env.root.call("rotate_cert_authority", "user", mode="manual", phase=phase)
        want = keys(env.root.call("get_cert_authority", "user"))
        wait_for(lambda want=want: keys(copy_at(env.leaf, "user", ROOT)) == want,  # type: ignore[misc]
                 f"the leaf to take the root's user CA ({phase})", timeout=60)
        if phase == "init":
            assert len(want) == 2
        if phase != "standby":  # the certificate from before the rotation works until standby drops its key
            assert reaches_the_leaf(env, old, f"old certificate, {phase}")
        if phase == "update_clients":  # a new login now gets a certificate from the new key: the leaf takes it
            fresh = tmp_path / "fresh"
            env.login("alice", fresh)
            wait_for(lambda fresh=fresh: reaches_the_leaf(env, fresh, "new key"),  # type: ignore[misc]
                     "the new key accepted in the leaf")
    assert len(want) == 1
    done = ssh(env, old, "old certificate after standby")
    assert done.returncode != 0
    again = tmp_path / "again"  # users log in again after a rotation
    env.login("alice", again)
    assert reaches_the_leaf(env, again, "logged in again")
    env.login("alice", env.home)
    # the leaf kept its own decisions: enabled, and its role_map
    copy = copy_at(env.leaf, "user", ROOT)
    assert copy["enabled"] is True and copy["role_map"] == [{"remote": "dev", "local": ["access"]}]
    updates = [e for e in env.leaf.events("trusted_cluster.ca_update") if e["code"] == "T7003I"]
    assert {(e["name"], e["role"], e["ca_type"]) for e in updates} == {(ROOT, "leaf", "user")}
    assert len(updates) >= 2  # the new key added (init), the old one dropped (standby)


def test_rotating_the_leafs_host_ca_keeps_its_tunnel_at_the_root(env: Env) -> None:
    leaf_proxy: Any = env.leaf_handle.process.services["proxy_service"]
    before = len([e for e in env.root.events("reverse_tunnel.connect") if e.get("leaf_cluster") == LEAF])
    for phase in PHASES:
        env.leaf.call("rotate_cert_authority", "host", mode="manual", phase=phase)
        want = keys(env.leaf.call("get_cert_authority", "host"))
        wait_for(lambda want=want: keys(copy_at(env.root, "host", LEAF)) == want,  # type: ignore[misc]
                 f"the root to take the leaf's host CA ({phase})", timeout=60)
        wait_for(env.leaf_online, f"the leaf online at the root ({phase})", timeout=90)
    assert len(want) == 1
    # the leaf proxy's certificate now comes from the new key, and the root took a tunnel with it: the
    # root closed the leaf's tunnel when the old key was dropped and the leaf dialed again
    cert = sshkeys.load_ssh_public_identity(leaf_proxy.identity.ssh_cert.encode())
    assert isinstance(cert, sshkeys.SSHCertificate)
    signer = cert.signature_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    assert keys({"ssh_public_keys": [signer]}) == want
    wait_for(lambda: len([e for e in env.root.events("reverse_tunnel.connect")
                          if e.get("leaf_cluster") == LEAF]) > before, "the leaf's tunnel dialed again")
    wait_for(env.leaf_online, "the leaf online with its new certificate", timeout=90)
    # logging in again brings the leaf's new host CA (the leaf node's new host certificate is checked)
    env.login("alice", env.home)
    assert reaches_the_leaf(env, env.home, "after the host CA rotation of the leaf")
    updates = [e for e in env.root.events("trusted_cluster.ca_update") if e["code"] == "T7003I"]
    assert {(e["name"], e["role"], e["ca_type"]) for e in updates} == {(LEAF, "root", "host")}


def test_a_leaf_answering_with_another_clusters_cas_is_refused_at_the_root(env: Env,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A compromised leaf proxy answers the CA exchange with the root's own CAs, then another cluster's:
    the root proxy hands them to its auth as the leaf's (the tunnel's cluster), which refuses and audits."""
    clusters: Any = env.leaf_handle.process.services["proxy_service"].clusters
    root_cas = [{"type": kind, "cluster": ROOT, **{k: env.root.call("get_cert_authority", kind)[k]
                                                     for k in ("ssh_public_keys", "tls_certs")}}
                for kind in ("host", "user")]
    stolen = [{**ca, "cluster": LEAF} for ca in root_cas]  # the root's keys, claimed as the leaf's
    root_host = keys(env.root.call("get_cert_authority", "host"))
    leaf_copy = keys(copy_at(env.root, "host", LEAF))
    for answer, reason in ((root_cas, 'cas[0].cluster: expected "leaf.example.com"'),
                           (stolen, "not the CA certificate of cluster")):
        async def forged(answer: list[dict[str, Any]] = answer) -> list[dict[str, Any]]:
            return answer

        monkeypatch.setattr(clusters, "own_cas", forged)
        wait_for(lambda reason=reason: [  # type: ignore[misc]
            e for e in env.root.events("trusted_cluster.ca_update")
            if e["code"] == "T7003W" and e["name"] == LEAF and reason in e.get("error", "")],
            f"the root's audit of the refused CAs ({reason})", timeout=60)
    assert keys(env.root.call("get_cert_authority", "host")) == root_host
    assert keys(copy_at(env.root, "host", LEAF)) == leaf_copy
