"""Every worker process's series on the leader's ``/metrics`` (``<service>.workers: N``).

A worker (:mod:`teleport_core.net.workers`) has no diagnostics endpoint; the leader's
``/metrics`` asks each live worker for its Prometheus exposition and answers one exposition of
them all, in which every family appears once and every sample carries ``worker="<i>"`` (the
leader's own ``worker="0"``). With one process nothing changes: the output is the registry's, byte
for byte.

**The channel.** No socket on disk and nothing to connect to: at each start of a worker the
leader makes a ``SOCK_SEQPACKET`` socket pair and passes one end to the worker
(``TELEPORT_WORKER_METRICS_FD``, made non-inheritable there at once); only the two processes hold
it. A scrape is one message on it carrying a fresh stream socket (``SCM_RIGHTS``): the worker
writes its exposition and a closing ``# EOF`` line to that socket and closes it; the leader reads
until EOF. Each scrape has its own socket, so an answer that comes too late goes to a socket the
leader already closed and can never be taken for the next scrape's.

**The merge.** Each process labels its own samples (``worker="<i>"``) as it renders them; the
leader groups the answers' families by name, each family's header once and then every
process's samples, and checks that each answer has ``generate_latest``'s shape and every sample
its worker's label (a text merge, not a parse: see :func:`merge`).

**A stuck or dead worker** never holds ``/metrics`` up: each is asked concurrently, with
:data:`SCRAPE_TIMEOUT`; one that is not running, does not answer in time, or answers something
not well formed is left out, and ``teleport_worker_up{worker}`` is 0 and
``teleport_worker_scrape_failures_total{worker,reason}`` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from teleport_core.errors import TeleportError
from teleport_core.net.inherit import take_int

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

ENV_METRICS_FD = "TELEPORT_WORKER_METRICS_FD"
SCRAPE_TIMEOUT = 2.0  # seconds the leader waits for a worker's exposition
ANSWER_TIMEOUT = 30.0  # seconds a worker tries to hand its exposition over before it gives up
MAX_EXPOSITION = 32 * 1024 * 1024  # bytes: a worker's answer above this is refused
TRAILER = b"# EOF\n"  # the last line of a complete answer (a comment to the text format's parser)
#: why a worker's series were left out (``teleport_worker_scrape_failures_total{reason}``)
REASONS = ("not_running", "timeout", "error")


class ScrapeFailed(Exception):
    """A worker's series could not be read; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def channel() -> tuple[socket.socket, socket.socket]:
    """A new scrape channel: (the leader's end, non-blocking; the worker's end, to pass on)."""
    leader, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    leader.setblocking(False)
    return leader, worker


async def fetch(control: socket.socket, timeout: float = SCRAPE_TIMEOUT) -> bytes:
    """One scrape of the worker at the other end of ``control``: its exposition (without the
    trailer); :class:`ScrapeFailed` when it is gone, does not answer within ``timeout`` seconds,
    or its answer is cut short."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        try:
            socket.send_fds(control, [b"s"], [theirs.fileno()])
        except BlockingIOError:  # scrapes it has not taken yet fill its queue: it is stuck
            raise ScrapeFailed("timeout", "its scrape queue is full") from None
        except OSError as exc:  # the worker's end is closed: it exited
            raise ScrapeFailed("not_running", exc.strerror or str(exc)) from None
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(timeout):
                while data := await loop.sock_recv(ours, 256 * 1024):
                    size += len(data)
                    if size > MAX_EXPOSITION:
                        raise ScrapeFailed("error", f"its exposition is larger than {MAX_EXPOSITION} bytes")
                    chunks.append(data)
        except TimeoutError:
            raise ScrapeFailed("timeout", f"no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ScrapeFailed("error", exc.strerror or str(exc)) from None
    finally:
        ours.close()
    text = b"".join(chunks)
    if not text.endswith(TRAILER):
        raise ScrapeFailed("error", "its answer was cut short")
    return text[: -len(TRAILER)]


def serve_scrapes(loop: asyncio.AbstractEventLoop, registry: CollectorRegistry, worker: int, log: Any,
                  fd: int | None = None) -> socket.socket | None:
    """In worker ``worker``: answer each scrape the leader sends over ``TELEPORT_WORKER_METRICS_FD``
    (or ``fd``) with ``registry``'s exposition, every sample labelled ``worker="<worker>"``, until
    the leader closes the channel. The channel's socket; None when this process is not a worker."""
    if fd is None:
        fd = take_int(ENV_METRICS_FD)
    if fd is None:
        return None
    os.set_inheritable(fd, False)  # the worker's own children (none today) never get it
    control = socket.socket(fileno=fd)
    control.setblocking(False)
    answers: set[asyncio.Task[None]] = set()

    def readable() -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(control, 16, 8)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the leader is gone
                loop.remove_reader(fd)
                control.close()
                return
            for each in fds:
                task = loop.create_task(_answer(socket.socket(fileno=each), registry, worker, log),
                                        name="worker-scrape")
                answers.add(task)
                task.add_done_callback(answers.discard)

    loop.add_reader(fd, readable)
    return control


async def _answer(sock: socket.socket, registry: CollectorRegistry, worker: int, log: Any) -> None:
    with sock:
        sock.setblocking(False)
        try:
            text = labelled_exposition(registry, worker)
        except Exception as exc:  # a collector's bug: the leader sees an answer cut short
            log.warning("metrics exposition failed", error=f"{type(exc).__name__}: {exc}")
            return
        with contextlib.suppress(OSError, TimeoutError):  # the leader gave up on this scrape
            async with asyncio.timeout(ANSWER_TIMEOUT):
                await asyncio.get_running_loop().sock_sendall(sock, text + TRAILER)


