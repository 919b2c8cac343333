"""How answers leave the httptools HTTP/1.1 path (teleport_core.net.h1fast, corked writes), seen by a
TLS client on a plain socket (ssl.MemoryBIO) that tells which TLS records carried an answer's bytes,
against a real TLSServer on loopback: a small answer is one TLS record; a large or streamed body
arrives intact and under back-pressure (a client that does not read stops the app); a head whose
body is not ready yet is not held back; pipelined answers stay in order; HEAD, 204 and 304 carry no
body; an app that fails mid-body gets the connection closed after what it sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from teleport_core.config.values import NetAddr
from teleport_core.net.h1fast import CORK_LIMIT
from teleport_core.net.tlsserver import TLSServer, bind_socket
from tests.test_tlsserver import client_context, make_ca, server_context

RECORD = 16384  # the most plaintext one TLS record carries


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` deterministic bytes (a body the client can check byte for byte)."""
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


class App:
    """Raw ASGI routes with exact control over the ``send`` calls; ``produced`` counts the bytes
    each streamed answer handed to ``send``; ``release`` lets ``/held`` send its body."""

    def __init__(self) -> None:
        self.produced = 0
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        parts = path.strip("/").split("/")
        if path == "/small":
            body = json.dumps({"ok": True, "kind": "node", "expires": "2026-12-04T23:35:03Z"}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
        elif parts[0] == "sized":  # one body message with a content-length
            body = pattern(int(parts[1]))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
        elif parts[0] == "stream":  # /stream/<chunk>/<total>: chunked, one send per chunk, never awaiting else
            chunk, total = int(parts[1]), int(parts[2])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            body = pattern(total)
            for at in range(0, total, chunk):
                self.produced = at + len(body[at:at + chunk])
                await send({"type": "http.response.body", "body": body[at:at + chunk], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/upload":  # reads the body, answers its size
            size, more = 0, True
            while more:
                message = await receive()
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"%d" % size
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
        elif path == "/held":  # the head now, the body once released
            self.release = asyncio.Event()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"done"})
        elif parts[0] == "status":  # /status/204, /status/304
            status = int(parts[1])
            await send({"type": "http.response.start", "status": status, "headers": [(b"etag", b'"v1"')]})
            await send({"type": "http.response.body", "body": b""})
        elif parts[0] == "fail":  # /fail/sized, /fail/chunked: part of the body, then the app fails
            headers = [(b"content-length", b"1000")] if parts[1] == "sized" else []
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"0123456789", "more_body": True})
            raise RuntimeError("the app failed mid-body")
        else:
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})


class Served:
    """An httptools TLSServer for an :class:`App` on its own event loop in a thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = make_ca("cluster")
        self.tmp = tmp_path
        self.app = App()
        self.loop = asyncio.new_event_loop()
        self.server = TLSServer(self.app, bind_socket(NetAddr("127.0.0.1", 0)),
                                server_context(tmp_path, self.ca, "srv"), http1="httptools")
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.address.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def records_client(self) -> RecordClient:
        return RecordClient(self.port, client_context(self.tmp, self.ca))

    def tls(self, rcvbuf: int | None = None) -> ssl.SSLSocket:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window: the server's buffers fill sooner
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", self.port))
        return client_context(self.tmp, self.ca).wrap_socket(raw, server_hostname="localhost")

    def connections(self) -> list[Any]:
        return list(self.server._h1.state.connections)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def answer_length(data: bytes | bytearray, head_request: bool = False) -> int | None:
    """The length of the HTTP/1.1 answer at the start of ``data``, once it can be told (None before)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head_len = end + 4
    lines = bytes(data[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:])}
    if head_request or status in (204, 304):
        return head_len
    if b"content-length" in headers:
        return head_len + int(headers[b"content-length"])
    pos = head_len  # chunked
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(data[pos:eol]).split(b";")[0], 16)
        pos = eol + 2 + size + 2
        if pos > len(data):
            return None
        if size == 0:
            return pos


