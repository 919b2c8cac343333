"""``Backend.keep_alive`` on a fresh etcd cluster: keepalives per second and etcd CPU per keepalive.

    python bench/etcd_keepalive.py [--count 3000] [--tasks 16] [--etcd-members 3] [--format text|json]

Starts ``--etcd-members`` etcd members on loopback (``bench/heartbeats.py``'s setup), puts
``--count`` keys with an expiry, then renews every one of them twice from ``--tasks`` tasks (the
loop of ``heartbeats.py``'s raw keep_alive): round 1 renews keys this process has not renewed
yet (each read first), round 2 renews them again (the heartbeat's steady state: the last
renewal's revision is remembered). Each round reports keepalives/s and the CPU the etcd members
spent per keepalive (user + system, from /proc), and the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from heartbeats import Processes, start_etcd, tree_cpu  # this folder: run as a script

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Item


async def rounds(
    storage: dict[str, Any], folder: Path, pids: list[int], count: int, tasks: int
) -> list[dict[str, Any]]:
    plugins = make_plugins()
    backend = await open_backend(plugins, storage_config(plugins, storage), folder)
    try:
        keys = [f"/bench-keepalive/{i}".encode() for i in range(count)]
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        for key in keys:
            await backend.put(Item(key, b'{"node": "x"}', expires))
        results = []
        for number in (1, 2):
            pending = iter(keys)
            renewed = expires + dt.timedelta(minutes=number)

            async def lane(pending: Any = pending, renewed: dt.datetime = renewed) -> None:
                for key in pending:
                    await backend.keep_alive(key, renewed)

            cpu, start = sum(tree_cpu(pid) for pid in pids), time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(tasks)))
            seconds, cpu = time.perf_counter() - start, sum(tree_cpu(pid) for pid in pids) - cpu
            results.append({"round": number, "per_second": round(count / seconds, 1),
                            "etcd_cpu_ms_per_keepalive": round(cpu / count * 1000, 3)})
        return results
    finally:
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="keys renewed in each round")
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--etcd-members", type=int, default=3)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    procs = Processes()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-etcd-keepalive-") as tmp:
        try:
            peers, pids = start_etcd(procs, Path(tmp), args.etcd_members)
            storage = {"type": "etcd", "peers": peers, "prefix": "/bench-keepalive"}
            results = asyncio.run(rounds(storage, Path(tmp) / "data", pids, args.count, args.tasks))
        finally:
            procs.close()
    if args.format == "json":
        print(json.dumps({"benchmark": "etcd_keepalive", "count": args.count, "tasks": args.tasks,
                          "etcd_members": args.etcd_members, "loadavg_at_start": load, "rounds": results}))
        return
    print(f"Backend.keep_alive on {args.etcd_members} etcd members, {args.tasks} tasks, {args.count} keys "
          f"(load {load:.1f} at start)")
    for r in results:
        print(f"  round {r['round']}: {r['per_second']:8.1f}/s  etcd CPU {r['etcd_cpu_ms_per_keepalive']:.3f} ms "
              "per keepalive")


if __name__ == "__main__":
    main()
