"""The webhook plugin in a real auth service: each access request change reaches a local HTTP
server on 127.0.0.1 as JSON, with the configured token; bad settings are clear config errors."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from teleport_access_request_webhook import plugin

from teleport_core.api.client import AuthClient, load_identity_dir, load_tls
from teleport_core.config.load import parse_config
from teleport_core.errors import ConfigError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import Plugins, make_plugins
from teleport_core.testing.cluster import start_cluster


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, Any], str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((json.loads(body), self.headers.get("Authorization", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, Any], str]]]]:
    Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Receiver.received
    server.shutdown()
    server.server_close()


def with_webhook() -> Plugins:
    """The installed plugins, with this one (registered directly when it is not installed)."""
    plugins = make_plugins()
    if plugins.pm.get_plugin(plugin.NAME) is None:
        plugins = make_plugins(objects=[(plugin.NAME, plugin)])
    return plugins


ROLES = [
    {"kind": "role", "version": "v5", "metadata": {"name": "dev"},
     "spec": {"allow": {"request": {"roles": ["dba"]}}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "dba"}, "spec": {"allow": {"logins": ["dba"]}}},
    {"kind": "role", "version": "v5", "metadata": {"name": "reviewer"},
     "spec": {"allow": {"review_requests": {"roles": ["dba"]}}}},
]


def test_each_change_is_posted_to_the_url(tmp_path, receiver):
    url, received = receiver
    config = {
        "teleport": {"data_dir": str(tmp_path / "data"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
        "plugins": {plugin.NAME: {"url": url, "token": "webhook-token-123"}},
    }
    with start_cluster(config, with_webhook(), timeout=60) as handle:
        addr = handle.process.services["auth_service"].address

        async def scenario() -> str:
            admin = AuthClient(addr, [load_identity_dir(tmp_path / "data" / "keys" / "auth")])
            async with admin:
                await admin.create_resources(ROLES)
                identities = {}
                for name, roles in (("alice", ["dev"]), ("bob", ["reviewer"])):
                    await admin.create_user(name, roles)
                    key = keys.generate_private_key("ed25519")
                    certs = await admin.sign_user_cert(name, keys.public_key_openssh(key), "1h")
                    identities[name] = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                                     tuple(p.encode() for p in certs["host_ca_pems"]))
            async with AuthClient(addr, [load_tls(identities["alice"].client_context())]) as alice:
                created = await alice.call("POST", "/v1/access_requests", {"roles": ["dba"], "reason": "on call"})
            request_id = str(created["metadata"]["name"])
            async with AuthClient(addr, [load_tls(identities["bob"].client_context())]) as bob:
                await bob.call("POST", f"/v1/access_requests/{request_id}/reviews", {"proposed_state": "APPROVED"})
            return request_id

        request_id = asyncio.run(scenario())
        deadline = time.monotonic() + 30
        while len(received) < 2:
            assert time.monotonic() < deadline, f"the webhook got {received}"
            time.sleep(0.05)
    (first, auth_header), (second, _) = received
    assert auth_header == "Bearer webhook-token-123"
    assert first["change"] == "created" and second["change"] == "approved"
    assert first["request"]["kind"] == "access_request" and first["request"]["metadata"]["name"] == request_id
    assert first["request"]["spec"]["user"] == "alice" and first["request"]["spec"]["roles"] == ["dba"]
    assert first["request"]["spec"]["request_reason"] == "on call"
    assert second["request"]["spec"]["state"] == "APPROVED"


@pytest.mark.parametrize(("settings", "error"), [
    ({"url": "ftp://example.com/x"}, "plugins.access_request_webhook.url: expected an http:// or https:// URL"),
    ({"url": "http://x", "timeout": "0s"}, "plugins.access_request_webhook.timeout: must be positive"),
    ({"url": "http://x", "tokn": "x"}, "plugins.access_request_webhook.tokn: unknown key"),
])
def test_bad_settings_are_config_errors(tmp_path, settings, error):
    with pytest.raises(ConfigError) as caught:
        parse_config({"teleport": {"data_dir": str(tmp_path)}, "plugins": {plugin.NAME: settings}}, with_webhook())
    assert error in str(caught.value)
