"""Attacker: a host of the cluster poses as the auth server (issue 11, class 1, client side).

A Node certificate signed by the real host CA, carrying the auth server's DNS name
``teleport.cluster.local`` (what a rogue join used to obtain), presented by a TLS server on
loopback. Every client of the auth API (AuthClient, ``register`` with the right CA pin, tctl)
must refuse it inside the TLS handshake, with a clear error, and send it nothing: no request,
no token, no password. The real auth server keeps working for the same clients.

These refusals happen on the client, which has no audit log of its own: they are local errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teleport_core.api.client import AuthClient, NotAuthServer, load_identity_dir, register
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.impostor import RecordingTLSServer, forge_tls_host_cert, http_json_answer

pytestmark = pytest.mark.e2e

CLUSTER = "role-check.example"
NODE_TOKEN = "node:static-node-token-role-check-0123"
SECRET = "hunter2-but-longer-password"


class Cluster:
    def __init__(self, root: Path, handle: Any) -> None:
        self.root = root
        self.service = handle.process.services["auth_service"]
        self.addr = self.service.address
        self.identity_dir = root / "auth" / "keys" / "auth"

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.identity_dir)])

    def pin(self) -> str:
        async def body() -> str:
            async with self.admin() as client:
                return str((await client.status())["ca_pin"])

        return asyncio.run(body())

    def impostor(self, role: str = "Node") -> RecordingTLSServer:
        """A server presenting a ``role`` certificate from the real host CA, named like auth,
        that answers ``/v1/ping`` as auth does (the host CA is public) and records the rest."""
        ca = self.service.host_ca.active
        cert, key = forge_tls_host_cert(ca.tls_cert, ca.tls_private_key, role=role, cluster=CLUSTER,
                                        dns_names=["teleport.cluster.local", "*.teleport.cluster.local"])
        ping = {"cluster_name": CLUSTER, "host_ca_pems": self.service.host_ca_pems()}
        return RecordingTLSServer(cert, key, answer=http_json_answer("/v1/ping", ping))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("rolecheck")
    config = {"teleport": {"data_dir": str(root / "auth"), "nodename": "auth-1"},
              "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0", "tokens": [NODE_TOKEN]},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield Cluster(root, handle)


def nothing_but_ping(fake: RecordingTLSServer) -> None:
    for data in fake.received:
        assert data.startswith(b"GET /v1/ping "), data[:200]
        assert b"token" not in data and SECRET.encode() not in data


def test_api_client_refuses_a_node_certificate_posing_as_auth(cluster: Cluster) -> None:
    async def body() -> None:
        with cluster.impostor() as fake:
            async with AuthClient(fake.addr, [load_identity_dir(cluster.identity_dir)]) as client:
                with pytest.raises(NotAuthServer) as refused:
                    await client.create_user("mallory", ["access"])
                assert str(refused.value) == (f"the server at {fake.addr} presented a Node certificate, "
                                              "not the auth server's")
                with pytest.raises(NotAuthServer):
                    await client.login("admin", SECRET, "", "")
        assert fake.received == [], "the client sent a request to a node posing as auth"
        assert fake.connections, "the client never reached the impostor"

        # with the real auth server listed after the impostor, the client fails over to it
        with cluster.impostor() as fake:
            async with AuthClient([fake.addr, cluster.addr], [load_identity_dir(cluster.identity_dir)]) as client:
                assert (await client.ping())["cluster_name"] == CLUSTER
                assert client.addr == cluster.addr
        assert fake.received == []

    asyncio.run(body())


def test_a_proxy_certificate_is_not_auth_either(cluster: Cluster) -> None:
    async def body() -> None:
        with cluster.impostor("Proxy") as fake:
            async with AuthClient(fake.addr, [load_identity_dir(cluster.identity_dir)]) as client:
                with pytest.raises(NotAuthServer, match="presented a Proxy certificate, not the auth server's"):
                    await client.get_users()
        assert fake.received == []

    asyncio.run(body())


def test_register_with_the_right_pin_never_gives_the_token_to_a_node(cluster: Cluster) -> None:
    pin = cluster.pin()
    key = keys.generate_private_key("ed25519")
    request = {"token": NODE_TOKEN.partition(":")[2], "role": "Node", "nodename": "honest-node",
               "public_key": keys.public_key_openssh(key)}

    async def join(addr: str) -> Any:
        return await register(addr, request, [pin])

    with cluster.impostor() as fake, pytest.raises(NotAuthServer) as refused:
        asyncio.run(join(fake.addr))
    assert str(refused.value) == (f"cannot join through {fake.addr}: the server at {fake.addr} presented a Node "
                                  "certificate, not the auth server's; the join token was not sent")
    nothing_but_ping(fake)  # the pin passed (same host CA): only the role stopped the token
    assert len(fake.received) == 1
    assert not any(request["token"].encode() in data for data in fake.received)

    joined = asyncio.run(join(cluster.addr))  # the real auth server: the same request joins
    assert joined.pinned and joined.answer["host_uuid"]


def test_tctl_refuses_a_node_posing_as_auth(cluster: Cluster, tmp_path: Path) -> None:
    identity_file = tmp_path / "admin.pem"
    LocalIdentity.load(cluster.identity_dir).write_identity_file(identity_file)

    def tctl(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "--auth-server", addr,
                               "-i", str(identity_file), *args], capture_output=True, text=True, timeout=60,
                              check=False, env={**os.environ})

    with cluster.impostor() as fake:
        refused = tctl(fake.addr, "users", "add", "mallory", "--roles=access")
    assert refused.returncode != 0
    assert f"the server at {fake.addr} presented a Node certificate, not the auth server's" in refused.stderr
    assert fake.received == []

    listed = tctl(cluster.addr, "get", "roles", "--format=json")
    assert listed.returncode == 0, listed.stderr
    assert any(role["metadata"]["name"] == "access" for role in json.loads(listed.stdout))
