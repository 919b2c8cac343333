"""Trusted clusters at a leaf's node (issue 19): a root user's certificate, signed by the root's user CA,
presented straight to the leaf's node with OpenSSH ``ssh`` (no tunnel involved). Two real clusters on
loopback: the root (auth and proxy in one process), the leaf (auth and our node in one process), joined
by the handshake. A mapped role reaches the node; a role the role_map does not map is refused and audited
in the leaf (with the root cluster named); a disabled trust accepts nothing; enabling it again restores
access; a lock in the leaf applies to a root user."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import os_user as os_user
from node_helpers import run

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e  # real processes end to end

ROOT = "root.example.com"
LEAF = "leaf.example.com"


class Cluster:
    def __init__(self, handle: Any, data: Path) -> None:
        self.handle = handle
        self.data = data
        self.addr: str = handle.process.services["auth_service"].address
        proxy = handle.process.services.get("proxy_service")
        self.web = f"127.0.0.1:{proxy.web_address.port}" if proxy is not None else ""
        node = handle.process.services.get("ssh_service")
        self.node_port = int(node.ssh_addr[1]) if node is not None else 0

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            async with AuthClient(self.addr, [load_identity_dir(self.data / "keys" / "auth")]) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.call("call", method, path, body)

    def events(self, kind: str) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        page = self.call("search_events", type=kind, since=(now - dt.timedelta(minutes=30)).isoformat(),
                         until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000)
        return list(page["events"])


@contextlib.contextmanager
def cluster(root: Path, name: str, *, proxy: bool, node: bool) -> Iterator[Cluster]:
    config: dict[str, Any] = {
        "teleport": {"data_dir": str(root / "data"), "nodename": f"host-{name.split('.')[0]}"},
        "auth_service": {"cluster_name": name, "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": proxy, **({"web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                                                "tunnel_listen_addr": "127.0.0.1:0"} if proxy else {})},
        "ssh_service": {"enabled": node, **({"listen_addr": "127.0.0.1:0", "labels": {"env": "leaf"}} if node else {})},
    }
    with start_cluster(config, make_plugins(), timeout=120) as handle:
        yield Cluster(handle, root / "data")


def trust(root: Cluster, token: str, *, enabled: bool = True) -> dict[str, Any]:
    return {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
            "spec": {"enabled": enabled, "token": token, "web_proxy_addr": root.web, "tunnel_addr": root.web,
                     "role_map": [{"remote": "access", "local": ["access"]}],
                     "ca_pin": root.call("status")["ca_pin"]}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, os_user: str) -> Iterator[tuple[Cluster, Cluster]]:
    with cluster(tmp_path_factory.mktemp("root"), ROOT, proxy=True, node=False) as root, \
            cluster(tmp_path_factory.mktemp("leaf"), LEAF, proxy=False, node=True) as leaf:
        root.call("create_user", "alice", ["access"], {"logins": [os_user]})
        # a root role with logins that the leaf's role_map does not map
        root.call("upsert_role", {"kind": "role", "version": "v7", "metadata": {"name": "dev"},
                                  "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}}}})
        root.call("create_user", "bob", ["dev"], {"logins": [os_user]})
        token = root.api("POST", "/v1/tokens", {"roles": ["trusted_cluster"]})["token"]
        leaf.api("PUT", f"/v1/trusted_clusters/{ROOT}", trust(root, token))
        yield root, leaf


def root_cert(root: Cluster, folder: Path, user: str) -> Path:
    """A key and the root auth's SSH certificate for ``user`` (what tsh login at the root gets)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key("ed25519")
    path = folder / f"{user}-key"
    write_private(path, keys.private_key_openssh(key))
    signed = root.call("sign_user_cert", user, keys.public_key_openssh(key), "1h")
    write_public(Path(f"{path}-cert.pub"), signed["ssh_cert"])
    return path


