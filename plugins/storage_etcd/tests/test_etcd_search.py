"""An auth server on etcd cannot search recordings by their text and says why (a 400 naming etcd,
never a 500); listing recordings without search still works (docs/sessions.md)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from etcd_server import EtcdMember, etcd_fixture

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytest.importorskip("teleport_auth", reason="the auth plugin is not installed")

pytestmark = pytest.mark.e2e


def test_search_on_etcd_says_it_cannot(tmp_path: Path, etcd: EtcdMember) -> None:
    data_dir = tmp_path / "auth"
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(data_dir), "nodename": "auth-etcd",
                     "storage": {"type": "etcd", "peers": [etcd.url], "prefix": f"/search-{uuid.uuid4().hex}"}},
        "auth_service": {"cluster_name": "etcd.example.com", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=60) as cluster:
        addr = cluster.process.services["auth_service"].address

        async def body() -> None:
            async with AuthClient(addr, [load_identity_dir(data_dir / "keys" / "auth")]) as admin:
                assert await admin.list_recordings() == []
                with pytest.raises(TeleportError) as caught:
                    await admin.list_recordings(search="needle")
                message = str(caught.value)
                assert message.startswith("recordings cannot be searched: the etcd backend"), message
                assert "listing recordings without search works" in message
                with pytest.raises(TeleportError, match="the etcd backend keeps no full-text index"):
                    await admin.call("POST", "/v1/sessions/reindex", {"all": True})

        asyncio.run(body())


__all__ = ["etcd_fixture"]  # the session etcd fixture, imported for pytest
