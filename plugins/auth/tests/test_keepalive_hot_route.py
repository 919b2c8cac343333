"""The keepalives' short way in (teleport_auth.api.hot), played by an attacker over real mutual TLS:
the route skips Starlette's middleware and matching, never the endpoint's checks (a caller without
a certificate, a locked node, another node's entry, another method or path on the same prefix)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from teleport_auth.api import build_app
from teleport_auth.api.hot import HotRoutesApp, path_pattern

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, Credentials, load_identity_dir, register
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.testing.cluster import ClusterHandle, start_cluster

pytestmark = pytest.mark.e2e

NODE_TOKEN = "static-node-token-hot-0123456789"


class Auth:
    def __init__(self, handle: ClusterHandle, data_dir: Path) -> None:
        self.service: Any = cast(Any, handle.process.services["auth_service"])
        self.addr: str = self.service.address
        self.data_dir = data_dir

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")])

    async def join(self, nodename: str) -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        body = {"token": NODE_TOKEN, "role": "Node", "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        answer = (await register(self.addr, body, [])).answer
        return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                             tuple(answer["known_hosts"]), answer["host_uuid"])

    def client(self, identity: LocalIdentity) -> AuthClient:
        return AuthClient(self.addr, credentials=Credentials(identity.client_context(), identity))


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    data_dir = tmp_path_factory.mktemp("hot") / "data"
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(data_dir), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "tokens": [f"node:{NODE_TOKEN}"]},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, timeout=60) as handle:
        yield Auth(handle, data_dir)


async def raw_request(addr: str, request: bytes, context: ssl.SSLContext) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on a fresh TLS connection; the status and the body."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=AUTH_SERVER_NAME)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return int(head[9:12]), await reader.readexactly(length)
    finally:
        writer.close()


def put(path: str, method: str = "PUT") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {AUTH_SERVER_NAME}\r\nContent-Length: 0\r\n\r\n".encode()


def test_the_pattern_is_starlettes() -> None:
    app = build_app(cast(Any, None))  # the routes do not touch the service until called
    assert isinstance(app, HotRoutesApp)
    assert sorted(pattern.pattern for pattern, _ in app.hot["PUT"]) == [
        "^/v1/nodes/(?P<uuid>[^/]+)/keepalive$", "^/v1/proxies/(?P<uuid>[^/]+)/keepalive$"]
    pattern = path_pattern("/v1/nodes/{uuid}/keepalive")
    match = pattern.match("/v1/nodes/abc-1/keepalive")
    assert match is not None and match.groupdict() == {"uuid": "abc-1"}
    for other in ("/v1/nodes/a/b/keepalive", "/v1/nodes//keepalive", "/v1/nodes/a/keepalive/x",
                  "/v1/nodesXa/keepalive", "/v1/nodes/a/keepalive.json"):
        assert pattern.match(other) is None, other


def test_without_a_client_certificate_the_keepalive_is_refused(auth: Auth) -> None:
    async def body() -> None:
        node = await auth.join("hot-anon-victim")
        async with auth.client(node) as client:
            await client.upsert_node({"uuid": node.host_uuid, "nodename": "hot-anon-victim", "addr": "127.0.0.1:3022"})
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the cluster's CA, presents no certificate
        context.load_verify_locations(cadata="".join(p.decode() for p in node.tls_ca_pems))
        status, answer = await raw_request(auth.addr, put(f"/v1/nodes/{node.host_uuid}/keepalive"), context)
        assert status == 401 and b"client certificate" in answer

    asyncio.run(body())


def test_a_locked_node_cannot_keep_its_entry_alive_and_is_audited(auth: Auth) -> None:
    async def body() -> None:
        node = await auth.join("hot-locked")
        async with auth.client(node) as client, auth.admin() as admin:
            await client.upsert_node({"uuid": node.host_uuid, "nodename": "hot-locked", "addr": "127.0.0.1:3022"})
            assert (await client.keep_alive_node(node.host_uuid))["uuid"] == node.host_uuid
            await admin.upsert_lock({"kind": "lock", "version": "v2", "metadata": {"name": "hot-lock"},
                                     "spec": {"target": {"node": node.host_uuid}, "message": "hot node locked"}})
            with pytest.raises(AccessDenied, match="hot node locked"):
                await client.keep_alive_node(node.host_uuid)
            found = (await admin.search_events(type="auth", limit=1000))["events"]
            refused = [e for e in found if e.get("path") == f"/v1/nodes/{node.host_uuid}/keepalive"
                       and e.get("success") is False]
            assert refused and "hot node locked" in refused[-1]["error"]
            await admin.delete_lock("hot-lock")
            assert (await client.keep_alive_node(node.host_uuid))["uuid"] == node.host_uuid

    asyncio.run(body())


def test_other_methods_and_paths_go_through_the_router(auth: Auth) -> None:
    async def body() -> None:
        node = await auth.join("hot-methods")
        context = node.client_context()
        context.check_hostname = True
        path = f"/v1/nodes/{node.host_uuid}/keepalive"
        status, _ = await raw_request(auth.addr, put(path, "GET"), context)
        assert status == 405
        status, _ = await raw_request(auth.addr, put(path, "POST"), context)
        assert status == 405
        status, _ = await raw_request(auth.addr, put(path + "/more"), context)
        assert status == 404
        status, answer = await raw_request(auth.addr, put(path), context)  # the route itself: not announced
        assert status == 404 and b"announce it" in answer

    asyncio.run(body())
