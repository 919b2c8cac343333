"""Group commit: concurrent puts share one etcd transaction, and so do concurrent reads.

A put that finds nothing in flight goes out at once as a plain ``Put``. Puts that arrive while
one is in flight wait, and go together in the next call: one ``Txn`` whose success branch is
all of them (no compare, so it always applies). etcd applies such a transaction as one raft
entry, one fsync and one revision, which is what each put answers with; a put is still
acknowledged only once etcd acknowledged the transaction that carries it.

Order is kept: one batch is in flight at a time, batches leave in arrival order, and a key
already in the batch being filled closes it (etcd refuses a key twice in one transaction), so
two puts of one key apply in the order they were made. A batch etcd refuses for a reason that
may concern one of its puts only (a lease etcd forgot, a value over its request size) is sent
again put by put, so each put gets its own answer, as it would have alone.

Reads of single keys are batched the same way, into one read-only ``Txn`` of ``Range``
requests: etcd serves it as one linearizable read (one ReadIndex round for all of them), and a
read that waited for the batch in flight goes out after it, so it sees every write acknowledged
before the read was made.

Keepalives (``keep_alive_batcher``) are single-key guarded transactions: compare the key's
``mod_revision`` with the one last seen, then put the renewed value. Concurrent ones go as one
``Txn`` holding every compare and every put: it applies all of them or, when any key changed
meanwhile, none, and then its failure branch reads every key of the batch, so each caller gets
its own key's fresh state and decides again alone (nothing is renewed blindly).

Each backend's batchers count into one :class:`BatchMetrics` (exported by
``EtcdBackend.collectors``): ``teleport_etcd_batch_size{operation}``, the requests each etcd call
carried (1 for a request that went alone), and ``teleport_etcd_batch_retries_total{operation,
reason}``, the batches whose requests were then decided one by one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Histogram

from .client import PUT, RANGE, TXN, EtcdClient, EtcdError, EtcdUnavailable, pb

MAX_OPS = 128  # etcd's --max-txn-ops default
MAX_BYTES = 1 << 20  # below etcd's default --max-request-bytes (1.5 MiB)
#: ``teleport_etcd_batch_size`` buckets: requests carried by one etcd call (MAX_OPS at most)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: the batchers of a backend (``operation`` label) and the retries each can make (``reason`` label)
OPERATIONS = {"put": ("refused",), "get": ("refused",), "keep_alive": ("refused", "conflict")}


class BatchMetrics:
    """How one backend's batchers grouped requests (Prometheus, not registered here: the process
    registers ``collectors`` in its registry).

    ``size``: ``teleport_etcd_batch_size{operation}``, one observation per etcd call a batcher
    made, its value the requests the call carried (1 alone, 2 to 128 together), so ``_sum /
    _count`` is the mean batch size. ``retries``: ``teleport_etcd_batch_retries_total{operation,
    reason}``, batches of several requests that were then decided one by one: ``refused`` (etcd
    refused the transaction, perhaps for one request's sake: each is sent again alone) or
    ``conflict`` (keepalives: a key changed since it was read, so nothing applied and each
    keepalive decides again on its own key).
    """

    def __init__(self) -> None:
        self.size = Histogram("teleport_etcd_batch_size", "Requests carried by one etcd call of the backend's "
                              "batchers (1: alone), by operation", ["operation"], buckets=BATCH_SIZE_BUCKETS,
                              registry=None)
        self.retries = Counter("teleport_etcd_batch_retries", "Batches of etcd requests then decided one by one, "
                               "by operation and reason (refused, conflict)", ["operation", "reason"], registry=None)
        for operation, reasons in OPERATIONS.items():  # every series from the start
            self.size.labels(operation=operation)
            for reason in reasons:
                self.retries.labels(operation=operation, reason=reason)

    @property
    def collectors(self) -> tuple[Histogram, Counter]:
        return self.size, self.retries


T = TypeVar("T")


class Batcher(Generic[T]):
    """Sends requests of one kind alone when idle, and together in one ``Txn`` when they pile up.

    ``method`` is the call for one request, ``field`` the request's name in a ``RequestOp``,
    ``alone`` the result of one request's answer, ``together`` the result of the i-th request
    of a transaction's answer, ``weight`` a request's size in bytes, and ``distinct`` whether a
    key may appear once only in a transaction (writes). ``combine`` builds the transaction of
    several requests instead (default: each one a ``RequestOp`` of the success branch), ``key``
    names a request's key (default: its ``key``), and ``idempotent`` says whether a call may be
    repeated on another peer when the first may have applied it. ``operation`` labels its counts
    in ``metrics``; ``conflicted`` says whether a transaction's answer means nothing applied and
    each request must be decided again by its caller (counted as a ``conflict`` retry).
    """

    def __init__(
        self,
        client: EtcdClient,
        method: tuple[str, Any],
        field: str,
        alone: Callable[[Any], T],
        together: Callable[[Any, int], T],
        weight: Callable[[Any], int],
        *,
        distinct: bool,
        combine: Callable[[list[Any]], Any] | None = None,
        key: Callable[[Any], bytes] = lambda request: bytes(request.key),
        idempotent: bool = True,
        operation: str,
        metrics: BatchMetrics,
        conflicted: Callable[[Any], bool] | None = None,
    ) -> None:
        self._client = client
        self._method = method
        self._field = field
        self._alone = alone
        self._together = together
        self._weight = weight
        self._distinct = distinct
        self._combine = combine or self._success_only
        self._key = key
        self._idempotent = idempotent
        self._conflicted = conflicted
        self._size = metrics.size.labels(operation=operation)  # resolved once: no label lookup per call
        self._refused = metrics.retries.labels(operation=operation, reason="refused")
        self._conflict = metrics.retries.labels(operation=operation, reason="conflict") if conflicted else None
        self._queue: collections.deque[tuple[Any, asyncio.Future[T]]] = collections.deque()
        self._busy = False
        self._idle = asyncio.Event()  # set while nothing is in flight
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        #: How many transactions carried more than one request (for tests and metrics).
        self.batches = 0
        #: How many etcd calls were made, alone or together.
        self.calls = 0

    def _success_only(self, requests: list[Any]) -> Any:
        return pb.TxnRequest(success=[pb.RequestOp(**{self._field: request}) for request in requests])

    async def send(self, request: Any) -> T:
        """Send ``request`` (alone or with others); its result."""
        if self._busy:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._queue.append((request, future))
            return await future
        self._busy = True
        self._idle.clear()
        try:
            self.calls += 1
            self._size.observe(1)
            return self._alone(await self._client.call(self._method, request, idempotent=self._idempotent))
        finally:
            self._release()

    def _release(self) -> None:
        if self._queue:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="etcd-batches")
        else:
            self._busy = False
            self._idle.set()

    async def _drain(self) -> None:
        batch: list[tuple[Any, asyncio.Future[T]]] = []
        try:
            while self._queue:
                batch = self._take()
                await self._send(batch)
        finally:
            self._busy = False
            self._idle.set()
            closed = EtcdError("etcd backend is closed")
            for _, future in batch:  # only when cancelled mid-way (close): nothing will answer these
                _settle(future, closed)
            self.fail_waiting(closed)

    def _take(self) -> list[tuple[Any, asyncio.Future[T]]]:
        batch: list[tuple[Any, asyncio.Future[T]]] = []
        keys: set[bytes] = set()
        size = 0
        while self._queue and len(batch) < MAX_OPS:
            request, future = self._queue[0]
            if future.done():  # its caller gave up (cancelled) before it was sent
                self._queue.popleft()
                continue
            weight = self._weight(request)
            key = self._key(request)
            if (self._distinct and key in keys) or (batch and size + weight > MAX_BYTES):
                break
            self._queue.popleft()
            batch.append((request, future))
            keys.add(key)
            size += weight
        return batch

    async def _send(self, batch: list[tuple[Any, asyncio.Future[T]]]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            await self._one(*batch[0])
            return
        txn = self._combine([request for request, _ in batch])
        try:
            self.calls += 1
            self._size.observe(len(batch))
            answer = await self._client.call(TXN, txn, idempotent=self._idempotent)
        except EtcdUnavailable as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        except EtcdError:  # maybe one request's fault: each alone gets its own answer
            self._refused.inc()
            for request, future in batch:
                await self._one(request, future)
            return
        self.batches += 1
        if self._conflict is not None and self._conflicted is not None and self._conflicted(answer):
            self._conflict.inc()  # nothing applied: each caller decides again on its own key
        for i, (_, future) in enumerate(batch):
            _settle(future, self._together(answer, i))

    async def _one(self, request: Any, future: asyncio.Future[T]) -> None:
        try:
            self.calls += 1
            self._size.observe(1)
            answer = await self._client.call(self._method, request, idempotent=self._idempotent)
        except EtcdError as exc:
            _settle(future, exc)
        else:
            _settle(future, self._alone(answer))

    def fail_waiting(self, exc: EtcdError) -> None:
        """Fail every request still waiting (the backend is closing)."""
        while self._queue:
            _, future = self._queue.popleft()
            _settle(future, exc)

    async def close(self) -> None:
        """Let the requests already made go out and be answered (each call has its deadline).

        The backend refuses new puts first, so this ends."""
        await self._idle.wait()
        if self._task is not None and not self._task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.fail_waiting(EtcdError("etcd backend is closed"))


def put_batcher(client: EtcdClient, metrics: BatchMetrics) -> Batcher[int]:
    """Puts (``pb.PutRequest``); each answers the revision it was applied at."""
    return Batcher(
        client,
        PUT,
        "request_put",
        lambda answer: int(answer.header.revision),
        lambda answer, _: int(answer.header.revision),
        lambda request: len(request.key) + len(request.value) + 16,
        distinct=True,
        operation="put",
        metrics=metrics,
    )


def _first(kvs: Any) -> Any:
    return kvs[0] if kvs else None


def get_batcher(client: EtcdClient, metrics: BatchMetrics) -> Batcher[Any]:
    """Reads of one key (``pb.RangeRequest``); each answers its ``KeyValue`` or None."""
    return Batcher(
        client,
        RANGE,
        "request_range",
        lambda answer: _first(answer.kvs),
        lambda answer, i: _first(answer.responses[i].response_range.kvs),
        lambda request: len(request.key) + 16,
        distinct=False,
        operation="get",
        metrics=metrics,
    )


def _guarded_together(requests: list[Any]) -> Any:
    """One transaction of single-key guarded transactions: every compare, every put, every re-read."""
    return pb.TxnRequest(
        compare=[request.compare[0] for request in requests],
        success=[op for request in requests for op in request.success],
        failure=[op for request in requests for op in request.failure],
    )


def _renewal(answer: Any, index: int) -> tuple[bool, Any]:
    if answer.succeeded:
        return True, int(answer.header.revision)
    return False, _first(answer.responses[index].response_range.kvs)


def keep_alive_batcher(client: EtcdClient, metrics: BatchMetrics) -> Batcher[tuple[bool, Any]]:
    """Keepalives: each a ``pb.TxnRequest`` comparing one key's ``mod_revision``, putting its
    renewed value on success and reading the key on failure (exactly one op in each branch).

    Each answers ``(True, revision)`` when its put applied, or ``(False, KeyValue or None)``:
    nothing of its transaction applied, and this is the key's state read then.
    """
    return Batcher(
        client,
        TXN,
        "request_txn",
        lambda answer: _renewal(answer, 0),
        _renewal,
        lambda request: int(request.ByteSize()) + 16,
        distinct=True,
        combine=_guarded_together,
        key=lambda request: bytes(request.compare[0].key),
        idempotent=False,  # a write: repeated elsewhere only when it surely did not apply
        operation="keep_alive",
        metrics=metrics,
        conflicted=lambda answer: not answer.succeeded,
    )


def _settle(future: asyncio.Future[T], outcome: T | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
