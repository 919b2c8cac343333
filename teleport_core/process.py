"""``teleport start``: run the enabled services in one process until a signal stops them.

:func:`run_process` is what the CLI calls (after :func:`~teleport_core.logs.configure_logging`);
:class:`TeleportProcess` is the same runtime as an object, for tests that run a cluster
inside their own process (see :mod:`teleport_core.testing.cluster`).

Start-up: refuse broken plugins, order the enabled services by ``ServiceSpec.after``, lock
``data_dir``, open the diagnostics endpoint, then create and start each service in turn. A
service is ready once its ``start()`` returns (it may later report itself degraded with
``ctx.set_ready(False, reason)``). If a start fails, the services already started are
stopped again and the process exits 1. Services get their listening sockets from
``ctx.listen(name, addr)`` (:mod:`teleport_core.net.inherit`).

Signals (under :func:`run_process`), as Teleport's:

* ``SIGHUP``: graceful reload. Start a new ``teleport start`` with the same command line (it
  reads the config file again) that inherits every listening socket, the ``data_dir`` lock and
  the reload generation (``TELEPORT_OS_FILES`` ...). Once it reports ``teleport is ready`` over
  a pipe, this process stops accepting (closes its own copies of the listeners), drains (live
  SSH sessions, web terminals, reverse tunnels and requests in flight run to their end; new
  connections go to the new process) and exits 0. If the new process fails (broken config,
  failed start, exit, not ready within :data:`RELOAD_TIMEOUT`) the error is logged and this
  one keeps serving as if nothing happened.
* ``SIGUSR2``: the same new process, but this one keeps serving too (send ``SIGQUIT`` or
  ``SIGTERM`` to one of them later).
* ``SIGQUIT``: stop accepting, drain, exit 0.
* ``SIGTERM``, ``SIGINT``: stop now: services stop in reverse order (the node tells its
  sessions' clients they end) and the process exits 0 (a second SIGINT exits at once with 130);
  also during a drain.
* ``SIGUSR1``: log a diagnostics dump (each service's state and ``diagnostics()``, the asyncio
  tasks, every thread's stack) and keep running.

Children are reaped (no zombies). The ``--pid-file`` names the process that serves: the new
process of a reload writes it once ready, and a process removes it on exit only while it
still names that process. ``teleport_reload_generation`` is 0 for the first process and one
more for each new process a reload started.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from teleport_core import __version__
from teleport_core.config.model import TeleportConfig
from teleport_core.datadir import DataDirLock, lock_data_dir
from teleport_core.errors import PluginError, TeleportError, UnknownNameError
from teleport_core.logs import debug_enabled, get_logger
from teleport_core.net.allocator import keep_large_blocks
from teleport_core.net.diag import DiagServer, Readiness, ServiceHealth, listen_socket
from teleport_core.net.inherit import (
    ENV_FILES,
    ENV_GENERATION,
    ENV_LOCK_FD,
    ENV_READY_FD,
    ERROR_PREFIX,
    READY,
    Listeners,
    own_argv,
    read_answer,
    report_ready,
    take_int,
)
from teleport_core.net.listeners import check_can_listen, planned_listeners
from teleport_core.net.worker_metrics import serve_scrapes
from teleport_core.net.workers import (
    DATA_DIR_LOCK,
    command_line_process,
    take_worker_role,
    watch_parent,
    worker_config,
)
from teleport_core.plugins import PluginInfo, Plugins, blame
from teleport_core.refs import resolve
from teleport_core.resources import ProcessResources
from teleport_core.service import Service, ServiceContext
from teleport_core.specs import ServiceSpec

DEFAULT_STOP_TIMEOUT = 10.0
FORCED_EXIT_CODE = 130
RELOAD_TIMEOUT = 180.0  # seconds the new process of a reload has to report ready
_STARTING = (False, "starting")
_WAITING = (False, "waiting to start")
_STATUS = {
    "new": "teleport is starting",
    "starting": "teleport is starting",
    "running": "degraded",
    "draining": "teleport is draining",
    "stopping": "teleport is shutting down",
    "stopped": "teleport is stopped",
}


class StartError(TeleportError):
    """A service failed to start (the failure has been logged and the process shut down)."""


def describe_error(exc: BaseException) -> str:
    """An exception as one line: our own errors and OS errors by message, others with their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, TeleportError | OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def start_order(config: TeleportConfig, plugins: Plugins) -> list[tuple[str, PluginInfo, ServiceSpec]]:
    """The enabled sections in start order: each after the enabled sections it names in
    ``after``, otherwise in config order. A dependency cycle is a :class:`PluginError`."""
    installed = plugins.services()
    enabled = [section.name for section in config.enabled_services()]
    for name in enabled:
        if name not in installed:
            raise UnknownNameError(f"{name} is enabled but no installed plugin provides it")
    deps = {name: [d for d in installed[name][1].after if d in enabled and d != name] for name in enabled}
    order: list[str] = []
    remaining = list(enabled)
    while remaining:
        ready = [name for name in remaining if all(d in order for d in deps[name])]
        if not ready:
            cycle = _cycle(deps, remaining)
            raise PluginError(f"services depend on each other in a cycle (ServiceSpec.after): {cycle}")
        order.append(ready[0])
        remaining.remove(ready[0])
    return [(name, *installed[name]) for name in order]


