"""Backend request metrics for every backend: :class:`MeteredBackend` wraps whatever backend
``teleport.storage.type`` opened (``teleport_core.resources`` wraps it once per process), so no
backend plugin measures itself.

Each call is one observation in its group's latency histogram (``backend_read_seconds{req}``
...; the groups are :data:`teleport_core.metrics.BACKEND_OPERATIONS`), whose counts are exported
as ``backend_requests{req, range}`` and ``backend_<group>_requests_total`` (Teleport's names)
at each scrape, so a request costs one observation (about 3 µs). A call that raises
(``NotFound`` and ``CompareFailed`` included: the backend answered, but not with success) also
counts in ``backend_<group>_requests_failed_total``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client.registry import Collector

from teleport_core.metrics import BACKEND_OPERATIONS, Metrics
from teleport_core.state.backend import DEFAULT_WATCHER_QUEUE, Action, Backend, Condition, Item, Watcher
from teleport_core.state.recording_index import RecordingIndex

T = TypeVar("T")


class _Meter:
    """The pre-resolved metric children of one operation (no label lookup per call)."""

    __slots__ = ("failed", "latency")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        group, _ = BACKEND_OPERATIONS[operation]
        self.failed = metrics.backend_failed[group]
        self.latency = metrics.backend_seconds[group].labels(req=operation)

    async def run(self, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        try:
            return await call
        except BaseException:
            self.failed.inc()
            raise
        finally:
            self.latency.observe(time.perf_counter() - start)


class MeteredBackend(Backend):
    """``inner`` with every request counted and timed in ``metrics``; anything else the inner
    backend offers (attributes a test or its own plugin reads) passes through."""

    def __init__(self, inner: Backend, metrics: Metrics) -> None:
        self.inner = inner
        self._meters = {operation: _Meter(metrics, operation) for operation in BACKEND_OPERATIONS}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _run(self, operation: str, call: Callable[..., Awaitable[T]], *args: Any) -> Awaitable[T]:
        return self._meters[operation].run(call(*args))

    async def get(self, key: bytes) -> Item:
        return await self._run("get", self.inner.get, key)

    async def put(self, item: Item) -> Item:
        return await self._run("put", self.inner.put, item)

    async def create(self, item: Item) -> Item:
        return await self._run("create", self.inner.create, item)

    async def update(self, item: Item) -> Item:
        return await self._run("update", self.inner.update, item)

    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        return await self._run("compare_and_swap", self.inner.compare_and_swap, expected, replace)

    async def conditional_update(self, item: Item) -> Item:
        return await self._run("conditional_update", self.inner.conditional_update, item)

    async def delete(self, key: bytes) -> None:
        await self._run("delete", self.inner.delete, key)

    async def conditional_delete(self, key: bytes, revision: str) -> None:
        await self._run("conditional_delete", self.inner.conditional_delete, key, revision)

    async def get_range(self, start: bytes, end: bytes, limit: int = 0) -> list[Item]:
        return await self._run("get_range", self.inner.get_range, start, end, limit)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        return await self._run("delete_range", self.inner.delete_range, start, end)

    async def keep_alive(self, key: bytes, expires: dt.datetime) -> Item:
        return await self._run("keep_alive", self.inner.keep_alive, key, expires)

    async def atomic_write(self, conditions: Sequence[Condition], actions: Sequence[Action]) -> str:
        return await self._run("atomic_write", self.inner.atomic_write, conditions, actions)

    def watch(self, prefixes: Sequence[bytes], queue_size: int = DEFAULT_WATCHER_QUEUE) -> Watcher:
        return self.inner.watch(prefixes, queue_size)

    def recording_index(self) -> RecordingIndex:
        return self.inner.recording_index()

    def collectors(self) -> Sequence[Collector]:
        return self.inner.collectors()

    async def close(self) -> None:
        await self.inner.close()
