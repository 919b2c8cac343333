"""Serve an ASGI app over (mutual) TLS with hypercorn, giving the app the client certificate.

No released ASGI server puts the client certificate into the request scope yet, so this
module owns the listener: the stdlib ``ssl`` module does the handshake and verifies the
client certificate against the context's CAs, then hypercorn's per-connection
``TCPServer`` speaks HTTP/1.1 and HTTP/2 on the connection, and the app sees the verified
certificate as the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``,
PEM strings, leaf first; empty when the client presented none).

The SSL context can be replaced while serving (:meth:`TLSServer.set_context`): new
handshakes use the new certificate and trusted CAs, which is how a CA rotation reaches a
running server.

With a ``router`` (the proxy's web port: "TLS routing"), the server peeks at each new
connection's TLS ClientHello (``MSG_PEEK``: nothing is consumed; only the SNI and ALPN
extensions are parsed, no cryptography) and asks the router what to do with it: the router
returns a handler that takes the connection over (it may terminate TLS itself or pass the bytes
through untouched), or None for the HTTPS app. Bytes that are not a TLS ClientHello close the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

from teleport_core.config.values import NetAddr

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

HELLO_TIMEOUT = 10.0  # seconds a new connection has to send its ClientHello
MAX_HELLO = 16 * 1024 + 5  # one TLS record: a ClientHello longer than that is refused
PARTIAL_WAIT = 0.005  # a ClientHello that arrived in part: poll for the rest this often


class NotClientHello(ValueError):
    """The first bytes of a connection are not a TLS ClientHello."""


@attrs.frozen
class ClientHello:
    """What a TLS ClientHello asks for: the SNI host name ('' without one) and ALPN protocols."""

    server_name: str = ""
    alpn: tuple[str, ...] = ()


Handler = Callable[[socket.socket, ClientHello], Awaitable[None]]
Router = Callable[[ClientHello], Handler | None]


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The SNI and ALPN of the ClientHello at the start of ``data``; None when ``data`` is a
    ClientHello's beginning (more bytes needed). Raises :class:`NotClientHello` otherwise.

    Only the first TLS record is read: a ClientHello must fit in it (16 KiB).
    """
    if not data:
        return None
    if data[0] != 0x16:  # handshake record
        raise NotClientHello("not a TLS handshake record")
    if len(data) >= 3 and data[1] != 3:
        raise NotClientHello("not a TLS record version")
    if len(data) < 5:
        return None
    record_len = struct.unpack_from("!H", data, 3)[0]
    if record_len < 4 or record_len > MAX_HELLO - 5:
        raise NotClientHello("bad TLS record length")
    if len(data) < 5 + record_len:
        return None
    body = memoryview(data)[5:5 + record_len]
    try:
        return _parse_hello_body(body)
    except (IndexError, struct.error, UnicodeDecodeError):
        raise NotClientHello("malformed ClientHello") from None


def _parse_hello_body(body: memoryview) -> ClientHello:
    if body[0] != 1:
        raise NotClientHello("not a ClientHello")
    length = int.from_bytes(body[1:4], "big")
    if length > len(body) - 4:
        raise NotClientHello("a ClientHello longer than one TLS record")
    hello = body[4:4 + length]
    pos = 2 + 32  # client_version, random
    pos += 1 + hello[pos]  # session id
    pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher suites
    pos += 1 + hello[pos]  # compression methods
    if pos == len(hello):
        return ClientHello()  # no extensions
    end = pos + 2 + struct.unpack_from("!H", hello, pos)[0]
    if end > len(hello):
        raise NotClientHello("truncated ClientHello extensions")
    pos += 2
    server_name, alpn = "", []
    while pos + 4 <= end:
        kind, size = struct.unpack_from("!HH", hello, pos)
        ext = hello[pos + 4:pos + 4 + size]
        if len(ext) != size:
            raise NotClientHello("truncated ClientHello extension")
        pos += 4 + size
        if kind == 0:  # server_name: list of (type, name); type 0 is a host name
            at, stop = 2, 2 + struct.unpack_from("!H", ext, 0)[0]
            while at + 3 <= stop:
                name_type, name_len = ext[at], struct.unpack_from("!H", ext, at + 1)[0]
                if name_type == 0:
                    server_name = bytes(ext[at + 3:at + 3 + name_len]).decode("ascii").lower()
                at += 3 + name_len
        elif kind == 16:  # application_layer_protocol_negotiation
            at, stop = 2, 2 + struct.unpack_from("!H", ext, 0)[0]
            while at < stop:
                size_one = ext[at]
                alpn.append(bytes(ext[at + 1:at + 1 + size_one]).decode("ascii"))
                at += 1 + size_one
    return ClientHello(server_name, tuple(alpn))


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def peek_client_hello(sock: socket.socket, timeout: float = HELLO_TIMEOUT) -> ClientHello:
    """Wait for the ClientHello on the non-blocking ``sock`` and parse it without consuming it.

    Raises :class:`NotClientHello` (also when the peer closes first) or ``TimeoutError``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            data = sock.recv(MAX_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            raise NotClientHello("the connection closed before a ClientHello")
        if data:
            hello = parse_client_hello(data)
            if hello is not None:
                return hello
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("no ClientHello in time")
        if data:  # part of it is here (still readable): look again shortly
            await asyncio.sleep(min(PARTIAL_WAIT, remaining))
            continue
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _set_done, ready)
        try:
            await asyncio.wait_for(ready, remaining)
        finally:
            loop.remove_reader(sock.fileno())


def client_certificate(scope: Scope) -> bytes | None:
    """The DER client certificate of a request served by :class:`TLSServer`, if one was presented."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or ()
    return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None


