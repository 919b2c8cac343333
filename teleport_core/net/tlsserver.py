"""Serve an ASGI app over (mutual) TLS with hypercorn, giving the app the client certificate.

No released ASGI server puts the client certificate into the request scope yet, so this
module owns the listener: the stdlib ``ssl`` module does the handshake and verifies the
client certificate against the context's CAs, then hypercorn's per-connection
``TCPServer`` speaks HTTP/1.1 and HTTP/2 on the connection, and the app sees the verified
certificate as the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``,
PEM strings, leaf first; empty when the client presented none).

With ``http1="httptools"`` an HTTP/1.1 connection is served by uvicorn's httptools protocol
instead (:mod:`teleport_core.net.h1fast`: llhttp parses in C, and no stream reader/writer or
task group sits between the socket and the app: auth spent 30-45 % less CPU per node keepalive
and 15 % less per certificate pair, docs/scaling.md), under the same bounds; a connection whose
ALPN chose ``h2`` stays on hypercorn.
No WebSocket on that path: a listener with WebSocket routes keeps hypercorn. The environment
variable :data:`HTTP1_ENV` set to ``hypercorn`` puts every listener of the process back on
hypercorn (a diagnosis, a side-by-side measurement); ``httptools`` there changes nothing (a
listener that did not ask for it may need hypercorn's WebSockets).

The SSL context can be replaced while serving (:meth:`TLSServer.set_context`): new
handshakes use the new certificate and trusted CAs, which is how a CA rotation reaches a
running server.

With a ``router`` (the proxy's web port: "TLS routing"), the server peeks at each new
connection's TLS ClientHello (``MSG_PEEK``: nothing is consumed; only the SNI and ALPN
extensions are parsed, no cryptography) and asks the router what to do with it: the router
returns a handler that takes the connection over (it may terminate TLS itself or pass the bytes
through untouched), or None for the HTTPS app. Bytes that are not a TLS ClientHello close the
connection.

Every connection is bounded before the app sees a request (:mod:`teleport_core.net.httplimits`:
body size per route, request head, body and idle timeouts, quiet protocol errors). A handshake
refused for a certificate reason (foreign CA, self-signed, expired ...) is reported to
``on_refused(peer, reason)``, at most once per source IP every :data:`REFUSAL_PERIOD` seconds
(the reason then counts the refusals of that source held back since the last one reported).

With a ``cap`` (:mod:`teleport_core.net.shared_caps`: ``max_connections``, counted in this process
or in every process sharing the listening socket), a connection accepted while the cap is reached is
closed at once, before its handshake, and reported to ``on_refused`` (logged when reported) the same
way. A connection counts from its accept until it closes (with a router: until its handler returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

from teleport_core.config.values import NetAddr
from teleport_core.logs import get_logger
from teleport_core.net.httplimits import ConnectionClock, GuardedApp, GuardedReader, HTTPLimits, configure
from teleport_core.net.limits import AuditThrottle, Refused
from teleport_core.net.shared_caps import ConnectionCap

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

HELLO_TIMEOUT = 10.0  # seconds a new connection has to send its ClientHello
MAX_HELLO = 16 * 1024 + 5  # one TLS record: a ClientHello longer than that is refused
PARTIAL_WAIT = 0.005  # a ClientHello that arrived in part: poll for the rest this often
HANDSHAKE_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0  # seconds a closing connection waits for the peer's close_notify (asyncio: 30)
REFUSAL_PERIOD = 10.0  # seconds: at most one reported handshake refusal per source IP
SWEEP_INTERVAL = 1.0  # seconds between checks of the connections' deadlines
LINGER = 2.0  # seconds a connection refused with a 413 lives on, not read, for its answer to arrive
#: reasons of a refused handshake that are about the client's certificate (other failures, such
#: as a port scan or plain HTTP, are only logged at DEBUG)
CERTIFICATE_ALERTS = frozenset({"PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"})
HTTP1_SERVERS = ("hypercorn", "httptools")
HTTP1_ENV = "TELEPORT_HTTP1"  # "hypercorn": every TLSServer of the process on hypercorn

log = get_logger("tls")


class NotClientHello(ValueError):
    """The first bytes of a connection are not a TLS ClientHello."""


@attrs.frozen
class ClientHello:
    """What a TLS ClientHello asks for: the SNI host name ('' without one) and ALPN protocols."""

    server_name: str = ""
    alpn: tuple[str, ...] = ()


Handler = Callable[[socket.socket, ClientHello], Awaitable[None]]
Router = Callable[[ClientHello], Handler | None]
#: ``on_refused(peer "host:port", reason)``
RefusalHandler = Callable[[str, str], Awaitable[None]]


def handshake_reason(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words ("client certificate: certificate has expired")."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"client certificate: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return str(exc) or type(exc).__name__


def certificate_refusal(exc: BaseException) -> bool:
    """Whether a handshake failed for a reason about the client's certificate."""
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and str(exc.reason) in CERTIFICATE_ALERTS)


