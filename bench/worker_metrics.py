"""What ``/metrics`` costs with auth worker processes: the leader's and each worker's CPU per scrape.

    python bench/worker_metrics.py [--workers 1,3,8] [--scrapes 40]

For each count, a fresh ``teleport start`` (auth only, SQLite, ``auth_service.workers: N``) is
scraped ``--scrapes`` times in a row; reported: the scrape's wall time (median), the size of the
answer, the leader's CPU per scrape and the workers' (together), from ``/proc/<pid>/stat``
(user + system). An idle cluster: the figures are the endpoint's own cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from teleport_core.testing.processes import TeleportProcess, child_pids, free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(workers: int, scrapes: int, root: Path) -> dict[str, float]:
    config = {"auth_service": {"cluster_name": "bench.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "workers": workers},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(root, f"w{workers}", config).start(timeout=300)
    try:
        assert process.proc is not None
        leader = process.proc.pid
        others = child_pids(leader)
        with httpx.Client(timeout=60) as client:
            client.get(f"{process.diag_url}/metrics")  # warm
            time.sleep(1)
            lead0, rest0 = cpu(leader), sum(cpu(p) for p in others)
            walls, size = [], 0
            for _ in range(scrapes):
                started = time.perf_counter()
                response = client.get(f"{process.diag_url}/metrics")
                walls.append(time.perf_counter() - started)
                size = len(response.content)
            lead1, rest1 = cpu(leader), sum(cpu(p) for p in others)
        return {"workers": workers, "wall_ms": statistics.median(walls) * 1000, "bytes": size,
                "leader_cpu_ms": (lead1 - lead0) / scrapes * 1000, "workers_cpu_ms": (rest1 - rest0) / scrapes * 1000}
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,3,8")
    parser.add_argument("--scrapes", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wm-") as folder:
        for count in (int(c) for c in args.workers.split(",")):
            row = run(count, args.scrapes, Path(folder))
            print(f"workers {row['workers']:>2}: scrape {row['wall_ms']:.0f} ms (median), {row['bytes']:,} bytes, "
                  f"leader CPU {row['leader_cpu_ms']:.1f} ms/scrape, workers' CPU {row['workers_cpu_ms']:.1f} ms/scrape"
                  f", load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
