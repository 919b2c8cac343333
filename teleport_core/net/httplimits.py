"""Bounds on every HTTPS request before the app (and authentication) sees it.

:class:`teleport_core.net.tlsserver.TLSServer` applies these to each connection:

- **Body size**, per route (:class:`HTTPLimits`): a ``Content-Length`` over the route's limit
  is answered 413 ``{"error": "request body over N bytes"}`` before a byte of the body is
  read; a chunked (or lying) body is cut with the same 413 as soon as it passes the limit,
  and the connection closed. Nothing buffers more than the limit: hypercorn hands the body
  over in pieces of at most 64 KiB through a queue of a few pieces, and stops reading the
  socket while the app does not take them.
- **Time** (:class:`ConnectionClock`, checked once a second by the server): a request head
  must arrive within ``header_timeout`` of the connection's start (or of the first byte after
  an idle keep-alive period); while a body is expected, the server never waits more than
  ``body_timeout`` for its next bytes, and, after ``body_grace`` seconds of waiting, the body
  must come at ``min_body_rate`` bytes a second over the time spent waiting for it (time the
  app spends not reading does not count). Idle keep-alive connections end after
  ``keep_alive_timeout`` (hypercorn's own timer). A connection past a deadline is aborted. An
  upgraded WebSocket (the web terminal) counts as a request being answered while the app holds
  it, so no head deadline applies; the app decides how long it lives (its pings).
- **Quiet protocol errors**: an answer that cannot be sent (the client closed, or the HTTP
  state machine refuses it, as for a 405 after the client's TLS close_notify) is logged once at
  DEBUG, without a traceback, and the app's further sends are dropped.

hypercorn's own limits are set by :func:`configure`: request head size
(``h11_max_incomplete_size``), HTTP/2 frame, header list and concurrent stream limits.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

from teleport_core.errors import TeleportError
from teleport_core.logs import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DEFAULT_MAX_BODY = 64 * KiB
LOGIN_MAX_BODY = 16 * KiB  # password logins, invites, registrations: a few short fields
DRAIN_MAX = 64 * KiB  # unread body taken after an early answer so the connection stays usable
ANSWER_TIMEOUT = 5.0  # seconds a 413 may take to be written before the connection is cut anyway
MAX_HEAD = 16 * KiB  # request line and headers (HTTP/1.1), header list (HTTP/2)

log = get_logger("http")


class RequestTooLarge(TeleportError):
    """A request body over its route's limit (answered 413 by the server, not by the app)."""


@attrs.frozen
class RouteLimit:
    """The body limit of the requests whose method and path match (``{name}`` matches one path segment)."""

    method: str
    path: str
    max_body: int
    pattern: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        parts = re.split(r"(\{[^/{}]+\})", self.path)
        regex = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        object.__setattr__(self, "pattern", re.compile(regex + r"\Z"))

    def matches(self, method: str, path: str) -> bool:
        return method.upper() == self.method.upper() and self.pattern.match(path) is not None


