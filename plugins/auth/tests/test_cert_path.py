"""The certificate request path over mutual TLS against a real auth server (issue 17): with users
and roles answered from memory and audit events delivered to the log in batches, every certificate
still has its own durable audit event, and a change to the user, its roles or its locks takes
effect on the very next certificate."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from teleport_auth.api import build_app
from teleport_auth.api.hot import HotRoutesApp

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, load_identity_dir, load_tls
from teleport_core.errors import AccessDenied, NotFound, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e

SUBJECT = keys.public_key_openssh(keys.generate_private_key("ed25519"))


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("certpath") / "data"
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(data_dir), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, timeout=60) as handle:
        yield handle.process.services["auth_service"].address, data_dir  # type: ignore[attr-defined]


def admin(auth: tuple[str, Path]) -> AuthClient:
    addr, data_dir = auth
    return AuthClient(addr, [load_identity_dir(data_dir / "keys" / "auth")])


def role(name: str, logins: list[str]) -> dict[str, Any]:
    return {"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": {"allow": {"logins": logins}}}


async def cert_events(client: AuthClient, user: str) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    page = await client.search_events(type="cert.create", since=(now - dt.timedelta(minutes=10)).isoformat(),
                                      until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000)
    return [event for event in page["events"] if event.get("user") == user]


def test_concurrent_certificates_each_have_a_durable_audit_event(auth: tuple[str, Path]) -> None:
    async def body() -> None:
        async with admin(auth) as client:
            await client.create_user("many", ["access"], {"logins": ["root"]})
            answers = await asyncio.gather(*(client.sign_user_cert("many", SUBJECT, ttl="1h") for _ in range(48)))
            expiries = {answer["valid_before"] for answer in answers}
            # read-your-writes: each call returned once its event reached the log
            found = await cert_events(client, "many")
        assert len(answers) == 48 and all(answer["ssh_cert"] and answer["tls_cert"] for answer in answers)
        assert len(found) == 48 and len({event["uid"] for event in found}) == 48
        assert {event["identity"]["expires"] for event in found} == expiries

    asyncio.run(body())


def test_a_change_to_the_user_its_roles_or_its_locks_reaches_the_next_certificate(auth: tuple[str, Path]) -> None:
    async def body() -> None:
        async with admin(auth) as client:
            await client.upsert_role(role("cp-a", ["alpha"]))
            await client.upsert_role(role("cp-b", ["beta"]))
            await client.create_user("changing", ["cp-a"])
            for _ in range(3):  # cached from here on
                assert (await client.sign_user_cert("changing", SUBJECT))["logins"] == ["alpha"]
            await client.update_user("changing", roles=["cp-b"])
            assert (await client.sign_user_cert("changing", SUBJECT))["roles"] == ["cp-b"]
            await client.upsert_role(role("cp-b", ["gamma"]))  # the role's content changes
            assert (await client.sign_user_cert("changing", SUBJECT))["logins"] == ["gamma"]
            await client.upsert_lock({"kind": "lock", "version": "v2", "metadata": {"name": "cp-lock"},
                                      "spec": {"target": {"user": "changing"}, "message": "stop"}})
            with pytest.raises(AccessDenied, match="stop"):
                await client.sign_user_cert("changing", SUBJECT)
            await client.delete_lock("cp-lock")
            assert (await client.sign_user_cert("changing", SUBJECT))["logins"] == ["gamma"]
            await client.delete_user("changing")  # also locks the name (certificates issued before)
            with pytest.raises(NotFound):
                await client.sign_user_cert("changing", SUBJECT)
            await client.create_user("changing", ["cp-a"])  # the name again: a new user (the deletion's lock
            # only refuses certificates issued before it), its own roles
            assert (await client.sign_user_cert("changing", SUBJECT))["logins"] == ["alpha"]

    asyncio.run(body())


@pytest.mark.parametrize("body", [
    {"user": "", "public_key": SUBJECT},
    {"user": "x", "public_key": "not a key"},
    {"user": "x", "public_key": SUBJECT, "ttl": "forever"},
    {"user": "x" * 300, "public_key": SUBJECT},
])
def test_bad_sign_requests_are_400(auth: tuple[str, Path], body: dict[str, Any]) -> None:
    async def run() -> None:
        async with admin(auth) as client:
            with pytest.raises(TeleportError) as info:
                await client.call("POST", "/v1/certs/user", body)
            assert "internal error" not in str(info.value)

    asyncio.run(run())


def test_the_certificate_route_is_hot() -> None:
    """``POST /v1/certs/user`` skips Starlette's routing and middleware (HotRoutesApp), not the checks
    of its endpoint wrapper (the tests here and below go through it)."""
    app = build_app(cast(Any, None))  # the routes do not touch the service until called
    assert isinstance(app, HotRoutesApp)
    assert [pattern.pattern for pattern, _ in app.hot["POST"]] == ["^/v1/certs/user$"]


def test_certificates_without_a_client_certificate_or_the_permission_are_refused(auth: tuple[str, Path]) -> None:
    """The attacker: no certificate (401), or a user's own certificate asking for another user's (or its
    own) certificates through the admin route (403, audited); neither gets a certificate."""
    async def body() -> None:
        async with admin(auth) as client:
            await client.create_user("cp-mallory", ["access"], {"logins": ["mallory"]})
            await client.create_user("admin-victim", ["access"], {"logins": ["root"]})
            key = keys.generate_private_key("ed25519")
            certs = await client.sign_user_cert("cp-mallory", keys.public_key_openssh(key), ttl="1h")
            mallory = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                    tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])
            before = len(await cert_events(client, "admin-victim"))
            async with AuthClient(auth[0], [load_tls(mallory.client_context())]) as attacker:
                for user in ("admin-victim", "cp-mallory"):
                    with pytest.raises(AccessDenied):
                        await attacker.sign_user_cert(user, SUBJECT)
            anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the cluster, presents no certificate
            anonymous.load_verify_locations(cadata="".join(certs["host_ca_pems"]))
            request = json.dumps({"user": "admin-victim", "public_key": SUBJECT}).encode()
            status, answer = await raw_post(auth[0], "/v1/certs/user", request, anonymous)
            assert status == 401 and b"client certificate" in answer
            now = dt.datetime.now(dt.UTC)
            denials = (await client.search_events(type="auth", since=(now - dt.timedelta(minutes=10)).isoformat(),
                                                  until=(now + dt.timedelta(minutes=1)).isoformat(),
                                                  limit=1000))["events"]
            refused = [e for e in denials if e.get("user") == "cp-mallory" and e.get("path") == "/v1/certs/user"]
            assert len(refused) == 2 and all(e["success"] is False for e in refused)
            assert len(await cert_events(client, "admin-victim")) == before

    asyncio.run(body())


async def raw_post(addr: str, path: str, payload: bytes, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on a fresh TLS connection: the status and the body."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=AUTH_SERVER_NAME)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {AUTH_SERVER_NAME}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return int(head[9:12]), await reader.readexactly(length)
    finally:
        writer.close()