def bind_socket(addr: NetAddr) -> socket.socket:
    """A listening TCP socket on ``addr`` (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.host, addr.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class TLSServer:
    """An HTTPS server for ``app`` on ``sock``; ``await start()``, then ``await stop()``."""

    def __init__(self, app: ASGIApp, sock: socket.socket, context: ssl.SSLContext, *,
                 keep_alive_timeout: float = 60.0, graceful_timeout: float = 5.0, router: Router | None = None) -> None:
        from hypercorn.config import Config

        self.app = app
        self.sock = sock
        self.router = router
        self._context = context
        # asyncio wraps every connection with one fixed context; its servername callback, which
        # OpenSSL calls on every ClientHello (with or without SNI), switches the connection to
        # the current context before a certificate is chosen or a client certificate verified.
        self._wrapper = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._wrapper.minimum_version = ssl.TLSVersion.TLSv1_2
        self._wrapper.verify_mode = context.verify_mode
        self._wrapper.sni_callback = self._pick_context
        self.config = Config()
        self.config.keep_alive_timeout = keep_alive_timeout
        self.config.keep_alive_max_requests = 1_000_000  # clients pool connections: keep them
        self.config.graceful_timeout = graceful_timeout
        self.config.include_server_header = False
        self.config.accesslog = None
        self._server: asyncio.Server | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._context_obj: Any = None

    @property
    def address(self) -> NetAddr:
        host, port = self.sock.getsockname()[:2]
        return NetAddr(host, port)

    def set_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` (certificate, key, trusted CAs) for every new handshake.

        Its ``verify_mode`` must equal the first context's (OpenSSL keeps the mode a
        connection started with).
        """
        if context.verify_mode != self._wrapper.verify_mode:
            raise ValueError("a replacement context must keep the verify mode")
        self._context = context

    def _pick_context(self, ssl_obj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_obj.context = self._context

    async def start(self) -> None:
        from hypercorn.asyncio.worker_context import WorkerContext

        self._context_obj = WorkerContext(None)
        if self.router is not None:
            self._accepting = asyncio.create_task(self._accept_loop(), name="tls-accept")
            return
        self._server = await asyncio.start_server(
            self._connection, sock=self.sock, ssl=self._wrapper, ssl_handshake_timeout=10.0
        )

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self.sock)
            except OSError:  # e.g. EMFILE: keep serving the connections there are
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._routed(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _routed(self, sock: socket.socket) -> None:
        """Peek at the ClientHello; hand the connection to the router's handler or serve HTTPS."""
        assert self.router is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hello = await peek_client_hello(sock)
            handler = self.router(hello)
            if handler is not None:
                await handler(sock, hello)
                return
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader(limit=2 ** 16)
            protocol = asyncio.StreamReaderProtocol(reader, self._connection)
            await loop.connect_accepted_socket(lambda: protocol, sock, ssl=self._wrapper, ssl_handshake_timeout=10.0)
        except (NotClientHello, TimeoutError, ssl.SSLError, OSError, ConnectionError):
            sock.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels what outlives the grace period
            await self._serve_http(reader, writer)

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from hypercorn.app_wrappers import ASGIWrapper
        from hypercorn.asyncio.tcp_server import TCPServer

        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        tls = {
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "tls_version": ssl_object.version() if ssl_object is not None else None,
            "cipher_suite": ssl_object.cipher()[0] if ssl_object is not None and ssl_object.cipher() else None,
        }
        app = self.app

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        loop = asyncio.get_running_loop()
        await TCPServer(ASGIWrapper(with_tls), loop, self.config, self._context_obj, {}, reader, writer)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to ``graceful_timeout``), close."""
        if self._server is None and self._accepting is None:
            return
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
            self.sock.close()
        if self._server is not None:
            self._server.close()
        if self._context_obj is not None:
            await self._context_obj.terminated.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), self.config.graceful_timeout)
        lingering = list(self._tasks)
        for task in lingering:
            task.cancel()
        await asyncio.gather(*lingering, return_exceptions=True)  # collected, so nothing logs them
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
