"""The LMDB cluster-state backend (``teleport.storage.type: lmdb``).

How it works:

* One LMDB environment in ``<data_dir>/lmdb`` (``path``) holds three named databases:
  ``kv`` (key -> revision, expiry, value), ``expiry`` (expiry time + key -> nothing, the
  reaper's index) and ``meta`` (the revision counter). LMDB commits are copy-on-write and
  fsynced (``sync``, ``metasync``): a write is on disk when it returns, and a ``kill -9``
  never leaves a half-applied transaction.
* One writer thread runs every write. Writes that queue up while it commits are committed
  together: each runs in a nested transaction, so a refused one (``AlreadyExists``...) is
  undone alone, and the batch is acknowledged after its single commit.
* Reads run on a small thread pool in read-only transactions (a consistent snapshot); the
  event loop never touches LMDB.
* Revisions come from the counter in ``meta``, bumped once per write in the same
  transaction: they increase across restarts and are never reused.
* The writer thread sleeps until the earliest expiry, then deletes the expired items and
  emits ``DELETE`` events; reads hide expired items themselves, reaped or not.
* Watchers get events in commit order on the loop that created them
  (``loop.call_soon_threadsafe``), queued before the write is acknowledged.
* An exclusive ``flock`` on ``teleport.lock`` keeps a second opener (which would write
  behind the watchers' back) out with ``DataDirLocked``.

Keys are limited to ``MAX_KEY`` bytes (LMDB's key limit less the expiry index's 8 bytes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import logging
import os
import pathlib
import queue
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import lmdb

from teleport_core.errors import AlreadyExists, CompareFailed, DataDirLocked, NotFound, TeleportError
from teleport_core.state.backend import (
    DEFAULT_WATCHER_QUEUE,
    Action,
    Backend,
    BufferedWatcher,
    Condition,
    ConditionKind,
    Event,
    Item,
    OpType,
    Watcher,
)

from .options import DEFAULT_DIR, LmdbOptions

__all__ = ["LmdbBackend", "LmdbWatcher", "open_backend"]

T = TypeVar("T")
log = logging.getLogger(__name__)

LOCK_NAME = "teleport.lock"
MAX_KEY = 511 - 8  # LMDB's default key limit, less the expiry index's time prefix
MAX_BATCH = 256  # writes committed together at most
REAP_BATCH = 1000  # expired items deleted per reaper transaction
MAX_REAP_WAIT = 1.0  # seconds; the writer re-reads the wall clock at least this often
READER_THREADS = 2

_HEADER = struct.Struct(">QBq")  # revision, has expiry, expiry (microseconds since the epoch)
_TIME = struct.Struct(">Q")  # expiry + 2**63: unsigned, so bytewise order is time order
_REVISION = b"revision"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_INT64 = 1 << 63


async def open_backend(options: LmdbOptions | None, data_dir: pathlib.Path) -> LmdbBackend:
    """The factory named in the plugin's ``BackendSpec``: open (creating) the environment."""
    options = options or LmdbOptions()
    directory = pathlib.Path(data_dir) / (options.path if options.path is not None else DEFAULT_DIR)
    return await asyncio.to_thread(LmdbBackend.open_sync, directory, options.map_size)


