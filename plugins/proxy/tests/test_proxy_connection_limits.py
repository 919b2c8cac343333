"""The proxy under floods (``proxy_service.connection_limits``), against a real one-process
cluster: web logins are rate limited per source (429 + Retry-After, audited once a burst, then
served again), and the SSH and reverse-tunnel ports cap unauthenticated connections per source.
Sources are loopback addresses: the attacker is 127.0.0.1, the victim 127.0.0.2."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from proxy_helpers import LOGIN, Env, one_process_config

from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e

PER_SOURCE = 5
BURST = 3
PASSWORD = "limits-password-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("limits")
    config = one_process_config(root, "limits-1")
    config["ssh_service"] = {"enabled": False}
    config["proxy_service"]["connection_limits"] = {
        "rates": [{"period": "2s", "average": 2, "burst": BURST}], "per_source_max_startups": PER_SOURCE,
        "max_startups": "50:30:100", "login_grace_time": "30s"}
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "dev"},
                               "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}}}})
        e.signup("lena", ["dev"], [LOGIN], PASSWORD)
        yield e


def web_from(env: Env, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source, verify=False)
    # one connection per request: a kept-alive connection the server closed after an answer is
    # not what this test is about
    return httpx.Client(base_url=f"https://{env.web}", transport=transport, timeout=30,
                        headers={"Connection": "close"})


def login(web: httpx.Client, password: str, user: str = "lena") -> httpx.Response:
    pub = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    return web.post("/v1/webapi/ssh/certs", json={"user": user, "password": password, "pub_key": pub})


def events(env: Env, text: str) -> list[dict[str, Any]]:
    async def search() -> list[dict[str, Any]]:
        async with env.admin() as client:
            return list((await client.search_events(limit=5000, type="auth"))["events"])

    found = asyncio.run(search())
    return [e for e in found if e.get("event") == "auth" and text in e.get("error", "")]


def wait_event(env: Env, text: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not (found := events(env, text)):
        assert time.monotonic() < deadline, f"no auth event with {text!r}"
        time.sleep(0.2)
    return found[-1]


def test_web_login_rate_limit(env: Env) -> None:
    with web_from(env, "127.0.0.1") as attacker, web_from(env, "127.0.0.2") as victim:
        # guesses for an unknown user (lena's account lockout, another defence, would refuse her),
        # sent at once: one after another, each refused login took longer than a refill on a loaded
        # machine and the burst was never exceeded
        with concurrent.futures.ThreadPoolExecutor(BURST + 5) as pool:
            answers = list(pool.map(lambda _: login(attacker, "wrong-password-guess", user="lena-guessed"),
                                    range(BURST + 5)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {401, 429} and statuses.count(401) >= BURST, statuses
        limited = [a for a in answers if a.status_code == 429]
        assert limited, [a.status_code for a in answers]
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert "too many attempts" in limited[0].json()["error"]
        # the victim, from another address, still logs in
        ok = login(victim, PASSWORD)
        assert ok.status_code == 200, ok.text
        assert ok.json()["username"] == "lena"
        # one audit event for the burst, not one per refusal
        event = wait_event(env, "web login: too many attempts from 127.0.0.1")
        assert event["code"] == "T3007W" and event["addr.remote"] == "127.0.0.1"
        assert len(events(env, "web login: too many attempts from 127.0.0.1")) == 1
        # after Retry-After the attacker's address is served again (a bounded wait)
        deadline = time.monotonic() + 30
        while (again := login(attacker, PASSWORD)).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(float(again.headers["Retry-After"]))
        assert again.status_code == 200, again.text


def banner_only(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(b"SSH-2.0-flood\r\n")
    return sock


def greeted(sock: socket.socket) -> bool:
    try:
        return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@pytest.mark.parametrize("port_of", ["ssh", "tunnel"])
def test_per_source_cap_on_ssh_ports(env: Env, port_of: str) -> None:
    port = env.ssh_port if port_of == "ssh" else env.proxy.tunnel_address.port
    flood = [banner_only(port, "127.0.0.1") for _ in range(60)]
    try:
        held = [s for s in flood if greeted(s)]
        assert 1 <= len(held) <= PER_SOURCE
        other = banner_only(port, "127.0.0.2")
        assert greeted(other)  # another source still gets in
        other.close()
        event = wait_event(env, f"{'proxy_service' if port_of == 'ssh' else 'proxy_service tunnel'}: "
                                f"{PER_SOURCE} unauthenticated connections from 127.0.0.1")
        assert event["code"] == "T3007W"
    finally:
        for sock in flood:
            with contextlib.suppress(OSError):
                sock.close()
