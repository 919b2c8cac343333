"""HTTP/1.1 on an already-TLS-wrapped connection with uvicorn's httptools protocol (llhttp, in C),
under the same bounds as the hypercorn path (:mod:`teleport_core.net.httplimits`).

:class:`teleport_core.net.tlsserver.TLSServer` hands a connection here after the handshake
(``http1="httptools"``, unless ALPN chose ``h2``, which stays on hypercorn). The app sees the
same scope as on hypercorn, the verified client certificate chain included
(``scope["extensions"]["tls"]``). What uvicorn's protocol does not bound itself is bounded here:

- **request head size**: a request line and headers over :data:`~teleport_core.net.httplimits.MAX_HEAD`
  are answered 431 and the connection closed, before the app sees the request (llhttp has no
  limit of its own and buffers a header's name and value until they end);
- **head, body and idle deadlines**: the connection's
  :class:`~teleport_core.net.httplimits.ConnectionClock` is told when bytes come, when the server
  waits for body bytes (not while reading is paused because the app does not take the body) and
  when a body is whole; the server's sweep aborts a connection past a deadline. Idle keep-alive
  connections end after ``keep_alive_timeout`` (uvicorn's own timer);
- **body size per route** and early answers: :class:`~teleport_core.net.httplimits.GuardedApp`, as
  on hypercorn; uvicorn holds at most 64 KiB of body (plus one TLS read) the app has not taken,
  and stops reading the socket until it does;
- **garbage and refused upgrades**: a request llhttp cannot parse is answered 400 and closed;
  logged at DEBUG (an attacker's input is not an operator's warning).

Writes are corked (:class:`CorkedTransport`): uvicorn writes an answer's head and body with two
``write()`` calls, which asyncio's TLS layer makes two TLS records and two ``send()``; instead,
what is written until the answer is whole or the event-loop turn ends goes out as one write (a
small answer: one record, one send), and as soon as :data:`CORK_LIMIT` bytes are held, so a large
or streamed body flows, under the TLS transport's back-pressure, as before.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import formatdate
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from teleport_core.logs import get_logger
from teleport_core.net.httplimits import MAX_HEAD, ConnectionClock, GuardedApp, HTTPLimits

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
CORK_LIMIT = 64 * 1024  # bytes a connection holds back at most before writing them (one TLS record is 16 KiB)

log = get_logger("http")


class HeadTooLarge(Exception):
    """A request head over :data:`MAX_HEAD` (raised from a parser callback)."""


class UpgradeWithBody(Exception):
    """A protocol upgrade that declares a body (llhttp would not parse the body: the app would see none)."""


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """The ASGI TLS extension of a connection: its verified client certificate chain (PEM, leaf
    first; empty without one), TLS version and cipher suite."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    cipher = ssl_object.cipher() if ssl_object is not None else None
    return {
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "tls_version": ssl_object.version() if ssl_object is not None else None,
        "cipher_suite": cipher[0] if cipher else None,
    }


class Shared:
    """What the connections of one listener share: uvicorn's config and server state, the limits,
    and the listener's callbacks (a clock to watch, the rest of a refused body to refuse)."""

    def __init__(self, app: ASGIApp, limits: HTTPLimits,
                 watch: Callable[[ConnectionClock, asyncio.Transport | None], None],
                 refuse_rest: Callable[[asyncio.BaseTransport], Coroutine[Any, Any, None]]) -> None:
        self.app = app
        self.limits = limits
        self.watch = watch  # watch(clock, transport); transport None: the connection is gone
        self.refuse_rest = refuse_rest
        self.config = Config(app, http="httptools", ws="none", lifespan="off", interface="asgi3", log_config=None,
                             access_log=False, server_header=False, date_header=False, proxy_headers=False,
                             timeout_keep_alive=limits.keep_alive_timeout)  # type: ignore[arg-type]
        self.config.load()
        self.state = ServerState()
        self.tick()

    def tick(self) -> None:
        """The ``date`` header of the answers (the listener calls this once a second)."""
        self.state.default_headers = [(b"date", formatdate(usegmt=True).encode())]

    def protocol(self) -> GuardedHttpToolsProtocol:
        return GuardedHttpToolsProtocol(self)

    def shutdown(self) -> None:
        """Close the idle connections; the busy ones close after their answer."""
        for connection in list(self.state.connections):
            connection.shutdown()

    def abort_all(self) -> None:
        for connection in list(self.state.connections):
            if connection.transport is not None:
                connection.transport.abort()


