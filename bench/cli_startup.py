"""Wall and CPU time of `tsh`/`tctl`/`teleport --help` (budget: 0.3 s, as tsh runs per SSH connection).

    python bench/cli_startup.py [--runs 15] [--cluster] [--before DIR] [--format text|json]

Reports the median and the 90th percentile of each command's wall time, and its median CPU (user +
system of the child), run the way a user runs it (the installed console script), beside
`python -c pass` (the interpreter's own floor) and `ssh -V` (OpenSSH's client) measured in the same run.

``--cluster`` adds the commands people run against a cluster: ``tsh ls``, ``tsh ssh LOGIN@node true``
and ``tctl get nodes``, against one teleport process (auth, proxy, node) started in this process
with the proxy tests' harness (plugins/proxy/tests/proxy_helpers.py). Their times include the
cluster's answer (its CPU is this process's, not counted).

``--before DIR`` (a ``git worktree`` of an older commit) runs every command also with the kernel and
plugins of DIR first on ``PYTHONPATH``, alternating before/after run by run, and prints both (the
"after" runs then get this tree's folders on ``PYTHONPATH``, so both sides search as many paths).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BUDGET = 0.3
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long enough password 123"
NODE = "bench-node"


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env, cwd="/")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def before_env(folder: Path) -> dict[str, str]:
    """The environment running the kernel and plugins of ``folder`` instead of the installed ones."""
    paths = [str(folder), *(str(p) for p in sorted((folder / "plugins").iterdir()) if p.is_dir())]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


@contextlib.contextmanager
def cluster_commands(scripts: Path) -> Iterator[tuple[dict[str, list[str]], dict[str, str]]]:
    """A running cluster, the commands to time against it and the environment (``TELEPORT_HOME``)."""
    import yaml

    sys.path.insert(0, str(ROOT / "plugins" / "proxy" / "tests"))
    from proxy_helpers import LOGIN, Env, one_process_config

    from teleport_core.plugins import make_plugins
    from teleport_core.testing.cluster import start_cluster
    from teleport_core.testing.waiting import wait_for

    root = Path(tempfile.mkdtemp(prefix="cli-startup-bench-"))
    try:
        config = one_process_config(root, NODE)
        with start_cluster(config, make_plugins(), timeout=120) as cluster:
            env = Env(root, cluster, cluster)
            env.signup("bench", ["access"], [LOGIN], PASSWORD)
            wait_for(lambda: env.call("get_nodes"), what="the node")
            home = root / "home"
            home.mkdir()
            login = env.login(home, "bench")
            if login.returncode != 0:
                raise SystemExit(f"tsh login failed: {login.stderr}")
            config_file = root / "teleport.yaml"
            config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                              "listen_addr": env.auth_addr}}))
            commands = {
                "tsh ls": [str(scripts / "tsh"), "ls"],
                "tsh ssh node true": [str(scripts / "tsh"), "ssh", f"{LOGIN}@{NODE}", "true"],
                "tctl get nodes": [str(scripts / "tctl"), "-c", str(config_file), "get", "nodes"],
            }
            child_env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
            yield commands, {**child_env, "TELEPORT_HOME": str(home)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(commands: dict[str, list[str]], envs: dict[str, dict[str, str]], runs: int) -> dict[str, dict[str, float]]:
    results = {}
    for name, cmd in commands.items():
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in envs}
        for env in envs.values():  # warm the page cache and the bytecode caches
            for _ in range(2):
                run_once(cmd, env)
        for _ in range(runs):
            for label, env in envs.items():  # alternating
                samples[label].append(run_once(cmd, env))
        for label, got in samples.items():
            walls = sorted(w for w, _ in got)
            key = name if label == "after" else f"{name} [before]"
            results[key] = {"median_s": statistics.median(walls), "p90_s": walls[max(int(len(walls) * 0.9) - 1, 0)],
                            "cpu_median_s": statistics.median(c for _, c in got)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cluster", action="store_true", help="also time tsh ls, tsh ssh and tctl get")
    parser.add_argument("--before", type=Path, help="a worktree of an older commit to compare with")
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
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if args.cluster:
            more, env = stack.enter_context(cluster_commands(scripts))
            commands.update(more)
        envs = {"after": env}
        if args.before:  # both sides with the same PYTHONPATH length: longer paths cost every import
            home = {k: env[k] for k in ("TELEPORT_HOME",) if k in env}
            envs = {"after": {**before_env(ROOT), **home}, "before": {**before_env(args.before.resolve()), **home}}
        results = measure(commands, envs, args.runs)
    if args.format == "json":
        print(json.dumps({"runs": args.runs, "budget_s": BUDGET, "results": results}, indent=2))
        return 0
    print(f"{'command':<32}{'median':>10}{'p90':>10}{'CPU':>10}   budget {BUDGET:.2f} s, {args.runs} runs")
    for name, r in results.items():
        flag = "" if "--help" not in name or r["median_s"] < BUDGET else "  OVER BUDGET"
        print(f"{name:<32}{r['median_s']*1000:>8.0f}ms{r['p90_s']*1000:>8.0f}ms{r['cpu_median_s']*1000:>8.0f}ms{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
