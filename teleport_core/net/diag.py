"""The diagnostics HTTP endpoint of ``teleport.diag_addr``: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200 ``{"status": "ok"}``
once every enabled service is ready, and 503 with each service's state otherwise (while
starting, when a service reported itself degraded, and during shutdown). ``/metrics`` is the
process's own Prometheus registry in text format; when a service runs worker processes, also
every live worker's series, each sample labelled ``worker`` (:mod:`teleport_core.net.worker_metrics`).

starlette and hypercorn are imported only when a diag server is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core.config.values import NetAddr
from teleport_core.errors import TeleportError
from teleport_core.net.worker_metrics import exposition

if TYPE_CHECKING:
    import structlog
    from prometheus_client import CollectorRegistry


@attrs.frozen
class ServiceHealth:
    """One service as ``/readyz`` reports it."""

    ready: bool
    reason: str = ""


@attrs.frozen
class Readiness:
    """What ``/readyz`` answers: ``status`` is ``"ok"`` exactly when the process is ready."""

    status: str
    services: dict[str, ServiceHealth] = attrs.field(factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        if self.ready:
            return {"status": "ok"}
        return {
            "status": self.status,
            "services": {name: {"ready": h.ready, "reason": h.reason} for name, h in self.services.items()},
        }


def listen_socket(addr: NetAddr) -> socket.socket:
    """A listening TCP socket on ``addr`` (port 0 picks a free port); errors name the address."""
    try:
        infos = socket.getaddrinfo(addr.host or None, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TeleportError(f"diag_addr {addr}: cannot resolve host: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise TeleportError(f"diag_addr {addr}: cannot listen: {exc.strerror or exc}") from None
    return sock


class DiagServer:
    """Serves the diagnostics endpoints on ``addr`` until :meth:`stop`.

    ``readiness`` is called for every ``/readyz`` request. :attr:`addr` is the address
    actually bound (useful with port 0).
    """

    def __init__(
        self,
        addr: NetAddr,
        registry: CollectorRegistry,
        readiness: Callable[[], Readiness],
        log: structlog.stdlib.BoundLogger,
        *,
        graceful_timeout: float = 2.0,
    ) -> None:
        self.requested = addr
        self.registry = registry
        self.readiness = readiness
        self.log = log
        self.graceful_timeout = graceful_timeout
        self.addr: NetAddr | None = None
        self._shutdown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        if self.addr is None:
            raise TeleportError("diagnostics server is not running")
        host = self.addr.connect_host
        return f"http://[{host}]:{self.addr.port}" if ":" in host else f"http://{host}:{self.addr.port}"

    def app(self) -> Any:
        """The starlette application (routes only; no middleware, no lifespan)."""
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def readyz(request: Request) -> Response:
            state = self.readiness()
            return JSONResponse(state.to_json(), status_code=200 if state.ready else 503)

        async def metrics(request: Request) -> Response:
            return Response(await exposition(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
            ]
        )

    async def start(self, sock: socket.socket | None = None) -> NetAddr:
        """Bind (or serve on ``sock``, which stays the caller's) and start serving; returns the
        bound address. Raises TeleportError if it cannot listen."""
        import logging

        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        own = sock is None
        sock = listen_socket(self.requested) if sock is None else sock
        host, port = sock.getsockname()[:2]
        self.addr = NetAddr(str(host), int(port))
        # hypercorn takes ownership of the descriptor it is given: hand it a duplicate and
        # close ours, so the listener closes exactly when hypercorn closes it.
        fd = os.dup(sock.fileno())
        if own:
            sock.close()
        config = Config()
        config.bind = [f"fd://{fd}"]
        config.accesslog = None
        errorlog = logging.getLogger("teleport.diag.http")
        errorlog.setLevel(logging.WARNING)  # hypercorn's "Running on fd://..." is noise
        config.errorlog = errorlog
        config.graceful_timeout = self.graceful_timeout
        config.include_server_header = False
        self._shutdown = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self.app(), config, shutdown_trigger=self._shutdown.wait), name="diag-http"
        )
        self._task.add_done_callback(self._served)
        self.log.info("diagnostics listening", addr=str(self.addr), url=self.url)
        return self.addr

    def _served(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._shutdown.is_set():
            self.log.error("diagnostics server failed", error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        """Stop serving and close the listener (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._shutdown.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.graceful_timeout + 3)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception as exc:
            self.log.warning("diagnostics server stopped with an error", error=f"{type(exc).__name__}: {exc}")
        self.log.debug("diagnostics stopped")
