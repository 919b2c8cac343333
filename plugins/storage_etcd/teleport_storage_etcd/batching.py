"""Group commit for unconditional puts: concurrent puts share one etcd transaction.

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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from .client import PUT, TXN, EtcdClient, EtcdError, EtcdUnavailable, pb

MAX_OPS = 128  # etcd's --max-txn-ops default
MAX_BYTES = 1 << 20  # below etcd's default --max-request-bytes (1.5 MiB)


class PutBatcher:
    """Sends puts (``pb.PutRequest``) alone when idle, and together when they pile up."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._queue: collections.deque[tuple[Any, asyncio.Future[int]]] = collections.deque()
        self._busy = False
        self._idle = asyncio.Event()  # set while nothing is in flight
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        #: How many transactions carried more than one put (for tests and metrics).
        self.batches = 0

    async def put(self, request: Any) -> int:
        """Apply ``request``; the etcd revision it was applied at."""
        if self._busy:
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._queue.append((request, future))
            return await future
        self._busy = True
        self._idle.clear()
        try:
            answer = await self._client.call(PUT, request, idempotent=True)
            return int(answer.header.revision)
        finally:
            self._release()

    def _release(self) -> None:
        if self._queue:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="etcd-put-batches")
        else:
            self._busy = False
            self._idle.set()

    async def _drain(self) -> None:
        batch: list[tuple[Any, asyncio.Future[int]]] = []
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

    def _take(self) -> list[tuple[Any, asyncio.Future[int]]]:
        batch: list[tuple[Any, asyncio.Future[int]]] = []
        keys: set[bytes] = set()
        size = 0
        while self._queue and len(batch) < MAX_OPS:
            request, future = self._queue[0]
            if future.done():  # its caller gave up (cancelled) before it was sent
                self._queue.popleft()
                continue
            weight = len(request.key) + len(request.value) + 16
            if request.key in keys or (batch and size + weight > MAX_BYTES):
                break
            self._queue.popleft()
            batch.append((request, future))
            keys.add(request.key)
            size += weight
        return batch

    async def _send(self, batch: list[tuple[Any, asyncio.Future[int]]]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            await self._one(*batch[0])
            return
        txn = pb.TxnRequest(success=[pb.RequestOp(request_put=request) for request, _ in batch])
        try:
            answer = await self._client.call(TXN, txn, idempotent=True)  # puts only: safe to repeat
        except EtcdUnavailable as exc:
            for _, future in batch:
                _settle(future, exc)
            return
        except EtcdError:  # maybe one put's fault: each alone gets its own answer
            for request, future in batch:
                await self._one(request, future)
            return
        self.batches += 1
        for _, future in batch:
            _settle(future, int(answer.header.revision))

    async def _one(self, request: Any, future: asyncio.Future[int]) -> None:
        try:
            answer = await self._client.call(PUT, request, idempotent=True)
        except EtcdError as exc:
            _settle(future, exc)
        else:
            _settle(future, int(answer.header.revision))

    def fail_waiting(self, exc: EtcdError) -> None:
        """Fail every put still waiting (the backend is closing)."""
        while self._queue:
            _, future = self._queue.popleft()
            _settle(future, exc)

    async def close(self) -> None:
        """Let the puts already made go out and be answered (each call has its deadline).

        The backend refuses new puts first, so this ends."""
        await self._idle.wait()
        if self._task is not None and not self._task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.fail_waiting(EtcdError("etcd backend is closed"))


def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