def peer_of(sock: socket.socket) -> str:
    """``host:port`` of the other end of ``sock`` ("" once it is gone)."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return ""
    return f"{host}:{port}"


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
    return _der(chain[0]) if chain else None


@functools.lru_cache(maxsize=1024)
def _der(pem: str) -> bytes:
    """``pem`` as DER, decoded once per certificate (a connection's requests share its PEM string)."""
    return ssl.PEM_cert_to_DER_cert(pem)


async def _refuse_rest(transport: asyncio.BaseTransport, connection: asyncio.Task[Any] | None = None) -> None:
    """After a 413: read nothing more, give the answer :data:`LINGER` seconds to reach the client
    (a reset sent sooner can destroy it unread), then abort the connection.

    The TCP transport under asyncio's TLS layer is paused: that layer would otherwise keep taking
    the unwanted body, and while it waits for the peer's close_notify it buffers it, unbounded.
    """
    raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    reading = raw if isinstance(raw, asyncio.ReadTransport) else transport
    with contextlib.suppress(RuntimeError, AttributeError):
        if isinstance(reading, asyncio.ReadTransport):
            reading.pause_reading()
    await asyncio.sleep(LINGER)
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    if connection is not None:  # hypercorn may wait forever to hand the app body it will not take
        asyncio.get_running_loop().call_soon(connection.cancel)


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
                 limits: HTTPLimits | None = None, graceful_timeout: float = 5.0, router: Router | None = None,
                 on_refused: RefusalHandler | None = None, http1: str = "hypercorn",
                 cap: ConnectionCap | None = None) -> None:
        from hypercorn.config import Config

        forced = os.environ.get(HTTP1_ENV, "")
        for name, value in (("http1", http1), (HTTP1_ENV, forced or http1)):
            if value not in HTTP1_SERVERS:
                raise ValueError(f"{name}: expected one of {', '.join(HTTP1_SERVERS)}, got {value!r}")
        if forced == "hypercorn":
            http1 = forced
        self.http1 = http1
        self.app = app
        self.sock = sock
        self.router = router
        self.limits = limits or HTTPLimits()
        self.on_refused = on_refused
        self.cap = cap
        self.refusals = AuditThrottle(REFUSAL_PERIOD)
        self._context = context
        # asyncio wraps every connection with one fixed context; its servername callback, which
        # OpenSSL calls on every ClientHello (with or without SNI), switches the connection to
        # the current context before a certificate is chosen or a client certificate verified.
        self._wrapper = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._wrapper.minimum_version = ssl.TLSVersion.TLSv1_2
        self._wrapper.verify_mode = context.verify_mode
        self._wrapper.sni_callback = self._pick_context
        self.config = Config()
        configure(self.config, self.limits)
        self.config.keep_alive_max_requests = 1_000_000  # clients pool connections: keep them
        self.config.graceful_timeout = graceful_timeout
        self.config.include_server_header = False
        self.config.accesslog = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._context_obj: Any = None
        self._sweeping: asyncio.Task[None] | None = None
        self._clocks: dict[ConnectionClock, asyncio.WriteTransport] = {}
        self._h1: Any = None  # h1fast.Shared, with http1="httptools"
        if http1 == "httptools":
            from teleport_core.net.h1fast import Shared

            self._h1 = Shared(app, self.limits, self._watch, _refuse_rest)

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
        self._accepting = asyncio.create_task(self._accept_loop(), name="tls-accept")
        self._sweeping = asyncio.create_task(self._sweep(), name="tls-deadlines")

    def refused(self, peer: str, reason: str) -> str:
        """Report a refusal from ``peer`` to ``on_refused``, unless its source had one reported
        in the last :data:`REFUSAL_PERIOD` seconds (then it is counted, and told with the next):
        the reason reported, or "" when held back."""
        if self.on_refused is None:
            return ""
        source = peer.rpartition(":")[0].strip("[]") or peer
        held_back = self.refusals.allow(source)
        if held_back is None:
            return ""
        if held_back:
            reason = f"{reason} ({held_back} more refused from {source} since the last one audited)"
        self._spawn(self.on_refused(peer, reason))
        return reason

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch(self, clock: ConnectionClock, transport: asyncio.Transport | None) -> None:
        """Keep ``clock``'s connection to the deadline sweep (``transport`` None: it is gone)."""
        if transport is None:
            self._clocks.pop(clock, None)
        else:
            self._clocks[clock] = transport

    async def _sweep(self) -> None:
        """Abort the connections past a deadline (:class:`~teleport_core.net.httplimits.ConnectionClock`)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self._h1 is not None:
                self._h1.tick()
            for clock, transport in list(self._clocks.items()):
                why = clock.overdue()
                if why:
                    log.debug("closed a slow HTTP connection", peer=str(transport.get_extra_info("peername")),
                              reason=why)
                    self._clocks.pop(clock, None)
                    transport.abort()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self.sock)
            except OSError:  # e.g. EMFILE: keep serving the connections there are
                await asyncio.sleep(0.1)
                continue
            counted = None
            if self.cap is not None:
                try:
                    self.cap.admit()
                except Refused as exc:
                    sock.close()  # nothing sent: the client's handshake ends at once
                    peer = f"{addr[0]}:{addr[1]}"
                    reported = self.refused(peer, str(exc))
                    if reported:
                        log.info("connection refused", peer=peer, reason=reported)
                    continue
                counted = _Counted(self.cap)
            self._spawn(self._routed(sock, counted))

    async def _routed(self, sock: socket.socket, counted: _Counted | None = None) -> None:
        """With a router, peek at the ClientHello and hand the connection to the router's
        handler; else (or when it has none) serve HTTPS, reporting a refused client certificate.
        ``counted``: the connection's place under the cap, given back when it ends."""
        try:
            await self._route(sock, counted)
        finally:
            if counted is not None and not counted.handed:
                counted.release()  # ended before (or without) an HTTP protocol: nobody else gives it back

    async def _route(self, sock: socket.socket, counted: _Counted | None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = peer_of(sock)
        try:
            if self.router is not None:
                hello = await peek_client_hello(sock)
                handler = self.router(hello)
                if handler is not None:
                    await handler(sock, hello)
                    return
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(functools.partial(_Chooser, self, counted), sock, ssl=self._wrapper,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                                               ssl_shutdown_timeout=SHUTDOWN_TIMEOUT)
        except (NotClientHello, TimeoutError, ssl.SSLError, OSError, ConnectionError) as exc:
            sock.close()
            if certificate_refusal(exc):
                self.refused(peer, f"tls handshake refused: {handshake_reason(exc)}")
            else:
                log.debug("connection ended before HTTP", peer=peer, reason=handshake_reason(exc))

    def _http_protocol(self, transport: asyncio.BaseTransport) -> asyncio.BaseProtocol:
        """The protocol that serves a connection whose handshake is done: uvicorn's httptools
        (``http1="httptools"``, unless ALPN chose h2), else hypercorn through a stream reader."""
        if self._h1 is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                return self._h1.protocol()  # type: ignore[no-any-return]
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=2 ** 16), self._connection)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        peer = str(writer.get_extra_info("peername"))  # asked now: not once the TLS layer is gone
        try:
            await self._serve_http(reader, writer)
        except asyncio.CancelledError:  # stop() cancels what outlives the grace period
            pass
        except (OSError, ConnectionError) as exc:  # ssl.SSLError too: e.g. data after our close_notify
            log.debug("HTTPS connection ended with an error", peer=peer, error=f"{type(exc).__name__}: {exc}")

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
        clock = ConnectionClock(self.limits)
        app = GuardedApp(self.app, self.limits, clock,
                         functools.partial(_refuse_rest, writer.transport, asyncio.current_task()))

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        loop = asyncio.get_running_loop()
        self._clocks[clock] = writer.transport
        try:
            await TCPServer(ASGIWrapper(with_tls), loop, self.config, self._context_obj, {},
                            GuardedReader(reader, clock), writer)  # type: ignore[arg-type]
        finally:
            self._clocks.pop(clock, None)

    async def stop_accepting(self) -> None:
        """Stop accepting new connections and close this process's listening descriptor (never
        ``shutdown()``: after a graceful reload the new process accepts on the same socket);
        the connections already accepted are served on until :meth:`stop`."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
            self.sock.close()

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to ``graceful_timeout``), close."""
        if self._accepting is None and self._sweeping is None:
            return
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        await self.stop_accepting()
        if self._context_obj is not None:
            await self._context_obj.terminated.set()
        if self._h1 is not None:
            self._h1.shutdown()  # idle connections close now, busy ones after their answer
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, *self._h1_tasks(), return_exceptions=True),
                                   self.config.graceful_timeout)
        if self._h1 is not None:
            self._h1.abort_all()
        lingering = [*self._tasks, *self._h1_tasks()]
        for task in lingering:
            task.cancel()
        await asyncio.gather(*lingering, return_exceptions=True)  # collected, so nothing logs them

    def _h1_tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._h1.state.tasks) if self._h1 is not None else []


