"""Auth worker processes share one join allowance per source (``connection_limits.rates`` through
teleport_core.net.shared_rates): a token guesser whose fresh connections the kernel spreads over
every worker gets the burst once, not once per process, and its burst is audited once. A real
``teleport start`` with three auth processes on SQLite."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, load_identity_dir
from teleport_core.pki import keys
from teleport_core.testing.processes import TeleportProcess, free_port
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

WORKERS = 3
BURST = 4
GUESSES = 24
TOKEN = "workers-rate-token-0123456789abcdef"


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeleportProcess]:
    config = {"auth_service": {"cluster_name": "rates.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "workers": WORKERS, "tokens": [f"node:{TOKEN}"],
                               "connection_limits": {"rates": [{"period": "1h", "average": 1, "burst": BURST}]}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path_factory.mktemp("workers-rates"), "auth", config)
    process.start(timeout=180)
    try:
        yield process
    finally:
        process.stop()


def guess(addr: str, i: int) -> int:
    """One join with a wrong token over a new connection (the kernel picks the worker): its status."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker only wants to guess tokens
    public = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    with httpx.Client(base_url=f"https://{addr}", verify=context, timeout=60,
                      headers={"Host": AUTH_SERVER_NAME}) as client:
        answer = client.post("/v1/register", json={"nodename": f"guess-{i}", "role": "node", "public_key": public,
                                                   "token": f"wrong-token-{i:030d}"},
                             extensions={"sni_hostname": AUTH_SERVER_NAME})
    return answer.status_code


def events(auth: TeleportProcess) -> list[dict[str, Any]]:
    async def search() -> list[dict[str, Any]]:
        async with AuthClient(auth.config["auth_service"]["listen_addr"],
                              [load_identity_dir(auth.data_dir / "keys" / "auth")]) as admin:
            return list((await admin.search_events(limit=5000, type="auth"))["events"])

    return asyncio.run(search())


def serving_spools(auth: TeleportProcess) -> set[str]:
    """The auth processes' audit spools holding events: which processes answered."""
    return {p.parent.name for p in (auth.data_dir / "log" / "auth-audit-spool").glob("*/events.jsonl")
            if p.stat().st_size > 0}


def test_a_guesser_gets_one_burst_across_every_worker(auth: TeleportProcess) -> None:
    addr = auth.config["auth_service"]["listen_addr"]
    codes = [guess(addr, i) for i in range(GUESSES)]
    assert codes.count(429) == GUESSES - BURST, codes  # a bucket per process would let up to 3 x 4 through
    assert all(code in (401, 403, 404) for code in codes[:BURST]), codes
    assert len(serving_spools(auth)) >= 2  # the guesses did reach more than one process
    limited = wait_for(lambda: [e for e in events(auth) if "join: too many attempts from 127.0.0.1" in e.get("error", "")],
                       what="the audited burst")
    assert len(limited) == 1 and limited[0]["code"] == "T3007W", limited
    assert (auth.data_dir / "auth-rates").stat().st_mode & 0o777 == 0o600


def test_a_right_token_still_joins_and_costs_nothing(auth: TeleportProcess, tmp_path: Path) -> None:
    """The guesser is locked out, not the address's legitimate joins from elsewhere (another loopback address)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    addr = auth.config["auth_service"]["listen_addr"]
    for i in range(BURST + 2):  # more than the burst: successful joins give their token back
        public = keys.public_key_openssh(keys.generate_private_key("ed25519"))
        with httpx.Client(base_url=f"https://{addr}", verify=context, timeout=60, headers={"Host": AUTH_SERVER_NAME},
                          transport=httpx.HTTPTransport(local_address="127.0.0.3", verify=context)) as client:
            answer = client.post("/v1/register", json={"nodename": f"node-{i}", "role": "node", "public_key": public,
                                                       "token": TOKEN}, extensions={"sni_hostname": AUTH_SERVER_NAME})
        assert answer.status_code == 200, answer.text
