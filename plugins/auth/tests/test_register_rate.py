"""Token guessing on ``POST /v1/register`` is rate limited per source (``auth_service.
connection_limits.rates``), against a real auth server: 429 with Retry-After after the burst,
audited once (T3007W), another address still joins, and the guessing address is served again
once its tokens are back. Sources are loopback addresses (127.0.0.2 is loopback too)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, load_identity_dir
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import ClusterHandle, start_cluster
from teleport_core.testing.processes import free_port

pytestmark = pytest.mark.e2e

TOKEN = "register-rate-token-0123456789abcdef"
BURST = 3


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterHandle, Path, int]]:
    data_dir = tmp_path_factory.mktemp("auth")
    port = free_port()
    config = {"teleport": {"data_dir": str(data_dir), "nodename": "auth1"},
              "auth_service": {"cluster_name": "rate.test", "listen_addr": f"127.0.0.1:{port}",
                               "tokens": [f"node:{TOKEN}"],
                               "connection_limits": {"rates": [{"period": "2s", "average": 2, "burst": BURST}]}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield handle, data_dir, port


def client_from(port: int, source: str) -> httpx.Client:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test plays a client that only wants to guess tokens
    transport = httpx.HTTPTransport(local_address=source, verify=context)
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", transport=transport, timeout=30,
                        headers={"Host": AUTH_SERVER_NAME})


def join(client: httpx.Client, nodename: str, token: str) -> httpx.Response:
    public = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    return client.post("/v1/register", json={"nodename": nodename, "role": "node", "public_key": public,
                                             "token": token}, extensions={"sni_hostname": AUTH_SERVER_NAME})


def refusals(data_dir: Path, port: int, text: str) -> list[dict[str, Any]]:
    async def search() -> list[dict[str, Any]]:
        async with AuthClient(f"127.0.0.1:{port}", [load_identity_dir(data_dir / "keys" / "auth")]) as admin:
            return list((await admin.search_events(limit=5000, type="auth"))["events"])

    return [e for e in asyncio.run(search()) if text in e.get("error", "")]


def test_register_rate_limit(auth: tuple[ClusterHandle, Path, int]) -> None:
    _, data_dir, port = auth
    with client_from(port, "127.0.0.1") as guesser, client_from(port, "127.0.0.2") as victim:
        answers = [join(guesser, f"guess-{i}", f"wrong-token-{i:030d}") for i in range(BURST + 4)]
        codes = [a.status_code for a in answers]
        assert all(c in (401, 403, 404) for c in codes[:BURST]), codes
        limited = [a for a in answers if a.status_code == 429]
        assert limited, codes
        assert int(limited[0].headers["Retry-After"]) >= 1 and "too many attempts" in limited[0].json()["error"]
        # another address joins with the right token meanwhile
        ok = join(victim, "victim-node", TOKEN)
        assert ok.status_code == 200, ok.text
        # audited once for the burst
        text = "join: too many attempts from 127.0.0.1"
        deadline = time.monotonic() + 30
        while not (found := refusals(data_dir, port, text)):
            assert time.monotonic() < deadline, "no audit event for the rate-limited joins"
            time.sleep(0.2)
        assert len(found) == 1 and found[0]["code"] == "T3007W"
        # served again once its tokens are back (a bounded wait)
        deadline = time.monotonic() + 30
        while (again := join(guesser, "late-node", TOKEN)).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(float(again.headers["Retry-After"]))
        assert again.status_code == 200, again.text
