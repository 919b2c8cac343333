"""Run a teleport process inside a test: :func:`start_cluster`.

::

    from teleport_core.testing.cluster import start_cluster

    def test_my_service(tmp_path):
        with start_cluster({"teleport": {"data_dir": str(tmp_path), "diag_addr": "127.0.0.1:0"},
                            "my_service": {"enabled": True}}) as cluster:
            httpx.get(cluster.diag_url + "/readyz")

The process runs on its own event loop in a background thread; :func:`start_cluster` returns
once every service is ready and raises :class:`ClusterStartError` (with each service's state)
when start-up fails or times out. Leaving the ``with`` block stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from teleport_core.config.load import Flags, parse_config
from teleport_core.config.model import TeleportConfig
from teleport_core.errors import TeleportError
from teleport_core.plugins import Plugins, make_plugins
from teleport_core.process import TeleportProcess, describe_error

T = TypeVar("T")


class ClusterStartError(TeleportError):
    """The in-process cluster did not become ready; the message says why and lists the services."""


class ClusterHandle:
    """A running in-process teleport: ``config``, ``process``, ``diag_url`` (None without diag_addr)."""

    def __init__(self, config: TeleportConfig, plugins: Plugins, *, stop_timeout: float, temp_dir: Path | None) -> None:
        self.config = config
        self.plugins = plugins
        self.process = TeleportProcess(config, plugins, stop_timeout=stop_timeout)
        self._temp_dir = temp_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"teleport-cluster-{config.nodename}", daemon=True)

    # -- the background thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(); keep the thread quiet
            if self._error is None:
                self._error = exc
        finally:
            self._finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.process.run(on_ready=self._started.set)
        except BaseException as exc:
            self._error = exc

    # -- the test's side --------------------------------------------------------------------------

    def start(self, timeout: float) -> ClusterHandle:
        """Start the thread and wait until every service is ready."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self._started.is_set() and self.process.ready):
            if self._finished.is_set():
                error = self._error
                reason = describe_error(error) if error is not None else "stopped while starting"
                states = self._states()
                self.stop()
                raise ClusterStartError(f"teleport failed to start: {reason}; services: {states}") from error
            if time.monotonic() > deadline:
                states = self._states()
                self.stop()
                raise ClusterStartError(f"teleport did not become ready within {timeout:g}s; services: {states}")
            self._finished.wait(0.02)
        return self

    def _states(self) -> str:
        services = self.process.readiness().services
        return (
            ", ".join(
                f"{name}: {'ready' if h.ready else 'not ready'}{f' ({h.reason})' if h.reason else ''}"
                for name, h in services.items()
            )
            or "none enabled"
        )

    @property
    def diag_url(self) -> str | None:
        """``http://host:port`` of the diagnostics endpoint (None when ``diag_addr`` is not set)."""
        diag = self.process.diag
        return diag.url if diag is not None and diag.addr is not None else None

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run ``fn()`` on the process's event loop and return its result (from the test's thread)."""
        if self._loop is None or not self._thread.is_alive():
            raise TeleportError("the cluster is not running")
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every service and wait for the thread (idempotent)."""
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.process.request_stop, "test cluster closed")
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TeleportError(f"teleport did not stop within {timeout:g}s; services: {self._states()}")
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> ClusterHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_cluster(
    config_data: dict[str, Any],
    plugins: Plugins | None = None,
    *,
    flags: Flags | None = None,
    timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> ClusterHandle:
    """Parse ``config_data`` (a ``teleport.yaml`` as a dict) and run it until ready.

    ``plugins`` defaults to :func:`~teleport_core.plugins.make_plugins` (installed plugins
    plus ``$TELEPORT_PLUGINS``). Without ``teleport.data_dir`` a temporary directory is used
    and removed on stop. Use the result as a context manager.
    """
    plugins = plugins if plugins is not None else make_plugins()
    data = dict(config_data)
    teleport = dict(data.get("teleport") or {})
    temp_dir: Path | None = None
    if not teleport.get("data_dir"):
        temp_dir = Path(tempfile.mkdtemp(prefix="teleport-test-"))
        teleport["data_dir"] = str(temp_dir)
    data["teleport"] = teleport
    try:
        config = parse_config(data, plugins, flags)
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    handle = ClusterHandle(config, plugins, stop_timeout=stop_timeout, temp_dir=temp_dir)
    return handle.start(timeout)
