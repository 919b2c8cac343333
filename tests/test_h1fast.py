"""Hostile HTTP/1.1 input against both of TLSServer's HTTP/1.1 servers (hypercorn and uvicorn's
httptools, teleport_core.net.h1fast), played on a real TLS listener on loopback: oversized and
dribbled request heads, garbage, an HTTP/2 preface and a protocol upgrade where neither is spoken,
pipelined requests; and the ALPN choice (h2 stays on hypercorn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from teleport_core.config.values import NetAddr
from teleport_core.net.httplimits import MAX_HEAD
from teleport_core.net.tlsserver import HTTP1_ENV, HTTP1_SERVERS, TLSServer, bind_socket
from tests.test_httplimits import APP, Running, closed_by_server, read_answer
from tests.test_tlsserver import client_context, make_ca, server_context


@pytest.fixture(params=HTTP1_SERVERS)
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    running = Running(tmp_path, http1=request.param)
    try:
        yield running
    finally:
        running.stop()


def http1(server: Running) -> str:
    return server.server.http1


def test_an_oversized_request_head_is_refused_before_the_app(server: Running) -> None:
    """Over the limit on httptools; h11 checks its limit only on a head still incomplete after a
    read (up to 64 KiB), so hypercorn is given heads past that."""
    over = MAX_HEAD + 1024 if http1(server) == "httptools" else 6 * MAX_HEAD
    big = b"a" * over
    for head in (b"GET /ping?" + big + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a long request line
                 b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: " + big + b"\r\n\r\n",  # one long header
                 b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * (over // 8) + b"\r\n"):  # many headers
        with server.tls() as sock:
            with contextlib.suppress(OSError, ssl.SSLError):  # the server may cut the rest of the head
                sock.sendall(head)
            assert read_answer(sock)[0] == 431
            assert closed_by_server(sock)
    with server.tls() as sock:  # a head just under the limit is served
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD - 200) + b"\r\n\r\n")
        assert read_answer(sock) == (200, b'{"ok":true}')


def test_a_header_that_never_ends_is_cut_at_the_head_limit_not_buffered(server: Running) -> None:
    """An endless header value, sent in pieces (llhttp buffers a value until its line ends): cut
    once the head passes the limit, well before the client is done."""
    sent = 0
    with server.tls() as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(OSError, ssl.SSLError):
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"v" * 4096)
                sent += 4096
        assert sent < 64 * 1024 * 1024
        with contextlib.suppress(OSError, ssl.SSLError):  # the answer may be lost to the reset
            assert read_answer(sock)[0] == 431
    assert server.connections_end()
    assert server.get_ping() == 200


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02\xff garbage\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_garbage_is_a_400_and_the_connection_ends(server: Running, garbage: bytes) -> None:
    """llhttp refuses each; h11 is more lenient with some (HTTP/9.9, CL with chunked): never a 5xx."""
    with server.tls() as sock:
        sock.sendall(garbage)
        status = read_answer(sock)[0]
        if http1(server) == "httptools":
            assert status == 400
            assert closed_by_server(sock)
        else:
            assert status < 500
    assert server.get_ping() == 200


def test_an_http2_preface_and_an_upgrade_are_not_switched_to_on_the_httptools_path(tmp_path: Path) -> None:
    running = Running(tmp_path, http1="httptools")
    try:
        with running.tls() as sock:  # prior-knowledge h2: not spoken over HTTP/1.1 here (ALPN only)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert read_answer(sock)[0] == 400
            assert closed_by_server(sock)
        for framing in (b"Content-Length: 4\r\n\r\nabcd", b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"):
            with running.tls() as sock:  # an upgrade with a body (llhttp would not parse it): refused
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n" + framing)
                assert read_answer(sock)[0] == 400
                assert closed_by_server(sock)
        with running.tls() as sock:  # an upgrade without a body: answered as a plain request, then closed
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            assert read_answer(sock) == (200, b'{"ok":true}')
            assert closed_by_server(sock)
    finally:
        running.stop()


def test_pipelined_requests_are_answered_in_order(server: Running) -> None:
    with server.tls() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
        assert read_answer(sock) == (200, b'{"size":3}')
        assert read_answer(sock) == (200, b'{"ok":true}')
        assert read_answer(sock) == (200, b'{"size":2}')


def test_a_slow_head_after_an_idle_keep_alive_period_is_closed(server: Running) -> None:
    """A request, then the start of another head dribbled a byte at a time: the head deadline
    counts from the new head's first byte and closes it."""
    with server.tls() as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock) == (200, b'{"ok":true}')
        stop = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                sock.sendall(b"GET /ping HTTP/1.1\r\n")
                while not stop.is_set():
                    sock.sendall(b"X")
                    time.sleep(0.3)

        thread = threading.Thread(target=drip, daemon=True)
        thread.start()
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()


