"""CA rotation across a trust (issue 19), at the auth API: ``POST /v1/remote_cas/rotate/external``, where a
proxy hands its auth the CAs the other end of its tunnel sent. Two real clusters on loopback, joined by a
real handshake (root: auth and proxy; leaf: auth, proxy and node, its tunnel pointed at a closed port so
that only these calls change the stored CAs). Attacker tests: a node, an admin, a proxy naming its own
cluster, a cluster it has no trust with, CAs of another cluster, a disabled trust, a leaf proxy at the
root's auth; every refusal audited (T7003W)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.processes import free_port

pytestmark = pytest.mark.e2e  # real processes end to end

ROOT = "root.example.com"
LEAF = "leaf.example.com"
PATH = "/v1/remote_cas/rotate/external"


class Side:
    """One cluster: its process, API clients as each of its identities on disk, ``tctl``."""

    def __init__(self, handle: Any, folder: Path, name: str, config: dict[str, Any]) -> None:
        self.handle = handle
        self.folder = folder
        self.name = name
        services = handle.process.services
        self.addr: str = services["auth_service"].address
        proxy = services.get("proxy_service")
        self.web = f"127.0.0.1:{proxy.web_address.port}" if proxy is not None else ""
        self.config_file = folder / "teleport.yaml"
        self.config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                               "listen_addr": self.addr},
                                                    "proxy_service": {"enabled": False},
                                                    "ssh_service": {"enabled": False}}))

    def call(self, method: str, *args: Any, role: str = "auth", at: str = "", **kwargs: Any) -> Any:
        """``method`` of an AuthClient holding this cluster's ``role`` identity (at ``at``: another auth)."""
        async def main() -> Any:
            keys = load_identity_dir(self.folder / "data" / "keys" / role)
            async with AuthClient(at or self.addr, [keys]) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())

    def post(self, body: Any, role: str = "proxy") -> Any:
        return self.call("call", "POST", PATH, body, role=role)

    def tctl(self, *args: str, input: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(self.config_file), *args],
                              capture_output=True, text=True, input=input, timeout=90, check=False, cwd=self.folder)
        assert done.returncode == 0, f"tctl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def events(self, kind: str) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        page = self.call("search_events", type=kind, since=(now - dt.timedelta(minutes=30)).isoformat(),
                         until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000)
        return list(page["events"])

    def own_cas(self, name: str = "") -> list[dict[str, Any]]:
        """This cluster's CAs in the exchange form (what its proxy sends), named ``name`` if given."""
        out = []
        for kind in ("host", "user"):
            ca = self.call("get_cert_authority", kind)
            out.append({"type": kind, "cluster": name or self.name, "ssh_public_keys": ca["ssh_public_keys"],
                        "tls_certs": ca["tls_certs"]})
        return out


@contextlib.contextmanager
def side(folder: Path, name: str, *, node: bool) -> Iterator[Side]:
    config: dict[str, Any] = {
        "teleport": {"data_dir": str(folder / "data"), "nodename": f"host-{name.split('.')[0]}"},
        "auth_service": {"cluster_name": name, "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        "ssh_service": {"enabled": node, **({"listen_addr": "127.0.0.1:0"} if node else {})},
    }
    with start_cluster(config, make_plugins(), timeout=120) as handle:
        yield Side(handle, folder, name, config)


def tc_doc(root: Side, token: str, *, enabled: bool = True) -> dict[str, Any]:
    return {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
            "spec": {"enabled": enabled, "token": token, "web_proxy_addr": root.web,
                     "tunnel_addr": f"127.0.0.1:{free_port()}",  # nobody listens: no tunnel, no CA exchange
                     "role_map": [{"remote": "access", "local": ["access"]}],
                     "ca_pin": root.call("status")["ca_pin"]}}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side]]:
    with side(tmp_path_factory.mktemp("root"), ROOT, node=False) as root, \
            side(tmp_path_factory.mktemp("leaf"), LEAF, node=True) as leaf:
        token = json.loads(root.tctl("tokens", "add", "--type=trusted_cluster", "--format=json"))["token"]
        leaf.tctl("create", "-", input=yaml.safe_dump(tc_doc(root, token)))
        yield root, leaf