def ssh(leaf: Cluster, key: Path, login: str, *args: str) -> Any:
    return run(["ssh", "-F", "/dev/null", "-p", str(leaf.node_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-i", str(key), "-o", f"CertificateFile={key}-cert.pub", "-o", "ConnectTimeout=20",
                f"{login}@127.0.0.1", *args])


def test_a_mapped_root_user_reaches_the_leaf_node(pair: tuple[Cluster, Cluster], tmp_path: Path,
                                                  os_user: str) -> None:
    root, leaf = pair
    key = root_cert(root, tmp_path, "alice")
    done = wait_for(lambda: (r := ssh(leaf, key, os_user, "echo", "hello-from-root")).returncode == 0 and r,
                    "the root user's ssh to the leaf node", timeout=60)
    assert done.stdout.strip() == "hello-from-root"
    # the node sends its events to the leaf's auth in the background: wait for them
    started = wait_for(lambda: [e for e in leaf.events("session.start") if e.get("user") == "alice"],
                       "the session.start in the leaf's audit log", timeout=60)
    assert started[-1]["user_cluster"] == ROOT and started[-1]["cluster_name"] == LEAF
    assert started[-1]["user_roles"] == ["access"] and started[-1]["remote_roles"] == ["access"]


def test_an_unmapped_role_is_refused_and_audited_in_the_leaf(pair: tuple[Cluster, Cluster], tmp_path: Path,
                                                             os_user: str) -> None:
    root, leaf = pair
    key = root_cert(root, tmp_path, "bob")
    refused = ssh(leaf, key, os_user, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    failures = wait_for(lambda: [e for e in leaf.events("auth") if e.get("user") == "bob"
                                 and e.get("user_cluster") == ROOT], "the refusal in the leaf's audit log", timeout=60)
    assert "maps to a role of this cluster" in failures[-1]["error"]
    assert failures[-1]["code"] == "T3007W"


def test_a_certificate_of_an_unknown_cluster_is_refused(pair: tuple[Cluster, Cluster], tmp_path: Path,
                                                        os_user: str) -> None:
    """A cluster the leaf never trusted: its user CA signs nothing the node accepts."""
    _, leaf = pair
    with cluster(tmp_path / "stranger", "stranger.example.com", proxy=False, node=False) as stranger:
        stranger.call("create_user", "alice", ["access"], {"logins": [os_user]})
        key = root_cert(stranger, tmp_path / "keys", "alice")
        refused = ssh(leaf, key, os_user, "true")
    assert refused.returncode == 255
    wait_for(lambda: [e for e in leaf.events("auth") if "unrecognized authority" in e.get("error", "")],
             "the refusal in the leaf's audit log", timeout=60)


def test_a_lock_in_the_leaf_applies_to_a_root_user(pair: tuple[Cluster, Cluster], tmp_path: Path,
                                                   os_user: str) -> None:
    root, leaf = pair
    key = root_cert(root, tmp_path, "alice")
    lock = leaf.api("PUT", "/v1/locks/lock-alice", {"kind": "lock", "version": "v2",
                                                   "metadata": {"name": "lock-alice"},
                                                   "spec": {"target": {"user": "alice"}, "message": "stop"}})
    assert lock["metadata"]["name"] == "lock-alice"
    try:
        wait_for(lambda: ssh(leaf, key, os_user, "true").returncode == 255, "the lock reaching the node", timeout=60)
        wait_for(lambda: [e for e in leaf.events("auth") if e.get("user") == "alice" and "stop" in e.get("error", "")],
                 "the lock's refusal in the leaf's audit log", timeout=60)
    finally:
        leaf.api("DELETE", "/v1/locks/lock-alice")


def test_leaf_auth_accepts_a_root_user_forwarded_by_a_proxy(pair: tuple[Cluster, Cluster]) -> None:
    """The leaf's proxy acting for a root user (``tsh ls --cluster=leaf``): the leaf's auth checks the
    forwarded TLS certificate against the root's user CA and maps the roles; an unmapped user is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from teleport_core.api.client import load_tls, register
    from teleport_core.errors import AccessDenied
    from teleport_core.pki.identity import LocalIdentity

    root, leaf = pair
    token = leaf.api("POST", "/v1/tokens", {"roles": ["proxy"]})["token"]
    key = keys.generate_private_key("ed25519")

    def root_tls(user: str) -> bytes:
        signed = root.call("sign_user_cert", user, keys.public_key_openssh(keys.generate_private_key("ed25519")), "1h")
        return x509.load_pem_x509_certificate(signed["tls_cert"].encode()).public_bytes(Encoding.DER)

    alice, bob = root_tls("alice"), root_tls("bob")

    async def as_leaf_proxy() -> tuple[list[Any], str]:
        joined = await register(leaf.addr, {"token": token, "role": "Proxy", "nodename": "leaf-proxy",
                                            "public_key": keys.public_key_openssh(key)}, [])
        a = joined.answer
        identity = LocalIdentity(keys.private_key_pem(key), a["tls_cert"].encode(),
                                 tuple(p.encode() for p in a["host_ca_pems"]), a["ssh_cert"])
        async with AuthClient(leaf.addr, [load_tls(identity.client_context())]) as client:
            nodes = await client.for_user(alice).call("GET", "/v1/nodes")
            try:
                await client.for_user(bob).call("GET", "/v1/nodes")
            except AccessDenied as exc:
                return nodes, str(exc)
        return nodes, ""

    nodes, refusal = asyncio.run(as_leaf_proxy())
    assert [n["nodename"] for n in nodes] == ["host-leaf"]
    assert "no role of theirs (dev) maps to a role of this cluster" in refusal
    assert [e for e in leaf.events("auth") if e.get("user") == "bob" and "maps to a role" in e.get("error", "")]


def test_zz_a_disabled_trust_accepts_nothing_and_enabling_restores(pair: tuple[Cluster, Cluster], tmp_path: Path,
                                                                   os_user: str) -> None:
    root, leaf = pair
    key = root_cert(root, tmp_path, "alice")
    wait_for(lambda: ssh(leaf, key, os_user, "true").returncode == 0, "access before disabling", timeout=60)
    leaf.api("PUT", f"/v1/trusted_clusters/{ROOT}", trust(root, "spent", enabled=False))
    wait_for(lambda: ssh(leaf, key, os_user, "true").returncode == 255, "the disabled trust at the node", timeout=60)
    assert [ca["enabled"] for ca in leaf.api("GET", "/v1/remote_cas/user")] == [False]
    leaf.api("PUT", f"/v1/trusted_clusters/{ROOT}", trust(root, "spent", enabled=True))
    wait_for(lambda: ssh(leaf, key, os_user, "true").returncode == 0, "access after enabling again", timeout=60)
    # removing the trust: nothing the root signed is accepted any more
    leaf.api("DELETE", f"/v1/trusted_clusters/{ROOT}")
    wait_for(lambda: ssh(leaf, key, os_user, "true").returncode == 255, "the removed trust at the node", timeout=60)
