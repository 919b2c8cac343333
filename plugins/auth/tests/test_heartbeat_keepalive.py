"""Heartbeat keepalives against a real auth server over mutual TLS (issue 17): a node announces
once, then keeps its entry alive with a bodiless PUT that moves one key's expiry; only its own
entry, only as a host; NotFound makes it announce again. The kernel's :class:`Heartbeat` loop is
run against the same server: announce, keepalives, re-announce after a loss or a label change."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from teleport_auth.api import build_app
from teleport_auth.api.hot import HotRoutesApp, path_pattern

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, Credentials, load_identity_dir, load_tls, register
from teleport_core.api.heartbeat import Backoff, Heartbeat
from teleport_core.errors import AccessDenied, NotFound, TeleportError
from teleport_core.logs import get_logger
from teleport_core.metrics import metrics_for
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.testing.cluster import ClusterHandle, start_cluster

pytestmark = pytest.mark.e2e

PROXY_TOKEN = "static-proxy-token-0123456789"
NODE_TOKEN = "static-node-token-0123456789"


class Auth:
    def __init__(self, handle: ClusterHandle, data_dir: Path) -> None:
        self.handle = handle
        self.data_dir = data_dir
        self.service: Any = cast(Any, handle.process.services["auth_service"])
        self.addr: str = self.service.address

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")])

    async def join(self, nodename: str, role: str = "Node") -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        token = PROXY_TOKEN if role == "Proxy" else NODE_TOKEN
        body = {"token": token, "role": role, "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        answer = (await register(self.addr, body, [])).answer
        return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                             tuple(answer["known_hosts"]), answer["host_uuid"])

    def client(self, identity: LocalIdentity) -> AuthClient:
        return AuthClient(self.addr, credentials=Credentials(identity.client_context(), identity))


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    data_dir = tmp_path_factory.mktemp("keepalive") / "data"
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(data_dir), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "tokens": [f"proxy:{PROXY_TOKEN}", f"node:{NODE_TOKEN}"]},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, timeout=60) as handle:
        yield Auth(handle, data_dir)


def entry(identity: LocalIdentity, nodename: str, **labels: str) -> dict[str, Any]:
    return {"uuid": identity.host_uuid, "nodename": nodename, "addr": "127.0.0.1:3022", "labels": labels}


async def denials(auth: Auth, path: str) -> list[dict[str, Any]]:
    async with auth.admin() as admin:
        found = (await admin.search_events(type="auth", limit=1000))["events"]
    return [e for e in found if e.get("path") == path and e.get("success") is False]


def test_a_node_announces_then_keeps_its_own_entry_alive(auth: Auth) -> None:
    async def body() -> None:
        node = await auth.join("ka-node-1")
        async with auth.client(node) as client:
            with pytest.raises(NotFound, match="announce it"):  # nothing announced yet
                await client.keep_alive_node(node.host_uuid)
            await client.upsert_node(entry(node, "ka-node-1", env="test"))
            before = await auth.service.presence.get_node(node.host_uuid)
            kept = await client.keep_alive_node(node.host_uuid)
            after = await auth.service.presence.get_node(node.host_uuid)
            assert kept["uuid"] == node.host_uuid
            assert after.expires is not None and before.expires is not None and after.expires >= before.expires
            assert dt.datetime.fromisoformat(kept["expires"]) == after.expires
            assert after.expires > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=9)  # the 10-minute TTL
            # the keepalive moved the expiry only: what the node announced is what is listed
            listed = {n["uuid"]: n for n in await client.get_nodes()}
            assert listed[node.host_uuid]["labels"] == {"env": "test"}
            assert listed[node.host_uuid]["nodename"] == "ka-node-1"
            # removed (tctl rm): the keepalive says so, so the node would announce again
            await auth.service.presence.delete_node(node.host_uuid)
            with pytest.raises(NotFound):
                await client.keep_alive_node(node.host_uuid)
        metrics = metrics_for(auth.service.ctx.metrics)
        assert metrics.keepalives_received.labels(type="node")._value.get() >= 1

    asyncio.run(body())


def test_keepalives_are_a_hosts_own_only_and_refusals_are_audited(auth: Auth) -> None:
    async def body() -> None:
        victim, mallory = await auth.join("ka-victim"), await auth.join("ka-mallory")
        proxy = await auth.join("ka-proxy", role="Proxy")
        async with auth.client(victim) as client:
            await client.upsert_node(entry(victim, "ka-victim"))
        victim_path = f"/v1/nodes/{victim.host_uuid}/keepalive"
        async with auth.client(mallory) as client:
            with pytest.raises(AccessDenied, match="Node may update only its own node"):
                await client.keep_alive_node(victim.host_uuid)
            with pytest.raises(AccessDenied, match="does not allow update on proxy"):
                await client.keep_alive_proxy(mallory.host_uuid)
        async with auth.client(proxy) as client:
            with pytest.raises(AccessDenied, match="does not allow update on node"):
                await client.keep_alive_node(victim.host_uuid)
            with pytest.raises(NotFound, match="announce it"):  # its own entry, not announced yet
                await client.keep_alive_proxy(proxy.host_uuid)
            await client.upsert_proxy({"uuid": proxy.host_uuid, "nodename": "ka-proxy", "public_addr": "p:3080"})
            assert (await client.keep_alive_proxy(proxy.host_uuid))["uuid"] == proxy.host_uuid
            with pytest.raises(AccessDenied, match="may update only its own proxy"):
                await client.keep_alive_proxy(victim.host_uuid)
        # a user whose role allows updating nodes still does not send keepalives (hosts do)
        async with auth.admin() as admin:
            await admin.upsert_role({"kind": "role", "version": "v5", "metadata": {"name": "ka-editor"},
                                     "spec": {"allow": {"rules": [{"resources": ["node", "proxy"],
                                                                   "verbs": ["*"]}]}}})
            await admin.create_user("ka-editor", ["ka-editor"], {"logins": ["root"]})
            key = keys.generate_private_key("ed25519")
            signed = await admin.sign_user_cert("ka-editor", keys.public_key_openssh(key))
        editor = LocalIdentity(keys.private_key_pem(key), signed["tls_cert"].encode(),
                               tuple(p.encode() for p in signed["host_ca_pems"]), signed["ssh_cert"])
        async with AuthClient(auth.addr, [load_tls(editor.client_context())]) as client:
            with pytest.raises(AccessDenied, match="only hosts send keepalives"):
                await client.keep_alive_node(victim.host_uuid)
            with pytest.raises(AccessDenied, match="only hosts send keepalives"):
                await client.keep_alive_proxy(proxy.host_uuid)
        refused = await denials(auth, victim_path)
        assert {e["user"] for e in refused} >= {"ka-editor", f"{mallory.host_uuid}.example.com",
                                                f"{proxy.host_uuid}.example.com"}

    asyncio.run(body())


@pytest.mark.parametrize("uuid", ["bad uuid", "a,b", "x" * 300])
def test_a_keepalive_for_a_malformed_uuid_is_refused(auth: Auth, uuid: str) -> None:
    async def body() -> None:
        async with auth.admin() as admin:  # the auth server's identity may keep any entry alive
            with pytest.raises(TeleportError, match="invalid node uuid|uuid: at most 253 characters") as raised:
                await admin.call("PUT", f"/v1/nodes/{uuid}/keepalive")  # 400: the uuid is checked, not looked up
            assert not isinstance(raised.value, (NotFound, AccessDenied))

    asyncio.run(body())


def test_the_heartbeat_loop_announces_keeps_alive_and_announces_again(auth: Auth) -> None:
    """The kernel's loop against the real API, with a short period: an announce, then keepalives;
    an entry auth lost is announced again; a label change is announced at once."""

    async def body() -> None:
        node = await auth.join("ka-loop")
        labels = {"env": "loop"}
        metrics = metrics_for(None)  # the loop's counters, in a registry of their own
        async with auth.client(node) as client:
            beat = Heartbeat("node", lambda: entry(node, "ka-loop", **labels), client.upsert_node,
                             lambda: client.keep_alive_node(node.host_uuid), metrics, get_logger("test"),
                             period=0.05, backoff=Backoff(0.01, 0.05), check_period=0.02)
            task = asyncio.create_task(beat.run())
            try:
                async def until(what: str, check: Any) -> None:
                    for _ in range(1000):
                        if await check():
                            return
                        await asyncio.sleep(0.02)
                    raise AssertionError(f"timed out waiting for {what}")

                async def kept() -> bool:
                    return bool(metrics.keepalives_sent.labels(type="node")._value.get() >= 3)

                await until("keepalives", kept)
                assert metrics.heartbeats_sent.labels(type="node")._value.get() == 1  # announced once
                await auth.service.presence.delete_node(node.host_uuid)  # auth lost it

                async def listed() -> bool:
                    return any(n["uuid"] == node.host_uuid for n in await client.get_nodes())

                await until("the node announced again", listed)

                async def counted() -> bool:  # the loop counts the announce once its answer came back
                    return bool(metrics.heartbeats_sent.labels(type="node")._value.get() >= 2)

                await until("the second announce counted", counted)
                assert metrics.heartbeats_sent.labels(type="node")._value.get() == 2
                labels["env"] = "changed"
                beat.changed()

                async def relabelled() -> bool:
                    return any(n["labels"] == {"env": "changed"} for n in await client.get_nodes()
                               if n["uuid"] == node.host_uuid)

                await until("the new labels", relabelled)
                assert metrics.heartbeats_missed.labels(type="node")._value.get() == 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(body())


# -- the keepalives' short way in (teleport_auth.api.hot), played by an attacker over real mTLS: the route
# skips Starlette's middleware and matching, never the endpoint's checks -------------------------------------


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
