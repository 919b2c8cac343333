"""Auth CPU per certificate pair of two (or more) source trees, side by side: A/B on a shared machine.

    python bench/auth_certs_ab.py before=/tmp/wt-before after=/work/main [--slices 12] [--seconds 3]

Starts one auth server (`teleport start`, SQLite, the audit_json sink: every certificate with its
durable ``cert.create`` event) per tree, each with that tree's code (``PYTHONPATH`` at the tree and
its plugins, run from the tree: ``python -m`` puts the working directory first on ``sys.path``),
then drives them in turn, a slice of ``--seconds`` each, ``--slices`` times (the order flips every
slice), with 16 lean keep-alive clients (``bench/lean_client.py``) sending ``POST /v1/certs/user``.
Each slice gives each server's CPU (user + system, all threads) per certificate pair; the load
from other jobs moves both alike within a few seconds, so the per-slice ratio to the first tree
is steadier than runs one after the other. Prints each slice, the medians and ranges, and the
ratio's median and range. Make a tree with ``git worktree add /tmp/wt-before <commit>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import auth_certs as bench  # bench/auth_certs.py (this folder is on sys.path)
from lean_client import LeanConnection

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.pki import keys
from teleport_core.pki.serverrole import AUTH, require_server_role

CONCURRENCY = 16


def pythonpath(tree: Path) -> str:
    return ":".join([str(tree), *sorted(str(p) for p in (tree / "plugins").iterdir() if p.is_dir())])


def start(label: str, tree: Path, tmp: Path) -> dict[str, Any]:
    data = tmp / "data"
    addr, diag = f"127.0.0.1:{bench.free_port()}", f"127.0.0.1:{bench.free_port()}"
    config = {"teleport": {"data_dir": str(data), "nodename": "bench", "diag_addr": diag,
                           "log": {"severity": "WARN"}},
              "auth_service": {"cluster_name": "bench.example", "listen_addr": addr,
                               "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    (tmp / "teleport.yaml").write_text(json.dumps(config))
    command = [sys.executable, "-m", "teleport_core.cli.teleport", "start", "-c", str(tmp / "teleport.yaml")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree,
                            env={**os.environ, "PYTHONPATH": pythonpath(tree)})
    return {"label": label, "proc": proc, "addr": addr, "diag": diag, "data": data, "cpu": [], "rate": []}


async def run(trees: list[tuple[str, Path]], slices: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as top:
        servers = []
        for label, tree in trees:
            (Path(top) / label).mkdir()
            servers.append(start(label, tree, Path(top) / label))
        subject = keys.public_key_openssh(keys.generate_private_key("ed25519"))
        try:
            for server in servers:
                bench.wait_ready(f"http://{server['diag']}/readyz")
                admin = AuthClient(server["addr"], [load_identity_dir(server["data"] / "keys" / "auth")])
                await admin.__aenter__()
                server["admin"] = admin
                await admin.create_user("bench", ["access"], {"logins": ["root"]})
                context = require_server_role(admin.credentials.context, AUTH)
                server["lean"] = [LeanConnection(server["addr"], context) for _ in range(CONCURRENCY)]
                await asyncio.gather(*(conn.connect() for conn in server["lean"]))
                await bench.api_rate(admin, subject, 1.0, CONCURRENCY, server["lean"])  # warm
            for number in range(slices):
                for server in servers if number % 2 == 0 else servers[::-1]:
                    cpu, began = bench.process_cpu(server["proc"].pid), time.perf_counter()
                    rate = await bench.api_rate(server["admin"], subject, seconds, CONCURRENCY, server["lean"])
                    pairs = rate * (time.perf_counter() - began)
                    server["cpu"].append((bench.process_cpu(server["proc"].pid) - cpu) * 1000 / pairs)
                    server["rate"].append(rate)
                print(f"slice {number} load {os.getloadavg()[0]:.2f}  " + "  ".join(
                    f"{s['label']} {s['cpu'][-1]:.3f} ms {s['rate'][-1]:.0f}/s" for s in servers), flush=True)
            for server in servers:
                print(f"{server['label']}: auth CPU per pair median {statistics.median(server['cpu']):.3f} ms "
                      f"({min(server['cpu']):.3f}-{max(server['cpu']):.3f}), rate median "
                      f"{statistics.median(server['rate']):.0f}/s")
            for server in servers[1:]:
                ratios = [a / b for a, b in zip(server["cpu"], servers[0]["cpu"], strict=True)]
                print(f"{server['label']}/{servers[0]['label']}: per-slice ratio median "
                      f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        finally:
            for server in servers:
                for conn in server.get("lean", ()):
                    conn.close()
                if "admin" in server:
                    await server["admin"].__aexit__(None, None, None)
                server["proc"].terminate()
                server["proc"].wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="LABEL=PATH of a source tree (a git worktree); the first is the base")
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    trees = [(spec.partition("=")[0], Path(spec.partition("=")[2]).resolve()) for spec in args.trees]
    asyncio.run(run(trees, args.slices, args.seconds))


if __name__ == "__main__":
    main()