# -- the leader's side ------------------------------------------------------------------------------


class WorkerSeries(Protocol):
    """What the leader's ``/metrics`` asks a pool of workers (:class:`~teleport_core.net.workers.WorkerPool`)."""

    async def fetch_all(self) -> dict[int, bytes | ScrapeFailed]:
        """Every worker's exposition (or why there is none), by index (1..N-1), fetched concurrently."""
        ...

    def account(self, results: dict[int, bytes | ScrapeFailed]) -> list[Metric]:
        """Count and log the workers left out of ``results``; the families saying which were."""
        ...


_ATTACHED: weakref.WeakKeyDictionary[CollectorRegistry, WorkerSeries] = weakref.WeakKeyDictionary()


def attach(registry: CollectorRegistry, pool: WorkerSeries) -> None:
    """The ``/metrics`` of ``registry`` includes ``pool``'s workers from now on (one pool per
    process: two services with workers would have the same worker indexes)."""
    current = _ATTACHED.get(registry)
    if current is not None and current is not pool:
        raise TeleportError("only one service per process may have worker processes")
    _ATTACHED[registry] = pool


def detach(registry: CollectorRegistry, pool: WorkerSeries) -> None:
    if _ATTACHED.get(registry) is pool:
        del _ATTACHED[registry]


async def exposition(registry: CollectorRegistry) -> bytes:
    """What ``/metrics`` answers: ``registry``'s exposition, and when a pool of workers is
    attached to it, one exposition of the leader's and every live worker's series."""
    from prometheus_client import generate_latest

    pool = _ATTACHED.get(registry)
    if pool is None:
        return generate_latest(registry)
    own = labelled_exposition(registry, 0)
    results = await pool.fetch_all()
    merged = await asyncio.to_thread(merge, own, results)  # an answer not well formed: replaced by its failure
    return merged + labelled_exposition(_Families(pool.account(results)), None)


class _Families:
    """Families as a collector (what ``generate_latest`` reads)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class _Labelled:
    """``source``'s families, each sample labelled ``worker``."""

    def __init__(self, source: Any, worker: str) -> None:
        self.source, self.worker = source, worker

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import Metric

        for family in self.source.collect():
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = [s._replace(labels={**s.labels, "worker": self.worker}) for s in family.samples]
            yield copy


def labelled_exposition(source: Any, worker: int | None) -> bytes:
    """The text exposition of ``source`` (a registry or collector), every sample labelled
    ``worker="<worker>"`` (as it is with None)."""
    from prometheus_client import generate_latest

    return generate_latest(source if worker is None else _Labelled(source, str(worker)))


def merge(own: bytes, results: dict[int, bytes | ScrapeFailed]) -> bytes:
    """One exposition of the leader's (``own``) and each worker's in ``results`` (all labelled
    ``worker`` where they were made): each family once, in the order first seen, with every
    process's samples. A worker's answer that is not an exposition of ``generate_latest``'s
    shape, or has a sample not labelled with its index, is left out: replaced in ``results`` by
    its failure. Text, not parsed: parsing costs the leader about 30 ms of CPU per process and
    scrape on this machine, this a fraction of a millisecond (docs/scaling.md)."""
    headers: dict[bytes, bytes] = {}  # family -> its "# HELP" and "# TYPE" lines, from the first process
    samples: dict[bytes, list[bytes]] = {}
    sources: list[tuple[int, bytes]] = [(0, own)]
    sources += [(i, text) for i, text in sorted(results.items()) if not isinstance(text, ScrapeFailed)]
    for index, text in sources:
        try:
            families = list(_families(text, b'worker="%d"' % index))
        except ValueError as exc:
            if index == 0:
                raise
            results[index] = ScrapeFailed("error", f"its exposition is not well formed: {exc}")
            continue
        for name, header, lines in families:
            first = headers.setdefault(name, header)
            if first != header:  # another type (or help): another version of the code; keep the first's
                continue
            samples.setdefault(name, []).extend(lines)
    return b"".join(header + b"".join(samples[name]) for name, header in headers.items())


def _families(text: bytes, label: bytes) -> Iterator[tuple[bytes, bytes, list[bytes]]]:
    """(name, its two header lines, its sample lines) of each family of ``text``; ValueError
    when ``text`` is not of ``generate_latest``'s shape or a sample lacks ``label``."""
    lines = text.split(b"\n")
    if lines[-1] != b"":
        raise ValueError("it does not end with a newline")
    lines.pop()
    at = 0
    while at < len(lines):
        line = lines[at]
        if not line.startswith(b"# HELP "):
            raise ValueError(f"line {at + 1}: a family does not start with # HELP")
        name = line[7:].split(b" ", 1)[0]
        kind = lines[at + 1] if at + 1 < len(lines) else b""
        if not name or not kind.startswith(b"# TYPE " + name + b" "):
            raise ValueError(f"line {at + 2}: # TYPE {name.decode(errors='replace')} expected")
        end = at + 2
        while end < len(lines) and not lines[end].startswith(b"#"):
            sample = lines[end]
            if not sample.startswith(name) or label not in sample:
                raise ValueError(f"line {end + 1}: a sample of another family, or not labelled {label.decode()}")
            end += 1
        yield name, line + b"\n" + kind + b"\n", [sample + b"\n" for sample in lines[at + 2:end]]
        at = end