class _Counted:
    """One connection's place under a :class:`~teleport_core.net.shared_caps.ConnectionCap`,
    released once; ``handed`` once the HTTP protocol's end releases it."""

    __slots__ = ("cap", "handed", "released")

    def __init__(self, cap: ConnectionCap) -> None:
        self.cap = cap
        self.handed = False
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.cap.release()


class _Chooser(asyncio.Protocol):
    """Stands for a connection until its TLS handshake is done, then hands it to the protocol
    :meth:`TLSServer._http_protocol` picks (the handshake's ALPN decides between HTTP/1.1 and h2);
    with ``counted``, that protocol's ``connection_lost`` releases the connection's place under the cap."""

    def __init__(self, server: TLSServer, counted: _Counted | None = None) -> None:
        self.server = server
        self.counted = counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self.server._http_protocol(transport)
        if self.counted is not None:
            _release_on_lost(protocol, self.counted)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def _release_on_lost(protocol: asyncio.BaseProtocol, counted: _Counted) -> None:
    """Make ``protocol.connection_lost`` (which asyncio calls once the connection is closed) release ``counted``."""
    lost = protocol.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        try:
            lost(exc)
        finally:
            counted.release()

    protocol.connection_lost = connection_lost  # type: ignore[method-assign]
    counted.handed = True
