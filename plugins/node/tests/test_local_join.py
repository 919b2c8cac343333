"""A node in the same process as the auth service joins through it, without a token or pin
(what `make start` runs)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import ClusterHandle, start_cluster

pytestmark = pytest.mark.e2e  # real processes end to end


def solo_config(data: Path, **ssh: Any) -> dict[str, Any]:
    return {
        "teleport": {"data_dir": str(data), "nodename": "solo"},
        "auth_service": {"cluster_name": "solo.example", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"listen_addr": "127.0.0.1:0", **ssh},
    }


def registered_nodes(cluster: ClusterHandle, data: Path) -> list[dict[str, Any]]:
    """The node list as auth's own identity sees it, once the node has heartbeated (or [] after 10 s)."""
    addr = cluster.process.services["auth_service"].address

    async def nodes() -> list[dict[str, Any]]:
        async with AuthClient(addr, [load_identity_dir(data / "keys" / "auth")]) as admin:
            for _ in range(100):
                found = await admin.get_nodes()
                if found:
                    return found
                await asyncio.sleep(0.1)
            return []

    return asyncio.run(nodes())


def test_node_beside_auth_joins_without_token(tmp_path):
    data = tmp_path / "data"
    with start_cluster(solo_config(data, labels={"env": "one-process"}), make_plugins(), timeout=120) as cluster:
        found = registered_nodes(cluster, data)
    assert [(n["nodename"], n["labels"]["env"]) for n in found] == [("solo", "one-process")]
    assert (data / "keys" / "node" / "identity").exists()
    # one process, one host: the node has the auth server's host UUID (as in Teleport)
    auth_uuid = (data / "host_uuid").read_text().strip()
    assert LocalIdentity.load(data / "keys" / "node").host_uuid == auth_uuid
    assert [n["uuid"] for n in found] == [auth_uuid]


def test_a_node_stored_under_another_host_uuid_joins_again_beside_auth(tmp_path):
    """An identity stored before a process was one host (its own host UUID, which auth has no
    record of) would have every heartbeat refused: beside the auth service it joins again."""
    data = tmp_path / "data"
    keys_dir = data / "keys" / "node"
    with start_cluster(solo_config(data), make_plugins(), timeout=120):
        pass
    (keys_dir / "host_uuid").write_text(f"{uuid.uuid4()}\n")  # as an earlier version stored it
    with start_cluster(solo_config(data), make_plugins(), timeout=120) as cluster:
        found = registered_nodes(cluster, data)
    auth_uuid = (data / "host_uuid").read_text().strip()
    assert LocalIdentity.load(keys_dir).host_uuid == auth_uuid
    assert [(n["uuid"], n["nodename"]) for n in found] == [(auth_uuid, "solo")]
