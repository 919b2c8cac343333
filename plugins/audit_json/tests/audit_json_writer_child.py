"""A child process for the several-writers test: waits for a line on stdin, then stores the
shared events (in its own order, half of them through ``emit_lines``) and its own events into
the file:// sink named by argv[1] with 16 concurrent emitters, and prints ``done``."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from audit_json_helpers import BASE, MS

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditEvent, event_line


def shared_events(count: int) -> list[AuditEvent]:
    """The events every child stores (same uid and time: redeliveries of one another's)."""
    return [AuditEvent("exec", "T3002I", f"shared-{i:05d}", BASE + (i // 3) * MS, {"user": f"u{i % 7}", "sid": f"s{i % 11}"})
            for i in range(count)]


def own_events(name: str, count: int) -> list[AuditEvent]:
    return [AuditEvent("exec", "T3002I", f"{name}-{i:05d}", BASE + (i // 3) * MS, {"user": f"u{i % 7}", "sid": name})
            for i in range(count)]


async def main(uri: str, name: str, count: int) -> None:
    sink = await open_audit_sink(make_plugins(), uri, Path("/nonexistent"))
    events = shared_events(count) + own_events(name, count)
    random.Random(name).shuffle(events)
    queue = list(events)
    sys.stdin.readline()

    async def emitter(worker: int) -> None:
        while queue:
            batch = [queue.pop() for _ in range(min(len(queue), 1 + worker % 4))]
            if worker % 2:
                await sink.emit_lines([event_line(e) for e in batch])
            else:
                for e in batch:
                    await sink.emit(e)

    await asyncio.gather(*(emitter(w) for w in range(16)))
    await sink.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
