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
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from teleport_core.config.values import NetAddr

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


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
                 keep_alive_timeout: float = 60.0, graceful_timeout: float = 5.0) -> None:
        from hypercorn.config import Config

        self.app = app
        self.sock = sock
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
        self._server = await asyncio.start_server(
            self._connection, sock=self.sock, ssl=self._wrapper, ssl_handshake_timeout=10.0
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from hypercorn.app_wrappers import ASGIWrapper
        from hypercorn.asyncio.tcp_server import TCPServer

        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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
        if self._server is None:
            return
        self._server.close()
        if self._context_obj is not None:
            await self._context_obj.terminated.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), self.config.graceful_timeout)
        lingering = list(self._tasks)
        for task in lingering:
            task.cancel()
        await asyncio.gather(*lingering, return_exceptions=True)  # collected, so nothing logs them
        await self._server.wait_closed()
        self._server = None
