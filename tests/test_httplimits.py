"""Bounds before authentication on the kernel's HTTPS listener (TLSServer + teleport_core.net.httplimits),
played by an attacker against a real server on loopback: oversized and streamed bodies, slow
request heads and bodies, refused client certificates, answers the client no longer takes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from teleport_core.config.values import NetAddr
from teleport_core.net.httplimits import GuardedApp, HTTPLimits, RouteLimit
from teleport_core.net.limits import AuditThrottle
from teleport_core.net.tlsserver import HTTP1_SERVERS, TLSServer, bind_socket
from tests.test_tlsserver import client_context, issue, make_ca, server_context

LIMITS = HTTPLimits(max_body=64 * 1024, routes=(RouteLimit("PUT", "/upload/{name}", 4 * 1024 * 1024),
                                                RouteLimit("POST", "/login", 16 * 1024)),
                    header_timeout=2.0, body_timeout=3.0, body_grace=1.0, min_body_rate=1000.0)


async def echo(request: Request) -> JSONResponse:
    """Reads the whole body as an app that trusts its input would."""
    return JSONResponse({"size": len(await request.body())})


async def upload(request: Request) -> JSONResponse:
    """Streams the body, as the recording upload does."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"size": size})


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/login", echo, methods=["POST"]),
                        Route("/upload/{name}", upload, methods=["PUT"]), Route("/ping", ping, methods=["GET"])])


