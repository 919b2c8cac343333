"""teleport_core.api.join against a real auth server: join once, reuse the stored identity, refuse a
wrong pin, wait for an auth server that is not up yet."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.api.join import JoinError, JoinRequest, identity_dir, obtain_identity
from teleport_core.config.load import parse_config
from teleport_core.errors import AccessDenied
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.processes import free_port

pytestmark = pytest.mark.e2e  # real processes end to end


class Log:
    """Collects what the join code logs (it takes a structlog-style logger)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def info(self, message, **kw):
        self.lines.append(("info", message, kw))

    def warning(self, message, **kw):
        self.lines.append(("warning", message, kw))


def node_config(tmp_path, auth_addr: str, token: str | None, pins: list[str]):
    data = {"teleport": {"data_dir": str(tmp_path / "node"), "nodename": "n1", "auth_server": auth_addr,
                         "ca_pin": pins},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"enabled": False}}
    if token:
        data["teleport"]["auth_token"] = token
    return parse_config(data, make_plugins())


def auth_config(tmp_path, port: int) -> dict:
    return {"teleport": {"data_dir": str(tmp_path / "auth"), "nodename": "a1"},
            "auth_service": {"cluster_name": "join.example", "listen_addr": f"127.0.0.1:{port}",
                             "tokens": ["node:static-node-token-0123456789"]},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}


def status(tmp_path, addr: str) -> dict:
    async def body():
        async with AuthClient(addr, [load_identity_dir(tmp_path / "auth" / "keys" / "auth")]) as client:
            return await client.status()

    return asyncio.run(body())


def test_join_once_then_reuse_and_wrong_pin_refused(tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    with start_cluster(auth_config(tmp_path, port), make_plugins(), timeout=60):
        pin = status(tmp_path, addr)["ca_pin"]
        wrong = node_config(tmp_path, addr, "static-node-token-0123456789", ["sha256:" + "1" * 64])
        with pytest.raises(AccessDenied, match="^cluster pin does not match"):
            asyncio.run(obtain_identity(wrong, JoinRequest("node", "n1"), Log()))
        assert not identity_dir(wrong, "node").exists()  # nothing stored, nothing sent
        config = node_config(tmp_path, addr, "static-node-token-0123456789", [pin])
        log = Log()
        identity = asyncio.run(obtain_identity(config, JoinRequest("node", "n1"), log))
        assert identity.host_uuid and identity.ssh_cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
        assert ("info", "joined the cluster") in [(lvl, msg) for lvl, msg, _ in log.lines]
        folder = identity_dir(config, "node")
        assert oct((folder / "key").stat().st_mode & 0o777) == "0o600"
        assert json.loads((folder / "cluster.json").read_text())["cluster_name"] == "join.example"
        # a later start reuses it, without a token
        again = asyncio.run(obtain_identity(node_config(tmp_path, addr, None, []), JoinRequest("node", "n1"), Log()))
        assert again.host_uuid == identity.host_uuid and again.tls_cert_pem == identity.tls_cert_pem


def test_no_pin_warns_and_no_token_is_an_error(tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    with pytest.raises(JoinError, match="no join token is set"):
        asyncio.run(obtain_identity(node_config(tmp_path, addr, None, []), JoinRequest("node", "n1"), Log()))
    with start_cluster(auth_config(tmp_path, port), make_plugins(), timeout=60):
        log = Log()
        asyncio.run(obtain_identity(node_config(tmp_path, addr, "static-node-token-0123456789", []),
                                    JoinRequest("node", "n1"), log))
        warnings = [msg for lvl, msg, _ in log.lines if lvl == "warning"]
        assert warnings and warnings[0].startswith("joining without a CA pin")


def test_unreachable_auth_server_is_retried_until_it_comes_up(tmp_path, monkeypatch):
    from teleport_core.api import join

    monkeypatch.setattr(join, "FIRST_RETRY", 0.2)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = node_config(tmp_path, addr, "static-node-token-0123456789", [])
    log = Log()

    async def scenario():
        joining = asyncio.create_task(obtain_identity(config, JoinRequest("node", "n1"), log))
        await asyncio.sleep(1.0)
        assert not joining.done()
        handle = await asyncio.to_thread(start_cluster, auth_config(tmp_path, port), make_plugins(), timeout=60)
        try:
            return await asyncio.wait_for(joining, 30)
        finally:
            await asyncio.to_thread(handle.stop)

    logging.getLogger().setLevel(logging.WARNING)
    identity = asyncio.run(scenario())
    assert identity.host_uuid
    retries = [kw for lvl, msg, kw in log.lines if msg == "auth server unreachable, will retry"]
    assert len(retries) >= 2 and retries[0]["auth_server"] == addr and "retry_in" in retries[0]
