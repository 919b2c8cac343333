"""Helpers shared by the teleport-audit-json tests (imported by module name: the tests
directory is on ``sys.path`` under pytest's default import mode)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditEvent, AuditQuery, AuditSink, new_event

T = TypeVar("T")
EVERYTHING = AuditQuery(since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
BASE = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
MS = dt.timedelta(milliseconds=1)
ROOT = Path(__file__).resolve().parents[3]


def with_sink(uri: str, body: Callable[[AuditSink], Awaitable[T]], data_dir: Path | None = None) -> T:
    """Open ``uri`` through the installed plugins, run ``body(sink)``, close it."""

    async def main() -> T:
        sink = await open_audit_sink(make_plugins(), uri, data_dir or Path("/nonexistent"))
        try:
            return await body(sink)
        finally:
            await sink.close()

    return asyncio.run(main())


async def search_all(sink: AuditSink, query: AuditQuery = EVERYTHING, limit: int = 1000) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    cursor = ""
    while True:
        page = await sink.search(attrs.evolve(query, limit=limit, cursor=cursor))
        events.extend(page.events)
        if not page.next_cursor:
            return events
        cursor = page.next_cursor


def stored(uri: str, query: AuditQuery = EVERYTHING) -> list[dict[str, Any]]:
    """Every event ``uri`` holds (a fresh sink, so nothing is cached), as dicts."""

    async def body(sink: AuditSink) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await search_all(sink, query)]

    return with_sink(uri, body)


def emit_all(uri: str, events: list[AuditEvent]) -> None:
    async def body(sink: AuditSink) -> None:
        for event in events:
            await sink.emit(event)

    with_sink(uri, body)


def event(kind: str = "user.login", when: dt.datetime = BASE, outcome: str = "ok", **fields: Any) -> AuditEvent:
    return new_event(kind, outcome, when=when, **fields)


def python(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False, **kwargs
    )
