"""The writer process of the backend conformance suite's ``kill -9`` durability test.

``python -m teleport_core.testing.backend_child --config JSON --data-dir DIR`` opens the
backend that the ``teleport.storage`` mapping ``JSON`` names (installed plugins, as
``teleport start`` would) and writes ``--count`` items from ``--tasks`` concurrent tasks.
After each write returns it prints ``ack <key>`` and flushes, so every printed key was
acknowledged by the backend. The parent kills it with SIGKILL and checks those keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Item

KEY_PREFIX = b"/durability/"


def key_for(task: int, index: int) -> bytes:
    """The key task ``task`` writes at step ``index``."""
    return KEY_PREFIX + f"{task:03d}/{index:09d}".encode()


def value_for(key: bytes) -> bytes:
    """The value written at ``key`` (derived from it, so the parent can check any stored item)."""
    return b"value of " + key + b" " + bytes(range(256))


async def run(config: dict[str, object], data_dir: Path, count: int, tasks: int) -> None:
    plugins = make_plugins()
    backend = await open_backend(plugins, storage_config(plugins, config), data_dir)
    out = sys.stdout

    async def writer(task: int) -> None:
        for index in range(task, count, tasks):
            key = key_for(task, index)
            await backend.put(Item(key, value_for(key)))
            out.write(f"ack {key.decode()}\n")
            out.flush()

    try:
        await asyncio.gather(*(writer(task) for task in range(tasks)))
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True, help="the teleport.storage mapping, as JSON")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    if not isinstance(config, dict):
        parser.error("--config must be a JSON object")
    asyncio.run(run(config, args.data_dir, args.count, args.tasks))


if __name__ == "__main__":
    main()
