"""Worker processes of a service that share its listening socket (``auth_service.workers: N``).

One Python process uses one core (the GIL). A service that wants more starts N-1 extra
``teleport start`` processes with the same command line (they read the config file again, as
the new process of a graceful reload does) in *worker mode*; the process the user started is
worker 0, the **leader**: it runs every other service, the diagnostics endpoint and the
service's singletons (background loops that must run once per cluster host), and supervises
the workers. A worker (index 1..N-1) runs only that service, serves its API on the listening
socket it inherited (the kernel spreads ``accept()`` over every process waiting on it) and
runs no singleton.

What a worker gets, like the new process of a reload (:mod:`teleport_core.net.inherit`):

* ``TELEPORT_OS_FILES`` with the service's listening socket only, ``TELEPORT_DATA_DIR_LOCK_FD``
  (the held ``data_dir`` lock: an ``flock`` belongs to the open file, so the leader and its
  workers all hold it; an unrelated ``teleport start`` is still refused), ``TELEPORT_READY_FD``
  (it writes ``ready`` once serving, or ``error <why>``);
* ``TELEPORT_WORKER=<service>:<index>`` (this module's :func:`take_worker_role`), and
  ``TELEPORT_WORKER_PARENT_FD``, the read end of a pipe whose write end only the leader holds:
  when the leader is gone (even killed with ``SIGKILL``) the worker reads EOF and stops;
* ``TELEPORT_WORKER_METRICS_FD``, its end of a socket pair only it and the leader hold, on which
  the leader's ``/metrics`` asks for the worker's series (:mod:`teleport_core.net.worker_metrics`).

The leader's :class:`WorkerPool` restarts a worker that exits with a backoff (1 s, doubling up
to :data:`MAX_BACKOFF`, back to 1 s after a worker served :data:`STABLE_AFTER` seconds);
``SIGQUIT`` (a graceful reload's drain, or the leader's own) reaches every worker as ``SIGQUIT``
(stop accepting, finish what is in flight, exit), a stop as ``SIGTERM`` (then ``SIGKILL`` after
the stop timeout). A worker ignores ``SIGHUP``/``SIGUSR2``: a reload is the leader's (the new
leader starts its own workers on the inherited socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from teleport_core.errors import TeleportError
from teleport_core.net.inherit import (
    ENV_FILES,
    ENV_LOCK_FD,
    ENV_READY_FD,
    ERROR_PREFIX,
    READY,
    own_argv,
    read_answer,
    take_int,
)
from teleport_core.net.worker_metrics import (
    ENV_METRICS_FD,
    REASONS,
    SCRAPE_TIMEOUT,
    ScrapeFailed,
    attach,
    channel,
    detach,
    fetch,
)

if TYPE_CHECKING:
    import socket

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from teleport_core.config.model import TeleportConfig
    from teleport_core.datadir import DataDirLock

ENV_WORKER = "TELEPORT_WORKER"
ENV_PARENT_FD = "TELEPORT_WORKER_PARENT_FD"
MAX_WORKERS = 64
READY_TIMEOUT = 120.0  # seconds a worker has to report ready
FIRST_BACKOFF = 1.0  # seconds before restarting a worker that exited
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # a worker that served this long is restarted after FIRST_BACKOFF again
#: the name under which the kernel publishes the held ``data_dir`` lock in ``Resources.shared``
DATA_DIR_LOCK = "teleport.data_dir_lock"


@attrs.frozen
class WorkerRole:
    """This process is worker ``index`` (1..N-1) of ``service`` (a config section name)."""

    service: str
    index: int


_ROLE: list[WorkerRole] = []  # set once by take_worker_role in a worker process
_COMMAND_LINE: list[bool] = []  # set by the ``teleport start`` entry point: workers run its command line


def command_line_process() -> None:
    """Called by ``teleport start`` (:func:`teleport_core.process.run_process`): this process's
    command line starts it again, so it may start workers. A cluster run inside another program
    (a test's :class:`~teleport_core.process.TeleportProcess`) may not."""
    _COMMAND_LINE[:] = [True]


def take_worker_role(environ: dict[str, str] | None = None) -> WorkerRole | None:
    """Read (and remove) ``TELEPORT_WORKER`` at start: this process's role when it is a worker."""
    env = os.environ if environ is None else environ
    text = env.pop(ENV_WORKER, "")
    if not text:
        return None
    service, _, index = text.rpartition(":")
    if not service or not index.isdigit() or not 1 <= int(index) < MAX_WORKERS:
        raise TeleportError(f"{ENV_WORKER} is invalid: {text!r}")
    role = WorkerRole(service, int(index))
    _ROLE[:] = [role]
    return role


def worker_index(service: str) -> int:
    """This process's worker index for ``service``: 0 (the leader) unless it was started as one
    of that service's workers."""
    return next((role.index for role in _ROLE if role.service == service), 0)


def worker_config(config: TeleportConfig, role: WorkerRole) -> TeleportConfig:
    """``config`` as a worker runs it: only ``role.service`` enabled, no diagnostics endpoint
    (``/readyz`` and ``/metrics`` are the leader's)."""
    services = {name: section if name == role.service else attrs.evolve(section, enabled=False)
                for name, section in config.services.items()}
    return attrs.evolve(config, services=services, diag_addr=None)


def watch_parent(loop: asyncio.AbstractEventLoop, on_gone: Callable[[], object]) -> int | None:
    """In a worker: call ``on_gone()`` once the leader is gone (EOF on ``TELEPORT_WORKER_PARENT_FD``);
    the descriptor (None when not a worker)."""
    fd = take_int(ENV_PARENT_FD)
    if fd is None:
        return None
    os.set_inheritable(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_gone()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    return fd


def _in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """``fn(*args)`` in a daemon thread of its own (a worker's exit or ready pipe may take its
    whole life: never a slot of the loop's default executor, which has only a few)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:
            result = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=run, name=f"teleport-worker-{getattr(fn, '__name__', 'wait')}", daemon=True).start()
    return future


@attrs.define
class _Worker:
    index: int
    child: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = None
    metrics: socket.socket | None = None  # the leader's end of the worker's scrape channel


class WorkerPool:
    """The leader's side: start workers ``1..count-1`` of ``service`` on ``sock`` (listener ``name``
    at ``address``), restart those that exit, pass on drains and stops. With ``metrics`` (the
    process's registry) the leader's ``/metrics`` includes every live worker's series."""

    def __init__(self, service: str, count: int, name: str, address: str, sock: socket.socket,
                 lock: DataDirLock, log: Any, *, ready_timeout: float = READY_TIMEOUT,
                 metrics: CollectorRegistry | None = None, scrape_timeout: float = SCRAPE_TIMEOUT) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"count must be 1..{MAX_WORKERS}")
        self.service, self.count, self.name, self.address = service, count, name, address
        self.sock, self.lock, self.log = sock, lock, log
        self.ready_timeout = ready_timeout
        self.workers = [_Worker(index) for index in range(1, count)]
        self._parent_read, self._parent_write = os.pipe()  # the workers' EOF when the leader is gone
        self._stopping = False
        self._draining = False
        self.registry, self.scrape_timeout = metrics, scrape_timeout
        self.scrape_failures = {(w.index, reason): 0 for w in self.workers for reason in REASONS}
        self._up: dict[int, bool] = {}

    # -- state ------------------------------------------------------------------------------------

    def alive(self) -> int:
        """Workers running now (the leader not counted)."""
        return sum(1 for w in self.workers if w.child is not None and w.child.poll() is None)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def pids(self) -> list[int]:
        return [w.child.pid for w in self.workers if w.child is not None and w.child.poll() is None]

    def diagnostics(self) -> dict[str, Any]:
        return {"workers": self.count, "alive": self.alive() + 1, "restarts": self.restarts, "pids": self.pids()}

    # -- start ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each reports ready; :class:`TeleportError` (the
        started ones stopped again) when one cannot start."""
        if not _COMMAND_LINE:
            raise TeleportError(f"{self.service}.workers above 1 needs `teleport start`: its workers run the same "
                                "command line, and this process was not started by it")
        self.lock.shared = True  # from now on never unlocked explicitly: the workers hold it too
        results = await asyncio.gather(*(self._spawn(w) for w in self.workers), return_exceptions=True)
        failed = [(w, r) for w, r in zip(self.workers, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.stop(5.0)
            worker, error = failed[0]
            raise TeleportError(f"{self.service} worker {worker.index} did not start: {error}")
        for worker in self.workers:
            worker.supervisor = asyncio.create_task(self._supervise(worker),
                                                    name=f"{self.service}-worker-{worker.index}")
        if self.registry is not None:
            attach(self.registry, self)
        self.log.info("workers started", service=self.service, workers=self.count, pids=self.pids())

    async def _spawn(self, worker: _Worker) -> None:
        lock_fd = self.lock.fd
        if lock_fd is None:
            raise TeleportError("the data_dir lock is not held")
        read_end, write_end = os.pipe()
        fd = self.sock.fileno()
        metrics, theirs = channel()  # a new one for each start: nothing of the last process's is left in it
        env = dict(os.environ)
        env.update({ENV_FILES: json.dumps([{"type": self.name, "address": self.address, "fd": fd}]),
                    ENV_READY_FD: str(write_end), ENV_LOCK_FD: str(lock_fd),
                    ENV_WORKER: f"{self.service}:{worker.index}", ENV_PARENT_FD: str(self._parent_read),
                    ENV_METRICS_FD: str(theirs.fileno())})
        try:
            child = subprocess.Popen(own_argv(), env=env, cwd=os.getcwd(),
                                     pass_fds=(fd, write_end, lock_fd, self._parent_read, theirs.fileno()))
        except OSError:
            os.close(read_end)
            metrics.close()
            raise
        finally:
            os.close(write_end)
            theirs.close()
        if worker.metrics is not None:
            worker.metrics.close()
        worker.child, worker.started, worker.metrics = child, time.monotonic(), metrics
        try:
            answer = await asyncio.wait_for(asyncio.shield(_in_thread(read_answer, read_end)), self.ready_timeout)
        except TimeoutError:
            answer = ERROR_PREFIX + b"not ready within %d s" % self.ready_timeout
        if answer == READY:
            return
        with contextlib.suppress(OSError):
            child.kill()
        await _in_thread(child.wait)
        reason = answer[len(ERROR_PREFIX):].decode("utf-8", "replace").strip() if answer.startswith(
            ERROR_PREFIX) else f"it exited with code {child.returncode}"
        raise TeleportError(reason)

    async def _supervise(self, worker: _Worker) -> None:
        """Restart ``worker`` whenever it exits, with backoff, until the pool stops or drains."""
        backoff = FIRST_BACKOFF
        while True:
            child = worker.child
            if child is not None:
                code = await _in_thread(child.wait)
                if self._stopping or self._draining:
                    return
                served = time.monotonic() - worker.started
                if served >= STABLE_AFTER:
                    backoff = FIRST_BACKOFF
                self.log.error(f"{self.service} worker exited; restarting it", worker=worker.index, pid=child.pid,
                               exit_code=code, retry_in=f"{backoff:g}s")
            await asyncio.sleep(backoff)
            if self._stopping or self._draining:
                return
            backoff = min(backoff * 2, MAX_BACKOFF)
            worker.restarts += 1
            try:
                await self._spawn(worker)
            except (TeleportError, OSError) as exc:
                self.log.error(f"{self.service} worker did not start again", worker=worker.index, error=str(exc))
                worker.child = None
                continue
            self.log.info(f"{self.service} worker restarted", worker=worker.index, pid=worker.child.pid
                          if worker.child else None)

    # -- drain and stop ---------------------------------------------------------------------------

    def _signal(self, signum: int) -> None:
        for worker in self.workers:
            if worker.child is not None and worker.child.poll() is None:
                with contextlib.suppress(OSError):
                    worker.child.send_signal(signum)

    def drain(self) -> None:
        """Graceful: every worker stops accepting, finishes its requests in flight and exits (SIGQUIT)."""
        self._draining = True
        self._signal(signal.SIGQUIT)

    async def wait_drained(self) -> None:
        """After :meth:`drain`: return once every worker has exited."""
        for worker in self.workers:
            if worker.child is not None:
                await _in_thread(worker.child.wait)

    async def stop(self, timeout: float) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after ``timeout`` seconds."""
        self._stopping = True
        for worker in self.workers:
            if worker.supervisor is not None:
                worker.supervisor.cancel()
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            child = worker.child
            if child is None:
                continue
            try:
                await _in_thread(child.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.warning(f"{self.service} worker did not stop in time: killed", worker=worker.index,
                                 pid=child.pid)
                with contextlib.suppress(OSError):
                    child.kill()
                await _in_thread(child.wait)
        for fd in (self._parent_read, self._parent_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._parent_read = self._parent_write = -1
        if self.registry is not None:
            detach(self.registry, self)
        for worker in self.workers:
            if worker.metrics is not None:
                worker.metrics.close()
                worker.metrics = None

    # -- metrics (teleport_core.net.worker_metrics) -----------------------------------------------

    async def fetch_all(self) -> dict[int, bytes | ScrapeFailed]:
        """Every worker's exposition (or why there is none), fetched concurrently."""

        async def one(worker: _Worker) -> bytes | ScrapeFailed:
            control = worker.metrics
            if control is None or worker.child is None or worker.child.poll() is not None:
                return ScrapeFailed("not_running", "it is not running")
            try:
                return await fetch(control, self.scrape_timeout)
            except ScrapeFailed as failure:
                return failure

        answers = await asyncio.gather(*(one(w) for w in self.workers))
        return {w.index: answer for w, answer in zip(self.workers, answers, strict=True)}

    def account(self, results: dict[int, bytes | ScrapeFailed]) -> list[Metric]:
        """Count the workers left out of ``results`` (and log why, once per change); the families
        ``teleport_worker_up`` and ``teleport_worker_scrape_failures_total``."""
        up = GaugeMetricFamily("teleport_worker_up", "1 when the worker process's series are in this scrape, 0 when "
                               "they were left out (not running, no answer in time)", labels=["service", "worker"])
        up.add_metric([self.service, "0"], 1.0)
        for index, result in sorted(results.items()):
            answered = not isinstance(result, ScrapeFailed)
            if isinstance(result, ScrapeFailed):
                self.scrape_failures[(index, result.reason)] += 1
                if self._up.get(index, True) or result.reason == "timeout":
                    log = self.log.warning if result.reason != "not_running" else self.log.info
                    log(f"{self.service} worker left out of /metrics: {result}", worker=index, reason=result.reason)
            elif not self._up.get(index, True):
                self.log.info(f"{self.service} worker back in /metrics", worker=index)
            self._up[index] = answered
            up.add_metric([self.service, str(index)], 1.0 if answered else 0.0)
        failures = CounterMetricFamily("teleport_worker_scrape_failures", "Scrapes of /metrics that left a worker "
                                       "process's series out, by reason (not_running, timeout, error)",
                                       labels=["service", "worker", "reason"])
        for (index, reason), count in sorted(self.scrape_failures.items()):
            failures.add_metric([self.service, str(index), reason], float(count))
        return [up, failures]
