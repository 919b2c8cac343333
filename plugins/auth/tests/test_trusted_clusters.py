"""Trusted clusters, the trust itself (issue 19): two real clusters on loopback, a root (auth and proxy in one
process) and a leaf (auth only); ``tctl`` as a subprocess on each. The leaf's auth posts the handshake to the
root proxy's web port, which forwards it to the root's auth. Attacker tests: replayed token, a token of another
type, a leaf claiming the root's name or an existing leaf's, a wrong ca_pin, bad and huge bodies."""

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

import httpx
import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e  # real processes end to end

ROOT = "root.example.com"
LEAF = "leaf.example.com"


class Side:
    """One cluster: its process, admin API client and ``tctl``."""

    def __init__(self, handle: Any, root: Path, name: str, config: dict[str, Any]) -> None:
        self.handle = handle
        self.root = root
        self.name = name
        self.addr: str = handle.process.services["auth_service"].address
        proxy = handle.process.services.get("proxy_service")
        self.web = f"127.0.0.1:{proxy.web_address.port}" if proxy is not None else ""
        self.config_file = root / "teleport.yaml"
        self.config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                               "listen_addr": self.addr}}))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            async with AuthClient(self.addr, [load_identity_dir(self.root / "data" / "keys" / "auth")]) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.call("call", method, path, body)

    def tctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(self.config_file), *args],
                              capture_output=True, text=True, input=input, timeout=90, check=False, cwd=self.root)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.tctl(*args, input=input)
        assert result.returncode == 0, f"tctl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def error(self, *args: str, input: str | None = None) -> str:
        result = self.tctl(*args, input=input)
        assert result.returncode == 1, (result.stdout, result.stderr)
        return result.stderr

    def events(self, kind: str) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        page = self.call("search_events", type=kind, since=(now - dt.timedelta(minutes=30)).isoformat(),
                         until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000)
        return list(page["events"])

    def token(self, labels: str = "") -> str:
        extra = [f"--labels={labels}"] if labels else []
        out = json.loads(self.ok("tokens", "add", "--type=trusted_cluster", *extra, "--format=json"))
        assert out["roles"] == ["Trusted_cluster"]
        return str(out["token"])


