"""A host's heartbeat to auth, as Teleport's (lib/srv heartbeat): announce once, then keep alive.

:class:`Heartbeat` runs in a node or proxy. It announces the host's full entry (an upsert), then
every ``period`` (with seventh jitter) sends a keepalive, which carries no body and moves the
entry's expiry (one backend key touched on auth). Every :data:`CHECK_PERIOD` seconds it compares
the entry it would announce with the one it did (dynamic labels, address) and announces again on
a change. A keepalive answered NotFound (auth lost the entry: it expired, was removed, or a
restarted auth on another backend never had it) makes it announce again at once.

Failures back off exponentially with full jitter (a random delay in ``[0, min(max_backoff,
first * 2**n)]``), so nodes losing auth together (an auth restart) come back spread out rather
than as a thundering herd. The announce at start is immediate (the host should be reachable as
soon as it is up); the first keepalive comes at a random point of the first period, so hosts
started together keep alive at different moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from teleport_core.errors import NotFound, TeleportError
from teleport_core.metrics import Metrics

CHECK_PERIOD = 5.0  # seconds between checks for a changed entry (Teleport's HeartbeatCheckPeriod)
FIRST_BACKOFF = 1.0  # seconds: the first retry's delay bound
MAX_BACKOFF = 90.0  # seconds: the retry delay bound (Teleport's max backoff for its watchers)


def seventh_jitter(period: float, rand: Callable[[], float] = random.random) -> float:
    """``period`` less up to a seventh of it, at random (Teleport's ``SeventhJitter``)."""
    return period * (1 - rand() / 7)


@attrs.define
class Backoff:
    """Exponential backoff with full jitter, capped at ``maximum``; :meth:`reset` on success."""

    first: float = FIRST_BACKOFF
    maximum: float = MAX_BACKOFF
    rand: Callable[[], float] = random.random
    attempts: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ValueError(f"backoff: need 0 < first ({self.first}) <= maximum ({self.maximum})")

    def next(self) -> float:
        """The delay before the next attempt (and count this one)."""
        bound = min(self.maximum, self.first * 2.0 ** min(self.attempts, 62))
        self.attempts += 1
        return self.rand() * bound

    def reset(self) -> None:
        self.attempts = 0


Entry = dict[str, Any]


@attrs.define
class Heartbeat:
    """Announce ``describe()`` with ``announce``, then ``keep_alive`` every ``period`` seconds.

    ``kind`` labels the metrics (``node``, ``proxy``); ``log`` is a structlog logger.
    """

    kind: str
    describe: Callable[[], Entry]
    announce: Callable[[Entry], Awaitable[Any]]
    keep_alive: Callable[[], Awaitable[Any]]
    metrics: Metrics
    log: Any
    period: float
    backoff: Backoff = attrs.field(factory=Backoff)
    check_period: float = CHECK_PERIOD
    rand: Callable[[], float] = random.random
    announced: Entry | None = None  # what auth holds, as far as this host knows
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    def changed(self) -> None:
        """The entry changed (a dynamic label): check it now rather than at the next check."""
        self._changed.set()

    async def run(self, *, announced: bool = False) -> None:
        """Forever: announce or keep alive, then wait (failures: back off). ``announced``: the
        caller just announced (with :meth:`beat`), so the first step is the wait."""
        first = True
        if announced:
            await self._wait(self.rand() * self.period)
        while True:
            try:
                await self.beat()
            except TeleportError as exc:
                delay = self.backoff.next()
                self.metrics.heartbeats_missed.labels(type=self.kind).inc()
                self.log.warning("heartbeat failed, will retry", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            await self._wait(self.rand() * self.period if first else seventh_jitter(self.period, self.rand))
            first = False

    async def beat(self) -> None:
        """One heartbeat: a keepalive, or an announce when the entry changed or auth has none."""
        entry = self.describe()
        if entry == self.announced:
            try:
                await self.keep_alive()
            except NotFound:
                self.log.info("auth has no entry for this host, announcing it again")
                self.announced = None
            else:
                self.metrics.keepalives_sent.labels(type=self.kind).inc()
                return
        await self.announce(entry)
        self.announced = entry
        self.metrics.heartbeats_sent.labels(type=self.kind).inc()

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, ending early when the entry changed (checked every ``check_period``)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, self.check_period))
            self._changed.clear()
            if self.describe() != self.announced:
                return