class CorkedTransport(asyncio.Transport):
    """A connection's TLS transport whose writes of one event-loop turn go out as one write.

    Held bytes are written when the answer is whole (the protocol calls :meth:`flush`), at the end
    of the turn (``loop.call_soon``: a head whose body comes later), at once when they reach
    :data:`CORK_LIMIT` bytes (so the TLS transport sees a large body as it comes, and pauses the
    writer at its high-water mark as before), before a close, and on :meth:`flush`. Bytes held when
    the transport was aborted underneath (the deadline sweep) or the connection was lost are
    dropped, as asyncio drops writes to a closed transport. Everything else is the TLS transport's.
    """

    def __init__(self, raw: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.raw = raw
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._pending: asyncio.Handle | None = None  # the end-of-turn flush, once scheduled

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not isinstance(data, bytes):  # held past the caller's return: a copy it cannot change
            data = bytes(memoryview(data))
        self._held.append(data)
        self._size += len(data)
        if self._size >= CORK_LIMIT:
            self.flush()
        elif self._pending is None:
            self._pending = self._loop.call_soon(self._end_of_turn)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _end_of_turn(self) -> None:
        self._pending = None
        self.flush()

    def flush(self) -> None:
        """Write what is held: one write (one TLS record per 16 KiB) under :data:`CORK_LIMIT`
        bytes; above it, one ``writelines`` (no copy; asyncio's TLS layer sends it at once)."""
        held, size = self._held, self._size
        if not held:
            return
        self._held, self._size = [], 0
        if self.raw.is_closing():
            return
        if len(held) == 1:
            self.raw.write(held[0])
        elif size < CORK_LIMIT:
            self.raw.write(b"".join(held))
        else:
            self.raw.writelines(held)

    def discard(self) -> None:
        """Drop what is held (the connection is gone)."""
        self._held, self._size = [], 0

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def abort(self) -> None:
        self.discard()
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self.raw.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()


class _ClockedFlow(FlowControl):
    """uvicorn's flow control, telling the clock when the server stops and starts waiting for body bytes."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def pause_reading(self) -> None:
        super().pause_reading()
        self._protocol.clock.read_done(0)  # the app is not taking the body: its waits do not count

    def resume_reading(self) -> None:
        super().resume_reading()
        self._protocol.await_body()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol for one connection, bounded (see the module docstring)."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared.config, shared.state, {}, asyncio.get_running_loop())
        self.shared = shared
        self.clock = ConnectionClock(shared.limits)
        self.head_size = 0  # bytes of the current request head seen by the parser callbacks
        self.head_raw = 0  # bytes received while the head was open, from the read after it began
        self.head_open = True  # a request head is being received (or awaited)
        self.head_began = False  # ... and it began in the read being parsed
        self.body_open = False  # the parser is inside a request body
        self.refused = False  # answered 400/431: nothing more is read

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw_transport = transport  # the TLS transport: the deadline sweep and a refusal abort it
        self.corked = CorkedTransport(transport, self.loop)
        super().connection_made(self.corked)
        self.flow = _ClockedFlow(self.corked, self)
        app = GuardedApp(self.shared.app, self.shared.limits, self.clock, self._refuse_rest)
        tls = tls_extension(transport)

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {"tls": tls}
            await app(scope, receive, send)

        self.app = with_tls
        self.shared.watch(self.clock, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.watch(self.clock, None)
        self.corked.discard()
        super().connection_lost(exc)

    async def _refuse_rest(self) -> None:
        """After an answer given before its body was read: take no more, let the answer arrive, abort."""
        cycle = self.cycle
        await self.shared.refuse_rest(self.raw_transport)
        if cycle is not None:
            cycle.disconnected = True  # aborted: the app's further sends are dropped

    # -- reading ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        self.clock.read_done(len(data))
        self.head_began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(431, f"request head over {MAX_HEAD} bytes")
                return
            if isinstance(exc.__context__, UpgradeWithBody):
                self._refuse(400, "HTTP upgrade not supported")
                return
            raise
        except httptools.HttpParserError as exc:
            self._refuse(400, "invalid HTTP request", str(exc))
            return
        except httptools.HttpParserUpgrade:  # no protocol switch here (one with a body was refused)
            log.debug("HTTP upgrade not supported here: answered as a plain request", peer=self._peer())
            if self.cycle is not None:
                self.cycle.keep_alive = False  # and the connection closed after the answer
        if self.head_open and not self.head_began:
            self.head_raw += len(data)
            if self.head_raw > MAX_HEAD:  # a head still open after this many bytes
                self._refuse(431, f"request head over {MAX_HEAD} bytes")
                return
        self.await_body()

    def await_body(self) -> None:
        """The server waits for body bytes (unless reading is paused or the body is whole)."""
        if self.body_open and not self.flow.read_paused and not self.transport.is_closing():
            self.clock.read_started()

    def _refuse(self, status: int, message: str, detail: str = "") -> None:
        log.debug("refused an HTTP request", peer=self._peer(), status=status, reason=detail or message)
        body = b'{"error": "%s"}' % message.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b""), len(body), body))
        self.corked.flush()
        self.head_open = self.body_open = False
        self.refused = True
        if self.cycle is not None:
            self.cycle.disconnected = True  # a request still answered on this connection sends nothing more
        # not a TLS close, which would buffer what the client still sends while it waits for its
        # close_notify: read nothing more, let the answer arrive, abort
        task = self.loop.create_task(self.shared.refuse_rest(self.raw_transport))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else ""

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_open, self.head_began, self.head_size, self.head_raw = True, True, 0, 0

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade() and any(
                name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0"))
                for name, value in self.headers):
            raise UpgradeWithBody
        self.head_open = False
        self.body_open = True  # until on_message_complete (at once for a request without a body)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.body_open = False
        self.clock.read_done(0)  # the body is whole: nothing more is awaited for it
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.corked.flush()  # the answer is whole: it leaves now, not after the loop's other callbacks
        super().on_response_complete()

    # -- quiet -----------------------------------------------------------------------------------

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("HTTP upgrade not supported here", peer=self._peer())


_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}