@contextlib.contextmanager
def side(root: Path, name: str, *, proxy: bool) -> Iterator[Side]:
    config: dict[str, Any] = {
        "teleport": {"data_dir": str(root / "data"), "nodename": f"auth-{name.split('.')[0]}"},
        "auth_service": {"cluster_name": name, "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": proxy, **({"web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                                                "tunnel_listen_addr": "127.0.0.1:0"} if proxy else {})},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=120) as handle:
        yield Side(handle, root, name, config)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side]]:
    with side(tmp_path_factory.mktemp("root"), ROOT, proxy=True) as root, \
            side(tmp_path_factory.mktemp("leaf"), LEAF, proxy=False) as leaf:
        yield root, leaf


def tc_yaml(root: Side, token: str, *, name: str = ROOT, enabled: bool = True, pin: str | None = None,
            role_map: Any = None) -> str:
    spec: dict[str, Any] = {"enabled": enabled, "token": token, "web_proxy_addr": root.web,
                            "tunnel_addr": root.web,
                            "role_map": role_map if role_map is not None else [
                                {"remote": "access", "local": ["access"]},
                                {"remote": "^team-(.*)$", "local": ["$1"]}],
                            "ca_pin": pin if pin is not None else root.call("status")["ca_pin"]}
    return yaml.safe_dump({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": name}, "spec": spec})


def post_validate(root: Side, body: Any, *, raw: bytes | None = None) -> httpx.Response:
    with httpx.Client(base_url=f"https://{root.web}", verify=False, timeout=30) as web:
        if raw is not None:
            return web.post("/v1/webapi/trustedclusters/validate", content=raw,
                            headers={"content-type": "application/json"})
        return web.post("/v1/webapi/trustedclusters/validate", json=body)


def leaf_cas(leaf: Side, name: str = LEAF) -> list[dict[str, Any]]:
    """The leaf's CAs in the handshake form (what a leaf's auth sends)."""
    out = []
    for kind in ("host", "user"):
        ca = leaf.call("get_cert_authority", kind)
        out.append({"type": kind, "cluster": name, "ssh_public_keys": ca["ssh_public_keys"],
                    "tls_certs": ca["tls_certs"]})
    return out


def forged(name: str) -> list[dict[str, Any]]:
    """CAs an attacker made for ``name`` (the handshake form)."""
    from teleport_auth.authority import generate_authority

    out = []
    for kind in ("host", "user"):
        ca = generate_authority(kind, name)
        out.append({"type": kind, "cluster": name, "ssh_public_keys": [ca.active.ssh_public_key_line],
                    "tls_certs": [ca.active.tls_cert_pem.decode()]})
    return out


# -- the handshake ------------------------------------------------------------------------------------


def test_join_stores_each_others_cas_and_audits_both_sides(pair: tuple[Side, Side], tmp_path: Path) -> None:
    root, leaf = pair
    token = root.token("env=prod,team=ops")
    listed = root.api("GET", "/v1/tokens")
    assert any(t["roles"] == ["Trusted_cluster"] and t.get("labels") == {"env": "prod", "team": "ops"}
               for t in listed)
    out = leaf.ok("create", "-", input=tc_yaml(root, token))
    assert out == f'trusted_cluster "{ROOT}" has been created\n'

    # the root: a remote_cluster with the token's labels (offline until its tunnel heartbeats), the leaf's CAs
    rcs = json.loads(root.ok("get", "rc", "--format=json"))
    assert [(r["kind"], r["version"], r["metadata"]) for r in rcs] == [
        ("remote_cluster", "v3", {"name": LEAF, "labels": {"env": "prod", "team": "ops"}})]
    assert rcs[0]["status"]["connection"] == "offline"
    assert json.loads(root.ok("get", f"remote_cluster/{LEAF}", "--format=json")) == rcs
    host = root.api("GET", f"/v1/remote_cas/host/{LEAF}")
    assert host["ssh_public_keys"] == leaf.call("get_cert_authority", "host")["ssh_public_keys"]
    assert host["enabled"] is True and host["role_map"] == []
    # the token was single use: gone from the root's list
    assert token not in {t["token"] for t in root.api("GET", "/v1/tokens")}

    # the leaf: the trusted_cluster (token masked), the root's CAs with the role map on the user CA
    tcs = json.loads(leaf.ok("get", "trusted_cluster", "--format=json"))
    assert tcs[0]["metadata"] == {"name": ROOT}
    assert tcs[0]["spec"]["token"] == "******"
    assert tcs[0]["spec"]["role_map"][1] == {"remote": "^team-(.*)$", "local": ["$1"]}
    user = leaf.api("GET", f"/v1/remote_cas/user/{ROOT}")
    assert user["ssh_public_keys"] == root.call("get_cert_authority", "user")["ssh_public_keys"]
    assert user["role_map"] == [{"remote": "access", "local": ["access"]}, {"remote": "^team-(.*)$", "local": ["$1"]}]
    assert [ca["cluster_name"] for ca in leaf.api("GET", "/v1/remote_cas/host")] == [ROOT]
    # the leaf's own CAs are untouched, and never listed as remote
    with pytest.raises(Exception, match="no user CA"):
        leaf.api("GET", f"/v1/remote_cas/user/{LEAF}")

    created = [e for e in root.events("trusted_cluster.create") if e.get("name") == LEAF and e["code"] == "T7000I"]
    assert created and created[0]["labels"] == {"env": "prod", "team": "ops"}
    assert [e for e in leaf.events("trusted_cluster.create") if e.get("name") == ROOT and e["code"] == "T7000I"]
    assert [e for e in root.events("trusted_cluster_token.create") if e["code"] == "T7002I"]

    # the proxy's own identity may list remote clusters and record a heartbeat (then the leaf is online)
    async def as_proxy() -> Any:
        proxy_keys = root.root / "data" / "keys" / "proxy"
        async with AuthClient(root.addr, [load_identity_dir(proxy_keys)]) as client:
            await client.call("PUT", f"/v1/remote_clusters/{LEAF}/heartbeat")
            return await client.call("GET", "/v1/remote_clusters")

    listed_by_proxy = asyncio.run(as_proxy())
    assert listed_by_proxy[0]["status"]["connection"] == "online"

    # the replayed token: refused at the root, audited there
    replay = post_validate(root, {"token": token, "leaf_name": "other.example.com",
                                  "cas": forged("other.example.com")})
    assert replay.status_code == 403, replay.text
    assert "token is not valid" in replay.json()["error"]
    refused = [e for e in root.events("trusted_cluster.create") if e["code"] == "T7000W"
               and e.get("name") == "other.example.com"]
    assert refused


def test_enable_disable_and_remove(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    # disabling marks the root CAs inactive; enabling again restores them without a new handshake
    existing = root.api("GET", "/v1/tokens")
    leaf.ok("create", "-f", "-", input=tc_yaml(root, "spent-token", enabled=False))
    assert all(not ca["enabled"] for kind in ("host", "user") for ca in leaf.api("GET", f"/v1/remote_cas/{kind}"))
    leaf.ok("create", "-f", "-", input=tc_yaml(root, "spent-token", enabled=True,
                                                role_map=[{"remote": "access", "local": ["auditor"]}]))
    user = leaf.api("GET", f"/v1/remote_cas/user/{ROOT}")
    assert user["enabled"] is True and user["role_map"] == [{"remote": "access", "local": ["auditor"]}]
    assert root.api("GET", "/v1/tokens") == existing
    # create without -f on an existing trust is refused
    assert "already exists" in leaf.error("create", "-", input=tc_yaml(root, "x"))


# -- attackers and bad input ------------------------------------------------------------------------


def test_a_token_of_another_type_is_refused_and_kept(pair: tuple[Side, Side]) -> None:
    root, _leaf = pair
    node_token = root.api("POST", "/v1/tokens", {"roles": ["node"]})["token"]
    answer = post_validate(root, {"token": node_token, "leaf_name": "sneaky.example.com",
                                  "cas": forged("sneaky.example.com")})
    assert answer.status_code == 403
    assert node_token in {t["token"] for t in root.api("GET", "/v1/tokens")}  # not consumed
    assert [e for e in root.events("trusted_cluster.create")
            if e["code"] == "T7000W" and e.get("name") == "sneaky.example.com"]
    # nor does a trusted_cluster token let a host join
    token = root.token()
    joined = root.api("GET", "/v1/ping")
    assert joined["cluster_name"] == ROOT
    with httpx.Client(base_url=f"https://{root.addr}", verify=False, timeout=30) as auth:
        got = auth.post("/v1/register", json={"nodename": "n1", "role": "node", "public_key": "x", "token": token})
    assert got.status_code in (400, 403)
    assert token in {t["token"] for t in root.api("GET", "/v1/tokens")}


def test_a_leaf_claiming_the_roots_name_or_an_existing_leafs_is_refused(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    token = root.token()
    answer = post_validate(root, {"token": token, "leaf_name": ROOT, "cas": leaf_cas(leaf, ROOT)})
    assert answer.status_code == 400  # the CAs are not the named cluster's: refused before the token is used
    assert "not the CA certificate" in answer.json()["error"]
    # with CAs made for that name (an attacker's own), the token is spent and the name refused
    answer = post_validate(root, {"token": token, "leaf_name": ROOT, "cas": forged(ROOT)})
    assert answer.status_code == 403 and "own name" in answer.json()["error"], answer.text
    assert root.call("get_cert_authority", "user")["cluster_name"] == ROOT
    assert root.api("GET", "/v1/remote_cas/user") == [] or all(
        ca["cluster_name"] != ROOT for ca in root.api("GET", "/v1/remote_cas/user"))
    assert [e for e in root.events("trusted_cluster.create") if e["code"] == "T7000W" and e.get("name") == ROOT]
    # a name a leaf already has: refused (409), that leaf's stored CAs untouched
    before = root.api("GET", f"/v1/remote_cas/host/{LEAF}")
    answer = post_validate(root, {"token": root.token(), "leaf_name": LEAF, "cas": forged(LEAF)})
    assert answer.status_code == 409 and "already exists" in answer.json()["error"], answer.text
    assert root.api("GET", f"/v1/remote_cas/host/{LEAF}") == before
    assert [e for e in root.events("trusted_cluster.create") if e["code"] == "T7000W" and e.get("name") == LEAF]


def test_a_wrong_ca_pin_is_refused_and_nothing_stored(pair: tuple[Side, Side], tmp_path: Path) -> None:
    root, _leaf = pair
    with side(tmp_path / "leaf2", "pinned.example.com", proxy=False) as other:
        token = root.token()
        err = other.error("create", "-", input=tc_yaml(root, token, pin="sha256:" + "ab" * 32))
        assert "does not match ca_pin" in err
        assert other.api("GET", "/v1/remote_cas/user") == []
        assert json.loads(other.ok("get", "trusted_cluster", "--format=json")) == []
        assert [e for e in other.events("trusted_cluster.create") if e["code"] == "T7000W"]
        # the root had accepted it (it cannot know the leaf's pin): its admin removes the record
        assert [rc["metadata"]["name"] for rc in root.api("GET", "/v1/remote_clusters")] == [
            LEAF, "pinned.example.com"]
        root.ok("rm", "rc/pinned.example.com")
        # a leaf naming the root wrongly refuses the root's answer, stores nothing
        name = "root2.example.com"
        err = other.error("create", "-", input=tc_yaml(root, root.token(), name=name))
        assert f'the root cluster is named "{ROOT}", not "{name}"' in err
        assert other.api("GET", "/v1/remote_cas/host") == []
        assert [e for e in other.events("trusted_cluster.create") if e["code"] == "T7000W" and e.get("name") == name]
        root.ok("rm", "rc/pinned.example.com")


def _valid(leaf: Side) -> dict[str, Any]:
    return {"token": "0" * 32, "leaf_name": "bad.example.com", "cas": forged("bad.example.com")}


@pytest.mark.parametrize(("change", "field"), [
    ({"token": ""}, "token"),
    ({"token": 5}, "token"),
    ({"leaf_name": ""}, "leaf_name"),
    ({"leaf_name": "a/b"}, "leaf_name"),
    ({"leaf_name": "x" * 300}, "leaf_name"),
    ({"cas": []}, "cas"),
    ({"cas": "host"}, "cas"),
    ({"cas": [{}, {}]}, "cas[0].type"),
    ({"cas": [{"type": "host", "cluster": "bad.example.com", "ssh_public_keys": ["x"], "tls_certs": ["y"]},
              {"type": "user"}]}, "cas[0].tls_certs[0]"),
    ({"cas": [{"type": "db", "cluster": "bad.example.com"}, {"type": "user"}]}, "cas[0].type"),
    ({"cas": [{"type": "host", "cluster": "evil.example.com"}, {"type": "user"}]}, "cas[0].cluster"),
])
def test_bad_handshake_fields_are_400s_naming_the_field(pair: tuple[Side, Side], change: dict[str, Any],
                                                         field: str) -> None:
    root, leaf = pair
    answer = post_validate(root, {**_valid(leaf), **change})
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["error"]


def test_a_huge_or_broken_body_is_refused_without_a_500(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    assert post_validate(root, None, raw=b"{" * 100).status_code == 400
    assert post_validate(root, None, raw=b"[]").status_code == 400
    assert post_validate(root, None, raw=b"\xff\xfe").status_code == 400
    big = {**_valid(leaf), "token": "a" * 2_000_000}
    assert post_validate(root, big).status_code == 413


@pytest.mark.parametrize(("spec", "words"), [
    ({"token": ""}, "spec.token"),
    ({"web_proxy_addr": "nohost"}, "spec.web_proxy_addr"),
    ({"web_proxy_addr": "h:99999"}, "spec.web_proxy_addr"),
    ({"tunnel_addr": "h:"}, "spec.tunnel_addr"),
    ({"enabled": "yes"}, "spec.enabled"),
    ({"ca_pin": "md5:abc"}, "spec.ca_pin"),
    ({"role_map": [{"remote": "^(x$", "local": ["a"]}]}, "spec.role_map[0].remote"),
    ({"role_map": [{"remote": "a", "local": ["$1"]}]}, "spec.role_map[0].local[0]"),
    ({"bogus": 1}, "spec.bogus"),
])
def test_tctl_create_names_the_bad_field(pair: tuple[Side, Side], spec: dict[str, Any], words: str) -> None:
    root, leaf = pair
    doc = yaml.safe_load(tc_yaml(root, "t0ken", name="bad-root.example.com"))
    doc["spec"].update(spec)
    err = leaf.error("create", "-", input=yaml.safe_dump(doc))
    assert words in err
    # the API refuses the same document with a 400 naming the field (a client skipping tctl's check)
    with pytest.raises(Exception, match=words.replace("[", r"\[").replace("]", r"\]").replace("$", r"\$")):
        leaf.api("PUT", "/v1/trusted_clusters/bad-root.example.com", doc)


def test_a_leaf_cannot_trust_itself(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    err = leaf.error("create", "-", input=tc_yaml(root, "t0ken", name=LEAF))
    assert "this cluster's own name" in err


def test_token_labels_only_for_trusted_cluster_tokens(pair: tuple[Side, Side]) -> None:
    root, _ = pair
    assert "only a --type=trusted_cluster token takes labels" in root.error("tokens", "add", "--type=node",
                                                                           "--labels=a=b")
    assert "expected key=value" in root.error("tokens", "add", "--type=trusted_cluster", "--labels=ab")
    out = root.ok("tokens", "add", "--type=trusted_cluster")
    assert out.startswith("The cluster invite token: ")
    assert "Use this token when defining a trusted cluster resource on a remote cluster." in out


def test_zz_remove_on_both_sides(pair: tuple[Side, Side]) -> None:
    root, leaf = pair
    assert leaf.ok("rm", f"trusted_cluster/{ROOT}") == f'trusted_cluster "{ROOT}" has been deleted\n'
    assert leaf.api("GET", "/v1/remote_cas/user") == []
    assert json.loads(leaf.ok("get", "trusted_clusters", "--format=json")) == []
    assert [e for e in leaf.events("trusted_cluster.delete") if e["code"] == "T7001I"]
    assert root.ok("rm", f"rc/{LEAF}") == f'remote_cluster "{LEAF}" has been deleted\n'
    assert root.api("GET", "/v1/remote_cas/host") == []
    assert json.loads(root.ok("get", "rc", "--format=json")) == []
    assert "not found" in root.error("rm", f"rc/{LEAF}")
