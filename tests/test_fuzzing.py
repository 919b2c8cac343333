"""The schemathesis harness (teleport_core.testing.fuzzing) catches what it is there to catch:
a 5xx, and an answer that breaks the declared schema, from a small real HTTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from teleport_core.testing.fuzzing import fuzz

DOC: dict[str, Any] = {
    "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
    "paths": {
        "/items/{n}": {"get": {"parameters": [{"name": "n", "in": "path", "required": True,
                                               "schema": {"type": "integer", "minimum": 0, "maximum": 1000}}],
                               "responses": {"200": {"description": "ok", "content": {"application/json": {
                                   "schema": {"type": "object", "properties": {"n": {"type": "integer"}},
                                              "required": ["n"]}}}}}}},
        "/ok": {"get": {"responses": {"200": {"description": "ok", "content": {"application/json": {
            "schema": {"type": "object"}}}}}}},
    },
}


async def item(request: Request) -> JSONResponse:
    text = request.path_params["n"]
    if not (text.isascii() and text.isdigit()):
        return JSONResponse({"error": "n: expected an integer"}, status_code=400)
    n = int(text)
    if n % 2 == 0:
        raise ZeroDivisionError("a bug")  # starlette answers 500
    return JSONResponse({"n": "many" if n > 10 else n})  # breaks the declared integer past 10


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({})


@pytest.fixture
def server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    app = Starlette(routes=[Route("/items/{n}", item), Route("/ok", ok)])
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(serve(app, config, shutdown_trigger=stop.wait),), daemon=True)  # type: ignore[arg-type]
    thread.start()
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_fuzz_reports_a_server_error_and_a_schema_violation(server: str) -> None:
    report = fuzz(DOC, server, max_examples=40)
    assert report.operations == 2 and report.requests > 2
    assert report.server_errors >= 1 and not report.ok
    text = report.summary()
    assert any(f.startswith("GET /items/") and "-> 500" in f for f in report.failures), text  # the 5xx, its request
    assert any("/items/" in f and "-> 200" in f for f in report.failures), text  # {"n": "many"}


def test_fuzz_excludes_operations(server: str) -> None:
    report = fuzz(DOC, server, max_examples=5, exclude={("GET", "/items/{n}")})
    assert report.operations == 1 and report.ok, report.summary()
