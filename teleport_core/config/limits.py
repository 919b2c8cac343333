"""``connection_limits`` of ``teleport.yaml`` (Teleport's keys ``max_connections``, ``max_users``
and ``rates``, plus OpenSSH's ``max_startups``, ``per_source_max_startups`` and
``login_grace_time`` for the SSH listeners): the settings :mod:`teleport_core.net.limits`
enforces, read by :func:`parse_connection_limits`."""

from __future__ import annotations

from typing import Any

import attrs

from teleport_core.config.reader import SectionReader, show


@attrs.frozen
class Rate:
    """``average`` requests per ``period`` seconds, ``burst`` at once (a token bucket)."""

    period: float
    average: int
    burst: int


@attrs.frozen
class Startups:
    """OpenSSH's ``MaxStartups start:rate:full``: from ``start`` unauthenticated connections on,
    refuse a new one with probability ``rate`` %, rising linearly to 100 % at ``full``."""

    start: int = 64
    rate: int = 30
    full: int = 256

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"


# A password login or a host registration per source: 20 a minute on average, 40 at once.
DEFAULT_RATES = (Rate(60.0, 20, 40),)


@attrs.frozen
class ConnectionLimits:
    """``connection_limits``: Teleport's defaults for ``max_connections`` and ``max_users``."""

    max_connections: int = 15_000
    max_users: int = 250
    rates: tuple[Rate, ...] = DEFAULT_RATES
    # OpenSSH's defaults are 10:30:100 and no per-source cap; every session through a proxy
    # arrives from the proxy's address, and parallel tools (ansible forks) handshake at once:
    # 32 per source, and random drop only from 64, so one flooding source alone never makes
    # another source's connection a candidate for the drop
    max_startups: Startups = Startups()
    per_source_max_startups: int = 32
    login_grace_time: float = 30.0


def _startups(value: Any) -> Startups:
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, str):
        try:
            parts = [int(p) for p in value.split(":")]
        except ValueError:
            raise ValueError("__") from None
    else:
        raise TypeError("__")
    if len(parts) == 1:  # OpenSSH: a single number is start = full, no random drop
        return Startups(parts[0], 100, parts[0]) if parts[0] > 0 else _bad("start must be at least 1")
    if len(parts) != 3:
        raise ValueError("__")
    start, rate, full = parts
    if start < 1:
        _bad("start must be at least 1")
    if not 1 <= rate <= 100:
        _bad("rate must be a percentage from 1 to 100")
    if full < start:
        _bad("full must be at least start")
    return Startups(start, rate, full)


def _bad(message: str) -> Any:
    raise ValueError(message)


def parse_connection_limits(reader: SectionReader, key: str = "connection_limits",
                            default: ConnectionLimits | None = None) -> ConnectionLimits | None:
    """Read ``key`` of ``reader``; ``default`` (returned unchanged) when the key is absent.

    Keys left out of a present section take ``default``'s values (the built-in defaults
    when ``default`` is None). Every error names its key path.
    """
    if not reader.has(key):
        return default
    base = default or ConnectionLimits()
    r = reader.section(key)
    max_connections = r.integer("max_connections", base.max_connections, minimum=1)
    max_users = r.integer("max_users", base.max_users, minimum=1)
    rates = base.rates
    if r.has("rates"):
        items = r.sections("rates")
        if not items:
            raise r.error("rates", "expected at least one rate (period, average, burst); leave rates out for "
                                   "the defaults")
        parsed = []
        for item in items:
            period = item.duration("period")
            if period.total_seconds() <= 0:
                raise item.error("period", f"must be a positive duration, got {show(item.data.get('period'))}")
            average = item.integer("average", minimum=1)
            burst = item.integer("burst", average, minimum=1)
            item.finish()
            parsed.append(Rate(period.total_seconds(), average, burst))
        rates = tuple(parsed)
    startups = r._get("max_startups", base.max_startups, _startups, 'start:rate:full like "10:30:100"')
    per_source = r.integer("per_source_max_startups", base.per_source_max_startups, minimum=1)
    grace = r.duration("login_grace_time", None)
    grace_seconds = base.login_grace_time if grace is None else grace.total_seconds()
    if grace_seconds <= 0:
        raise r.error("login_grace_time", "must be a positive duration (unauthenticated connections must end)")
    if startups.full > max_connections:
        raise r.error("max_startups", f"full ({startups.full}) must not exceed max_connections ({max_connections})")
    r.finish()
    return ConnectionLimits(max_connections, max_users, rates, startups, per_source, grace_seconds)


# -- SSH connections ------------------------------------------------------------------------------