@attrs.frozen
class HTTPLimits:
    """Body and time limits of one HTTPS listener (see the module docstring)."""

    max_body: int = DEFAULT_MAX_BODY
    routes: tuple[RouteLimit, ...] = ()
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_grace: float = 10.0
    min_body_rate: float = 1024.0
    keep_alive_timeout: float = 60.0
    #: headers every answer of the listener itself (a 413) carries, e.g. the web port's security headers
    headers: tuple[tuple[bytes, bytes], ...] = ()

    _by_method: dict[str, tuple[RouteLimit, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_method: dict[str, list[RouteLimit]] = {}
        for route in self.routes:  # in order: the first match wins
            by_method.setdefault(route.method.upper(), []).append(route)
        object.__setattr__(self, "_by_method", {method: tuple(routes) for method, routes in by_method.items()})

    def body_limit(self, method: str, path: str) -> int:
        """The largest body a request for ``method path`` may carry (the first matching route's limit)."""
        for route in self._by_method.get(method.upper(), ()):
            if route.pattern.match(path) is not None:
                return route.max_body
        return self.max_body


def configure(config: Any, limits: HTTPLimits) -> None:
    """Set hypercorn's own limits on ``config`` (a ``hypercorn.config.Config``)."""
    config.keep_alive_timeout = limits.keep_alive_timeout
    config.h11_max_incomplete_size = MAX_HEAD  # a longer request head is a 400 (h11)
    config.h2_max_header_list_size = MAX_HEAD
    config.h2_max_inbound_frame_size = 16 * KiB  # the smallest HTTP/2 allows
    config.h2_max_concurrent_streams = 16
    config.max_app_queue_size = 4  # pieces of a body (<= 64 KiB each) waiting for the app
    config.read_timeout = None  # per read only: ConnectionClock keeps the deadlines that matter


class ConnectionClock:
    """Where one HTTP connection is (waiting for a request head, receiving a body, answering)
    and whether it is past its deadline (:meth:`overdue`)."""

    def __init__(self, limits: HTTPLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.active = 0  # requests the app is answering
        self.bodies = 0  # of those, the ones whose body is still expected
        self.head_since: float | None = clock()  # a request head is awaited since (None: idle or answering)
        self.reading_since: float | None = None  # the server waits for bytes since
        self.body_waited = 0.0  # seconds spent waiting for the bodies of the current requests
        self.body_bytes = 0

    # -- the reader ---------------------------------------------------------------------------------

    def read_started(self) -> None:
        self.reading_since = self.clock()

    def read_done(self, size: int) -> None:
        now = self.clock()
        if self.reading_since is not None and self.bodies:
            self.body_waited += now - self.reading_since
            self.body_bytes += size
        self.reading_since = None
        if size and self.active == 0 and self.head_since is None:
            self.head_since = now  # the first bytes of a request after an idle period

    # -- the app ------------------------------------------------------------------------------------

    def request_started(self, expects_body: bool) -> None:
        self.active += 1
        self.head_since = None
        if expects_body:
            if not self.bodies:
                self.body_waited, self.body_bytes = 0.0, 0
            self.bodies += 1

    def body_done(self) -> None:
        self.bodies = max(0, self.bodies - 1)

    def request_done(self) -> None:
        self.active = max(0, self.active - 1)
        # an idle keep-alive connection is hypercorn's (keep_alive_timeout); the header timer
        # starts again with the next request's first byte

    def overdue(self) -> str:
        """Why the connection is past a deadline, or ""."""
        now, lim = self.clock(), self.limits
        if self.active == 0 and self.head_since is not None and now - self.head_since > lim.header_timeout:
            return f"no complete request head within {lim.header_timeout:g}s"
        if self.bodies and self.reading_since is not None:
            waiting = now - self.reading_since
            if waiting > lim.body_timeout:
                return f"no request body bytes for {lim.body_timeout:g}s"
            waited = self.body_waited + waiting
            if waited > lim.body_grace and self.body_bytes < lim.min_body_rate * waited:
                return f"request body slower than {lim.min_body_rate:g} bytes/s"
        return ""


class GuardedReader:
    """The connection's ``asyncio.StreamReader`` as hypercorn uses it, telling ``clock`` when
    the server waits for bytes and how many came."""

    def __init__(self, reader: Any, clock: ConnectionClock) -> None:
        self._reader = reader
        self._clock = clock

    def at_eof(self) -> bool:
        return bool(self._reader.at_eof())

    async def read(self, n: int = -1) -> bytes:
        self._clock.read_started()
        data = b""
        try:
            data = bytes(await self._reader.read(n))
        finally:
            self._clock.read_done(len(data))
        return data


def _content_length(headers: Any) -> tuple[int | None, bool]:
    """The request's ``Content-Length`` (None without one) and whether it has a chunked body."""
    length, chunked = None, False
    for name, value in headers:
        lowered = bytes(name).lower()
        if lowered == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif lowered == b"transfer-encoding":
            chunked = True
    return length, chunked


class _Body:
    """Whether a request's body is still expected; :meth:`end` tells the clock once."""

    def __init__(self, clock: ConnectionClock, pending: bool) -> None:
        self.clock = clock
        self.pending = pending

    def end(self) -> None:
        if self.pending:
            self.pending = False
            self.clock.body_done()


async def refuse_too_large(send: Send, limit: int, *, end: bool = True,
                           headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """The 413 (``end=False``: the response is whole on the wire, by its length, but not ended, so
    the server does not start closing the connection yet), with the listener's ``headers``."""
    body = b'{"error": "request body over %d bytes"}' % limit
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": not end})


class GuardedApp:
    """``app`` for one connection: body limits, the connection's clock, quiet send failures."""

    def __init__(self, app: ASGIApp, limits: HTTPLimits, clock: ConnectionClock,
                 refuse_rest: Callable[[], Awaitable[None]] | None = None) -> None:
        self.app = app
        self.limits = limits
        self.clock = clock
        self.refuse_rest = refuse_rest  # awaited once a 413 is out: the rest of the body is not wanted
        self.send_failed = False  # once per connection: later failures are not logged again

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # a long-lived upgraded connection: no request-head deadline while it runs
            self.clock.request_started(False)
            try:
                await self.app(scope, receive, send)
            finally:
                self.clock.request_done()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _content_length(scope.get("headers", ()))
        body = _Body(self.clock, chunked or bool(length))
        self.clock.request_started(body.pending)
        try:
            await self._request(scope, receive, send, length, body)
        finally:
            body.end()
            self.clock.request_done()

    async def _request(self, scope: Scope, receive: Receive, send: Send, length: int | None, body: _Body) -> None:
        limit = self.limits.body_limit(scope["method"], scope["path"])
        if length is not None and length > limit:
            await self._quiet(send, limit)  # answered without reading a byte of the body
            return
        received = 0
        started = sized = over = left = False

        async def limited_receive() -> Message:
            nonlocal received, over, left
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            left = message["type"] == "http.disconnect"
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    body.end()
                    if not started:
                        await self._quiet(send, limit)
                    raise RequestTooLarge(f"request body over {limit} bytes")
                if not message.get("more_body", False):
                    body.end()
            else:
                body.end()
            return message

        async def drain() -> None:
            nonlocal received
            while body.pending and received <= min(limit, DRAIN_MAX):
                message = await receive()
                received += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body.end()

        async def guarded_send(message: Message) -> None:
            nonlocal started, sized
            if over or self.send_failed:
                return  # the 413 went out instead, or the connection is gone
            if message["type"] == "http.response.start":
                started = True
                sized = any(bytes(name).lower() == b"content-length" for name, _ in message.get("headers", ()))
            # an answer given before the body was read (401, 429 ...): ended the usual way, the
            # connection would start a TLS close while the body still comes, which fails or
            # buffers it; instead the answer is left unended (whole by its length) and the
            # connection is handled as after a 413
            unread = (message["type"] == "http.response.body" and not message.get("more_body", False)
                      and body.pending and sized and self.refuse_rest is not None)
            if unread:
                await drain()  # a small body (already here, mostly) keeps the connection usable
                unread = body.pending
            try:
                await send({**message, "more_body": True} if unread else message)
            except Exception as exc:  # the client closed or the protocol refuses: not a bug
                self._send_failed(scope, exc)
            if unread and self.refuse_rest is not None:
                await self.refuse_rest()

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception as exc:
            if left:  # the client went away mid-request (starlette's ClientDisconnect): not a bug
                self._send_failed(scope, exc)
            elif not over:
                raise
            # else the app passed on the RequestTooLarge its read raised: the 413 is out already

    async def _quiet(self, send: Send, limit: int) -> None:
        # with refuse_rest, the connection is aborted once the answer had time to arrive: a
        # graceful TLS close now would fail on the body still coming and reset the connection
        # at once, destroying the answer before the client reads it
        try:  # bounded: the connection is aborted after the answer, whether it could be written or not
            await asyncio.wait_for(refuse_too_large(send, limit, end=self.refuse_rest is None,
                                                    headers=self.limits.headers), ANSWER_TIMEOUT)
        except Exception as exc:
            self._send_failed({}, exc)
        if self.refuse_rest is not None:
            await self.refuse_rest()

    def _send_failed(self, scope: Scope, exc: Exception) -> None:
        if not self.send_failed:
            self.send_failed = True
            log.debug("HTTP answer not sent: the client left or the protocol refused it", method=scope.get("method"),
                      path=scope.get("path"), error=f"{type(exc).__name__}: {exc}")