def test_alpn_h2_stays_on_hypercorn_and_http11_goes_to_httptools(tmp_path: Path) -> None:
    ca = make_ca("cluster")
    context = server_context(tmp_path, ca, "srv")
    context.set_alpn_protocols(["h2", "http/1.1"])

    async def run() -> None:
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), context, http1="httptools")
        await server.start()
        url = f"https://localhost:{server.address.port}/ping"
        try:
            async with httpx.AsyncClient(verify=client_context(tmp_path, ca), http2=True) as client:
                response = await client.get(url)
                assert (response.http_version, response.json()) == ("HTTP/2", {"ok": True})
                assert server._h1.state.total_requests == 0  # not through httptools
                response = await client.post(url.replace("/ping", "/echo"), content=b"x" * 60_000)
                assert (response.http_version, response.json()) == ("HTTP/2", {"size": 60_000})
            async with httpx.AsyncClient(verify=client_context(tmp_path, ca)) as client:
                response = await client.get(url)
                assert (response.http_version, response.json()) == ("HTTP/1.1", {"ok": True})
                assert server._h1.state.total_requests == 1
        finally:
            await server.stop()

    asyncio.run(run())


def test_the_environment_can_put_every_listener_back_on_hypercorn_only(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca("cluster")

    def chosen(http1: str) -> str:
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "s"), http1=http1)
        server.sock.close()
        return server.http1

    monkeypatch.setenv(HTTP1_ENV, "hypercorn")
    assert (chosen("httptools"), chosen("hypercorn")) == ("hypercorn", "hypercorn")
    monkeypatch.setenv(HTTP1_ENV, "httptools")  # a listener that kept hypercorn (WebSockets) stays on it
    assert (chosen("httptools"), chosen("hypercorn")) == ("httptools", "hypercorn")
    monkeypatch.setenv(HTTP1_ENV, "nginx")
    with pytest.raises(ValueError, match="TELEPORT_HTTP1: expected one of hypercorn, httptools, got 'nginx'"):
        chosen("httptools")
    monkeypatch.delenv(HTTP1_ENV)
    with pytest.raises(ValueError, match="http1: expected one of hypercorn, httptools, got 'h3'"):
        chosen("h3")


def test_a_413_on_the_httptools_path_says_why(server: Running) -> None:
    with server.tls() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
        status, body = read_answer(sock)
        assert (status, json.loads(body)) == (413, {"error": "request body over 65536 bytes"})


@pytest.mark.parametrize("http1", HTTP1_SERVERS)
def test_time_the_app_spends_not_reading_the_body_does_not_count(tmp_path: Path, http1: str) -> None:
    """The client sends 1 MiB at once; the app reads it only after 2.5x the body grace period:
    the server stopped reading meanwhile (flow control), so the body is not "too slow"."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.test_httplimits import LIMITS

    async def late(request: Request) -> JSONResponse:
        await asyncio.sleep(LIMITS.body_grace * 2.5 + LIMITS.body_timeout)  # a bounded wait: no time is asserted
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"size": size})

    app = Starlette(routes=[Route("/upload/{name}", late, methods=["PUT"])])
    ca = make_ca("cluster")

    async def run() -> None:
        server = TLSServer(app, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "srv"),
                           limits=LIMITS, http1=http1)
        await server.start()
        try:
            async with httpx.AsyncClient(verify=client_context(tmp_path, ca), timeout=60) as client:
                response = await client.put(f"https://localhost:{server.address.port}/upload/a",
                                            content=b"z" * (1 << 20))
                assert response.json() == {"size": 1 << 20}
        finally:
            await server.stop()

    asyncio.run(run())