# -- conversions --------------------------------------------------------------------------------


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_us(when: dt.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("expires must be a timezone-aware datetime (UTC)")
    micros = (when - _EPOCH) // _MICROSECOND
    if not -_INT64 <= micros < _INT64:
        raise ValueError("expires is out of range")
    return micros


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, got {type(key).__name__}")
    if not key or len(key) > MAX_KEY:
        raise ValueError(f"keys must be 1 to {MAX_KEY} bytes long (lmdb backend), got {len(key)}")
    return key


def _check_item(item: Item) -> int | None:
    """Validate ``item``; its expiry in microseconds."""
    _check_key(item.key)
    if not isinstance(item.value, bytes):
        raise TypeError(f"values are bytes, got {type(item.value).__name__}")
    return _to_us(item.expires)


@attrs.frozen
class _Record:
    """What ``kv`` holds for a key."""

    value: bytes
    expires: int | None
    revision: int

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> _Record:
        revision, has_expiry, expires = _HEADER.unpack_from(raw)
        return cls(bytes(raw[_HEADER.size :]), expires if has_expiry else None, revision)

    def encode(self) -> bytes:
        return _HEADER.pack(self.revision, self.expires is not None, self.expires or 0) + self.value

    def live(self, now: int) -> bool:
        return self.expires is None or self.expires > now

    def item(self, key: bytes) -> Item:
        expires = None if self.expires is None else _EPOCH + dt.timedelta(microseconds=self.expires)
        return Item(key, self.value, expires, str(self.revision))


def _index_key(expires: int, key: bytes) -> bytes:
    return _TIME.pack(expires + _INT64) + key


# -- one write --------------------------------------------------------------------------------------


class _Tx:
    """One write, run by the writer thread in a nested transaction of the batch's."""

    def __init__(self, txn: lmdb.Transaction, backend: LmdbBackend) -> None:
        self.txn = txn
        self.b = backend
        self.now = _now_us()
        self.rev = 0
        self.events: list[Event] = []

    def revision(self) -> int:
        """This write's revision, allocated on first use."""
        if not self.rev:
            raw = self.txn.get(_REVISION, db=self.b._meta)
            self.rev = (int(raw) if raw else 0) + 1
            self.txn.put(_REVISION, str(self.rev).encode(), db=self.b._meta)
        return self.rev

    def record(self, key: bytes) -> _Record | None:
        """The stored record at ``key``, live or expired."""
        raw = self.txn.get(key, db=self.b._kv)
        return None if raw is None else _Record.decode(raw)

    def live(self, key: bytes) -> _Record | None:
        found = self.record(key)
        return found if found is not None and found.live(self.now) else None

    def put(self, key: bytes, value: bytes, expires: int | None) -> Item:
        self._unindex(key)
        stored = _Record(value, expires, self.revision())
        self.txn.put(key, stored.encode(), db=self.b._kv)
        if expires is not None:
            self.txn.put(_index_key(expires, key), b"", db=self.b._expiry)
            self.b._earliest(expires)
        item = stored.item(key)
        self.events.append(Event(OpType.PUT, item))
        return item

    def delete(self, key: bytes) -> bool:
        """Delete the record at ``key`` (live or expired); True when there was one."""
        if not self._unindex(key) or not self.txn.delete(key, db=self.b._kv):
            return False
        self.events.append(Event(OpType.DELETE, Item(key, b"", revision=str(self.revision()))))
        return True

    def _unindex(self, key: bytes) -> bool:
        """Drop ``key``'s expiry index entry; True when the key has a record."""
        old = self.record(key)
        if old is not None and old.expires is not None:
            self.txn.delete(_index_key(old.expires, key), db=self.b._expiry)
        return old is not None

    def check(self, condition: Condition) -> bool:
        found = self.live(_check_key(condition.key))
        kind = condition.kind
        if kind is ConditionKind.EXISTS:
            return found is not None
        if kind is ConditionKind.NOT_EXISTS:
            return found is None
        if kind is ConditionKind.REVISION:
            return found is not None and str(found.revision) == condition.revision
        if kind is ConditionKind.VALUE:
            return found is not None and found.value == condition.value
        raise ValueError(f"unknown condition kind {kind!r}")


@attrs.define
class _Job:
    fn: Callable[[_Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _settle(job: _Job, ok: bool, value: Any) -> None:
    """Complete a job's future on its loop, from the writer thread."""

    def apply() -> None:
        if job.future.done():
            return
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(apply)


# -- watchers -------------------------------------------------------------------------------------


class LmdbWatcher(BufferedWatcher):
    """Events for some prefixes, fed by the writer thread after each commit."""

    def __init__(self, backend: LmdbBackend, prefixes: tuple[bytes, ...], queue_size: int) -> None:
        super().__init__(prefixes, queue_size, asyncio.get_running_loop())
        self._backend = backend

    def _deliver(self, events: list[Event]) -> None:
        """Hand events to the watcher's loop (called from the writer thread)."""
        if not self._push_threadsafe(events):  # the watcher's loop is closed
            self._backend._unregister(self)

    def _on_shut(self) -> None:
        self._backend._unregister(self)

    async def close(self) -> None:
        self._shut_threadsafe("watcher closed")


# -- the backend ----------------------------------------------------------------------------------


class LmdbBackend(Backend):
    """Cluster state in one LMDB environment. Open with :func:`open_backend`."""

    def __init__(self, directory: pathlib.Path, env: lmdb.Environment, lock_fd: int) -> None:
        self.directory = directory
        self._env = env
        self._lock_fd = lock_fd
        self._kv = env.open_db(b"kv")
        self._expiry = env.open_db(b"expiry")
        self._meta = env.open_db(b"meta")
        with env.begin() as txn:
            self._next_expiry: int | None = self._first_expiry(txn)
        self._closed = False
        self._close_done = threading.Event()
        self._lock = threading.Lock()  # guards _closed, _watchers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._watchers: set[LmdbWatcher] = set()
        self._readers = concurrent.futures.ThreadPoolExecutor(READER_THREADS, thread_name_prefix="lmdb-read")
        self._writer = threading.Thread(target=self._writer_main, name=f"lmdb-writer {directory}", daemon=True)
        self._writer.start()

    @classmethod
    def open_sync(cls, directory: pathlib.Path, map_size: int) -> LmdbBackend:
        """Create or open the environment in ``directory`` (blocking)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataDirLocked(
                    f"lmdb backend {directory} is in use by another process (or is already open in this one)"
                ) from None
            env = lmdb.open(
                str(directory), map_size=map_size, max_dbs=3, mode=0o600, sync=True, metasync=True, lock=True
            )
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            return cls(directory, env, lock_fd)
        except BaseException:
            env.close()
            os.close(lock_fd)
            raise

    # -- plumbing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TeleportError(f"lmdb backend {self.directory} is closed")

    async def _write(self, fn: Callable[[_Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._check_open()
            self._jobs.put(_Job(fn, loop, future))
        return await future

    async def _read(self, fn: Callable[[lmdb.Transaction, int], T]) -> T:
        self._check_open()

        def run() -> T:
            with self._env.begin() as txn:
                return fn(txn, _now_us())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except (RuntimeError, lmdb.Error):
            if self._closed:
                raise TeleportError(f"lmdb backend {self.directory} is closed") from None
            raise

    def _first_expiry(self, txn: lmdb.Transaction) -> int | None:
        cursor = txn.cursor(db=self._expiry)
        return int(_TIME.unpack_from(cursor.key())[0]) - _INT64 if cursor.first() else None

    def _earliest(self, expires: int) -> None:
        if self._next_expiry is None or expires < self._next_expiry:
            self._next_expiry = expires

    def _unregister(self, watcher: LmdbWatcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def _dispatch(self, events: list[Event]) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            matching = [e for e in events if watcher.matches(e.item.key)]
            if matching:
                watcher._deliver(matching)

    # -- the writer thread ------------------------------------------------------------------------

    def _writer_main(self) -> None:
        while True:
            wait = None
            if self._next_expiry is not None:
                wait = min(MAX_REAP_WAIT, max(0.0, (self._next_expiry - _now_us()) / 1e6))
            try:
                job = self._jobs.get(timeout=wait)
            except queue.Empty:
                self._reap()
                continue
            if job is None:
                return
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._run_batch(batch)
            if self._next_expiry is not None and self._next_expiry <= _now_us():
                self._reap()

    def _run_batch(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        events: list[Event] = []
        expiry_before = self._next_expiry
        try:
            with self._env.begin(write=True) as outer:  # commits on leaving, aborts on an exception
                for job in batch:
                    child = self._env.begin(write=True, parent=outer)
                    tx = _Tx(child, self)
                    try:
                        value = job.fn(tx)
                    except (TeleportError, ValueError, TypeError) as exc:  # refused: undo just this one
                        child.abort()
                        outcomes.append((False, exc))
                        continue
                    except BaseException:
                        child.abort()
                        raise
                    child.commit()
                    outcomes.append((True, value))
                    events.extend(tx.events)
        except lmdb.MapFullError:
            self._fail(batch, expiry_before, f"it is full (teleport.storage.map_size: {self._env.info()['map_size']})")
            return
        except Exception as exc:
            self._fail(batch, expiry_before, str(exc))
            return
        self._dispatch(events)  # before acknowledging: a watcher has seen a write once it returns
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            _settle(job, ok, value)

    def _fail(self, batch: list[_Job], expiry_before: int | None, why: str) -> None:
        self._next_expiry = expiry_before
        log.error("lmdb backend %s: write failed: %s", self.directory, why)
        for job in batch:
            _settle(job, False, TeleportError(f"lmdb backend {self.directory}: write failed: {why}"))

    def _reap(self) -> None:
        """Delete expired items (a batch at a time) and tell the watchers."""
        now = _now_us()
        events: list[Event] = []
        try:
            with self._env.begin(write=True) as txn:
                tx = _Tx(txn, self)
                due: list[bytes] = []
                for index_key, _ in txn.cursor(db=self._expiry):
                    if len(due) >= REAP_BATCH or _TIME.unpack_from(index_key)[0] - _INT64 > now:
                        break
                    due.append(bytes(index_key))
                for index_key in due:
                    key = index_key[_TIME.size :]
                    txn.delete(index_key, db=self._expiry)
                    found = tx.record(key)
                    if found is not None and not found.live(now):
                        txn.delete(key, db=self._kv)
                        events.append(Event(OpType.DELETE, Item(key, b"", revision=str(tx.revision()))))
                following = self._first_expiry(txn)
        except Exception as exc:
            self._next_expiry = now + 1_000_000  # try again in a second
            log.error("lmdb backend %s: deleting expired items failed: %s", self.directory, exc)
            return
        self._next_expiry = following
        if events:
            self._dispatch(events)

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, key: bytes) -> Item:
        _check_key(key)

        def read(txn: lmdb.Transaction, now: int) -> Item:
            raw = txn.get(key, db=self._kv)
            found = None if raw is None else _Record.decode(raw)
            if found is None or not found.live(now):
                raise NotFound(f"key {_show(key)} is not found")
            return found.item(key)

        return await self._read(read)

    async def get_range(self, start: bytes, end: bytes, limit: int = 0) -> list[Item]:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")
        if limit < 0:
            raise ValueError("limit must not be negative")

        def read(txn: lmdb.Transaction, now: int) -> list[Item]:
            items: list[Item] = []
            cursor = txn.cursor(db=self._kv)
            if not cursor.set_range(start):
                return items
            for raw_key, raw in cursor:
                key = bytes(raw_key)
                if end and key >= end:
                    break
                found = _Record.decode(raw)
                if found.live(now):
                    items.append(found.item(key))
                    if len(items) == limit:
                        break
            return items

        return await self._read(read)

    # -- writes -----------------------------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        expires = _check_item(item)
        return await self._write(lambda tx: tx.put(item.key, item.value, expires))

    async def create(self, item: Item) -> Item:
        expires = _check_item(item)

        def op(tx: _Tx) -> Item:
            if tx.live(item.key) is not None:
                raise AlreadyExists(f"key {_show(item.key)} already exists")
            return tx.put(item.key, item.value, expires)

        return await self._write(op)

    async def update(self, item: Item) -> Item:
        expires = _check_item(item)

        def op(tx: _Tx) -> Item:
            if tx.live(item.key) is None:
                raise NotFound(f"key {_show(item.key)} is not found")
            return tx.put(item.key, item.value, expires)

        return await self._write(op)

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        _check_key(expected.key)
        expires = _check_item(replace)
        if expected.key != replace.key:
            raise ValueError("compare_and_swap: expected and replace must have the same key")

        def op(tx: _Tx) -> Item:
            found = tx.live(replace.key)
            if found is None:
                raise NotFound(f"key {_show(replace.key)} is not found")
            if found.value != expected.value:
                raise CompareFailed(f"key {_show(replace.key)}: value is not the expected one")
            return tx.put(replace.key, replace.value, expires)

        return await self._write(op)

    async def conditional_update(self, item: Item) -> Item:
        expires = _check_item(item)

        def op(tx: _Tx) -> Item:
            found = tx.live(item.key)
            if found is None or str(found.revision) != item.revision:
                raise CompareFailed(f"key {_show(item.key)}: revision is not {item.revision!r}")
            return tx.put(item.key, item.value, expires)

        return await self._write(op)

    async def delete(self, key: bytes) -> None:
        _check_key(key)

        def op(tx: _Tx) -> None:
            if tx.live(key) is None:
                raise NotFound(f"key {_show(key)} is not found")
            tx.delete(key)

        await self._write(op)

    async def conditional_delete(self, key: bytes, revision: str) -> None:
        _check_key(key)

        def op(tx: _Tx) -> None:
            found = tx.live(key)
            if found is None or str(found.revision) != revision:
                raise CompareFailed(f"key {_show(key)}: revision is not {revision!r}")
            tx.delete(key)

        await self._write(op)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")

        def op(tx: _Tx) -> int:
            doomed: list[tuple[bytes, bool]] = []
            cursor = tx.txn.cursor(db=self._kv)
            if cursor.set_range(start):
                for raw_key, raw in cursor:
                    key = bytes(raw_key)
                    if end and key >= end:
                        break
                    doomed.append((key, _Record.decode(raw).live(tx.now)))
            for key, _ in doomed:
                tx.delete(key)
            return sum(live for _, live in doomed)

        return await self._write(op)

    async def keep_alive(self, key: bytes, expires: dt.datetime) -> Item:
        _check_key(key)
        micros = _to_us(expires)

        def op(tx: _Tx) -> Item:
            found = tx.live(key)
            if found is None:
                raise NotFound(f"key {_show(key)} is not found")
            return tx.put(key, found.value, micros)

        return await self._write(op)

    async def atomic_write(self, conditions: Sequence[Condition], actions: Sequence[Action]) -> str:
        if not actions:
            raise ValueError("atomic_write needs at least one action")
        writes: list[tuple[bytes, Item | None, int | None]] = []
        seen: set[bytes] = set()
        for action in actions:
            _check_key(action.key)
            expires = None
            if action.item is not None:
                expires = _check_item(action.item)
                if action.item.key != action.key:
                    raise ValueError(f"action key {_show(action.key)} differs from its item's key")
            if action.key in seen:
                raise ValueError(f"key {_show(action.key)} appears in more than one action")
            seen.add(action.key)
            writes.append((action.key, action.item, expires))
        checks = tuple(conditions)
        for condition in checks:
            _check_key(condition.key)

        def op(tx: _Tx) -> str:
            for condition in checks:
                if not tx.check(condition):
                    raise CompareFailed(f"condition {condition.kind.value} on key {_show(condition.key)} failed")
            revision = str(tx.revision())
            for key, item, expires in writes:
                if item is None:
                    tx.delete(key)
                else:
                    tx.put(key, item.value, expires)
            return revision

        return await self._write(op)

    # -- watchers and shutdown --------------------------------------------------------------------

    def watch(self, prefixes: Sequence[bytes], queue_size: int = DEFAULT_WATCHER_QUEUE) -> Watcher:
        """A watcher on the running loop for keys under ``prefixes`` (empty or ``b""``: every key)."""
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        for prefix in prefixes:
            if not isinstance(prefix, bytes):
                raise TypeError(f"prefixes are bytes, got {type(prefix).__name__}")
        watcher = LmdbWatcher(self, tuple(prefixes), queue_size)
        with self._lock:
            self._check_open()
            self._watchers.add(watcher)
        return watcher

    async def close(self) -> None:
        """Finish queued writes, close every watcher and the environment (idempotent)."""
        with self._lock:
            first = not self._closed
            self._closed = True
            if first:
                self._jobs.put(None)
        if not first:
            await asyncio.to_thread(self._close_done.wait)  # another caller is closing it
            return
        await asyncio.shield(asyncio.ensure_future(self._release()))  # a cancelled close still releases

    async def _release(self) -> None:
        try:
            await asyncio.to_thread(self._writer.join)
            with self._lock:
                watchers, self._watchers = list(self._watchers), set()
            for watcher in watchers:
                watcher._shut_threadsafe("backend closed")
            await asyncio.to_thread(self._readers.shutdown, True)
            self._env.close()
        finally:
            os.close(self._lock_fd)
            self._close_done.set()
