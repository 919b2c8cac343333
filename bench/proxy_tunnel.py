"""Reverse tunnel vs direct: our node service reached through our proxy, in the same run (ratios).

    python bench/proxy_ssh.py --tunnel [--mib 256] [--runs 10] [--format text|json]

Starts the harness of bench/proxy_ssh.py (auth and proxy in this process), then two node
processes (``teleport start``): one listening on a port (registered address, the proxy
connects to it) and one with ``teleport.proxy_server`` set (no listener, reverse tunnel).
Measures, for OpenSSH ``ssh -J user@proxy`` (and ``tsh ssh`` with ``TUNNEL_BENCH_TSH=1``), the
throughput of ``head -c N /dev/zero | ... 'cat > /dev/null'`` (best of 3) and the median setup
time of ``true``, to each node, the two nodes taking turns so that load from elsewhere hits
both alike; the ratios tunnel / direct are the figures.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from proxy_helpers import CLUSTER, LOGIN, NODE_TOKEN, Env, free_port, profile_ssh_config

TELEPORT = str(Path(sys.executable).with_name("teleport"))


def _start_node(env: Env, root: Path, name: str, tunnel: bool,
                ssh_extra: dict[str, Any] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """A node process; ``ssh_extra`` is added to its ``ssh_service`` section."""
    folder = root / name
    folder.mkdir()
    teleport: dict[str, Any] = {"data_dir": str(folder / "data"), "nodename": name,
                                "auth_servers": [env.auth_addr], "auth_token": NODE_TOKEN,
                                "log": {"output": str(folder / "node.log")}}
    ssh: dict[str, Any] = {"enabled": True, "labels": {"env": "test"}, **(ssh_extra or {})}
    if tunnel:
        teleport["proxy_server"] = env.web
    else:
        ssh["listen_addr"] = f"127.0.0.1:{free_port()}"
    config = folder / "teleport.yaml"
    config.write_text(yaml.safe_dump({"version": "v3", "teleport": teleport, "ssh_service": ssh,
                                      "auth_service": {"enabled": False}, "proxy_service": {"enabled": False}}))
    proc = subprocess.Popen([TELEPORT, "start", "-c", str(config), "--insecure"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.log", "wb"))  # noqa: SIM115
    return proc, folder


def _wait_ready(env: Env, names: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = {n["nodename"]: n for n in env.call("get_nodes")}
        tunnel = env.proxy.tunnel
        if all(n in nodes for n in names) and all(
                not nodes[n]["tunnel"] or tunnel.connected(nodes[n]["uuid"]) for n in names):
            return
        time.sleep(0.2)
    raise SystemExit(f"nodes {names} did not come up")


def run_tunnel(env: Env, root: Path, mib: int, runs: int, with_tsh: bool = False) -> dict[str, Any]:
    from proxy_ssh import timed  # the same timing helper as the other figures

    env.signup("tunnelbench", ["dev"], [LOGIN], "tunnel-bench-password-0123")
    home = root / "tsh-tunnel"
    login = env.login(home, "tunnelbench")
    if login.returncode != 0:
        raise SystemExit(login.stderr)
    procs = [_start_node(env, root, "direct-node", tunnel=False), _start_node(env, root, "tunnel-node", tunnel=True)]
    out: dict[str, Any] = {}
    try:
        _wait_ready(env, ["direct-node", "tunnel-node"])
        config = profile_ssh_config(home, root / "ssh_config_tunnel", "Ciphers aes128-gcm@openssh.com")
        shell_env = {**os.environ, "TELEPORT_HOME": str(home), "SSH_AUTH_SOCK": ""}
        size = mib * 1024 * 1024
        nodes = ("direct-node", "tunnel-node")
        clients: dict[str, Any] = {
            "ssh -J": lambda node: ["ssh", "-F", str(config), "-J", f"tunnelbench@127.0.0.1:{env.ssh_port}",
                                    f"{LOGIN}@{node}.{CLUSTER}"],
        }
        if with_tsh:
            clients["tsh ssh"] = lambda node: [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@{node}"]
        for client, command in clients.items():
            # interleaved, direct and tunnel in turn, so load from other processes hits both alike
            best = dict.fromkeys(nodes, float("inf"))
            setups: dict[str, list[float]] = {node: [] for node in nodes}
            for node in nodes:
                timed([*command(node), "true"], env=shell_env)  # warm up
            for _ in range(3):
                for node in nodes:
                    best[node] = min(best[node], timed([*command(node), "cat > /dev/null"], stdin_bytes=size,
                                                       env=shell_env))
            for _ in range(runs):
                for node in nodes:
                    setups[node].append(timed([*command(node), "true"], env=shell_env))
            for node in nodes:
                out[f"throughput MiB/s (best of 3): {client} to {node}"] = round(mib / best[node], 1)
                out[f"setup ms (median of {runs}): {client} to {node}"] = round(
                    statistics.median(setups[node]) * 1000, 1)
        for client in ("ssh -J", "tsh ssh") if with_tsh else ("ssh -J",):
            out[f"throughput ratio tunnel/direct: {client}"] = round(
                out[f"throughput MiB/s (best of 3): {client} to tunnel-node"]
                / out[f"throughput MiB/s (best of 3): {client} to direct-node"], 2)
            out[f"setup ratio tunnel/direct: {client}"] = round(
                out[f"setup ms (median of {runs}): {client} to tunnel-node"]
                / out[f"setup ms (median of {runs}): {client} to direct-node"], 2)
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return out
