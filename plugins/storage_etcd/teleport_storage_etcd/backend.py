"""The etcd cluster-state backend (``teleport.storage.type: etcd``).

How it works:

* Every key is stored at ``<prefix><key>`` in etcd (``prefix`` defaults to ``/teleport``), so
  several clusters (or tests) can share one etcd.
* An item's revision is the etcd ``mod_revision`` of its key, as a decimal string: it changes
  on every write, increases across the whole etcd cluster and survives restarts.
* Values are stored in a small envelope: one byte ``0`` then the value, or one byte ``1``, the
  expiry as big-endian signed microseconds since the epoch, then the value. An item with an
  expiry is attached to an etcd lease of at least that many seconds, so etcd deletes it (and
  watchers get a ``DELETE``); reads also hide items whose envelope expiry has passed, because
  etcd's lease timer only has second granularity.
* Unconditional puts made while another is in flight go out together in one etcd transaction
  (group commit, ``batching.py``); each is acknowledged when etcd acknowledged it. Reads of one
  key are batched the same way, into one read-only (still linearizable) transaction, and so are
  concurrent keepalives: one transaction comparing every key's ``mod_revision`` and putting every
  renewal, all or none; when one key changed, each keepalive decides again alone.
* Conditional writes (create, update, compare-and-swap, revision checks, atomic writes) read
  the keys involved, decide on a consistent snapshot, then commit one etcd transaction that
  compares each key's ``mod_revision`` with the one read; when someone else wrote in between,
  the transaction's failure branch returns the fresh state and the decision is taken again.
* Watchers use etcd's watch stream over the whole range of their prefixes, starting at the
  revision after the last one this process saw; after a lost connection (a member died or
  etcd restarted) they reconnect to the next peer and resume after the last revision they
  delivered, so nothing is lost or repeated. A watcher falling behind by more than its queue
  size is closed with ``WatcherClosed``, as is one whose history etcd compacted away.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import pathlib
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from teleport_core.errors import AlreadyExists, CompareFailed, NotFound, TeleportError
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
    range_end,
)
from teleport_core.state.recording_index import RecordingIndex, SearchUnsupported

from .batching import BatchMetrics, get_batcher, keep_alive_batcher, put_batcher
from .client import DELETE_RANGE, LEASE_GRANT, RANGE, TXN, EtcdClient, EtcdError, pb
from .config import EtcdOptions

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["EtcdBackend", "EtcdWatcher", "open_backend"]

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_PLAIN = 0
_EXPIRING = 1
_EXPIRY = struct.Struct(">q")
MAX_LEASE_TTL = 9_000_000_000  # seconds; etcd's own limit
MAX_BACKOFF = 2.0  # seconds between watch reconnects at most
LEASE_BUCKET_US = 5_000_000  # items expiring within one such window share a lease
MAX_CACHED_LEASES = 4096
MAX_REMEMBERED_RENEWALS = 65536  # keys whose last keep_alive is remembered (saves a read each)

KV: TypeAlias = Any  # pb.KeyValue (protobuf ships no types)
RequestOp: TypeAlias = Any  # pb.RequestOp
_MOD_EQUAL = {"target": pb.Compare.MOD, "result": pb.Compare.EQUAL}


async def open_backend(options: EtcdOptions, data_dir: pathlib.Path) -> EtcdBackend:
    """Connect to the peers; raises naming each peer and what failed when none answers."""
    del data_dir  # cluster state lives in etcd
    client = EtcdClient(options)
    try:
        await client.check()
    except BaseException:
        await client.close()
        raise
    return EtcdBackend(client, options)


# -- conversions --------------------------------------------------------------------------------


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _to_us(when: dt.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("expires must be a timezone-aware datetime (UTC)")
    return (when - _EPOCH) // _MICROSECOND


def _from_us(micros: int | None) -> dt.datetime | None:
    return None if micros is None else _EPOCH + dt.timedelta(microseconds=micros)


def _now_us() -> int:
    return time.time_ns() // 1000


def encode_value(value: bytes, expires_us: int | None) -> bytes:
    """The stored form of ``value`` with its expiry."""
    if expires_us is None:
        return bytes([_PLAIN]) + value
    return bytes([_EXPIRING]) + _EXPIRY.pack(expires_us) + value


def decode_value(raw: bytes) -> tuple[bytes, int | None]:
    """``(value, expires_us)`` of a stored value (bytes not written by us are a plain value)."""
    if raw[:1] == bytes([_PLAIN]):
        return raw[1:], None
    if raw[:1] == bytes([_EXPIRING]) and len(raw) >= 1 + _EXPIRY.size:
        return raw[1 + _EXPIRY.size :], _EXPIRY.unpack_from(raw, 1)[0]
    return raw, None


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise TypeError(f"keys are bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("keys must not be empty")
    return key


def _check_item(item: Item) -> int | None:
    """Validate ``item``; its expiry in microseconds."""
    _check_key(item.key)
    if not isinstance(item.value, bytes):
        raise TypeError(f"values are bytes, got {type(item.value).__name__}")
    micros = _to_us(item.expires)
    if micros is not None and not -(1 << 63) <= micros < (1 << 63):
        raise ValueError("expires is out of range")
    return micros


def _mod(kv: KV | None) -> int:
    return kv.mod_revision if kv is not None else 0


def _first_kv(answer: Any, index: int = 0) -> KV | None:
    responses = answer.responses
    if index >= len(responses):
        return None
    kvs = responses[index].response_range.kvs
    return kvs[0] if kvs else None


# -- watchers -------------------------------------------------------------------------------------


class EtcdWatcher(BufferedWatcher):
    """Events for some prefixes from one etcd watch stream, buffered up to ``queue_size``."""

    def __init__(self, backend: EtcdBackend, prefixes: tuple[bytes, ...], queue_size: int, start: int) -> None:
        super().__init__(prefixes, queue_size, asyncio.get_running_loop())
        self._backend = backend
        #: The first revision not yet delivered: where a new stream resumes.
        self.next_revision = start
        #: How many times the stream was re-established after a failure.
        self.reconnects = 0
        self._task = self._loop.create_task(self._run(), name="etcd-watch")

    def _range(self) -> tuple[bytes, bytes]:
        backend = self._backend
        if not self.prefixes or b"" in self.prefixes:
            return backend._full(b""), backend._full_end(b"")
        start = min(backend._full(p) for p in self.prefixes)
        ends = [backend._full_end(range_end(p)) for p in self.prefixes]
        return start, (b"\x00" if b"\x00" in ends else max(ends))

    async def _run(self) -> None:
        start, end = self._range()
        backoff = 0.1
        while self._reason is None:
            create = pb.WatchCreateRequest(
                key=start, range_end=end, start_revision=self.next_revision, progress_notify=True
            )
            try:
                async for result in self._backend._client.watch_stream(create):
                    if backoff > 0.1:
                        log.info("etcd watcher resumed at revision %d", self.next_revision)
                    backoff = 0.1
                    if self._handle(result):
                        return
            except EtcdError as exc:
                if self._reason is not None:
                    return
                self.reconnects += 1
                # The first failure after a working stream is a warning; retries while etcd stays away are not.
                level = logging.WARNING if backoff == 0.1 else logging.DEBUG
                log.log(level, "%s; the watcher reconnects and resumes from revision %d", exc, self.next_revision)
            except Exception as exc:  # a bug or a malformed answer: report it to the consumer
                log.exception("etcd watcher failed")
                self._shut(f"etcd watcher failed: {exc}", drain=True)
                return
            if self._reason is not None:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _handle(self, result: Any) -> bool:
        """Apply one watch answer; True when the watch is over."""
        if result.canceled:
            compacted = result.compact_revision
            if compacted:
                reason = (
                    f"etcd compacted the history this watcher needed (it resumes at revision "
                    f"{self.next_revision}, compacted up to {compacted}); re-read the state and watch again"
                )
            else:
                reason = f"etcd canceled the watch: {result.cancel_reason or 'no reason given'}"
            self._shut(reason, drain=True)
            return True
        raw_events = result.events
        if not raw_events:
            if not result.created:  # a progress notification: everything up to here was sent
                self.next_revision = max(self.next_revision, result.header.revision + 1)
            return False
        events: list[Event] = []
        last = self.next_revision - 1
        for raw in raw_events:
            kv = raw.kv
            revision = kv.mod_revision
            last = max(last, revision)
            key = self._backend._strip(kv.key)
            if key is None or not self.matches(key):
                continue
            if raw.type == pb.Event.DELETE:
                events.append(Event(OpType.DELETE, Item(key, b"", revision=str(revision))))
            else:
                value, expires = decode_value(kv.value)
                events.append(Event(OpType.PUT, Item(key, value, _from_us(expires), str(revision))))
        self.next_revision = last + 1
        if events:
            self._push(events)
        return self._reason is not None

    def _on_shut(self) -> None:
        self._backend._watchers.discard(self)
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def close(self) -> None:
        self._shut("watcher closed", drain=False)
        await self._finish()

    async def _finish(self) -> None:
        if self._task is asyncio.current_task():
            return
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


# -- the backend ----------------------------------------------------------------------------------


class EtcdBackend(Backend):
    """Cluster state in etcd under one key prefix. Open with :func:`open_backend`."""

    def __init__(self, client: EtcdClient, options: EtcdOptions) -> None:
        self._client = client
        self.options = options
        self.prefix = options.prefix.encode()
        self._watchers: set[EtcdWatcher] = set()
        self._leases: dict[int, int] = {}  # lease window end (microseconds) -> lease ID
        self._granting: dict[int, asyncio.Task[int]] = {}  # lease window end -> its grant in flight
        self.batch_metrics = BatchMetrics()  # how the three batchers grouped requests (collectors())
        self._puts = put_batcher(client, self.batch_metrics)  # concurrent puts share a transaction
        self._gets = get_batcher(client, self.batch_metrics)  # and so do concurrent reads of one key
        self._keepalives = keep_alive_batcher(client, self.batch_metrics)  # and concurrent keepalives
        self._renewed: dict[bytes, KV] = {}  # key -> what keep_alive last wrote there
        self._closed = False

    # -- keys ---------------------------------------------------------------------------------

    def _full(self, key: bytes) -> bytes:
        return self.prefix + key

    def _full_end(self, end: bytes) -> bytes:
        """The etcd range end for our exclusive ``end`` (``b""``: the end of our prefix)."""
        if end:
            return self.prefix + end
        return range_end(self.prefix) or b"\x00"  # "\x00": every key from the start on

    def _strip(self, full: bytes) -> bytes | None:
        return full[len(self.prefix) :] if full.startswith(self.prefix) else None

    def _item(self, kv: KV) -> Item:
        key = self._strip(kv.key)
        value, expires = decode_value(kv.value)
        return Item(key or b"", value, _from_us(expires), str(kv.mod_revision))

    def _live(self, kv: KV | None, now: int | None = None) -> Item | None:
        """The item of ``kv`` unless absent or expired."""
        if kv is None:
            return None
        item = self._item(kv)
        expires = _to_us(item.expires)
        if expires is not None and expires <= (now if now is not None else _now_us()):
            return None
        return item

    def _check_open(self) -> None:
        if self._closed:
            raise TeleportError(f"etcd backend {','.join(self.options.peers)} is closed")

    # -- etcd calls -----------------------------------------------------------------------------

    async def _get_kv(self, key: bytes) -> KV | None:
        self._check_open()
        kv: KV | None = await self._gets.send(pb.RangeRequest(key=self._full(key)))
        return kv

    async def _lease(self, expires_us: int | None) -> int | None:
        """A lease that outlives ``expires_us`` (None: no lease).

        Items whose expiries fall in the same ``LEASE_BUCKET_US`` window share one lease that
        lasts until the window's end: a write needs no lease grant of its own, and etcd deletes
        an item at most one window after its expiry (reads hide it from the expiry on).
        Concurrent writes in one window wait for the same grant.
        """
        if expires_us is None:
            return None
        bucket_end = -(-expires_us // LEASE_BUCKET_US) * LEASE_BUCKET_US
        cached = self._leases.get(bucket_end)
        if cached is not None:
            return cached
        granting = self._granting.get(bucket_end)
        if granting is None:
            granting = asyncio.get_running_loop().create_task(self._grant(bucket_end), name="etcd-lease-grant")
            self._granting[bucket_end] = granting
            granting.add_done_callback(lambda _: self._granting.pop(bucket_end, None))
        return await asyncio.shield(granting)

    async def _grant(self, bucket_end: int) -> int:
        """A new lease lasting until ``bucket_end``, cached for that window."""
        now = _now_us()
        ttl = max(1, math.ceil((bucket_end - now) / 1e6))  # counted from before the grant: outlives the window
        answer = await self._client.call(LEASE_GRANT, pb.LeaseGrantRequest(TTL=min(ttl, MAX_LEASE_TTL)))
        lease = int(answer.ID)
        if bucket_end > now:
            if len(self._leases) >= MAX_CACHED_LEASES:
                for end in [end for end in self._leases if end <= now]:
                    del self._leases[end]
            if len(self._leases) < MAX_CACHED_LEASES:
                self._leases[bucket_end] = lease
        return lease

    def _forget_leases(self, exc: EtcdError) -> None:
        """Drop the cached leases when etcd no longer knows one (its data was replaced)."""
        if "lease not found" in str(exc):
            self._leases.clear()

    async def _txn(self, txn: Any) -> Any:
        """A write transaction; a lease etcd does not know any more is forgotten (the next write gets a new one)."""
        try:
            return await self._client.call(TXN, txn, idempotent=False)
        except EtcdError as exc:
            self._forget_leases(exc)
            raise

    def _put_request(self, item: Item, lease: int | None) -> Any:
        stored = encode_value(item.value, _to_us(item.expires))
        limit = self.options.max_client_msg_size_bytes
        if limit is not None and len(stored) + len(self._full(item.key)) > limit:
            raise TeleportError(
                f"key {_show(item.key)}: a value of {len(item.value)} bytes exceeds "
                f"teleport.storage.etcd_max_client_msg_size_bytes ({limit})"
            )
        return pb.PutRequest(key=self._full(item.key), value=stored, lease=lease or 0)

    def _put_op(self, item: Item, lease: int | None) -> RequestOp:
        return pb.RequestOp(request_put=self._put_request(item, lease))

    def _delete_op(self, key: bytes) -> RequestOp:
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=self._full(key)))

    def _stored(self, item: Item, revision: str) -> Item:
        return Item(item.key, item.value, _from_us(_to_us(item.expires)), revision)

    async def _guarded(
        self,
        key: bytes,
        decide: Callable[[Item | None], list[RequestOp]],
        *,
        assume_absent: bool = False,
        known: KV | None = None,
    ) -> str:
        """Commit ``decide(current live item)`` if ``key`` did not change meanwhile; the revision.

        ``known``: the key's state as last seen, used instead of reading it (when it changed
        since, the transaction fails, returns the fresh state, and the decision is taken again).
        """
        self._check_open()
        full = self._full(key)
        kv = known if known is not None else None if assume_absent else await self._get_kv(key)
        reread = [pb.RequestOp(request_range=pb.RangeRequest(key=full))]
        while True:
            ops = decide(self._live(kv))
            answer = await self._txn(
                pb.TxnRequest(
                    compare=[pb.Compare(key=full, mod_revision=_mod(kv), **_MOD_EQUAL)], success=ops, failure=reread
                )
            )
            if answer.succeeded:
                return str(answer.header.revision)
            kv = _first_kv(answer)

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, key: bytes) -> Item:
        _check_key(key)
        item = self._live(await self._get_kv(key))
        if item is None:
            raise NotFound(f"key {_show(key)} is not found")
        return item

    async def get_range(self, start: bytes, end: bytes, limit: int = 0) -> list[Item]:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._check_open()
        if end and end <= start:
            return []
        cursor, stop = self._full(start), self._full_end(end)
        items: list[Item] = []
        revision = 0
        while True:
            # later pages read the same snapshot (revision)
            body = pb.RangeRequest(
                key=cursor, range_end=stop, limit=limit - len(items) if limit else 0, revision=revision
            )
            answer = await self._client.call(RANGE, body)
            revision = revision or answer.header.revision
            kvs = answer.kvs
            now = _now_us()
            for kv in kvs:
                item = self._live(kv, now)
                if item is not None:
                    items.append(item)
            if not (limit and len(items) < limit and answer.more and kvs):
                return items
            cursor = kvs[-1].key + b"\x00"

    # -- writes -----------------------------------------------------------------------------------

    async def put(self, item: Item) -> Item:
        expires = _check_item(item)
        self._check_open()
        lease = await self._lease(expires)
        try:
            revision = await self._puts.send(self._put_request(item, lease))
        except EtcdError as exc:
            self._forget_leases(exc)
            raise
        return self._stored(item, str(revision))

    async def create(self, item: Item) -> Item:
        lease = await self._lease(_check_item(item))

        def decide(current: Item | None) -> list[RequestOp]:
            if current is not None:
                raise AlreadyExists(f"key {_show(item.key)} already exists")
            return [self._put_op(item, lease)]

        return self._stored(item, await self._guarded(item.key, decide, assume_absent=True))

    async def update(self, item: Item) -> Item:
        lease = await self._lease(_check_item(item))

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None:
                raise NotFound(f"key {_show(item.key)} is not found")
            return [self._put_op(item, lease)]

        return self._stored(item, await self._guarded(item.key, decide))

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        _check_key(expected.key)
        expires = _check_item(replace)
        if expected.key != replace.key:
            raise ValueError("compare_and_swap: expected and replace must have the same key")
        lease = await self._lease(expires)

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None:
                raise NotFound(f"key {_show(replace.key)} is not found")
            if current.value != expected.value:
                raise CompareFailed(f"key {_show(replace.key)}: value is not the expected one")
            return [self._put_op(replace, lease)]

        return self._stored(replace, await self._guarded(replace.key, decide))

    async def conditional_update(self, item: Item) -> Item:
        lease = await self._lease(_check_item(item))

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None or current.revision != item.revision:
                raise CompareFailed(f"key {_show(item.key)}: revision is not {item.revision!r}")
            return [self._put_op(item, lease)]

        return self._stored(item, await self._guarded(item.key, decide))

    async def delete(self, key: bytes) -> None:
        _check_key(key)

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None:
                raise NotFound(f"key {_show(key)} is not found")
            return [self._delete_op(key)]

        await self._guarded(key, decide)

    async def conditional_delete(self, key: bytes, revision: str) -> None:
        _check_key(key)

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None or current.revision != revision:
                raise CompareFailed(f"key {_show(key)}: revision is not {revision!r}")
            return [self._delete_op(key)]

        await self._guarded(key, decide)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        if not isinstance(start, bytes) or not isinstance(end, bytes):
            raise TypeError("range bounds are bytes")
        self._check_open()
        if end and end <= start:
            return 0
        answer = await self._client.call(
            DELETE_RANGE,
            pb.DeleteRangeRequest(key=self._full(start), range_end=self._full_end(end), prev_kv=True),
            idempotent=False,
        )
        now = _now_us()
        return sum(1 for kv in answer.prev_kvs if self._live(kv, now) is not None)

    async def keep_alive(self, key: bytes, expires: dt.datetime) -> Item:
        _check_key(key)
        lease = await self._lease(_check_item(Item(key, b"", expires)))
        kept: list[Item] = []

        def decide(current: Item | None) -> list[RequestOp]:
            if current is None:
                raise NotFound(f"key {_show(key)} is not found")
            kept[:] = [Item(key, current.value, expires)]
            return [self._put_op(kept[0], lease)]

        # A heartbeat renews the same key again and again: what the last renewal wrote saves the read.
        known = self._renewed.pop(key, None)
        if known is not None and self._live(known) is None:  # expired as we knew it: ask etcd
            known = None
        self._check_open()
        kv = known if known is not None else await self._get_kv(key)
        # Concurrent renewals share one transaction (batching.keep_alive_batcher): it applies only
        # if none of their keys changed since seen; else each decides again alone on what is there.
        full = self._full(key)
        guarded = pb.TxnRequest(
            compare=[pb.Compare(key=full, mod_revision=_mod(kv), **_MOD_EQUAL)],
            success=decide(self._live(kv)),
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=full))],
        )
        try:
            applied, outcome = await self._keepalives.send(guarded)
        except EtcdError as exc:
            self._forget_leases(exc)
            raise
        revision = str(outcome) if applied else await self._guarded(key, decide, known=outcome, assume_absent=True)
        stored = self._stored(kept[0], revision)
        if len(self._renewed) >= MAX_REMEMBERED_RENEWALS:
            del self._renewed[next(iter(self._renewed))]  # the oldest
        self._renewed[key] = pb.KeyValue(
            key=self._full(key), value=encode_value(stored.value, _to_us(expires)), mod_revision=int(revision)
        )
        return stored

    async def atomic_write(self, conditions: Sequence[Condition], actions: Sequence[Action]) -> str:
        if not actions:
            raise ValueError("atomic_write needs at least one action")
        seen: set[bytes] = set()
        expiries: list[int | None] = []
        for action in actions:
            _check_key(action.key)
            if action.item is not None:
                expiries.append(_check_item(action.item))
                if action.item.key != action.key:
                    raise ValueError(f"action key {_show(action.key)} differs from its item's key")
            if action.key in seen:
                raise ValueError(f"key {_show(action.key)} appears in more than one action")
            seen.add(action.key)
        for condition in conditions:
            _check_key(condition.key)
        self._check_open()
        ops: list[RequestOp] = []
        for action in actions:
            if action.item is None:
                ops.append(self._delete_op(action.key))
            else:
                ops.append(self._put_op(action.item, await self._lease(_to_us(action.item.expires))))
        if not conditions:
            answer = await self._txn(pb.TxnRequest(success=ops))
            return str(answer.header.revision)
        watched = sorted({c.key for c in conditions})
        reads = [pb.RequestOp(request_range=pb.RangeRequest(key=self._full(key))) for key in watched]
        snapshot = await self._client.call(TXN, pb.TxnRequest(success=reads))
        while True:
            current = {key: _first_kv(snapshot, i) for i, key in enumerate(watched)}
            now = _now_us()
            for condition in conditions:
                if not self._holds(condition, self._live(current[condition.key], now)):
                    raise CompareFailed(f"condition {condition.kind.value} on key {_show(condition.key)} failed")
            compares = [
                pb.Compare(key=self._full(key), mod_revision=_mod(current[key]), **_MOD_EQUAL) for key in watched
            ]
            answer = await self._txn(pb.TxnRequest(compare=compares, success=ops, failure=reads))
            if answer.succeeded:
                return str(answer.header.revision)
            snapshot = answer

    @staticmethod
    def _holds(condition: Condition, item: Item | None) -> bool:
        kind = condition.kind
        if kind is ConditionKind.EXISTS:
            return item is not None
        if kind is ConditionKind.NOT_EXISTS:
            return item is None
        if kind is ConditionKind.REVISION:
            return item is not None and item.revision == condition.revision
        if kind is ConditionKind.VALUE:
            return item is not None and item.value == condition.value
        raise ValueError(f"unknown condition kind {kind!r}")

    # -- watchers and shutdown --------------------------------------------------------------------

    def watch(self, prefixes: Sequence[bytes], queue_size: int = DEFAULT_WATCHER_QUEUE) -> Watcher:
        """A watcher for keys under ``prefixes``, from the revision after the last one this process saw."""
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        for prefix in prefixes:
            if not isinstance(prefix, bytes):
                raise TypeError(f"prefixes are bytes, got {type(prefix).__name__}")
        self._check_open()
        watcher = EtcdWatcher(self, tuple(prefixes), queue_size, self._client.revision + 1)
        self._watchers.add(watcher)
        return watcher

    def recording_index(self) -> RecordingIndex:
        """None: etcd has no full-text search, and an index kept beside each auth server would
        answer differently on each (docs/sessions.md, "Searching recordings by their text")."""
        raise SearchUnsupported(
            "recordings cannot be searched: the etcd backend keeps no full-text index of their text (etcd has no "
            "full-text search); listing recordings without search works"
        )

    def collectors(self) -> Sequence[Collector]:
        """``teleport_etcd_batch_size`` and ``teleport_etcd_batch_retries_total``
        (:class:`~teleport_storage_etcd.batching.BatchMetrics`)."""
        return self.batch_metrics.collectors

    async def close(self) -> None:
        """Close every watcher and the connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        watchers = list(self._watchers)
        self._watchers.clear()
        for watcher in watchers:
            watcher._shut("backend closed", drain=False)
        for watcher in watchers:
            await watcher._finish()
        await self._puts.close()
        await self._gets.close()
        await self._keepalives.close()
        await self._client.close()
