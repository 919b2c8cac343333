"""Attacks on host identity and join tokens (issue 11, classes 1 and 2), against a real cluster:
auth and a proxy (each its own teleport), OpenSSH sshd nodes joined with the static node token,
tsh as the victim's client. An attacker holding the node token tries to become the victim node
(its UUID, nodename, a wildcard, the auth server's name); each attempt is refused with a clear
message and audited, and the victim still reaches the real node. Then the token rules: a user
allowed to create tokens cannot mint an ``auth`` or a ``proxy`` token."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from proxy_helpers import CLUSTER, LOGIN, NODE_TOKEN, PROXY_TOKEN, Env, running_env

from teleport_core.api.client import AuthClient, Credentials, register
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A cluster of its own: these tests add hosts that other modules' node lists do not expect."""
    with running_env(tmp_path_factory, second_factor="off") as e:
        yield e


@pytest.fixture(scope="module")
def victim(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tsh home of a user who reaches the victim node ``sshd-node``."""
    env.signup("vera", ["dev"], [LOGIN], PASSWORD)
    home = tmp_path_factory.mktemp("vera-tsh")
    result = env.login(home, "vera")
    assert result.returncode == 0, result.stderr
    return home


def reaches_victim(env: Env, home: Path) -> None:
    """``tsh ssh`` to the victim by nodename and by UUID lands on the real sshd."""
    for target in ("sshd-node", env.sshd_uuid):  # type: ignore[attr-defined]
        result = env.tsh(home, "ssh", f"{LOGIN}@{target}", "echo", "reached-$((6*7))")
        assert result.returncode == 0 and result.stdout.strip() == "reached-42", (target, result.stderr)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def join_body(nodename: str, key: Any = None, **extra: Any) -> dict[str, Any]:
    key = key or keys.generate_private_key("ed25519")
    return {"token": NODE_TOKEN, "role": "Node", "nodename": nodename, "public_key": keys.public_key_openssh(key),
            **extra}


async def join(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    return dict((await register(env.auth_addr, body, [])).answer)


def identity_of(answer: dict[str, Any], key: Any) -> LocalIdentity:
    return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                         tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                         tuple(answer["known_hosts"]), answer["host_uuid"])


def client_of(env: Env, identity: LocalIdentity) -> AuthClient:
    return AuthClient(env.auth_addr, credentials=Credentials(identity.client_context(), identity))


def events(env: Env, **query: Any) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            return list((await admin.search_events(limit=5000, **query))["events"])

    return run(body())


def principals(ssh_cert: str) -> set[str]:
    cert = serialization.load_ssh_public_identity(ssh_cert.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    return {p.decode() for p in cert.valid_principals}


def tls_names(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def test_a_token_holder_cannot_take_over_another_hosts_identity(env: Env, victim: Path) -> None:
    uuid = env.sshd_uuid  # type: ignore[attr-defined]
    attacks: list[tuple[dict[str, Any], type[Exception], str]] = [
        (join_body("sshd-node"), AccessDenied,
         f'nodename "sshd-node" is already registered by host {uuid}; to free it, remove that host with: '
         f"tctl rm node/{uuid}"),
        (join_body("mallory", host_uuid=uuid), TeleportError,
         "host_uuid: a joining host does not choose its UUID; auth assigns it (leave it out)"),
        (join_body("mallory", additional_principals=["*"]), TeleportError,
         'principal "*": wildcards (* ?), spaces, commas and control characters are not allowed'),
        (join_body("mallory", additional_principals=["*.example.com"]), TeleportError, "wildcards"),
        (join_body("mallory", dns_names=["teleport.cluster.local"]), TeleportError,
         'DNS name "teleport.cluster.local": teleport.cluster.local names the auth servers only'),
        (join_body("mallory", dns_names=["x.teleport.cluster.local"]), TeleportError,
         "teleport.cluster.local names the auth servers only"),
        (join_body("mallory", additional_principals=[uuid]), TeleportError,
         f'principal "{uuid}": looks like a host UUID; auth assigns host UUIDs'),
        (join_body("mallory", additional_principals=[f"{uuid}.{CLUSTER}"]), TeleportError, "looks like a host UUID"),
        (join_body("mallory", additional_principals=["sshd-node"]), AccessDenied,
         f'the name "sshd-node" belongs to host {uuid} ("sshd-node")'),
        (join_body("mallory", additional_principals=[f"sshd-node.{CLUSTER}"]), AccessDenied,
         f"belongs to host {uuid}"),
        (join_body("sshd-node\n"), TeleportError, "control characters"),
        (join_body("mallory", role="Auth"), TeleportError, "auth servers do not join with a token"),
    ]
    for body, error, message in attacks:
        with pytest.raises(error) as info:
            run(join(env, body))
        assert message in str(info.value), (body, str(info.value))
    refused = [e for e in events(env, type="instance.join") if e.get("code") == "TJ002E"]
    for body, _, message in attacks:
        assert any(e["node_name"] == body["nodename"] and message in e["error"] for e in refused), message
    nodes = {n["uuid"]: n for n in env.call("get_nodes")}
    assert nodes[uuid]["nodename"] == "sshd-node"
    assert [n["nodename"] for n in nodes.values()].count("sshd-node") == 1
    reaches_victim(env, victim)


def test_a_joined_attacker_gets_only_its_recorded_names_and_cannot_heartbeat_as_another(
        env: Env, victim: Path) -> None:
    key = keys.generate_private_key("ed25519")
    answer = run(join(env, join_body("mallory-1", key, additional_principals=["mallory.corp.example.org"],
                                     ip_addresses=["10.9.8.7"])))
    mallory = identity_of(answer, key)
    own = answer["host_uuid"]
    recorded = {own, f"{own}.{CLUSTER}", "mallory-1", f"mallory-1.{CLUSTER}", "localhost", "127.0.0.1", "::1",
                "mallory.corp.example.org", "10.9.8.7"}
    assert principals(answer["ssh_cert"]) == recorded
    victim_uuid = env.sshd_uuid  # type: ignore[attr-defined]

    async def attack() -> dict[str, Any]:
        async with client_of(env, mallory) as client:
            new_key = keys.generate_private_key("ed25519")
            renewed = await client.renew_host_certs(
                keys.public_key_openssh(new_key), "sshd-node", dns_names=["teleport.cluster.local", "*"],
                ip_addresses=["127.0.0.2"], additional_principals=["sshd-node", victim_uuid, "*"])
            with pytest.raises(AccessDenied, match=r'registered as "mallory-1", not "sshd-node": a host heartbeats'):
                await client.upsert_node({"uuid": own, "nodename": "sshd-node", "addr": "127.0.0.1:1"})
            with pytest.raises(AccessDenied, match="may update only its own node"):
                await client.upsert_node({"uuid": victim_uuid, "nodename": "sshd-node", "addr": "127.0.0.1:1"})
            with pytest.raises(AccessDenied, match="Node does not allow update on proxy"):
                await client.upsert_proxy({"uuid": own, "nodename": "mallory-1", "public_addr": "127.0.0.1:1"})
            with pytest.raises(AccessDenied, match="joined with a token for Node, not Proxy"):
                await client.call("POST", "/v1/register", {**join_body("mallory-1"), "role": "Proxy", "token": ""})
            return dict(renewed)

    proxy_key = keys.generate_private_key("ed25519")
    rogue = identity_of(run(join(env, {**join_body("rogue-proxy", proxy_key), "role": "Proxy",
                                       "token": PROXY_TOKEN})), proxy_key)

    async def proxy_attack() -> None:
        async with client_of(env, rogue) as client:  # a proxy heartbeats under its own nodename only
            with pytest.raises(AccessDenied, match='registered as "rogue-proxy", not "proxy-1"'):
                await client.upsert_proxy({"uuid": rogue.host_uuid, "nodename": "proxy-1",
                                           "public_addr": "127.0.0.1:1"})

    run(proxy_attack())
    editor = user_identity(env, "nodeeditor", [{"resources": ["node", "proxy"], "verbs": ["*"]}])

    async def user_attack() -> None:
        async with client_of(env, editor) as client:  # RBAC allows it; heartbeats are hosts' own
            with pytest.raises(AccessDenied, match="only hosts send heartbeats"):
                await client.upsert_node({"uuid": victim_uuid, "nodename": "sshd-node", "addr": "127.0.0.1:1"})

    run(user_attack())
    renewed = run(attack())
    assert renewed["host_uuid"] == own
    assert principals(renewed["ssh_cert"]) == recorded  # the body's names were ignored
    assert tls_names(renewed["tls_cert"]) == ["10.9.8.7"]
    refusals = [e["error"] for e in events(env, type="auth") if e.get("code") == "T3007W"]
    assert any('not "sshd-node": a host heartbeats under its own nodename' in r for r in refusals)
    assert any('registered as "rogue-proxy", not "proxy-1"' in r for r in refusals)
    assert any("only hosts send heartbeats" in r and "nodeeditor" in r for r in refusals)
    assert any("joined with a token for Node, not Proxy" in r
               for r in (e["error"] for e in events(env, type="instance.join") if e.get("code") == "TJ002E"))
    nodes = {n["uuid"]: n for n in env.call("get_nodes")}
    assert nodes[victim_uuid]["nodename"] == "sshd-node" and own not in nodes
    reaches_victim(env, victim)


def test_tctl_rm_node_frees_the_nodename_and_ends_the_hosts_registration(env: Env) -> None:
    key = keys.generate_private_key("ed25519")
    answer = run(join(env, join_body("leaving-1", key)))
    leaving = identity_of(answer, key)

    async def heartbeat_then_renew(expect_refusal: bool) -> None:
        async with client_of(env, leaving) as client:
            if expect_refusal:
                with pytest.raises(AccessDenied, match="is not registered"):
                    await client.upsert_node({"uuid": leaving.host_uuid, "nodename": "leaving-1",
                                              "addr": "127.0.0.1:2"})
                with pytest.raises(AccessDenied, match="is not registered"):
                    await client.renew_host_certs(keys.public_key_openssh(keys.generate_private_key("ed25519")),
                                                  "leaving-1")
            else:
                await client.upsert_node({"uuid": leaving.host_uuid, "nodename": "leaving-1", "addr": "127.0.0.1:2"})

    run(heartbeat_then_renew(False))
    with pytest.raises(AccessDenied, match="already registered by host"):
        run(join(env, join_body("leaving-1")))
    result = tctl(env, "rm", f"node/{leaving.host_uuid}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'node "{leaving.host_uuid}" has been deleted'
    run(heartbeat_then_renew(True))  # the removed host's certificate no longer names a registered host
    assert leaving.host_uuid not in {n["uuid"] for n in env.call("get_nodes")}
    refusals = [e["error"] for e in events(env, type="auth") if e.get("code") == "T3007W"]
    assert any(leaving.host_uuid in r and "is not registered" in r and "/v1/certs/host" for r in refusals)
    again = run(join(env, join_body("leaving-1")))  # the name is free again, for a new host UUID
    assert again["host_uuid"] != leaving.host_uuid


def tctl(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The tctl CLI with the auth server's own identity (the local admin)."""
    file = env.root / "admin-identity"
    if not file.exists():
        LocalIdentity.load(env.root / "auth" / "keys" / "auth").write_identity_file(file)
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-i", str(file), "--auth-server",
                           env.auth_addr, *args], capture_output=True, text=True, timeout=60, check=False)


