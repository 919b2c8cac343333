"""Two auth servers on one etcd: they share CAs, users, roles and tokens; a token is used once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from etcd_server import EtcdMember, etcd_fixture

from teleport_core.api.client import AuthClient, load_identity_dir, register
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytest.importorskip("teleport_auth", reason="the auth plugin is not installed")

pytestmark = pytest.mark.e2e

ROLE = {
    "kind": "role",
    "version": "v5",
    "metadata": {"name": "ha-role"},
    "spec": {"allow": {"logins": ["ha"], "node_labels": {"*": "*"}}},
}


def auth_config(data_dir: Path, peers: list[str], prefix: str, nodename: str) -> dict[str, Any]:
    """An auth server on etcd; audit events and recordings in directories shared with the other
    auth server (beside both data_dirs): several auth servers with local ones are refused."""
    shared = data_dir.parent / "shared"
    return {
        "version": "v3",
        "teleport": {
            "data_dir": str(data_dir),
            "nodename": nodename,
            "storage": {"type": "etcd", "peers": peers, "prefix": prefix,
                        "audit_events_uri": [f"file://{shared / 'audit'}"],
                        "audit_sessions_uri": f"file://{shared / 'records'}"},
        },
        "auth_service": {"cluster_name": "ha.example.com", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }


async def join(addr: str, token: str, nodename: str) -> dict[str, Any]:
    key = keys.generate_private_key("ed25519")
    body = {"token": token, "role": "Node", "nodename": nodename, "public_key": keys.public_key_openssh(key)}
    joined = await register(addr, body, [])
    return dict(joined.answer)


@pytest.mark.hook_call_site("teleport_storage_backends")
def test_two_auth_servers_share_state(tmp_path: Path, etcd: EtcdMember) -> None:
    prefix = f"/ha-{uuid.uuid4().hex}"
    dirs = [tmp_path / "auth1", tmp_path / "auth2"]
    first = start_cluster(auth_config(dirs[0], [etcd.url], prefix, "auth-1"), make_plugins(), timeout=60)
    with first:
        second = start_cluster(auth_config(dirs[1], [etcd.url], prefix, "auth-2"), make_plugins(), timeout=60)
        with second:
            addrs = [h.process.services["auth_service"].address for h in (first, second)]

            def admin(index: int) -> AuthClient:
                return AuthClient(addrs[index], [load_identity_dir(dirs[index] / "keys" / "auth")])

            async def body() -> None:
                async with admin(0) as one, admin(1) as two:
                    for kind in ("host", "user"):
                        assert await one.get_cert_authority(kind) == await two.get_cert_authority(kind)
                    assert (await one.status())["ca_pin"] == (await two.status())["ca_pin"]
                    await one.upsert_role(ROLE)
                    assert (await two.get_role("ha-role"))["spec"]["allow"]["logins"] == ["ha"]
                    await two.create_user("alice", ["ha-role"])
                    names = [u["metadata"]["name"] for u in await one.get_users()]
                    assert "alice" in names
                    await one.upsert_node(
                        {
                            "uuid": str(uuid.uuid4()),
                            "nodename": "inv-1",
                            "addr": "127.0.0.1:3022",
                            "labels": {"env": "ha"},
                        }
                    )
                    nodes = {n["nodename"]: n["labels"] for n in await two.get_nodes()}
                    assert nodes.get("inv-1") == {"env": "ha"}
                    token = (await one.create_token(["node"], "10m"))["token"]
                    assert token in [t.get("token", t.get("metadata", {}).get("name")) for t in await two.get_tokens()]
                # a dynamic token made through one server is consumed once, through either
                joined = await join(addrs[1], token, "node-a")
                assert joined["host_uuid"]
                with pytest.raises(AccessDenied, match="token is not valid"):
                    await join(addrs[0], token, "node-b")
                with pytest.raises(AccessDenied, match="token is not valid"):
                    await join(addrs[1], token, "node-c")

            asyncio.run(asyncio.wait_for(body(), 120))


def test_two_auth_servers_starting_together_agree_on_cas(tmp_path: Path, etcd: EtcdMember) -> None:
    prefix = f"/ha-{uuid.uuid4().hex}"
    dirs = [tmp_path / "auth1", tmp_path / "auth2"]

    async def start_both() -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(
                        start_cluster, auth_config(d, [etcd.url], prefix, f"auth-{i}"), make_plugins(), timeout=60
                    )
                    for i, d in enumerate(dirs)
                ),
                return_exceptions=True,
            )
        )

    started = asyncio.run(start_both())
    handles = [h for h in started if not isinstance(h, BaseException)]
    if len(handles) < len(started):
        for handle in handles:
            handle.stop()
        pytest.fail(f"an auth server did not start: {[h for h in started if isinstance(h, BaseException)]}")
    try:
        addrs = [h.process.services["auth_service"].address for h in handles]

        async def body() -> None:
            clients = [
                AuthClient(a, [load_identity_dir(d / "keys" / "auth")]) for a, d in zip(addrs, dirs, strict=True)
            ]
            async with clients[0] as one, clients[1] as two:
                for kind in ("host", "user"):
                    assert await one.get_cert_authority(kind) == await two.get_cert_authority(kind)

        asyncio.run(asyncio.wait_for(body(), 60))
    finally:
        for handle in handles:
            handle.stop()


__all__ = ["etcd_fixture"]  # the session etcd fixture, imported for pytest
