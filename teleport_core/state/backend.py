"""The cluster-state backend interface every storage plugin implements.

Keys are ``bytes`` ordered bytewise (``/roles/admin``); values are ``bytes``. Every method
is a coroutine. A backend is opened once per process and shared by the services in it.
Run the conformance suite in :mod:`teleport_core.testing.backend_suite` against yours.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import datetime as dt
import enum
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import attrs

from teleport_core.errors import WatcherClosed
from teleport_core.state.recording_index import RecordingIndex, SearchUnsupported

if TYPE_CHECKING:
    from prometheus_client.registry import Collector


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class Item:
    """One key and value. ``expires`` (aware UTC) of None means never; ``revision`` is opaque
    and set by the backend on every write."""

    key: bytes
    value: bytes
    expires: dt.datetime | None = None
    revision: str = ""

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or utcnow())


def range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix`` (exclusive end)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b""  # no upper bound
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class OpType(enum.Enum):
    INIT = "init"
    PUT = "put"
    DELETE = "delete"


@attrs.frozen
class Event:
    """A watcher event. ``INIT`` comes first with an empty item; ``DELETE`` items carry the key."""

    type: OpType
    item: Item


class ConditionKind(enum.Enum):
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    REVISION = "revision"  # the item exists with exactly this revision
    VALUE = "value"  # the item exists with exactly this value


@attrs.frozen
class Condition:
    """A precondition of :meth:`Backend.atomic_write`."""

    key: bytes
    kind: ConditionKind
    revision: str = ""
    value: bytes = b""

    @classmethod
    def exists(cls, key: bytes) -> Condition:
        return cls(key, ConditionKind.EXISTS)

    @classmethod
    def not_exists(cls, key: bytes) -> Condition:
        return cls(key, ConditionKind.NOT_EXISTS)

    @classmethod
    def revision_is(cls, key: bytes, revision: str) -> Condition:
        return cls(key, ConditionKind.REVISION, revision=revision)

    @classmethod
    def value_is(cls, key: bytes, value: bytes) -> Condition:
        return cls(key, ConditionKind.VALUE, value=value)


@attrs.frozen
class Action:
    """A write of :meth:`Backend.atomic_write`: ``put`` when ``item`` is set, else ``delete`` of ``key``."""

    key: bytes
    item: Item | None = None

    @classmethod
    def put(cls, item: Item) -> Action:
        return cls(item.key, item)

    @classmethod
    def delete(cls, key: bytes) -> Action:
        return cls(key, None)


class Watcher(abc.ABC):
    """An async iterator of :class:`Event` for some key prefixes.

    The first event is always ``INIT``. A watcher whose consumer falls more than its queue
    size behind is closed: iteration then raises :class:`~teleport_core.errors.WatcherClosed`
    saying so, and the consumer must re-read state and watch again.
    """

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching; pending and further iteration raises ``WatcherClosed``."""

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


DEFAULT_WATCHER_QUEUE = 1024


