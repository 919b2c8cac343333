"""Connection and rate limits shared by every listener (node and proxy SSH ports, the
reverse-tunnel port, web logins and host registration).

- :class:`ConnectionLimits` is ``connection_limits`` of ``teleport.yaml`` (Teleport's keys
  ``max_connections``, ``max_users`` and ``rates``, plus OpenSSH's ``max_startups``,
  ``per_source_max_startups`` and ``login_grace_time`` for the SSH listeners), read by
  :func:`parse_connection_limits`.
- :class:`ConnectionGate` admits SSH connections: a cap on all connections, a separate cap on
  unauthenticated ones with early random drop (OpenSSH's ``MaxStartups start:rate:full``), a
  per-source cap on unauthenticated ones, a login grace time, and ``max_users`` distinct users
  with authenticated connections. Unlike OpenSSH, the drop is fair between addresses: a
  connection from an address holding fewer unauthenticated connections than the address
  holding the most is never dropped at random, and at ``full`` the oldest connection of an
  address holding the most is closed to make room for it. Thread-safe (the SSH servers run a
  thread per connection).
- :class:`RateLimiter` is a per-source token bucket (every rate of ``rates`` must allow);
  it tells the caller when a source's burst of refusals begins, so one audit event per burst.
  Web logins and host registrations give their token back when they succeed: what is limited
  is failed attempts (password or token guessing).
- :class:`AuditThrottle` lets a refusal through to the audit log once per source and period.
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from teleport_core.config.limits import ConnectionLimits, Rate

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

MAX_SOURCES = 10_000  # sources a RateLimiter or AuditThrottle remembers (the oldest are forgotten)


class Refused(Exception):
    """A connection the gate does not admit; ``str()`` is the reason (for the log and audit)."""


class Ticket:
    """One admitted connection. :meth:`authenticated` once its login succeeded; :meth:`close`
    (idempotent) when it ends."""

    def __init__(self, gate: ConnectionGate, source: str, on_expire: Callable[[], None]) -> None:
        self.gate = gate
        self.source = source
        self.on_expire = on_expire
        self.deadline = time.monotonic() + gate.limits.login_grace_time
        self.user: str | None = None
        self.is_authenticated = False
        self.closed = False

    def authenticated(self, user: str | None = None) -> None:
        """The connection logged in (``user``: counted in ``max_users``; None for a host).

        :class:`Refused` when ``max_users`` distinct users are connected and ``user`` is not one of them.
        """
        self.gate._authenticated(self, user)

    def close(self) -> None:
        self.gate._close(self)


class ConnectionGate:
    """Admission of one listener's SSH connections (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits, name: str, *, rng: random.Random | None = None) -> None:
        self.limits = limits
        self.name = name
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        self._unauthenticated: set[Ticket] = set()
        self._per_source: collections.Counter[str] = collections.Counter()
        self._users: collections.Counter[str] = collections.Counter()
        self.total = 0
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    @property
    def users(self) -> int:
        return len(self._users)

    def start(self) -> None:
        """Start the thread that ends connections past their login grace time."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name=f"{self.name}-grace", daemon=True)
            self._reaper.start()

    def stop(self) -> None:
        self._stopping.set()

    def admit(self, source: str, on_expire: Callable[[], None]) -> Ticket:
        """A ticket for a new connection from ``source`` (an IP address), or :class:`Refused`.

        ``on_expire`` closes the connection when it is still unauthenticated at the end of
        the login grace time (called on the gate's thread; it must not block).
        """
        limits = self.limits
        with self._lock:
            unauth = len(self._unauthenticated)
            if self.total >= limits.max_connections:
                raise Refused(f"{self.name}: {limits.max_connections} connections (max_connections) are open")
            if self._per_source[source] >= limits.per_source_max_startups:
                raise Refused(f"{self.name}: {self._per_source[source]} unauthenticated connections from {source} "
                              "(per_source_max_startups)")
            startups = limits.max_startups
            evicted: Ticket | None = None
            if unauth >= startups.start:
                most = self._per_source.most_common(1)[0][1]
                if most > self._per_source[source]:
                    # fair share: an address holding fewer is not dropped for another's crowd; at
                    # full, the oldest connection of an address holding the most makes room
                    if unauth >= startups.full:
                        evicted = min((t for t in self._unauthenticated if self._per_source[t.source] == most),
                                      key=lambda t: t.deadline)
                        self._close_locked(evicted)
                elif unauth >= startups.full:
                    raise Refused(f"{self.name}: {unauth} unauthenticated connections (max_startups {startups})")
                else:
                    chance = startups.rate + (100 - startups.rate) * (unauth - startups.start) / max(
                        1, startups.full - startups.start)
                    if self._rng.random() * 100 < chance:
                        raise Refused(f"{self.name}: {unauth} unauthenticated connections, dropped at random "
                                      f"(max_startups {startups})")
            ticket = Ticket(self, source, on_expire)
            self._unauthenticated.add(ticket)
            self._per_source[source] += 1
            self.total += 1
        if evicted is not None:
            with contextlib.suppress(Exception):  # closing a socket that is already gone
                evicted.on_expire()
        return ticket

    def _authenticated(self, ticket: Ticket, user: str | None) -> None:
        with self._lock:
            if ticket.closed or ticket.is_authenticated:
                return
            if user is not None and user not in self._users and len(self._users) >= self.limits.max_users:
                raise Refused(f"{self.name}: {len(self._users)} users are connected (max_users)")
            self._leave_startup(ticket)
            ticket.is_authenticated = True
            ticket.user = user
            if user is not None:
                self._users[user] += 1

    def user_may_connect(self, user: str) -> str:
        """The reason ``user`` could not log in now (``max_users``), or ""."""
        with self._lock:
            if user in self._users or len(self._users) < self.limits.max_users:
                return ""
            return f"{self.name}: {len(self._users)} users are connected (max_users)"

    def _leave_startup(self, ticket: Ticket) -> None:
        if ticket in self._unauthenticated:
            self._unauthenticated.discard(ticket)
            self._per_source[ticket.source] -= 1
            if self._per_source[ticket.source] <= 0:
                del self._per_source[ticket.source]

    def _close(self, ticket: Ticket) -> None:
        with self._lock:
            self._close_locked(ticket)

    def _close_locked(self, ticket: Ticket) -> None:
        if ticket.closed:
            return
        ticket.closed = True
        self.total -= 1
        self._leave_startup(ticket)
        if ticket.user is not None:
            self._users[ticket.user] -= 1
            if self._users[ticket.user] <= 0:
                del self._users[ticket.user]

    def _reap(self) -> None:
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            with self._lock:
                expired = [t for t in self._unauthenticated if t.deadline <= now]
            for ticket in expired:
                ticket.close()
                with contextlib.suppress(Exception):  # closing a socket that is already gone
                    ticket.on_expire()


def on_authenticated(transport: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` on ``transport``'s thread once the paramiko server transport has
    authenticated its client (after the signature was checked, never for a key query)."""
    trigger = transport._auth_trigger

    def wrapped() -> None:
        trigger()
        callback()

    transport._auth_trigger = wrapped


# -- rates ------------------------------------------------------------------------------------


class RateLimiter:
    """Per-source token buckets: each rate holds ``burst`` tokens, refilled at ``average`` per ``period``."""

    def __init__(self, rates: tuple[Rate, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = rates
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, list[tuple[float, float]]] = collections.OrderedDict()
        self._refusing: set[str] = set()

    def take(self, source: str) -> tuple[float, bool]:
        """Take one token for ``source``: (0, False) when allowed, else (seconds until a token
        is back, whether this refusal begins a burst of refusals of ``source``)."""
        now = self._clock()
        with self._lock:
            buckets = self._buckets.pop(source, None) or [(float(r.burst), now) for r in self.rates]
            self._buckets[source] = buckets
            while len(self._buckets) > MAX_SOURCES:
                old, _ = self._buckets.popitem(last=False)
                self._refusing.discard(old)
            self._buckets[source], wait = charge(self.rates, buckets, now)
            if wait > 0:
                first = source not in self._refusing
                self._refusing.add(source)
                return wait, first
            self._refusing.discard(source)
            return 0.0, False

    def refund(self, source: str) -> None:
        """Give back the token of an attempt that succeeded: the buckets count failed attempts,
        so a busy legitimate client (a script joining many hosts) is never slowed down."""
        with self._lock:
            buckets = self._buckets.get(source)
            if buckets is not None:
                self._buckets[source] = refunded(self.rates, buckets)


Buckets = list[tuple[float, float]]  # (tokens, when last refilled) per rate


def charge(rates: tuple[Rate, ...], buckets: Buckets, now: float) -> tuple[Buckets, float]:
    """Refill ``buckets`` to ``now`` and take one token from each: (the new buckets, 0.0); or,
    when a rate has no token left, (the refilled buckets, seconds until it has one). A bucket
    stamped later than ``now`` counts as stamped ``now``."""
    levels = []
    wait = 0.0
    for rate, (tokens, then) in zip(rates, buckets, strict=True):
        per_second = rate.average / rate.period
        tokens = min(float(rate.burst), tokens + max(0.0, now - then) * per_second)
        levels.append(tokens)
        if tokens < 1.0:
            wait = max(wait, (1.0 - tokens) / per_second)
    if wait > 0:
        return [(t, now) for t in levels], wait
    return [(t - 1.0, now) for t in levels], 0.0


def refunded(rates: tuple[Rate, ...], buckets: Buckets) -> Buckets:
    """``buckets`` with one token given back to each rate (never above its burst)."""
    return [(min(float(rate.burst), tokens + 1.0), then) for rate, (tokens, then) in zip(rates, buckets, strict=True)]


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


async def rate_limited(limiter: RateLimiter, source: str, what: str,
                       audit: Callable[[str], Awaitable[None]]) -> JSONResponse | None:
    """None when ``source`` may go on; else a 429 response (starlette) with ``Retry-After``.

    The first refusal of a burst is audited through ``audit(reason)``, the rest are not.
    """
    wait, first = limiter.take(source)
    if not wait:
        return None
    from starlette.responses import JSONResponse

    after = retry_after(wait)
    reason = f"{what}: too many attempts from {source}, retry in {after}s (connection_limits.rates)"
    if first:
        await audit(reason)
    return JSONResponse({"error": reason}, status_code=429, headers={"Retry-After": after})


class AuditThrottle:
    """Lets one refusal per source through every ``period`` seconds, counting the ones held back."""

    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._last: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()

    def allow(self, source: str) -> int | None:
        """None to hold this refusal back; else how many were held back since the last one let through."""
        now = self._clock()
        with self._lock:
            last = self._last.get(source)
            if last is not None and now - last[0] < self.period:
                self._last[source] = (last[0], last[1] + 1)
                return None
            self._last.pop(source, None)
            self._last[source] = (now, 0)
            while len(self._last) > MAX_SOURCES:
                self._last.popitem(last=False)
            return last[1] if last else 0