def split_answer(answer: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Status, headers (lower-case names) and body (de-chunked) of one whole answer."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding") != b"chunked":
        return int(lines[0].split(b" ")[1]), headers, rest
    body, pos = bytearray(), 0
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        body += rest[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2
        if size == 0:
            return int(lines[0].split(b" ")[1]), headers, bytes(body)


class RecordClient:
    """A TLS client on a plain socket that reads the server's TLS records one at a time and tells
    how many records carried each answer (records without application bytes, such as TLS 1.3
    session tickets, are not counted)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.raw = bytearray()  # received bytes not yet split into records
        self.data = bytearray()  # application bytes not yet taken as an answer
        self.closed = False
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(chunk)
        self._send_pending()

    def close(self) -> None:
        self.sock.close()

    def _send_pending(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._send_pending()

    def next_record(self) -> bytes | None:
        """The application bytes of the server's next TLS record (b"" for a record without any);
        None once the server closed (close_notify or end of stream)."""
        while len(self.raw) < 5 or len(self.raw) < 5 + int.from_bytes(self.raw[3:5], "big"):
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                return None
            self.raw += chunk
        size = 5 + int.from_bytes(self.raw[3:5], "big")
        self.incoming.write(bytes(self.raw[:size]))
        del self.raw[:size]
        out = b""
        while True:
            try:
                piece = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return out
            if not piece:  # the server's close_notify
                self.closed = True
                return out or None
            out += piece

    def answer(self, head_request: bool = False) -> tuple[bytes, int]:
        """The next whole answer and the number of TLS records that carried its bytes."""
        records = 0
        while True:
            length = answer_length(self.data, head_request)
            if length is not None and len(self.data) >= length:
                answer = bytes(self.data[:length])
                del self.data[:length]
                return answer, records
            piece = self.next_record()
            if piece is None:
                raise ConnectionError(f"closed before a whole answer: {bytes(self.data[:200])!r}")
            if piece:
                records += 1
                self.data += piece

    def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        while True:
            piece = self.next_record()
            if piece is None:
                out = bytes(self.data)
                self.data.clear()
                return out
            self.data += piece


@contextlib.contextmanager
def records_client(served: Served) -> Iterator[RecordClient]:
    client = served.records_client()
    try:
        yield client
    finally:
        client.close()


def wait_until(condition: Callable[[], bool], wait: float = 30.0) -> bool:
    """Whether ``condition`` holds within ``wait`` seconds (polled; no duration is asserted)."""
    deadline = time.monotonic() + wait
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def request(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def test_a_small_answer_is_one_tls_record_head_and_body_together(served: Served) -> None:
    with records_client(served) as client:
        for _ in range(3):  # each answer on a keep-alive connection, not only the first
            client.send(request("/small"))
            answer, records = client.answer()
            status, headers, body = split_answer(answer)
            assert (status, json.loads(body)["ok"]) == (200, True)
            assert headers[b"content-length"] == b"%d" % len(body)
            assert records == 1


@pytest.mark.parametrize("size", [16_000, 40_000, CORK_LIMIT - 1000])
def test_an_answer_under_the_cork_limit_takes_the_fewest_records(served: Served, size: int) -> None:
    """Head and body written as one: as many records as its bytes need (written apart, the head
    alone would take one more)."""
    with records_client(served) as client:
        client.send(request(f"/sized/{size}"))
        answer, records = client.answer()
        assert split_answer(answer)[2] == pattern(size)
        assert records == math.ceil(len(answer) / RECORD)


@pytest.mark.parametrize("path", ["/status/204", "/status/304"])
def test_bodiless_statuses_are_a_head_alone_in_one_record(served: Served, path: str) -> None:
    with records_client(served) as client:
        client.send(request(path))
        answer, records = client.answer()
        status, headers, body = split_answer(answer)
        assert (status, body, records) == (int(path.rsplit("/", 1)[1]), b"", 1)
        assert b"transfer-encoding" not in headers and headers[b"etag"] == b'"v1"'
        client.send(request("/small"))  # nothing stray followed the bodiless answer
        answer, records = client.answer()
        assert (split_answer(answer)[0], records) == (200, 1)


def test_a_head_request_gets_the_head_alone_and_the_connection_goes_on(served: Served) -> None:
    with records_client(served) as client:
        client.send(request("/small", "HEAD"))
        answer, records = client.answer(head_request=True)
        status, headers, body = split_answer(answer)
        assert (status, body, records) == (200, b"", 1)
        assert int(headers[b"content-length"]) > 0  # the GET's length, no body
        client.send(request("/small"))
        answer, records = client.answer()
        status, headers, body = split_answer(answer)
        assert (status, len(body), records) == (200, int(headers[b"content-length"]), 1)


def test_a_head_is_sent_while_its_body_is_not_ready(served: Served) -> None:
    """A streaming answer's head is not held back until its body comes (it goes at the end of the
    event-loop turn that wrote it)."""
    with records_client(served) as client:
        client.send(request("/held"))
        while b"\r\n\r\n" not in client.data:  # the head arrives alone: the body waits for the release
            piece = client.next_record()
            assert piece is not None
            client.data += piece
        assert client.data.startswith(b"HTTP/1.1 200 OK\r\n") and client.data.endswith(b"\r\n\r\n")
        release = served.app.release
        assert release is not None
        served.loop.call_soon_threadsafe(release.set)
        answer, _ = client.answer()
        assert split_answer(answer)[2] == b"done"


def test_a_100_continue_is_sent_while_the_app_waits_for_the_body(served: Served) -> None:
    """The interim answer is written while the app waits (not held for the final answer, which
    would wait for the body the client holds back until it sees the 100)."""
    with records_client(served) as client:
        client.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        while b"\r\n\r\n" not in client.data:
            piece = client.next_record()
            assert piece is not None
            client.data += piece
        assert bytes(client.data) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.data.clear()
        client.send(b"hello")
        answer, records = client.answer()
        assert (split_answer(answer)[::2], records) == ((200, b"5"), 1)


@pytest.mark.parametrize("chunk", [4096, 256 * 1024])
def test_a_streamed_body_is_intact_and_a_client_that_does_not_read_stops_the_app(served: Served,
                                                                                   chunk: int) -> None:
    """32 MiB, sent in small chunks (held, then written at the cork limit) or large ones (written at
    once): while the client reads nothing, the server pauses the app (its sends wait) with a small
    part of the body produced; then every byte arrives, in order."""
    total = 32 * 1024 * 1024
    with served.tls(rcvbuf=64 * 1024) as sock:
        sock.sendall(request(f"/stream/{chunk}/{total}"))
        assert wait_until(lambda: any(c.flow.write_paused for c in served.connections()))
        assert served.app.produced < total // 4
        assert all(c.corked.get_write_buffer_size() - c.raw_transport.get_write_buffer_size() < CORK_LIMIT
                   for c in served.connections())  # what the cork holds is bounded
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk (the body is checked below)
            piece = sock.recv(1 << 20)
            assert piece, "closed before the whole body"
            data += piece
        status, headers, body = split_answer(bytes(data))
        assert (status, headers[b"transfer-encoding"]) == (200, b"chunked")
        assert len(body) == total and body == pattern(total)


def test_pipelined_answers_stay_in_order(served: Served) -> None:
    with records_client(served) as client:
        client.send(request("/sized/40000") + request("/small") + request("/stream/4096/200000")
                    + request("/small", "HEAD") + request("/status/204") + request("/sized/100000")
                    + request("/small"))
        bodies = []
        for head_request in (False, False, False, True, False, False, False):
            status, _, body = split_answer(client.answer(head_request)[0])
            bodies.append((status, body))
        assert bodies[0] == (200, pattern(40000))
        assert bodies[1][0] == 200 and json.loads(bodies[1][1])["ok"] is True
        assert bodies[2] == (200, pattern(200000))
        assert bodies[3] == (200, b"")
        assert bodies[4] == (204, b"")
        assert bodies[5] == (200, pattern(100000))
        assert bodies[6] == bodies[1]


@pytest.mark.parametrize("framing", ["sized", "chunked"])
def test_an_app_failing_mid_body_gets_what_it_sent_then_a_closed_connection(served: Served, framing: str) -> None:
    """What the app sent before it failed still arrives (the close writes what is held first), the
    answer is visibly cut (short of its length, or no last chunk) and a request pipelined behind it
    is not answered."""
    with records_client(served) as client:
        client.send(request(f"/fail/{framing}") + request("/small"))
        data = client.until_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        if framing == "sized":
            assert b"content-length: 1000" in head.lower() and body == b"0123456789"
        else:
            assert b"transfer-encoding: chunked" in head.lower() and body == b"a\r\n0123456789\r\n"
        length = answer_length(data)
        assert length is None or length > len(data)  # cut short
        assert data.count(b"HTTP/1.1") == 1  # the pipelined request got no answer
        assert client.closed