def user_identity(env: Env, name: str, rules: list[dict[str, Any]]) -> LocalIdentity:
    """A user with a role of ``rules``, holding certificates from ``tctl auth sign``."""
    env.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": f"{name}-role"},
                             "spec": {"allow": {"rules": rules}}})
    env.call("create_user", name, [f"{name}-role"], {"logins": [LOGIN]})
    key = keys.generate_private_key("ed25519")
    signed = env.call("sign_user_cert", name, keys.public_key_openssh(key))
    return LocalIdentity(keys.private_key_pem(key), signed["tls_cert"].encode(),
                         tuple(p.encode() for p in signed["host_ca_pems"]), signed["ssh_cert"])


def test_a_token_creator_cannot_mint_auth_or_proxy_tokens(env: Env, victim: Path) -> None:
    users = {
        "tokener": user_identity(env, "tokener", [{"resources": ["token"], "verbs": ["create", "list"]}]),
        "wildcard": user_identity(env, "wildcard", [{"resources": ["*"], "verbs": ["*"]}]),
        "proxymaker": user_identity(env, "proxymaker", [{"resources": ["token", "proxy_token"],
                                                         "verbs": ["create", "list"]}]),
        "lister": user_identity(env, "lister", [{"resources": ["token"], "verbs": ["list"]}]),
    }

    async def body() -> None:
        async with client_of(env, users["tokener"]) as tokener:
            for roles, message in ((["auth"], "a join token cannot admit role auth"),
                                   (["node", "auth"], "a join token cannot admit role auth"),
                                   (["proxy"], "tokens admitting proxies need create on proxy_token"),
                                   (["proxy", "node"], "tokens admitting proxies need create on proxy_token")):
                with pytest.raises(AccessDenied, match=message):
                    await tokener.create_token(roles, "5m")
            node_token = await tokener.create_token(["node"], "5m")  # what the token verb is for
            listed = await tokener.get_tokens()
            assert node_token["token"] in [t["token"] for t in listed]
            statics = [t for t in listed if t["static"]]
            assert {tuple(t["roles"]) for t in statics} == {("Proxy",), ("Node",)}
            assert {t["token"] for t in statics} == {"******"}
            assert NODE_TOKEN not in json.dumps(listed) and PROXY_TOKEN not in json.dumps(listed)
        # a wildcard rule does not grant proxy_token; a rule that names it does
        async with client_of(env, users["wildcard"]) as wildcard:
            with pytest.raises(AccessDenied, match="need a role rule that names proxy_token explicitly"):
                await wildcard.create_token(["proxy"], "5m")
            with pytest.raises(AccessDenied, match="cannot admit role auth"):
                await wildcard.create_token(["auth"], "5m")
        async with client_of(env, users["proxymaker"]) as proxymaker:
            made = await proxymaker.create_token(["proxy"], "5m")
            assert made["roles"] == ["Proxy"]
        async with client_of(env, users["lister"]) as lister:
            shown = {tuple(t["roles"]): t["token"] for t in await lister.get_tokens() if not t["static"]}
            assert shown[("Proxy",)] == "******"  # a proxy token's value only for who may create one
        async with env.admin() as admin:  # tctl on the auth host: the local admin may
            assert (await admin.create_token(["proxy", "node"], "5m"))["roles"] == ["Proxy", "Node"]
            with pytest.raises(AccessDenied, match="cannot admit role auth"):
                await admin.create_token(["auth"], "5m")

    run(body())
    refusals = [e for e in events(env, type="auth") if e.get("code") == "T3007W"]
    for user, needle in (("tokener", "cannot admit role auth"), ("tokener", "need create on proxy_token"),
                         ("wildcard", "names proxy_token explicitly")):
        assert any(e["user"] == user and needle in e["error"] for e in refusals), (user, needle)
    reaches_victim(env, victim)