def _cycle(deps: Mapping[str, list[str]], nodes: list[str]) -> str:
    """One dependency cycle among ``nodes`` as ``a -> b -> a``."""
    path = [nodes[0]]
    while True:
        following = next(d for d in deps[path[-1]] if d in nodes)
        if following in path:
            cycle = [*path[path.index(following) :], following]
            return " -> ".join(cycle)
        path.append(following)


@attrs.define
class ServiceUnit:
    """One enabled service and where it is in its life: ``pending``, ``starting``,
    ``running``, ``failed``, ``stopping`` or ``stopped``."""

    name: str
    plugin: PluginInfo
    spec: ServiceSpec
    service: Service | None = None
    state: str = "pending"
    error: str = ""


class _ServiceReadyCollector:
    """``teleport_service_ready{service=...}``, read from the live health map at each scrape."""

    def __init__(self, process: TeleportProcess) -> None:
        self.process = process

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("teleport_service_ready", "1 when the service is ready", labels=["service"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("teleport_service_ready", "1 when the service is ready", labels=["service"])
        for name, health in self.process.readiness().services.items():
            family.add_metric([name], 1.0 if health.ready else 0.0)
        yield family


class TeleportProcess:
    """The enabled services of ``config`` and their shared resources, diagnostics and lock.

    Use ``await start()``, then ``await wait()`` (returns once :meth:`request_stop` was
    called or the process stopped), then ``await stop()``; or just ``await run()``. All
    methods run on the loop that called :meth:`start`; from another thread use
    ``loop.call_soon_threadsafe(process.request_stop)``.
    """

    def __init__(self, config: TeleportConfig, plugins: Plugins, *, stop_timeout: float = DEFAULT_STOP_TIMEOUT,
                 listeners: Listeners | None = None, generation: int = 0, inherited_lock: int | None = None) -> None:
        self.config = config
        self.listeners = listeners if listeners is not None else Listeners()
        self.generation = generation
        self._inherited_lock = inherited_lock
        self.children: list[subprocess.Popen[bytes]] = []
        self._reloading = False
        self._draining: asyncio.Task[None] | None = None
        self.plugins = plugins
        self.stop_timeout = stop_timeout
        self.log = get_logger("process")
        self.state = "new"
        self.failure = ""
        self.health: dict[str, tuple[bool, str]] = {}
        self.units: dict[str, ServiceUnit] = {}
        self.resources: ProcessResources | None = None
        self.diag: DiagServer | None = None
        self.started_at: float | None = None
        self._lock: DataDirLock | None = None
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()
        self._register_metrics()

    # -- state ------------------------------------------------------------------------------------

    @property
    def services(self) -> Mapping[str, Service]:
        """Section name -> service object, for every service created so far."""
        return MappingProxyType({n: u.service for n, u in self.units.items() if u.service is not None})

    @property
    def ready(self) -> bool:
        return self.readiness().ready

    @property
    def diag_addr(self) -> str | None:
        """The bound diagnostics address (``host:port``), None when diagnostics are off."""
        return str(self.diag.addr) if self.diag is not None and self.diag.addr is not None else None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def readiness(self) -> Readiness:
        """What ``/readyz`` answers: every enabled service's readiness and the overall status."""
        names = list(self.units) or [s.name for s in self.config.enabled_services()]
        services = {name: ServiceHealth(*self.health.get(name, _WAITING)) for name in names}
        if self.state == "running" and all(h.ready for h in services.values()):
            return Readiness("ok", services)
        status = f"teleport failed to start: {self.failure}" if self.failure else _STATUS[self.state]
        return Readiness(status, services)

    def _register_metrics(self) -> None:
        registry = self.registry
        build = Gauge(
            "teleport_build_info",
            "teleport-core version and Python version; always 1",
            ["version", "python_version"],
            registry=registry,
        )
        build.labels(version=__version__, python_version=platform.python_version()).set(1)
        loaded = Gauge("teleport_plugins_loaded", "Number of plugins loaded", registry=registry)
        loaded.set(sum(1 for info in self.plugins.infos if info.status == "loaded"))
        self._start_time = Gauge(
            "teleport_start_time_seconds", "When teleport started, in seconds since the epoch", registry=registry
        )
        Gauge(
            "teleport_reload_generation",
            "0 for the first teleport process; one more for each new process a reload (SIGHUP, SIGUSR2) started",
            registry=registry,
        ).set(self.generation)
        registry.register(_ServiceReadyCollector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    # -- start ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Lock data_dir and start every enabled service; returns once all are ready.

        On failure everything already started is stopped again and the error is raised
        (:class:`StartError` for a failing service, :class:`DataDirLocked`, :class:`PluginError`).
        """
        if self.state != "new":
            raise TeleportError(f"the process was started already (state {self.state})")
        self.state = "starting"
        self._loop = asyncio.get_running_loop()
        try:
            self.plugins.raise_if_broken()
            order = start_order(self.config, self.plugins)
            inherited, self._inherited_lock = self._inherited_lock, None
            self._lock = lock_data_dir(self.config.data_dir, inherited)
            # every address binds before any service starts: a node would spend its join token first
            check_can_listen(planned_listeners(self.config, order), self._inherited_addresses())
        except BaseException as exc:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self.state, self.failure = "stopped", describe_error(exc)
            self._stopped.set()
            raise
        self.started_at = time.time()
        self._start_time.set(self.started_at)
        source = {"config": str(self.config.source)} if self.config.source else {}
        self.log.info(
            "starting teleport", version=__version__, pid=os.getpid(), data_dir=str(self.config.data_dir), **source
        )
        for info in self.plugins.infos:
            event = "loaded plugin" if info.status == "loaded" else f"plugin {info.status}"
            self.log.info(event, plugin=info.name, distribution=info.distribution, version=info.version)
        for name, info, spec in order:
            self.units[name] = ServiceUnit(name, info, spec)
            self.health[name] = _WAITING
        if not order:
            self.log.warning("no services are enabled")
        try:
            if self.config.diag_addr is not None:
                self.diag = DiagServer(self.config.diag_addr, self.registry, self.readiness, get_logger("diag"))
                await self.diag.start(self.listeners.listen("diag", self.config.diag_addr, listen_socket))
            self.resources = ProcessResources(self.config, self.plugins, metrics=self.registry)
            self.resources.shared[DATA_DIR_LOCK] = self._lock  # a service's worker processes hold it too
            for unit in self.units.values():
                await self._start_unit(unit)
        except BaseException as exc:
            self.failure = "" if isinstance(exc, asyncio.CancelledError) else describe_error(exc)
            await self.stop()
            raise
        self.state = "running"
        unused = self.listeners.close_unused()
        if unused:
            self.log.info("closed inherited listeners the config no longer has", listeners=unused)
        await self._call_hook("teleport_process_started", config=self.config, services=self.services)
        self.log.info("teleport is ready", services=list(self.units), diag_addr=self.diag_addr,
                      pid=os.getpid(), generation=self.generation)

    def _inherited_addresses(self) -> set[str]:
        """The addresses of listening sockets a graceful reload handed down (the old process
        holds them, so the pre-start bind check skips them)."""
        return {item.address for item in self.listeners.inherited}

    async def _start_unit(self, unit: ServiceUnit) -> None:
        name = unit.name
        unit.state = "starting"
        self.health[name] = _STARTING
        assert self.resources is not None
        ctx = ServiceContext(
            name=name,
            config=self.config,
            settings=self.config.settings(name),
            plugins=self.plugins,
            resources=self.resources,
            log=get_logger(unit.spec.role),
            metrics=self.registry,
            health=self.health,
            stopper=self._threadsafe_stop,
            listeners=self.listeners,
        )
        self.log.info("starting service", service=name, plugin=unit.plugin.distribution)
        try:
            with blame(unit.plugin, f"creating the {name} service ({name}.enabled)"):
                service = resolve(unit.spec.factory)(ctx)
                if inspect.isawaitable(service):
                    service = await service
            if not isinstance(service, Service):
                raise PluginError(
                    f"{unit.plugin.label}: the factory of {name} returned {type(service).__name__}, not a Service"
                )
            unit.service = service
            await service.start()
        except asyncio.CancelledError:
            unit.state, self.health[name] = "failed", (False, "start cancelled")
            raise
        except Exception as exc:
            message = describe_error(exc)
            unit.state, unit.error, self.health[name] = "failed", message, (False, message)
            self.log.error(f"{name} failed to start: {message}", service=name, exc_info=debug_enabled())
            raise StartError(f"{name} failed to start: {message}") from exc
        if self.health.get(name) is _STARTING:
            self.health[name] = (True, "")
        unit.state = "running"
        self.log.info("service started", service=name)

    # -- run and stop -----------------------------------------------------------------------------

    def _threadsafe_stop(self, reason: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.request_stop, reason)

    def request_stop(self, reason: str = "") -> None:
        """Ask :meth:`run` to stop the process (and :meth:`wait` to return); call on the loop's thread."""
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    async def wait(self) -> None:
        """Return once a stop has been requested or the process has stopped."""
        waiters = {
            asyncio.ensure_future(self._stop_requested.wait()),
            asyncio.ensure_future(self._stopped.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def run(self, on_ready: Callable[[], object] | None = None) -> None:
        """Start, call ``on_ready()``, wait for :meth:`request_stop`, stop.

        A failed start raises (after cleaning up). A stop requested during start-up cancels the
        start (the services started so far are stopped) and returns normally.
        """
        start = asyncio.create_task(self.start(), name="teleport-start")
        requested = asyncio.create_task(self._stop_requested.wait(), name="teleport-stop-request")
        try:
            await asyncio.wait({start, requested}, return_when=asyncio.FIRST_COMPLETED)
            if not start.done():
                start.cancel()
                await asyncio.wait({start})
            if start.cancelled():
                return
            exc = start.exception()
            if exc is not None:
                raise exc
            if on_ready is not None:
                on_ready()
            await self._stop_requested.wait()
        finally:
            requested.cancel()
            if not start.done():
                start.cancel()
                await asyncio.wait({start})
            await self.stop()

    async def stop(self) -> None:
        """Stop every service in reverse start order, then resources, diagnostics and the lock.

        Idempotent; concurrent callers all wait for the same shutdown.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._shutdown(), name="teleport-shutdown")
        await asyncio.shield(self._stop_task)

    async def _shutdown(self) -> None:
        if self._lock is None:  # never got as far as locking data_dir: nothing to undo
            self.state = "stopped"
            self._stopped.set()
            return
        self.state = "stopping"
        reason = f" ({self._stop_reason})" if self._stop_reason else ""
        self.log.info(f"teleport is stopping{reason}")
        await self._call_hook("teleport_process_stopping", config=self.config)
        for unit in reversed(list(self.units.values())):
            if unit.service is None:
                continue
            self.health[unit.name] = (False, "stopping")
            unit.state = "stopping"
            try:
                await asyncio.wait_for(unit.service.stop(), self.stop_timeout)
            except TimeoutError:
                self.log.warning(f"{unit.name} did not stop within {self.stop_timeout:g}s", service=unit.name)
            except Exception as exc:
                self.log.error(
                    f"{unit.name} failed to stop: {describe_error(exc)}", service=unit.name, exc_info=debug_enabled()
                )
            else:
                self.log.info("service stopped", service=unit.name)
            unit.state = "stopped"
            self.health[unit.name] = (False, unit.error or "stopped")
        if self.resources is not None:
            try:
                await asyncio.wait_for(self.resources.close(), self.stop_timeout)
            except Exception as exc:
                self.log.error(f"closing storage failed: {describe_error(exc)}", exc_info=debug_enabled())
        if self.diag is not None:
            await self.diag.stop()
        self.listeners.close_all()
        self._lock.close()
        self.state = "stopped"
        self._stopped.set()
        self.log.info("teleport stopped")

    # -- graceful reload and drain ------------------------------------------------------------------

    @property
    def reloading(self) -> bool:
        return self._reloading

    @property
    def draining(self) -> bool:
        return self._draining is not None

    async def reload(self, *, drain: bool, timeout: float = RELOAD_TIMEOUT) -> bool:
        """Start a new process that inherits the listeners and the data_dir lock; wait until it
        is ready. With ``drain``, then drain this one and request its stop. False (logged, this
        process serving on) when the new process failed."""
        if self._reloading or self.draining or self.state != "running" or self._lock is None:
            return False
        self._reloading = True
        try:
            ok = await self._start_successor(timeout)
        finally:
            self._reloading = False
        if ok and drain:
            await self.drain_and_stop("reloaded: the new process serves")
        return ok

    async def _start_successor(self, timeout: float) -> bool:
        assert self._lock is not None and self._lock.fd is not None
        generation = self.generation + 1
        files, fds = self.listeners.export()
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env.update({ENV_FILES: files, ENV_READY_FD: str(write_end), ENV_GENERATION: str(generation),
                    ENV_LOCK_FD: str(self._lock.fd)})
        argv = own_argv()
        # not the whole command line: --token may carry a secret
        self.log.info("starting the new process", generation=generation, executable=argv[0], listeners=len(fds))
        self._lock.shared = True  # from now on never unlocked explicitly: the new process may hold it too
        try:
            child = subprocess.Popen(argv, env=env, pass_fds=(*fds, write_end, self._lock.fd), cwd=os.getcwd())
        except OSError as exc:
            os.close(read_end)
            self.log.error("reload failed: cannot start the new process", error=describe_error(exc))
            self._lock.shared = any(c.poll() is None for c in self.children)
            return False
        finally:
            os.close(write_end)
        self.children.append(child)
        threading.Thread(target=_reap, args=(child,), name=f"teleport-reap-{child.pid}", daemon=True).start()
        try:
            answer = await asyncio.wait_for(asyncio.to_thread(read_answer, read_end), timeout)
        except TimeoutError:
            answer = b"error not ready within %d s" % timeout
            with contextlib.suppress(OSError):
                child.terminate()
        if answer == READY:
            self.log.info("new process ready", pid=child.pid, generation=generation)
            return True
        reason = answer[len(ERROR_PREFIX):].decode("utf-8", "replace").strip() if answer.startswith(
            ERROR_PREFIX) else ""
        code = await asyncio.to_thread(_exit_code, child, 10.0)
        if not reason:
            reason = f"it exited with code {code}" if code is not None else "it closed its ready pipe"
        self.log.error(f"reload failed: the new process did not start: {reason}; this process keeps serving",
                       pid=child.pid, exit_code=code)
        self._lock.shared = any(c.poll() is None for c in self.children)
        return False

    async def drain_and_stop(self, reason: str) -> None:
        """Stop accepting, wait for the live work to end, then request the stop (``SIGQUIT``,
        and after a reload). A ``SIGTERM`` meanwhile cancels the drain and stops now."""
        if self._draining is not None or self.state != "running":
            return
        self._draining = asyncio.current_task()
        self.state = "draining"
        self.log.info("draining", reason=reason)
        try:
            await self.stop_accepting()
            started = time.monotonic()
            running = [u for u in self.units.values() if u.service is not None and u.state == "running"]
            results = await asyncio.gather(*(u.service.drain() for u in running if u.service is not None),
                                           return_exceptions=True)
            for unit, result in zip(running, results, strict=True):
                if isinstance(result, Exception):
                    self.log.error(f"{unit.name} failed to drain: {describe_error(result)}", service=unit.name)
            self.log.info("drained", seconds=round(time.monotonic() - started, 3))
        except asyncio.CancelledError:
            self.log.info("drain cut short: stopping now")
        finally:
            self._draining = None
        self.request_stop(reason)

    async def stop_accepting(self) -> None:
        """Every service stops accepting, then the kernel closes its copies of the listeners
        and the diagnostics endpoint (the new process answers there)."""
        for unit in reversed(list(self.units.values())):
            if unit.service is None or unit.state != "running":
                continue
            try:
                await unit.service.stop_accepting()
            except Exception as exc:
                self.log.error(f"{unit.name} failed to stop accepting: {describe_error(exc)}", service=unit.name)
        if self.diag is not None:
            await self.diag.stop()
            self.diag = None
        self.listeners.close_all()
        self.log.info("stopped accepting new connections")

    def cancel_drain(self) -> bool:
        """Cut a drain short (``SIGTERM``); whether one was running."""
        if self._draining is None:
            return False
        self._draining.cancel()
        return True

    async def _call_hook(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a process hook; a failing one is logged and skipped."""
        caller = getattr(self.plugins.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            try:
                label = self.plugins.info_for(impl.plugin_name).label
            except KeyError:
                label = f'plugin "{impl.plugin_name}"'
            try:
                result = impl.function(**{name: kwargs[name] for name in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.log.error(f"{label}: hook {hook_name} failed: {describe_error(exc)}", exc_info=debug_enabled())

    # -- diagnostics ------------------------------------------------------------------------------

    def dump_diagnostics(self) -> None:
        """Log each service's state and diagnostics, the asyncio tasks and every thread's stack."""
        log = self.log
        uptime = round(time.time() - self.started_at, 3) if self.started_at else 0.0
        log.warning(
            "diagnostics dump", version=__version__, pid=os.getpid(), state=self.state, ready=self.ready, uptime=uptime
        )
        for unit in self.units.values():
            details: dict[str, Any] = {}
            if unit.service is not None:
                try:
                    details = dict(unit.service.diagnostics())
                except Exception as exc:
                    details = {"error": describe_error(exc)}
            ready, reason = self.health.get(unit.name, _WAITING)
            log.warning(
                "service state",
                service=unit.name,
                state=unit.state,
                ready=ready,
                reason=reason,
                plugin=unit.plugin.distribution,
                diagnostics=details,
            )
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:
            tasks = set()
        log.warning("asyncio tasks", count=len(tasks), names=sorted(task.get_name() for task in tasks))
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            stack = "".join(traceback.format_stack(frame))
            log.warning("thread stack", thread=names.get(ident, "?"), thread_id=ident, stack=stack)
        log.warning("diagnostics dump end")


# -- the new process of a reload --------------------------------------------------------------------


def _reap(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(Exception):
        child.wait()


def _exit_code(child: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# -- the ``teleport start`` entry point -----------------------------------------------------------


def run_process(config: TeleportConfig, plugins: Plugins, *, pid_file: Path | None = None) -> int:
    """Run ``teleport start`` until SIGTERM/SIGINT (or a drain's end): 0 after a clean stop, 1 when
    start-up failed. See the module docstring for the signals.

    Call from the main thread after :func:`~teleport_core.logs.configure_logging`. Errors
    are logged (and also printed to stderr when the log goes to a file). ``pid_file`` names
    this process while it serves (written at start, or once ready when a reload started it).
    """
    keep_large_blocks()  # SSH, TLS and recordings move bulk data through 256 KiB buffers
    try:
        return asyncio.run(_main(config, plugins, pid_file))
    except KeyboardInterrupt:  # SIGINT before the handlers were installed
        return FORCED_EXIT_CODE


def write_pid_file(path: Path) -> None:
    """Write this process's pid to ``path`` (atomically: a reader never sees it half written)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(f"{os.getpid()}\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise TeleportError(f"cannot write --pid-file {path}: {exc.strerror or exc}") from None


def remove_pid_file(path: Path) -> None:
    """Remove ``path`` if it still names this process (after a reload it names the new one)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="utf-8").strip() or 0) == os.getpid():
            path.unlink()


async def _main(config: TeleportConfig, plugins: Plugins, pid_file: Path | None = None) -> int:
    command_line_process()  # this command line may start worker processes (teleport_core.net.workers)
    worker = take_worker_role()  # a worker process of a service (teleport_core.net.workers): that service only
    if worker is not None:
        config, pid_file = worker_config(config, worker), None
        import structlog.contextvars

        structlog.contextvars.bind_contextvars(worker=worker.index)  # on every line this worker logs
    listeners = Listeners.from_environ()
    generation = take_int(ENV_GENERATION) or 0
    ready_pipe = [fd for fd in (take_int(ENV_READY_FD),) if fd is not None]  # emptied once answered
    lock_fd = take_int(ENV_LOCK_FD)
    process = TeleportProcess(config, plugins, listeners=listeners, generation=generation, inherited_lock=lock_fd)
    log = process.log
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    if pid_file is not None and not ready_pipe:
        write_pid_file(pid_file)

    def answer(message: bytes) -> None:
        """Tell the old process of a reload (once) that we are ready, or why not."""
        if ready_pipe:
            report_ready(ready_pipe.pop(), message)

    def spawn(coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            process.dump_diagnostics()
        elif signum in (signal.SIGHUP, signal.SIGUSR2):
            if worker is not None:
                log.info("reload ignored: a worker reloads with its leader process", signal=name)
            elif process.stop_requested or process.draining:
                log.info("reload ignored: this process is stopping", signal=name)
            elif process.reloading:
                log.info("reload ignored: a reload is in progress", signal=name)
            elif process.state != "running":
                log.info("reload ignored: this process is not ready yet", signal=name)
            else:
                drain = signum == signal.SIGHUP
                log.info("reload requested", signal=name, drain=drain)
                spawn(process.reload(drain=drain), "teleport-reload")
        elif signum == signal.SIGQUIT:
            if process.stop_requested or process.draining:
                log.info("already stopping", signal=name)
            elif process.state != "running":
                log.info("shutting down", signal=name)
                process.request_stop(f"received {name}")
            else:
                log.info("graceful shutdown requested", signal=name)
                spawn(process.drain_and_stop(f"received {name}"), "teleport-drain")
        elif not process.stop_requested:
            log.info("shutting down", signal=name)
            process.cancel_drain()
            process.request_stop(f"received {name}")
        elif signum == signal.SIGINT:
            log.warning("second interrupt: exiting without a clean shutdown", signal=name)
            os._exit(FORCED_EXIT_CODE)
        else:
            log.info("already shutting down", signal=name)

    def on_ready() -> None:
        if ready_pipe and pid_file is not None:
            try:
                write_pid_file(pid_file)
            except TeleportError as exc:  # serving matters more than the pid file: say so, go on
                log.error(str(exc))
        answer(READY)

    installed = []
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread
            log.warning("cannot handle signal", signal=signal.Signals(signum).name, error=str(exc))
    if worker is not None:
        watch_parent(loop, lambda: process.request_stop("the leader process exited"))
        serve_scrapes(loop, process.registry, worker.index, get_logger("diag"))  # its series on the leader's /metrics
    try:
        await process.run(on_ready)
    except Exception as exc:
        # A TeleportError may hold several lines (one per broken plugin); anything else is one.
        lines = str(exc).splitlines() if isinstance(exc, TeleportError) else []
        lines = [" ".join(line.split()) for line in lines if line.strip()] or [describe_error(exc)]
        answer(ERROR_PREFIX + "; ".join(lines).encode("utf-8", "replace")[:4000] + b"\n")
        if not isinstance(exc, StartError):  # a failing service was logged where it failed
            for line in lines:
                log.error(line, exc_info=debug_enabled() and not isinstance(exc, TeleportError))
        if config.log.output not in ("stderr", "stdout"):
            for line in lines:
                print(f"ERROR: {line}", file=sys.stderr)
        return 1
    finally:
        for task in list(tasks):
            task.cancel()
        for signum in installed:
            loop.remove_signal_handler(signum)
        answer(ERROR_PREFIX + b"stopped before it was ready\n")
        if pid_file is not None:
            remove_pid_file(pid_file)
    return 0
