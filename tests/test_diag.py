"""The diagnostics HTTP server on its own: binding, /healthz, /readyz, /metrics, shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from teleport_core.config.model import LogConfig
from teleport_core.config.values import NetAddr
from teleport_core.errors import TeleportError
from teleport_core.logs import configure_logging, get_logger, reset_logging
from teleport_core.net.diag import DiagServer, Readiness, ServiceHealth
from tests.process_helpers import REPO, connect_refused

pytestmark = pytest.mark.timeout(60)

Scenario = Callable[[DiagServer, httpx.AsyncClient], Awaitable[None]]


def run_server(
    scenario: Scenario,
    *,
    registry: CollectorRegistry | None = None,
    readiness: Callable[[], Readiness] = lambda: Readiness("ok"),
) -> DiagServer:
    """Start a DiagServer on 127.0.0.1:0, run ``scenario`` against it, stop it."""
    server = DiagServer(NetAddr("127.0.0.1", 0), registry or CollectorRegistry(), readiness, get_logger("diag"))

    async def main() -> None:
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                await scenario(server, client)
        finally:
            await server.stop()

    asyncio.run(main())
    return server


def test_port_zero_binds_a_free_port_and_stop_closes_it() -> None:
    async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
        assert server.addr is not None and server.addr.host == "127.0.0.1" and server.addr.port > 0
        assert server.url == f"http://127.0.0.1:{server.addr.port}"
        response = await client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert "server" not in response.headers

    server = run_server(scenario)
    assert connect_refused(str(server.addr))


def test_readyz_follows_the_readiness_callback() -> None:
    state = {"value": Readiness("teleport is starting", {"auth_service": ServiceHealth(False, "starting")})}

    async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "teleport is starting",
            "services": {"auth_service": {"ready": False, "reason": "starting"}},
        }
        state["value"] = Readiness("ok", {"auth_service": ServiceHealth(True)})
        response = await client.get("/readyz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    run_server(scenario, readiness=lambda: state["value"])


def test_metrics_come_from_the_private_registry_only() -> None:
    registry = CollectorRegistry()
    Gauge("diag_test_private_gauge", "a gauge in the process registry", registry=registry).set(7)
    global_counter = Counter("diag_test_global_only", "a counter in the global registry")
    try:

        async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=")
            assert "diag_test_private_gauge 7.0" in response.text
            assert "diag_test_global_only" not in response.text

        run_server(scenario, registry=registry)
    finally:
        REGISTRY.unregister(global_counter)


def test_only_get_on_known_paths() -> None:
    async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
        assert (await client.post("/healthz")).status_code == 405
        assert (await client.get("/debug")).status_code == 404

    run_server(scenario)


def test_an_address_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DiagServer(
            NetAddr("127.0.0.1", port), CollectorRegistry(), lambda: Readiness("ok"), get_logger("diag")
        )
        with pytest.raises(TeleportError, match=rf"^diag_addr 127\.0\.0\.1:{port}: cannot listen: "):
            asyncio.run(server.start())
    with pytest.raises(TeleportError, match="not running"):
        _ = server.url


def test_stop_does_not_hang_on_an_idle_keep_alive_connection() -> None:
    async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).status_code == 200  # the client keeps the connection open
        await asyncio.wait_for(server.stop(), 10)
        assert connect_refused(str(server.addr))

    run_server(scenario)


def test_logs_the_bound_address(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format="json"))
    try:

        async def scenario(server: DiagServer, client: httpx.AsyncClient) -> None:
            pass

        server = run_server(scenario)
    finally:
        reset_logging()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    listening = [line for line in lines if line["message"] == "diagnostics listening"]
    assert len(listening) == 1
    assert listening[0]["component"] == "diag"
    assert listening[0]["addr"] == str(server.addr)


def test_readiness_json() -> None:
    assert Readiness("ok", {"a": ServiceHealth(True)}).to_json() == {"status": "ok"}
    assert Readiness("degraded", {"a": ServiceHealth(True), "b": ServiceHealth(False, "lost")}).to_json() == {
        "status": "degraded",
        "services": {"a": {"ready": True, "reason": ""}, "b": {"ready": False, "reason": "lost"}},
    }
    assert not Readiness("teleport is starting").ready


def test_importing_the_process_does_not_import_the_web_stack() -> None:
    code = (
        "import sys, teleport_core.process, teleport_core.net.diag; "
        "print(sorted(m for m in ('starlette', 'hypercorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