def test_a_proxy_and_node_process_joins_once_as_one_host(env: Env, tmp_path: Path) -> None:
    """A remote process with both roles and a dynamic ``proxy,node`` token (single-use): the
    first role joins with the token, the second presents the first role's certificate; one
    host UUID and nodename for both."""
    token = env.call("create_token", ["proxy", "node"], "5m")
    config = {
        "teleport": {"data_dir": str(tmp_path / "both"), "nodename": "both-1", "auth_server": env.auth_addr,
                     "auth_token": token["token"], "ca_pin": token["ca_pin"]},
        "auth_service": {"enabled": False},
        "ssh_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "both"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
    }
    with start_cluster(config, make_plugins(), timeout=60):
        folder = tmp_path / "both" / "keys"
        node, proxy = LocalIdentity.load(folder / "node"), LocalIdentity.load(folder / "proxy")
        assert node.host_uuid == proxy.host_uuid
        for _ in range(100):
            nodes = {n["uuid"]: n["nodename"] for n in env.call("get_nodes")}
            if node.host_uuid in nodes:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert nodes[node.host_uuid] == "both-1"
        assert node.host_uuid in {p["uuid"] for p in env.call("get_proxies")}
        joins = [e for e in events(env, type="instance.join") if e.get("node_name") == "both-1"]
        assert sorted(e.get("method") for e in joins if e["code"] == "TJ002I") == ["certificate", "token"]