def next_keys(cas: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """``kind``'s CA of ``cas`` with a second, new key set (as a rotation's init phase adds)."""
    from teleport_auth.authority import generate_authority

    ca = next(c for c in cas if c["type"] == kind)
    new = generate_authority(kind, ca["cluster"])
    return {**ca, "ssh_public_keys": [*ca["ssh_public_keys"], new.active.ssh_public_key_line],
            "tls_certs": [*ca["tls_certs"], new.active.tls_cert_pem.decode()]}


def refusals(cluster: Side, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events("trusted_cluster.ca_update")
            if e["code"] == "T7003W" and reason in e.get("error", "")]


def test_the_leaf_takes_the_roots_new_keys_and_keeps_its_own_decisions(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    before = leaf.call("call", "GET", f"/v1/remote_cas/user/{ROOT}")
    rotated = next_keys(root.own_cas(), "user")
    assert leaf.post({"cluster": ROOT, "cas": [rotated]}) == {"cluster": ROOT, "updated": ["user"]}
    after = leaf.call("call", "GET", f"/v1/remote_cas/user/{ROOT}")
    assert after["ssh_public_keys"] == rotated["ssh_public_keys"] and after["tls_certs"] == rotated["tls_certs"]
    # whoever mints decides: the leaf's enabled and role_map stay as the leaf set them
    assert after["enabled"] is True and after["role_map"] == before["role_map"] == [
        {"remote": "access", "local": ["access"]}]
    done = [e for e in leaf.events("trusted_cluster.ca_update") if e["code"] == "T7003I"]
    assert [(e["name"], e["role"], e["ca_type"], e["ssh_public_keys"]) for e in done] == [
        (ROOT, "leaf", "user", rotated["ssh_public_keys"])]
    # the same keys again (every exchange sends them): nothing written, nothing audited
    assert leaf.post({"cluster": ROOT, "cas": [rotated, root.own_cas()[0]]}) == {"cluster": ROOT, "updated": []}
    assert len([e for e in leaf.events("trusted_cluster.ca_update") if e["code"] == "T7003I"]) == 1
    # the rotation completes: the old key is dropped
    current = root.own_cas()
    assert leaf.post({"cluster": ROOT, "cas": current})["updated"] == ["user"]
    assert leaf.call("call", "GET", f"/v1/remote_cas/user/{ROOT}")["ssh_public_keys"] == current[1]["ssh_public_keys"]


def test_the_root_takes_its_leafs_new_host_keys(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    rotated = next_keys(leaf.own_cas(), "host")
    assert root.post({"cluster": LEAF, "cas": [rotated]}) == {"cluster": LEAF, "updated": ["host"]}
    stored = root.call("call", "GET", f"/v1/remote_cas/host/{LEAF}")
    assert stored["ssh_public_keys"] == rotated["ssh_public_keys"] and stored["enabled"] is True
    assert [e["role"] for e in root.events("trusted_cluster.ca_update") if e["code"] == "T7003I"] == ["root"]
    assert root.post({"cluster": LEAF, "cas": leaf.own_cas()})["updated"] == ["host"]


def test_only_a_proxy_may_hand_over_cas(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    body = {"cluster": ROOT, "cas": [next_keys(root.own_cas(), "user")]}
    for role in ("node", "auth"):  # a node's host identity; the auth server's own (admin) identity
        with pytest.raises(AccessDenied, match="only a proxy of this cluster"):
            leaf.post(body, role=role)
    denied = refusals(leaf, "only a proxy of this cluster")
    assert len(denied) == 2 and all(e["name"] == ROOT and e["user"] for e in denied)
    assert leaf.call("call", "GET", f"/v1/remote_cas/user/{ROOT}")["ssh_public_keys"] == \
        root.own_cas()[1]["ssh_public_keys"]
    # a leaf's proxy at the root's auth: its certificate is not the root's, the TLS handshake fails
    with pytest.raises(TeleportError):
        leaf.call("call", "POST", PATH, {"cluster": LEAF, "cas": leaf.own_cas()}, role="proxy", at=root.addr)


def test_a_proxy_cannot_replace_its_own_clusters_cas_or_a_strangers(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    from teleport_auth.authority import generate_authority

    def forged(name: str) -> list[dict[str, Any]]:
        out = []
        for kind in ("host", "user"):
            ca = generate_authority(kind, name)
            out.append({"type": kind, "cluster": name, "ssh_public_keys": [ca.active.ssh_public_key_line],
                        "tls_certs": [ca.active.tls_cert_pem.decode()]})
        return out

    own_before = leaf.own_cas()
    with pytest.raises(AccessDenied, match="is this cluster"):  # the leaf's own CAs, named as the leaf's
        leaf.post({"cluster": LEAF, "cas": forged(LEAF)})
    with pytest.raises(AccessDenied, match="is this cluster"):  # the root's own, at the root
        root.post({"cluster": ROOT, "cas": forged(ROOT)})
    with pytest.raises(AccessDenied, match="neither a root this cluster trusts nor one of its leaves"):
        leaf.post({"cluster": "other.example.com", "cas": forged("other.example.com")})
    # CAs of another cluster than the one named (a leaf answering with the root's CAs, or a third one's)
    with pytest.raises(TeleportError, match=r"cas\[0\]\.cluster: expected \"leaf.example.com\""):
        root.post({"cluster": LEAF, "cas": root.own_cas()})
    with pytest.raises(TeleportError, match=r"cas\[0\]\.cluster: expected \"root.example.com\""):
        leaf.post({"cluster": ROOT, "cas": forged("other.example.com")})
    # not a CA: a certificate whose subject is not the cluster, three CAs, two of one type
    bad = {**root.own_cas()[0], "tls_certs": [leaf.own_cas()[0]["tls_certs"][0]]}
    with pytest.raises(TeleportError, match="not the CA certificate of cluster"):
        leaf.post({"cluster": ROOT, "cas": [bad]})
    with pytest.raises(TeleportError, match="at most one host CA and one user CA"):
        leaf.post({"cluster": ROOT, "cas": [root.own_cas()[0], root.own_cas()[0]]})
    with pytest.raises(TeleportError, match="cas: at most 2 items"):
        leaf.post({"cluster": ROOT, "cas": [*root.own_cas(), root.own_cas()[0]]})

    assert leaf.own_cas() == own_before and root.call("get_cert_authority", "host")["ssh_public_keys"] == \
        root.own_cas()[0]["ssh_public_keys"]
    assert leaf.call("call", "GET", f"/v1/remote_cas/host/{ROOT}")["ssh_public_keys"] == \
        root.own_cas()[0]["ssh_public_keys"]
    for reason in ("is this cluster", "neither a root", "expected \"root.example.com\"",
                   "not the CA certificate", "at most one host CA", "cas: at most 2 items"):
        assert refusals(leaf, reason), reason
    assert refusals(root, "is this cluster") and refusals(root, "expected \"leaf.example.com\"")


def test_a_disabled_trust_takes_no_keys(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    tc = json.loads(leaf.tctl("get", f"trusted_cluster/{ROOT}", "--format=json"))[0]
    tc["spec"]["enabled"] = False
    leaf.tctl("create", "-f", "-", input=yaml.safe_dump(tc))
    try:
        with pytest.raises(AccessDenied, match="is disabled"):
            leaf.post({"cluster": ROOT, "cas": [next_keys(root.own_cas(), "user")]})
        assert refusals(leaf, "is disabled")
    finally:
        tc["spec"]["enabled"] = True
        leaf.tctl("create", "-f", "-", input=yaml.safe_dump(tc))
    assert leaf.post({"cluster": ROOT, "cas": root.own_cas()}) == {"cluster": ROOT, "updated": []}
