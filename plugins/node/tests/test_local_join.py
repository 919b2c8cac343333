"""A node in the same process as the auth service joins through it, without a token or pin
(what `make start` runs)."""

from __future__ import annotations

import asyncio

import pytest

from teleport_core.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e  # real processes end to end


def test_node_beside_auth_joins_without_token(tmp_path):
    config = {
        "teleport": {"data_dir": str(tmp_path / "data"), "nodename": "solo"},
        "auth_service": {"cluster_name": "solo.example", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"listen_addr": "127.0.0.1:0", "labels": {"env": "one-process"}},
    }
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        addr = cluster.process.services["auth_service"].address

        async def nodes():
            async with AuthClient(addr, [load_identity_dir(tmp_path / "data" / "keys" / "auth")]) as admin:
                for _ in range(100):
                    found = await admin.get_nodes()
                    if found:
                        return found
                    await asyncio.sleep(0.1)
                return []

        found = asyncio.run(nodes())
    assert [(n["nodename"], n["labels"]["env"]) for n in found] == [("solo", "one-process")]
    assert (tmp_path / "data" / "keys" / "node" / "identity").exists()
    # one process, one host: the node has the auth server's host UUID (as in Teleport)
    from teleport_core.identity import LocalIdentity

    auth_uuid = (tmp_path / "data" / "host_uuid").read_text().strip()
    assert LocalIdentity.load(tmp_path / "data" / "keys" / "node").host_uuid == auth_uuid
    assert [n["uuid"] for n in found] == [auth_uuid]


def test_a_node_stored_under_another_host_uuid_joins_again_beside_auth(tmp_path):
    """An identity stored before a process was one host (its own host UUID, which auth has no
    record of) would have every heartbeat refused: beside the auth service it joins again."""
    import uuid

    from teleport_core.identity import LocalIdentity

    config = {
        "teleport": {"data_dir": str(tmp_path / "data"), "nodename": "solo"},
        "auth_service": {"cluster_name": "solo.example", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"listen_addr": "127.0.0.1:0"},
    }
    keys_dir = tmp_path / "data" / "keys" / "node"
    with start_cluster(config, make_plugins(), timeout=120):
        pass
    (keys_dir / "host_uuid").write_text(f"{uuid.uuid4()}\n")  # as an earlier version stored it
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        addr = cluster.process.services["auth_service"].address

        async def nodes():
            async with AuthClient(addr, [load_identity_dir(tmp_path / "data" / "keys" / "auth")]) as admin:
                for _ in range(100):
                    found = await admin.get_nodes()
                    if found:
                        return found
                    await asyncio.sleep(0.1)
                return []

        found = asyncio.run(nodes())
    auth_uuid = (tmp_path / "data" / "host_uuid").read_text().strip()
    assert LocalIdentity.load(keys_dir).host_uuid == auth_uuid
    assert [(n["uuid"], n["nodename"]) for n in found] == [(auth_uuid, "solo")]
