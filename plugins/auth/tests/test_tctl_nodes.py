"""``tctl nodes`` and ``tctl tokens`` against a real auth server, run as subprocesses."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from tctl_helpers import STATIC_TOKEN, TctlCluster, tctl_cluster

from teleport_core.api.client import AuthClient, load_tls, register
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

pytestmark = pytest.mark.e2e  # real processes end to end

# REFERENCE.md's block, then Teleport's "Please note" lines
NODES_ADD = re.compile(
    r"The invite token: (?P<token>[0-9a-f]{32})\n"
    r"This token will expire in (?P<minutes>\d+) minutes\n"
    r"\n"
    r"Run this on the new node to join the cluster:\n"
    r"\n"
    r"> teleport start \\\n"
    r"   --roles=(?P<roles>\S+) \\\n"
    r"   --token=(?P=token) \\\n"
    r"   --ca-pin=(?P<pin>sha256:[0-9a-f]{64}) \\\n"
    r"   --auth-server=(?P<addr>\S+)\n"
    r"\n"
    r"Please note:\n"
    r"\n"
    r"  - This invitation token will expire in (?P=minutes) minutes\n"
    r"  - (?P=addr) must be reachable from the new node\n"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-nodes")) as c:
        yield c


def join(cluster: TctlCluster, token: str, pin: str, nodename: str, role: str = "Node") -> LocalIdentity:
    """Join like a new node would with what ``tctl nodes add`` printed (the pin is checked)."""

    async def main() -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        body = {"token": token, "role": role, "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        joined = await register(cluster.addr, body, [pin])
        answer = joined.answer
        return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                             tuple(answer["known_hosts"]), answer["host_uuid"])

    return asyncio.run(main())


def heartbeat(cluster: TctlCluster, identity: LocalIdentity, nodename: str, addr: str, labels: dict) -> None:
    async def main() -> None:
        async with AuthClient(cluster.addr, [load_tls(identity.client_context())]) as client:
            await client.upsert_node({"uuid": identity.host_uuid, "nodename": nodename, "addr": addr,
                                      "labels": labels})

    asyncio.run(main())


def token_rows(cluster: TctlCluster) -> dict[str, tuple[str, str]]:
    lines = cluster.ok("tokens", "ls").splitlines()
    assert lines[0].split(None, 2) == ["Token", "Type", "Expiry Time (UTC)"]
    rows = {}
    for line in lines[2:]:
        token, kind, expiry = line.split(None, 2)
        rows[token] = (kind, expiry)
    return rows


def test_nodes_add_prints_the_reference_block_and_the_token_joins(cluster):
    out = cluster.ok("nodes", "add")
    match = NODES_ADD.fullmatch(out)
    assert match, out
    assert match["minutes"] == "30" and match["roles"] == "node"
    assert match["addr"] == cluster.addr  # the auth server tctl talked to
    assert match["pin"] == cluster.call("status")["ca_pin"]
    kind, expiry = token_rows(cluster)[match["token"]]
    assert kind == "Node"
    assert re.fullmatch(r"\d\d [A-Z][a-z]{2} \d\d \d\d:\d\d UTC \((29m\d+s|30m)\)", expiry), expiry
    # a node started as printed joins with that token and pin; the dynamic token is then used up
    identity = join(cluster, match["token"], match["pin"], "web-1")
    assert identity.host_uuid
    assert match["token"] not in token_rows(cluster)
    with pytest.raises(AccessDenied, match="the token is not valid"):
        join(cluster, match["token"], match["pin"], "web-2")


def test_nodes_add_roles_ttl_and_json(cluster):
    match = NODES_ADD.fullmatch(cluster.ok("nodes", "add", "--roles=node,proxy", "--ttl=5m"))
    assert match and match["roles"] == "node,proxy" and match["minutes"] == "5"
    assert token_rows(cluster)[match["token"]][0] == "Node,Proxy"
    answer = json.loads(cluster.ok("nodes", "add", "--ttl=10m", "--format=json"))
    assert re.fullmatch(r"[0-9a-f]{32}", answer["token"]) and answer["roles"] == ["Node"]
    assert answer["auth_server"] == cluster.addr and answer["ca_pin"].startswith("sha256:")


def test_nodes_ls_shows_heartbeating_nodes(cluster):
    match = NODES_ADD.fullmatch(cluster.ok("nodes", "add"))
    identity = join(cluster, match["token"], match["pin"], "db-7")
    heartbeat(cluster, identity, "db-7", "10.0.0.7:3022", {"env": "prod", "arch": "arm64"})
    lines = cluster.ok("nodes", "ls").splitlines()
    assert lines[0].split() == ["Nodename", "UUID", "Address", "Labels"]
    row = next(line for line in lines[2:] if line.startswith("db-7 "))
    assert row.split() == ["db-7", identity.host_uuid, "10.0.0.7:3022", "arch=arm64,env=prod"]
    nodes = json.loads(cluster.ok("nodes", "ls", "--format=json"))
    assert {n["nodename"]: n["labels"] for n in nodes}["db-7"] == {"env": "prod", "arch": "arm64"}


def test_tokens_ls_shows_static_and_dynamic_tokens(cluster):
    match = NODES_ADD.fullmatch(cluster.ok("tokens", "add", "--type=proxy", "--ttl=20m"))
    assert match and match["roles"] == "proxy" and match["minutes"] == "20"
    rows = token_rows(cluster)
    assert rows["******"] == ("Node", "never")  # static tokens are masked, as in Teleport
    assert rows[match["token"]][0] == "Proxy"
    text = cluster.ok("tokens", "ls", "--format=json")
    assert STATIC_TOKEN not in text  # the API never returns a static token's value
    listed = {t["token"]: t for t in json.loads(text)}
    assert listed["******"]["static"] is True and listed["******"]["expires"] is None
    assert listed[match["token"]]["roles"] == ["Proxy"]


def test_tokens_rm(cluster):
    match = NODES_ADD.fullmatch(cluster.ok("tokens", "add", "--type=node"))
    token = match["token"]
    assert cluster.ok("tokens", "rm", token) == f"Token {token} has been deleted\n"
    assert token not in token_rows(cluster)
    assert cluster.error("tokens", "rm", token) == "ERROR: token not found"
    assert cluster.error("tokens", "rm", STATIC_TOKEN) == (
        "ERROR: the token is statically configured in auth_service.tokens and cannot be removed")
    assert "******" in token_rows(cluster)


BAD_INPUT = [
    (("nodes", "add", "--ttl=2h"),
     "ERROR: token TTL 2h0m0s exceeds the maximum of 30m0s: it can be reduced, not increased"),
    (("nodes", "add", "--ttl=later"), 'ERROR: --ttl: expected a duration like "30m" or "1h", got "later"'),
    (("nodes", "add", "--ttl=0"), 'ERROR: --ttl: must be positive, got "0"'),
    (("nodes", "add", "--roles=bogus"), 'ERROR: unknown role "bogus": expected one of node, proxy, auth'),
    (("nodes", "add", "--roles=node,"), 'ERROR: --roles: expected a comma-separated list like "a,b", got "node,"'),
    (("nodes", "add", "--count=3"), "ERROR: tctl nodes add: unrecognized arguments: --count=3 "
                                    '(see "tctl nodes add --help")'),
    (("nodes", "rm"), "ERROR: tctl nodes: argument COMMAND: invalid choice: 'rm' (choose from 'add', 'ls') "
                      '(see "tctl nodes --help")'),
    (("tokens", "add"), 'ERROR: tctl tokens add: the following arguments are required: --type '
                        '(see "tctl tokens add --help")'),
    (("tokens", "add", "--type=trustedcluster"),
     'ERROR: unknown role "trustedcluster": expected one of node, proxy, auth'),
    (("tokens", "rm"), 'ERROR: tctl tokens rm: the following arguments are required: TOKEN '
                       '(see "tctl tokens rm --help")'),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_clear_line_and_creates_no_token(cluster, args, message):
    before = cluster.call("get_tokens")
    assert cluster.error(*args) == message
    assert cluster.call("get_tokens") == before
