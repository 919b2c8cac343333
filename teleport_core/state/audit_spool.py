"""A durable outbox for audit events: the nodes' and proxies' (delivered to the auth server) and
the auth server's own (delivered to its audit sinks).

``await spool.emit(event)`` returns once the event is on this host's disk (appended and
fsynced, with concurrent emits sharing one fsync); an append that cannot be written (ENOSPC,
EIO, a read-only filesystem ...) raises :class:`OSError` and is cut back off the file, so no
partial line stays behind. ``emit(event, wait_delivered=1.0)`` also waits, at most that long
and only while deliveries succeed, until the event was delivered (read-your-writes for the
auth server's callers). A sender task (:meth:`AuditSpool.run`) delivers events in order and
records progress; while the destination fails events accumulate on disk, the sender retries
with backoff and a WARN, and :meth:`AuditSpool.backlog` says how many wait (exported as
``teleport_audit_events_pending`` by :func:`export_pending`). Delivery is at least once (a
crash between sending and recording progress resends), and the audit log stores each ``uid``
once, so every event appears in the log exactly once. With ``send_lines`` (auth's spool, whose
destinations are its audit sinks) the sender hands the destination its lines as they are on disk,
up to ``window`` per call (``AuditSink.emit_lines``: the JSON log stores the same bytes with one
group commit, nothing is decoded and encoded again), one call at a time. With ``store_lines`` too
(the sink's ``AuditSink.emit_lines_now``) the spool's own writer thread, right after appending and
fsyncing a batch, stores it in the sink in the same hand-off while delivery is caught up, and
marks it delivered; otherwise, or when that fails, the sender delivers it from the file as usual.
Emits that wait for delivery share one timer per appended batch. An event the auth server refuses (403:
a host may emit only its own event types, see ``teleport_auth.events_policy``) is logged once
and dropped, so it never blocks the events behind it; any other failure is retried.

Layout in ``directory`` (0700): ``events.jsonl`` (one event per line, 0600) and ``sent`` (how
many bytes of it were delivered; overwritten in place, see :meth:`AuditSpool._mark`). A torn
last line (a crash mid-append, never acknowledged) is cut off when the spool is opened.

One process owns a spool directory (an ``flock`` on its ``.owner.lock``). During a graceful
reload both processes run: the new one finds the directory owned and spools into its own
``<directory>.<pid>`` instead, so neither cuts, compacts or re-sends the other's file. Every
spool looks for folders whose owner is gone (``<directory>`` and ``<directory>.*``) at start
and every :data:`ADOPT_EVERY` seconds, delivers what they hold in order, and removes the
``.<pid>`` ones once delivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import hashlib
import heapq
import itertools
import json
import os
import queue
import shutil
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from teleport_core.errors import AccessDenied
from teleport_core.files import write_private
from teleport_core.state.audit import AuditEvent, event_line

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

Send = Callable[[dict[str, Any]], Awaitable[None]]
#: delivers a batch of spooled lines as they are on disk (``AuditSink.emit_lines``): no decoding
SendLines = Callable[[list[bytes]], Awaitable[None]]
#: the same, blocking, in the spool's writer thread, with the events the lines are (``AuditSink.emit_lines_now``)
StoreLines = Callable[[list[bytes], list[AuditEvent]], None]
COMPACT_AT = 4 << 20  # once everything is delivered, start a new file past this size
MARK_EVERY = 64  # delivered lines between progress marks (and one after each pass)
PENDING_METRIC = "teleport_audit_events_pending"
OWNER_LOCK = ".owner.lock"
_T = TypeVar("_T")
ADOPT_EVERY = 10.0  # seconds between looks for spool folders a stopped process left
WRITER_IDLE = 5.0  # seconds the spool's writer thread waits for work before it ends (started again on demand)
_OWNED: dict[Path, int] = {}  # spool folders this process owns -> the descriptor holding the lock


def _own(directory: Path) -> bool:
    """Take ownership of ``directory`` (created if missing); False when another process has it."""
    key = directory.absolute()
    if key in _OWNED:  # opened again in this process (a test's restart): shared, as before
        return True
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _OWNED[key] = fd
    return True


def _disown(directory: Path) -> None:
    fd = _OWNED.pop(directory.absolute(), None)
    if fd is not None:
        os.close(fd)


class AuditSpool:
    def __init__(self, directory: Path, send: Send, log: Any, *, retry: float = 1.0, max_retry: float = 30.0,
                 window: int = 1, send_lines: SendLines | None = None, store_lines: StoreLines | None = None) -> None:
        if window < 1:
            raise ValueError(f"an audit spool's delivery window must be at least 1, got {window}")
        if store_lines is not None and send_lines is None:
            raise ValueError("an audit spool's store_lines needs its send_lines (the sender's way to the same sink)")
        self.window = window  # deliveries in flight at once (see deliver); with send_lines, lines per batch
        self.send_lines = send_lines
        self.store_lines = store_lines
        self.home = directory  # the configured folder; ``directory`` is where this process spools
        if not _own(directory):  # the other process of a graceful reload spools there
            directory = directory.with_name(f"{directory.name}.{os.getpid()}")
            if not _own(directory):
                raise OSError(f"audit spool {directory} is in use by another process")
        self.directory = directory
        self.path = directory / "events.jsonl"
        self.sent_path = directory / "sent"
        self.send = send
        self.log = log
        self.retry, self.max_retry = retry, max_retry
        self._pending: list[tuple[bytes, asyncio.Future[None], float, AuditEvent]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._nudged = asyncio.Event()
        self._lock = asyncio.Lock()
        self._delivery = asyncio.Lock()  # one delivery at a time: the sender's batch or the writer's (store_lines)
        self._thread = _Writer(f"audit-spool {directory.name}")
        self.refused = 0  # events the auth server refused (403): dropped, each logged once
        self.failing = False  # the last delivery attempt failed (the sender is backing off)
        # positions count bytes across compactions: ``_base`` is what earlier files held
        self._base = 0
        self._delivered = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._emitted: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()  # in position order
        self._sent_at: int | None = None  # delivery progress, once read from ``sent``
        self._mark_fd: int | None = None
        self._order = itertools.count()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        if not self.path.exists():
            write_private(self.path, b"")
        self._committed = _cut_torn_tail(self.path)  # bytes of whole, acknowledged lines
        self._uncut: int | None = None  # where a failed append began, until it is cut back

    # -- emitting ------------------------------------------------------------------------------------

    async def emit(self, event: AuditEvent, *, wait_delivered: float = 0.0) -> None:
        """Append ``event``; returns once it is durable on this host (:class:`OSError` if it
        cannot be written). With ``wait_delivered`` (seconds), then also wait that long at most
        for its delivery, unless deliveries are failing."""
        await self.enqueue(event, wait_delivered)

    def enqueue(self, event: AuditEvent, wait_delivered: float = 0.0,
                line: bytes | None = None) -> asyncio.Future[None]:
        """:meth:`emit` without the ``await``: queue ``event`` (``line``: its :func:`event_line`, if
        the caller has it) and return the future :meth:`emit` awaits, resolved once durable, or
        (``wait_delivered``) once delivered or timed out."""
        if line is None:
            line = event_line(event)  # what the JSON audit log stores as is
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, future, wait_delivered, event))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        return future

    async def wait_delivered(self, position: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything up to ``position`` (what :meth:`emit`
        wrote) was delivered; whether it was."""
        if self._delivered >= position:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (position, next(self._order), waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            if not waiter.done():
                waiter.cancel()  # dropped from the heap when the delivery passes it
        return True

    def _advance(self, position: int) -> None:
        self._delivered = delivered = max(self._delivered, position)
        while self._waiters and self._waiters[0][0] <= delivered:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)
        emitted = self._emitted
        while emitted and emitted[0][0] <= delivered:
            _, future = emitted.popleft()
            if not future.done():
                future.set_result(None)

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            lines = [line for line, _, _, _ in batch]
            try:
                async with self._lock:
                    start = self._base + await self._write(lines, [event for _, _, _, event in batch])
            except OSError as exc:
                for _, future, _, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            # An emit waiting for delivery waits in ``_emitted`` (released by ``_advance``), under
            # one timer for the whole batch instead of a timeout each.
            waiting: list[asyncio.Future[None]] = []
            longest = 0.0
            failing = self.failing
            for line, future, wait, _ in batch:
                start += len(line)
                if future.done():
                    continue
                if wait > 0 and not failing and self._delivered < start:
                    self._emitted.append((start, future))
                    waiting.append(future)
                    longest = max(longest, wait)
                else:
                    future.set_result(None)
            if waiting:
                asyncio.get_running_loop().call_later(longest, _release, waiting)

    async def _write(self, lines: list[bytes], events: list[AuditEvent]) -> int:
        """Append ``lines`` (fsynced) in the writer thread; where they start. With ``store_lines``,
        while every earlier line was delivered and no delivery is under way, the same thread then
        stores them in the sink too (one hand-off for both fsyncs) and delivery progress passes
        them; else (or when storing fails) the sender delivers them from the file as usual."""
        data = b"".join(lines)
        store = self.store_lines
        if store is None or self.failing or self._delivery.locked() or self._delivered != self._base + self._committed:
            start = await self._thread.run(lambda: self._append(data))
            self._wake.set()
            return start
        async with self._delivery:  # free: taken without waiting
            expected = self._committed
            start, stored = await self._thread.run(
                lambda: self._append_and_store(data, lines, events, expected, store))
            if stored:
                with contextlib.suppress(OSError):  # unrecorded, they are sent again after a restart (kept once)
                    self._mark(start + len(data))
                self._advance(self._base + start + len(data))
        if not stored or self._committed >= COMPACT_AT:  # the sender delivers it, or starts a new file
            self._wake.set()
        return start

    def _append_and_store(self, data: bytes, lines: list[bytes], events: list[AuditEvent], expected: int,
                          store: StoreLines) -> tuple[int, bool]:
        """In the writer thread: append ``data``; then, if it starts where the last delivered line
        ended (nobody else appended meanwhile), store its lines in the sink. Where it starts, and
        whether it was stored (a failure is the sender's to retry and report)."""
        start = self._append(data)
        if start != expected:
            return start, False
        try:
            store(lines, events)
        except Exception as exc:  # the events are on disk: the sender delivers them from the file
            self.log.warning("audit events not stored directly, the sender will deliver them", error=str(exc))
            return start, False
        return start, True

    def _append(self, data: bytes) -> int:
        """Append ``data`` and fsync; where it starts. On failure the file is cut back to its
        whole lines, so a partial write never stays behind (nor merges into the next line)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if self._uncut is not None and size > self._uncut:  # an earlier failed append whose cut failed too
                os.ftruncate(fd, self._uncut)
                size = self._uncut
            # anything else past our last append was written by someone else: it stays and is
            # delivered like our lines (auth decides what a host may emit)
            start = size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                self._uncut = start
                with contextlib.suppress(OSError):  # else tried again before the next append
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                    self._uncut = None
                raise
            self._uncut = None
            self._committed = start + len(data)
            return start
        finally:
            os.close(fd)

    def probe(self) -> None:
        """Check that the spool can take an event now: write, fsync and remove a page-sized
        file beside it (:class:`OSError` when it cannot). Blocking: call in a thread."""
        path = self.directory / ".probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\n" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()

    # -- delivering ----------------------------------------------------------------------------------

    def _sent(self) -> int:
        if self._sent_at is not None:  # this process records progress: no need to read it back
            return self._sent_at
        try:
            return int(self.sent_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def backlog(self) -> int:
        """Events on disk not yet delivered."""
        sent, end = self._sent(), self._committed
        with open(self.path, "rb") as handle:
            handle.seek(min(sent, end))
            return sum(1 for line in _lines(handle, end - min(sent, end)))

    async def run(self) -> None:
        """Deliver events until cancelled; retries with backoff while the destination fails.
        Also delivers what spool folders of stopped processes hold (:meth:`adopt`)."""
        adopting = asyncio.create_task(self._adopt_forever(), name=f"audit-spool-adopt {self.home.name}")
        try:
            await self._run()
        finally:
            adopting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await adopting
            self._close_mark()
            self._sent_at = None
            _disown(self.directory)  # the sender has stopped (a stopping service): the next process owns it

    async def _adopt_forever(self) -> None:
        while True:
            await self.adopt()
            await asyncio.sleep(ADOPT_EVERY)

    async def adopt(self) -> int:
        """Deliver the events spool folders of stopped processes hold (``home`` and
        ``home.<pid>``, owned by nobody now); remove the ``.<pid>`` ones once empty. How many
        events were delivered."""
        delivered = 0
        name = self.home.name
        left = [p for p in self.home.parent.glob(glob_escape(name) + ".*") if p.name[len(name) + 1:].isdigit()]
        for folder in [self.home, *sorted(left)]:
            if folder.absolute() in _OWNED or not folder.is_dir():
                continue
            if not _own(folder):
                continue
            try:
                orphan = AuditSpool(folder, self.send, self.log, retry=self.retry, max_retry=self.max_retry,
                                    window=self.window, send_lines=self.send_lines, store_lines=self.store_lines)
                count = await orphan.deliver()
                delivered += count
                if count:
                    self.log.info("delivered audit events a stopped process left", folder=str(folder), events=count)
                if folder != self.home and await asyncio.to_thread(orphan.backlog) == 0:
                    await asyncio.to_thread(shutil.rmtree, folder, True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("cannot deliver audit events a stopped process left, will retry",
                                 folder=str(folder), error=str(exc))
            finally:
                _disown(folder)
        return delivered

    async def _run(self) -> None:
        delay = self.retry
        while True:
            try:
                delivered = await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failing = True
                self.log.warning("audit events not delivered, will retry", error=str(exc),
                                 backlog=await asyncio.to_thread(self.backlog), retry_in=f"{delay:.1f}s")
                self._nudged.clear()
                await _wait(self._nudged, delay)
                delay = min(self.max_retry, delay * 2)
                continue
            self.failing = False
            delay = self.retry
            if not delivered:
                self._wake.clear()
                await _wait(self._wake, 5.0)

    def nudge(self) -> None:
        """Deliver now (say, once the destination is back, or on stop) instead of after the backoff."""
        self._nudged.set()
        self._wake.set()

    async def deliver(self) -> int:
        """Send every undelivered line, recording progress; how many were sent.

        Up to ``window`` lines are in flight at once (a sliding window, refilled as the oldest is
        delivered, also with lines appended meanwhile): their sends start in file order (a sink
        that queues an event before its first ``await`` keeps the order and can store many with
        one durable write: group commit), and progress passes a line, releasing the ``emit``
        waiting for it, once it and every line before it were delivered. When one fails, the
        ones sent after it are sent again on the retry (at least once; the log keeps each ``uid``
        once)."""
        if self.send_lines is not None:
            return await self._deliver_batches(self.send_lines)
        sent = self._sent()
        if sent > self._committed:  # the file was restarted after a compaction whose progress mark was not written
            sent = 0
        marked, count = sent, 0
        in_flight: collections.deque[tuple[int, asyncio.Task[None]]] = collections.deque()
        try:
            if sent < self._committed:
                with open(self.path, "rb") as handle:
                    read = sent  # where the next line to send starts
                    handle.seek(read)
                    lines = _lines(handle, self._committed - read)
                    while True:
                        while len(in_flight) < self.window:
                            line = next(lines, None)
                            if line is None and self._committed > read:  # appended since: read on
                                handle.seek(read)
                                lines = _lines(handle, self._committed - read)
                                line = next(lines, None)
                            if line is None:
                                break
                            in_flight.append((len(line), asyncio.create_task(self._deliver_line(line, read))))
                            read += len(line)
                        if not in_flight:
                            break
                        length, sending = in_flight[0]
                        await sending
                        in_flight.popleft()
                        count += 1
                        sent += length
                        self._advance(self._base + sent)
                        if count % MARK_EVERY == 0:
                            self._mark(sent)
                            marked = sent
        finally:
            for _, sending in in_flight:  # after a failure (or a stop): sent again next time
                sending.cancel()
            await asyncio.gather(*(sending for _, sending in in_flight), return_exceptions=True)
            if sent != marked:
                self._mark(sent)
        await self._compact(sent)
        return count

    async def _deliver_batches(self, send_lines: SendLines) -> int:
        """:meth:`deliver` with ``send_lines``: the undelivered lines go out as they are on disk
        (no decoding), up to ``window`` per call, one call at a time and in file order; progress
        passes a batch once ``send_lines`` returned (the destination stored it durably)."""
        sent = self._sent()
        if sent > self._committed:  # the file was restarted after a compaction whose progress mark was not written
            sent = 0
        marked, count, unmarked = sent, 0, 0
        self._advance(self._base + sent)  # delivered (by an earlier process, say): the writer may store what follows
        try:
            if sent < self._committed:
                with open(self.path, "rb") as handle:
                    while sent < self._committed:
                        handle.seek(sent)
                        batch = list(itertools.islice(_lines(handle, self._committed - sent), self.window))
                        if not batch:
                            break
                        async with self._delivery:
                            if self._delivered > self._base + sent:  # the writer stored (and marked) them meanwhile
                                sent = marked = self._delivered - self._base
                                unmarked = 0
                                continue
                            await send_lines(batch)
                        count += len(batch)
                        unmarked += len(batch)
                        sent += sum(map(len, batch))
                        self._advance(self._base + sent)
                        if unmarked >= MARK_EVERY:
                            self._mark(sent)
                            marked, unmarked = sent, 0
        finally:
            if sent != marked:
                self._mark(sent)
        await self._compact(sent)
        return count

    def _mark(self, sent: int) -> None:
        """Record delivery progress: overwritten in place and not fsynced (a mark lost in a crash
        only resends events, which the uid keeps once in the log), so it costs no fsync per
        delivery and still works on a full disk (the file's block is already allocated). The
        file stays open between marks (reopened after a compaction replaced it)."""
        data = f"{sent:020d}\n".encode()
        try:
            if self._mark_fd is None:
                fd = os.open(self.sent_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                try:
                    if os.fstat(fd).st_size != len(data):
                        os.ftruncate(fd, len(data))
                except BaseException:
                    os.close(fd)
                    raise
                self._mark_fd = fd
            os.pwrite(self._mark_fd, data, 0)
        except OSError as exc:  # delivered, but resent later (the uid keeps it once in the log)
            self._close_mark()
            raise OSError(exc.errno, f"cannot record delivery progress in {self.sent_path}: "
                                     f"{exc.strerror or exc}") from exc
        self._sent_at = sent

    def _close_mark(self) -> None:
        fd, self._mark_fd = self._mark_fd, None
        if fd is not None:
            os.close(fd)

    async def _deliver_line(self, line: bytes, offset: int) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self.log.warning("skipping a corrupt line in the audit spool", offset=offset)
            return
        try:
            await self.send(event)
        except AccessDenied as exc:  # refused for good (auth audited it): never retried
            self.refused += 1
            self.log.error("audit event refused by the auth server, dropped", reason=str(exc),
                           event_type=str(event.get("event", "")), uid=str(event.get("uid", "")))

    async def _compact(self, sent: int) -> None:
        """Start the file anew once everything in it was delivered and it grew large."""
        async with self._lock:
            size = self._committed
            if sent < size or size < COMPACT_AT:
                return
            write_private(self.path, b"")
            self._close_mark()  # the rename below replaces the file it holds
            write_private(self.sent_path, "0\n")
            self._sent_at = 0
            self._base += size
            self._committed = 0


class _Writer:
    """The spool's own thread for its blocking work (append and fsync, then ``store_lines``): one
    job at a time, in order, each job's outcome handed back to its event loop. Cheaper per batch
    than ``asyncio.to_thread`` (no pool, no chained futures); it ends after :data:`WRITER_IDLE`
    idle seconds and starts again with the next job."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]]]
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    def run(self, job: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run ``job`` in the thread; the future of its result (or exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._lock:
            self._jobs.put((loop, future, job))
            if not self._running:
                self._running = True
                threading.Thread(target=self._main, name=self.name, daemon=True).start()
        return future

    def _main(self) -> None:
        while True:
            try:
                loop, future, job = self._jobs.get(timeout=WRITER_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._running = False
                        return
                continue
            try:
                outcome: tuple[bool, Any] = (True, job())
            except BaseException as exc:  # handed to the awaiting task
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop has ended: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future, outcome)


def _resolve(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if outcome[0]:
        future.set_result(outcome[1])
    else:
        future.set_exception(outcome[1])


def _release(futures: list[asyncio.Future[None]]) -> None:
    """The delivery wait of a batch's emits is over (the timer of :meth:`AuditSpool._write_pending`)."""
    for future in futures:
        if not future.done():
            future.set_result(None)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passed. (Not ``asyncio.wait_for``: on Python
    3.11 it loses a cancellation that arrives as the event is set, and a stop then hangs.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _lines(handle: Any, limit: int) -> Iterator[bytes]:
    """The whole lines in the next ``limit`` bytes of ``handle``."""
    while limit > 0:
        line = handle.readline(limit)
        if not line.endswith(b"\n"):
            return
        limit -= len(line)
        yield line


def _cut_torn_tail(path: Path) -> int:
    """Cut a torn last line (a crash mid-append: never acknowledged) off ``path``; its new size."""
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
        return end


class FanOutSpool:
    """One :class:`AuditSpool` per destination (auth's audit sinks), so each sink gets every event
    in order from its own durable queue and sender: a failing sink is retried alone, its WARN
    names it, and it holds back no other sink. Layout: ``<directory>/<key>/`` per destination,
    where ``key`` is a digest of the destination's name (its URI), so a reordered config keeps
    each sink's queue. Events an older single-queue spool left in ``<directory>/events.jsonl``
    are delivered to every destination first.

    ``lines`` names a destination's ``send_lines`` (its sink's ``emit_lines``), used instead of
    its ``send``; ``stores`` its ``store_lines`` (the sink's ``emit_lines_now``, where it has one).
    Offers what callers use of :class:`AuditSpool`: :meth:`emit` (durable in every queue; waits for
    delivery only to ``primary``, the sink searches read), :meth:`run`, :meth:`nudge`,
    :meth:`backlog`, :meth:`probe`, ``directory`` and ``failing``.
    """

    def __init__(self, directory: Path, destinations: Mapping[str, Send], log: Any, *, primary: str,
                 retry: float = 1.0, max_retry: float = 30.0, window: int = 1,
                 lines: Mapping[str, SendLines] | None = None, stores: Mapping[str, StoreLines] | None = None) -> None:
        if primary not in destinations:
            raise ValueError(f"the primary destination {primary!r} is not one of {sorted(destinations)}")
        self.directory = directory
        self.primary = primary
        self.spools: dict[str, AuditSpool] = {
            name: AuditSpool(directory / destination_key(name), send, _bound(log, name), retry=retry,
                             max_retry=max_retry, window=window, send_lines=(lines or {}).get(name),
                             store_lines=(stores or {}).get(name))
            for name, send in destinations.items()
        }
        self.legacy: AuditSpool | None = None
        if (directory / "events.jsonl").exists():
            sends = list(destinations.values())

            async def to_all(event: dict[str, Any]) -> None:
                for send in sends:
                    await send(event)

            self.legacy = AuditSpool(directory, to_all, _bound(log, "every sink (left by an older version)"),
                                     retry=retry, max_retry=max_retry)

    @property
    def _all(self) -> list[AuditSpool]:
        return [*self.spools.values(), *([self.legacy] if self.legacy is not None else [])]

    @property
    def failing(self) -> bool:
        return any(spool.failing for spool in self._all)

    async def emit(self, event: AuditEvent, *, wait_delivered: float = 0.0) -> None:
        """Append ``event`` to every destination's queue (:class:`OSError` when one cannot be
        written); then wait up to ``wait_delivered`` for its delivery to the primary destination.
        The line is encoded once, and the queues' futures awaited in turn (no task per queue)."""
        line = event_line(event)
        futures = [spool.enqueue(event, wait_delivered if name == self.primary else 0.0, line)
                   for name, spool in self.spools.items()]
        failed: Exception | None = None
        for future in futures:
            try:
                await future
            except Exception as exc:  # the first failure is raised, after every queue had its say
                failed = failed or exc
        if failed is not None:
            raise failed

    async def run(self) -> None:
        """Deliver to every destination until cancelled."""
        await asyncio.gather(*(spool.run() for spool in self._all))

    def nudge(self) -> None:
        for spool in self._all:
            spool.nudge()

    def backlog(self) -> int:
        """Deliveries waiting: an event two sinks still lack counts twice."""
        return sum(spool.backlog() for spool in self._all)

    def probe(self) -> None:
        for spool in self.spools.values():
            spool.probe()


def destination_key(name: str) -> str:
    """The folder of a destination's queue: a digest of its name (a URI may hold any character)."""
    return "to-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _bound(log: Any, destination: str) -> Any:
    bind = getattr(log, "bind", None)
    return bind(destination=destination) if bind is not None else log


# -- the pending gauge -------------------------------------------------------------------------------

_SPOOLS: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, AuditSpool | FanOutSpool]] = weakref.WeakKeyDictionary()


class _PendingCollector(Collector):
    def __init__(self, spools: dict[str, AuditSpool | FanOutSpool]) -> None:
        self.spools = spools

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(PENDING_METRIC, "Audit events on this host's disk not yet delivered "
                                   "(node, proxy: to auth; auth: to its audit sinks)", labels=["service"])
        for service, spool in sorted(self.spools.items()):
            with contextlib.suppress(OSError):
                family.add_metric([service], spool.backlog())
        yield family

    def describe(self) -> list[Metric]:
        return []


def export_pending(registry: CollectorRegistry, service: str, spool: AuditSpool | FanOutSpool) -> None:
    """Export ``spool``'s backlog as ``teleport_audit_events_pending{service="<service>"}`` in
    ``registry`` (one gauge per registry: the services of one process share it)."""
    spools = _SPOOLS.get(registry)
    if spools is None:
        spools = _SPOOLS[registry] = {}
        registry.register(_PendingCollector(spools))
    spools[service] = spool
