"""A child process for the kill -9 test: emits events with 8 concurrent emitters into the
file:// sink named by argv[1] and prints each uid once its emit has returned."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import new_event


async def main(uri: str) -> None:
    sink = await open_audit_sink(make_plugins(), uri, Path("/nonexistent"))

    async def emitter(worker: int) -> None:
        count = 0
        while True:
            event = new_event("exec", user=f"worker-{worker}", sid=f"{worker}-{count}", command="x" * (count % 700))
            await sink.emit(event)
            sys.stdout.write(event.uid + "\n")
            sys.stdout.flush()
            count += 1

    await asyncio.gather(*(emitter(w) for w in range(8)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
