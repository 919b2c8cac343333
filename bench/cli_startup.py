"""Wall time of `tsh`/`tctl`/`teleport --help` (budget: 0.3 s, as tsh runs per SSH connection).

    python bench/cli_startup.py [--runs 15] [--format text|json]

Reports the median and the 90th percentile of each command, run the way a user runs it (the
installed console script), beside `python -c pass` (the interpreter's own floor) and
`ssh -V` (OpenSSH's client) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET = 0.3


def measure(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    scripts = Path(sys.executable).parent
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "tsh --help": [str(scripts / "tsh"), "--help"],
        "tctl --help": [str(scripts / "tctl"), "--help"],
        "teleport --help": [str(scripts / "teleport"), "--help"],
        "tsh version": [str(scripts / "tsh"), "version"],
    }
    if shutil.which("ssh"):
        commands["ssh -V (OpenSSH)"] = ["ssh", "-V"]
    results = {}
    for name, cmd in commands.items():
        measure(cmd, 2)  # warm the page cache
        times = sorted(measure(cmd, args.runs))
        results[name] = {"median_s": statistics.median(times), "p90_s": times[int(len(times) * 0.9) - 1]}
    if args.format == "json":
        print(json.dumps({"runs": args.runs, "budget_s": BUDGET, "results": results}, indent=2))
        return 0
    print(f"{'command':<22}{'median':>10}{'p90':>10}   budget {BUDGET:.2f} s, {args.runs} runs")
    for name, r in results.items():
        flag = "" if "--help" not in name or r["median_s"] < BUDGET else "  OVER BUDGET"
        print(f"{name:<22}{r['median_s']*1000:>8.0f}ms{r['p90_s']*1000:>8.0f}ms{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