class Running:
    """A TLSServer on its own event loop in a thread; ``refusals`` what ``on_refused`` got."""

    def __init__(self, tmp_path: Path, limits: HTTPLimits = LIMITS, http1: str = "hypercorn") -> None:
        self.ca = make_ca("cluster")
        self.tmp = tmp_path
        self.refusals: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, self.ca, "srv"),
                                limits=limits, on_refused=self._refused, http1=http1)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.address.port

    async def _refused(self, peer: str, reason: str) -> None:
        self.refusals.append((peer, reason))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def tls(self, source: str = "127.0.0.1", cert: Any = None, name: str = "client") -> ssl.SSLSocket:
        """A TLS connection to the server from ``source`` (any 127.x address), with ``cert``."""
        context = client_context(self.tmp, self.ca, cert, name)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30, source_address=(source, 0))
        return context.wrap_socket(raw, server_hostname="localhost")

    def connections_end(self, wait: float = 20.0) -> bool:
        """Whether every connection the server had ends within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while self.server._clocks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.server._clocks

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def get_ping(self) -> int:
        with httpx.Client(verify=client_context(self.tmp, self.ca), timeout=30) as client:
            return client.get(self.url("/ping")).status_code


@pytest.fixture(params=HTTP1_SERVERS)
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    """Each test runs against both HTTP/1.1 servers (hypercorn, uvicorn's httptools)."""
    running = Running(tmp_path, http1=request.param)
    try:
        yield running
    finally:
        running.stop()


def read_answer(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer (the server closes after it, or says its length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def closed_by_server(sock: ssl.SSLSocket, wait: float = 30.0) -> bool:
    """Whether the server ends the connection within ``wait`` seconds (reading what it sends)."""
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        pass
    return True


# -- body size ----------------------------------------------------------------------------------


def test_oversized_content_length_is_a_413_before_the_body_is_sent(server: Running) -> None:
    with server.tls() as sock:  # the head only: the server must answer without waiting for 10 GiB
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10737418240\r\n\r\n")
        status, body = read_answer(sock)
        assert (status, json.loads(body)) == (413, {"error": "request body over 65536 bytes"})
        assert closed_by_server(sock)
    with server.tls() as sock:  # the login route has a smaller limit
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n")
        assert read_answer(sock) == (413, b'{"error": "request body over 16384 bytes"}')
    with httpx.Client(verify=client_context(server.tmp, server.ca), timeout=30) as client:
        assert client.post(server.url("/echo"), content=b"x" * 60_000).json() == {"size": 60_000}  # under the limit
        assert client.put(server.url("/upload/a"), content=b"x" * 3_000_000).json() == {"size": 3_000_000}


def test_chunked_body_over_the_limit_is_cut_with_a_413(server: Running) -> None:
    for path, limit in (("POST /echo", 65536), ("PUT /upload/rec", 4 * 1024 * 1024)):
        with server.tls() as sock:
            sock.sendall(f"{path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"
            sent = 0
            with contextlib.suppress(OSError, ssl.SSLError):  # the server closes once it has answered
                while sent < 64 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += 0x10000
            assert sent < 64 * 1024 * 1024  # cut long before the end
            with contextlib.suppress(OSError, ssl.SSLError):
                status, body = read_answer(sock)
                assert (status, json.loads(body)) == (413, {"error": f"request body over {limit} bytes"})
    assert server.connections_end()  # none of the refused connections is kept (they leaked once)
    assert server.get_ping() == 200


SERVER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from teleport_core.config.values import NetAddr
from teleport_core.net.tlsserver import TLSServer, bind_socket
from tests.test_httplimits import APP, LIMITS
from tests.test_tlsserver import make_ca, server_context

async def main():
    server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(Path(sys.argv[1]), make_ca("c"), "s"),
                       limits=LIMITS, http1=sys.argv[2])
    await server.start()
    print(server.address.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def peak_rss(pid: int) -> int:
    """VmHWM (the peak resident set) of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("http1", HTTP1_SERVERS)
def test_parallel_streamed_bodies_do_not_grow_the_server(tmp_path: Path, http1: str) -> None:
    """20 clients each push a 200 MiB chunked body at once (not reading the answer): the
    server process (a subprocess, so its memory is its own) refuses all without holding them."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(tmp_path), http1], cwd=root,
                            stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        before = peak_rss(proc.pid)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        refused: list[bool] = []

        def push() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"100000\r\n" + b"z" * 0x100000 + b"\r\n"
                with contextlib.suppress(OSError, ssl.SSLError):
                    for _ in range(200):
                        sock.sendall(chunk)
                refused.append(closed_by_server(sock))

        threads = [threading.Thread(target=push) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert refused == [True] * 20
        grown = peak_rss(proc.pid) - before
        assert grown < 100 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"  # loosely: 4 GiB were sent
    finally:
        proc.kill()
        proc.wait(10)


# -- time -----------------------------------------------------------------------------------------


def test_slow_request_heads_and_bodies_are_closed_and_others_still_served(server: Running) -> None:
    slow = [server.tls() for _ in range(20)]
    stop = threading.Event()

    def drip(sock: ssl.SSLSocket, head: bytes, then: bytes) -> None:
        """The head (or its start), then a byte every 0.3 s, until the server closes."""
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.sendall(head)
            while not stop.is_set():
                sock.sendall(then)
                time.sleep(0.3)

    drippers = [threading.Thread(target=drip, args=(sock, b"GET /ping HTTP/1.1\r\nHost: x\r\n", b"X"), daemon=True)
                for sock in slow[:10]]
    drippers += [threading.Thread(target=drip, args=(sock, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                                           b"60000\r\n\r\n", b"y"), daemon=True)
                 for sock in slow[10:]]
    idle = server.tls()  # connected, never sends a byte
    try:
        for thread in drippers:
            thread.start()
        assert server.get_ping() == 200  # served while the slow ones hang on
        assert all(closed_by_server(sock) for sock in [*slow, idle])
    finally:
        stop.set()
        for sock in [*slow, idle]:
            sock.close()
    assert server.get_ping() == 200


# -- refusals below HTTP ----------------------------------------------------------------------------


def test_refused_client_certificates_are_reported_with_reason_and_peer_once_per_source(server: Running) -> None:
    now = dt.datetime.now(dt.UTC)
    foreign = issue(make_ca("intruder"), "mallory")
    expired_ca = server.ca
    key, cert = issue(expired_ca, "old")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    expired = (key, x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=2)).not_valid_after(now - dt.timedelta(hours=1))
               .sign(expired_ca[0], hashes.SHA256()))
    self_signed = make_ca("myself")

    def refused(source: str, pair: Any, name: str) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), server.tls(source, pair, name) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100) == b""  # TLS 1.3: the refusal arrives after the client's handshake

    def wait_for(count: int) -> list[tuple[str, str]]:
        deadline = time.monotonic() + 20
        while len(server.refusals) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(server.refusals)

    refused("127.0.0.2", foreign, "foreign")
    refused("127.0.0.3", expired, "expired")
    refused("127.0.0.4", self_signed, "self")
    got = wait_for(3)
    reasons = {peer.rpartition(":")[0]: reason for peer, reason in got}
    assert reasons == {
        "127.0.0.2": "tls handshake refused: client certificate: unable to get local issuer certificate",
        "127.0.0.3": "tls handshake refused: client certificate: certificate has expired",
        "127.0.0.4": "tls handshake refused: client certificate: self-signed certificate",
    }
    # a flood from one source: reported once per period, the ones held back counted in the next
    server.server.refusals = AuditThrottle(period=2.0)
    for _ in range(5):
        refused("127.0.0.5", foreign, "foreign")
    assert [r for p, r in wait_for(4) if p.startswith("127.0.0.5:")] == [
        "tls handshake refused: client certificate: unable to get local issuer certificate"]
    time.sleep(2.1)  # the period is over (a bounded wait: what is asserted is the count, not a time)
    refused("127.0.0.5", foreign, "foreign")
    assert wait_for(5)[-1][1].endswith("(4 more refused from 127.0.0.5 since the last one audited)")
    assert server.get_ping() == 200  # a client without a certificate is served (verify mode optional)
    with httpx.Client(verify=client_context(server.tmp, server.ca, issue(server.ca, "alice"), "alice")) as client:
        assert client.get(server.url("/ping")).status_code == 200
    assert len(server.refusals) == 5  # nothing reported for good handshakes


# -- answers the client no longer takes -----------------------------------------------------------


def test_a_405_and_answers_the_client_left_log_nothing_above_debug(server: Running,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        with contextlib.suppress(OSError, ssl.SSLError), server.tls() as sock:
            sock.sendall(b"DELETE /ping HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            sock.unwrap()  # TLS close_notify before the answer
    for _ in range(5):  # half a body, then gone: the app's read fails (ClientDisconnect)
        with server.tls() as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf")
    with server.tls() as sock:
        sock.sendall(b"DELETE /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == 405
    time.sleep(0.5)  # let the server finish with the connections above (nothing is timed)
    assert server.get_ping() == 200
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG and r.name.startswith(("hypercorn", "teleport"))]
    assert loud == [] and not [r for r in caplog.records if r.exc_info]


def test_a_send_the_connection_refuses_is_logged_once_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    from teleport_core.net.httplimits import ConnectionClock

    caplog.set_level(logging.DEBUG)
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b"Method Not Allowed"})
        sent.append("done")

    async def refusing_send(message: Any) -> None:
        raise RuntimeError("Can't send data when our state is MUST_CLOSE")

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    guarded = GuardedApp(app, LIMITS, ConnectionClock(LIMITS))
    scope = {"type": "http", "method": "DELETE", "path": "/ping", "headers": []}
    asyncio.run(guarded(scope, receive, refusing_send))
    assert sent == ["done"]  # the app was not interrupted by an exception
    records = [r for r in caplog.records if r.name == "teleport.http"]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.DEBUG, None)]
    assert "HTTP answer not sent" in records[0].getMessage()



def test_an_upgraded_websocket_has_no_request_head_deadline() -> None:
    """A WebSocket the app holds (the web terminal) is a request being answered: however long it
    stays quiet, the head deadline does not cut it; once the app lets it go, the clock runs again."""
    from teleport_core.net.httplimits import ConnectionClock

    now = [0.0]
    clock = ConnectionClock(LIMITS, clock=lambda: now[0])
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        now[0] += LIMITS.header_timeout * 10  # a long idle terminal
        seen.append(clock.overdue())

    asyncio.run(GuardedApp(app, LIMITS, clock)({"type": "websocket", "path": "/ws", "headers": []}, None, None))
    assert seen == [""] and clock.active == 0
    clock.read_done(10)  # the next request's first bytes start the head timer again
    now[0] += LIMITS.header_timeout + 1
    assert clock.overdue().startswith("no complete request head")