class BufferedWatcher(Watcher):
    """The buffering every backend's watcher needs; subclasses only feed it.

    Events are buffered on one event loop (``_push``, called on that loop), at most
    ``queue_size`` of them counting the ``INIT`` event. A consumer that falls further behind
    gets the buffered events, then :class:`~teleport_core.errors.WatcherClosed` saying so;
    ``close()`` (or the backend closing) drops them and raises at once. Override
    ``_on_shut`` to unregister the watcher or stop its event source.
    """

    def __init__(self, prefixes: Sequence[bytes], queue_size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.prefixes = tuple(prefixes)
        self.queue_size = queue_size
        self._loop = loop
        self._buffer: collections.deque[Event] = collections.deque([Event(OpType.INIT, Item(b"", b""))])
        self._reason: str | None = None  # set once closed
        self._drain = False  # closed for falling behind: hand out the buffered events first
        self._waiter: asyncio.Future[None] | None = None

    def matches(self, key: bytes) -> bool:
        return not self.prefixes or any(key.startswith(p) for p in self.prefixes)

    @property
    def closed(self) -> bool:
        return self._reason is not None

    def _push(self, events: list[Event]) -> None:
        if self._reason is not None:
            return
        if len(self._buffer) + len(events) > self.queue_size:
            self._shut(
                f"watcher fell behind by more than {self.queue_size} events "
                "(queue_size); re-read the state and watch again",
                drain=True,
            )
            return
        self._buffer.extend(events)
        self._wake()

    def _shut(self, reason: str, drain: bool) -> None:
        if self._reason is not None:
            return
        self._reason = reason
        self._drain = drain
        if not drain:
            self._buffer.clear()
        self._on_shut()
        self._wake()

    def _on_shut(self) -> None:
        """Called once when the watcher closes, on its loop."""

    def _push_threadsafe(self, events: list[Event]) -> bool:
        """:meth:`_push` from any thread (a backend's writer thread); False when the watcher's
        loop is closed (the backend then forgets the watcher)."""
        try:
            self._loop.call_soon_threadsafe(self._push, events)
        except RuntimeError:
            return False
        return True

    def _shut_threadsafe(self, reason: str) -> None:
        """Close the watcher (dropping what it buffered) from its loop or any other thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._shut(reason, drain=False)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits on the watcher
            self._loop.call_soon_threadsafe(self._shut, reason, False)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __anext__(self) -> Event:
        while True:
            if self._buffer and (self._reason is None or self._drain):
                return self._buffer.popleft()
            if self._reason is not None:
                raise WatcherClosed(self._reason)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class Backend(abc.ABC):
    """Cluster state storage. Errors: ``NotFound``, ``AlreadyExists``, ``CompareFailed``.

    Writes are durable when they return. Expired items are invisible to every read.
    Every write returns the stored item with its new ``revision``.
    """

    @abc.abstractmethod
    async def get(self, key: bytes) -> Item:
        """The live item at ``key``; ``NotFound`` when absent or expired."""

    @abc.abstractmethod
    async def put(self, item: Item) -> Item:
        """Create or replace ``item.key``."""

    @abc.abstractmethod
    async def create(self, item: Item) -> Item:
        """Write ``item`` only if no live item has its key; else ``AlreadyExists``."""

    @abc.abstractmethod
    async def update(self, item: Item) -> Item:
        """Replace an existing live item; ``NotFound`` when there is none."""

    @abc.abstractmethod
    async def compare_and_swap(self, expected: Item, replace: Item) -> Item:
        """Replace ``expected.key`` with ``replace`` only if its value is ``expected.value``.

        ``NotFound`` when absent, ``CompareFailed`` when the value differs. The keys must match.
        """

    @abc.abstractmethod
    async def conditional_update(self, item: Item) -> Item:
        """Replace ``item.key`` only if its revision is ``item.revision``; else ``CompareFailed``."""

    @abc.abstractmethod
    async def delete(self, key: bytes) -> None:
        """Delete a live item; ``NotFound`` when there is none."""

    @abc.abstractmethod
    async def conditional_delete(self, key: bytes, revision: str) -> None:
        """Delete ``key`` only if its revision is ``revision``; else ``CompareFailed``."""

    @abc.abstractmethod
    async def get_range(self, start: bytes, end: bytes, limit: int = 0) -> list[Item]:
        """Live items with ``start <= key < end`` in key order (``end=b""``: no upper bound).

        ``limit`` > 0 returns at most that many; to page, start again after the last key.
        """

    @abc.abstractmethod
    async def delete_range(self, start: bytes, end: bytes) -> int:
        """Delete every item with ``start <= key < end``; return how many live items went."""

    @abc.abstractmethod
    async def keep_alive(self, key: bytes, expires: dt.datetime) -> Item:
        """Move a live item's expiry to ``expires``; ``NotFound`` when there is none."""

    @abc.abstractmethod
    async def atomic_write(self, conditions: Sequence[Condition], actions: Sequence[Action]) -> str:
        """Check every condition, then apply every action, all or nothing.

        Returns the revision of the write; ``CompareFailed`` (nothing written) when a
        condition fails. A key may appear in at most one action.
        """

    @abc.abstractmethod
    def watch(self, prefixes: Sequence[bytes], queue_size: int = DEFAULT_WATCHER_QUEUE) -> Watcher:
        """A :class:`Watcher` for keys starting with any of ``prefixes`` (``b""``: all keys)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources; open watchers are closed."""

    def collectors(self) -> Sequence[Collector]:
        """Prometheus collectors of this backend's own figures (say, how its writes are batched),
        registered in the process's registry beside the request metrics every backend gets
        (:mod:`teleport_core.state.metered`); none by default."""
        return ()

    def recording_index(self) -> RecordingIndex:
        """The full-text index of session recordings this backend keeps, shared by every process
        on it (:mod:`teleport_core.state.recording_index`). A backend that keeps none (the default)
        raises :class:`~teleport_core.state.recording_index.SearchUnsupported` saying why; an
        override that keeps one closes it in :meth:`close`."""
        raise SearchUnsupported(f"recordings cannot be searched: the cluster-state backend "
                                f"{type(self).__name__} keeps no full-text index of their text")
