"""``tctl get`` of every kind the cluster has (nodes, tokens, cert authorities, ``all``) against a real
auth server, run as subprocesses: resource form, masking, no private keys, RBAC refusals audited."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import yaml
from tctl_helpers import STATIC_TOKEN, tctl_cluster

pytestmark = pytest.mark.e2e  # real processes end to end

NODE_A = {"uuid": "7d3a7c2e-1f0b-4c55-9a51-2f4d8b7e9c01", "nodename": "web-1", "addr": "10.0.0.1:3022",
          "labels": {"env": "prod"}}
NODE_B = {"uuid": "0b9e4c1a-2d3f-4a6b-8c7d-9e0f1a2b3c4d", "nodename": "db-1", "addr": "", "tunnel": True}
NODE_B_TWIN = {"uuid": "5c2d1e0f-9a8b-4c7d-8e6f-5a4b3c2d1e0f", "nodename": "db-1", "addr": "10.0.0.9:3022"}
#: what private key material looks like in PEM, OpenSSH or JSON escapes of them
PRIVATE = re.compile(r"PRIVATE KEY|private_key|\"key\"|signing_key", re.IGNORECASE)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-get-kinds")) as c:
        for node in (NODE_A, NODE_B, NODE_B_TWIN):
            c.call("upsert_node", node)
        c.call("create_user", "ed", ["editor"])
        c.call("create_user", "dev", ["access"], {"logins": ["dev"]})
        c.token = c.call("create_token", ["node"], "20m")["token"]
        yield c


def test_get_nodes_in_resource_form_by_uuid_or_unique_hostname(cluster):
    nodes = list(yaml.safe_load_all(cluster.ok("get", "nodes")))
    assert [n["metadata"]["name"] for n in nodes] == [NODE_B["uuid"], NODE_B_TWIN["uuid"], NODE_A["uuid"]]
    web = next(n for n in nodes if n["spec"]["hostname"] == "web-1")
    assert web == {"kind": "node", "sub_kind": "teleport", "version": "v2",
                   "metadata": {"name": NODE_A["uuid"], "labels": {"env": "prod"}},
                   "spec": {"addr": "10.0.0.1:3022", "hostname": "web-1", "use_tunnel": False}}
    assert yaml.safe_load(cluster.ok("get", f"node/{NODE_A['uuid']}")) == web
    assert yaml.safe_load(cluster.ok("get", "node/web-1")) == web  # a unique hostname
    assert cluster.error("get", "node/db-1") == (
        f'ERROR: 2 nodes are named "db-1"; give one\'s UUID: {NODE_B["uuid"]}, {NODE_B_TWIN["uuid"]}')
    text = cluster.ok("get", "nodes", "--format=text").splitlines()
    assert text[0].split() == ["Host", "UUID", "Public", "Address", "Labels"]
    assert text[2].split() == ["db-1", NODE_B["uuid"], "⟵", "Tunnel"]
    assert text[4].split() == ["web-1", NODE_A["uuid"], "10.0.0.1:3022", "env=prod"]


def test_get_tokens_masks_values_unless_with_secrets(cluster):
    masked = cluster.ok("get", "tokens")
    assert cluster.token not in masked and STATIC_TOKEN not in masked
    docs = list(yaml.safe_load_all(masked))
    assert {d["metadata"]["name"] for d in docs} == {"******"}
    dynamic = next(d for d in docs if "labels" not in d["metadata"])
    assert dynamic["kind"] == "token" and dynamic["version"] == "v2"
    assert dynamic["spec"] == {"roles": ["Node"], "join_method": "token"}
    assert dt.datetime.fromisoformat(dynamic["metadata"]["expires"]) > dt.datetime.now(dt.UTC)
    static = next(d for d in docs if "labels" in d["metadata"])
    assert static["metadata"]["labels"] == {"teleport.dev/origin": "config-file"}
    shown = list(yaml.safe_load_all(cluster.ok("get", "tokens", "--with-secrets")))
    assert cluster.token in {d["metadata"]["name"] for d in shown}
    assert STATIC_TOKEN not in json.dumps(shown)  # static tokens never leave auth, even with secrets
    one = yaml.safe_load(cluster.ok("get", f"token/{cluster.token}", "--with-secrets"))
    assert one["metadata"]["name"] == cluster.token
    assert cluster.token not in cluster.ok("get", f"token/{cluster.token}")


def test_get_cert_authorities_public_keys_only(cluster):
    cas = list(yaml.safe_load_all(cluster.ok("get", "cert_authority")))
    assert [(c["kind"], c["sub_kind"], c["metadata"]["name"]) for c in cas] == [
        ("cert_authority", "host", "example.com"), ("cert_authority", "user", "example.com")]
    host = cluster.call("get_cert_authority", "host")
    assert cas[0]["spec"]["active_keys"] == {"ssh": [{"public_key": host["ssh_public_keys"][0]}],
                                             "tls": [{"cert": host["tls_certs"][0]}]}
    assert yaml.safe_load(cluster.ok("get", "cert_authority/host")) == cas[0]
    assert list(yaml.safe_load_all(cluster.ok("get", "cas/example.com"))) == cas
    text = cluster.ok("get", "cert_authorities", "--format=text").splitlines()
    assert text[0].split() == ["Cluster", "Name", "CA", "Type", "Fingerprint"]
    assert re.fullmatch(r"example\.com\s+host\s+SHA256:\S+", text[2])


def test_get_all_has_every_kind_and_no_private_key_material(cluster):
    docs = list(yaml.safe_load_all(cluster.ok("get", "all")))
    assert [k for k in dict.fromkeys(d["kind"] for d in docs)] == ["cert_authority", "role", "user", "token", "node"]
    cluster.call("upsert_lock", {"metadata": {"name": "get-all-lock"}, "spec": {"target": {"user": "nobody"}}})
    try:
        kinds = {d["kind"] for d in yaml.safe_load_all(cluster.ok("get", "all"))}
        assert "lock" in kinds
        for fmt in ("yaml", "json", "text"):
            for extra in ((), ("--with-secrets",)):
                out = cluster.ok("get", "all", f"--format={fmt}", *extra)
                assert not PRIVATE.search(out), (fmt, extra)
    finally:
        cluster.call("delete_lock", "get-all-lock")


def test_get_role_round_trips_through_create_f(cluster, tmp_path):
    path = tmp_path / "access.yaml"
    path.write_text(cluster.ok("get", "role/access"))
    assert cluster.ok("create", "-f", str(path)) == 'role "access" has been updated\n'


def test_reads_need_rights_refusals_are_audited(cluster, tmp_path):
    dev = tmp_path / "dev.pem"
    cluster.ok("auth", "sign", "--user=dev", f"--out={dev}")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    assert cluster.error("get", "tokens", identity=dev) == (
        'ERROR: access denied to user "dev": no role allows list on token (access)')
    assert cluster.error("get", "cert_authority", identity=dev) == (
        'ERROR: access denied to user "dev": no role allows read on cert_authority (access)')
    assert cluster.error("get", "all", identity=dev).startswith('ERROR: access denied to user "dev"')
    nodes = list(yaml.safe_load_all(cluster.ok("get", "nodes", identity=dev)))  # access lists nodes
    assert len(nodes) == 3
    events = cluster.call("search_events", type="auth", user="dev", since=since.isoformat(),
                          until=(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).isoformat())["events"]
    errors = [e["error"] for e in events]
    assert any("list on token" in e for e in errors) and any("read on cert_authority" in e for e in errors)
    editor = tmp_path / "ed.pem"
    cluster.ok("auth", "sign", "--user=ed", f"--out={editor}")
    assert cluster.token not in cluster.ok("get", "all", identity=editor)
    assert cluster.token in cluster.ok("get", "tokens", "--with-secrets", identity=editor)
