"""Node-heartbeat throughput: 10,000 simulated nodes heartbeating through the real auth API.

    python bench/heartbeats.py [--nodes 10000] [--rounds 2] [--connections-per-auth 16] [--format text|json]
    python bench/heartbeats.py --setups etcd          # only the two-auth-servers-on-etcd setup

Setups (each started fresh, every server its own ``teleport start`` process on loopback):

- ``etcd``: two auth servers on one etcd cluster (``--etcd-members``, default 3, the HA
  layout), ``--connections-per-auth`` connections to each;
- ``sqlite``: one auth server on the embedded SQLite backend, for comparison.

A heartbeat is what a node sends every 30 s: ``PUT /v1/nodes/<uuid>`` over mutual TLS with
kept-alive connections (``AuthClient.upsert_node``). The simulated nodes share this process's
connections (16 per auth server by default, the client's pool size) and send with the auth
server's own identity (a node's identity may only write its own entry, and joining 10,000
nodes would measure joining); the server-side path (authorization, validation, the backend
write with its expiry) is the one real nodes take.
A round sends one heartbeat per node; the first round creates the entries, the later ones
update them. Reported: heartbeats per second and the wall time of one full round, per round,
and how many heartbeats failed and were sent again (0.5 s later); afterwards each auth server
must list every node (else the run fails).

Needs ``etcd`` (Debian ``etcd-server``) for the etcd setup and the auth and etcd plugins.

Measured on the 2-vCPU VM of /work/shared/PERFORMANCE.md (every process, etcd members and the
client included, shares both cores; other jobs were loading the machine), two runs of
``python bench/heartbeats.py --format json``:

=====================================  ================  ================  ==============
setup                                  round 1 (create)  round 2 (update)  one 10k round
=====================================  ================  ================  ==============
2 auth servers, etcd (3 members), 32   141-155 /s        208-212 /s        47-71 s
1 auth server, sqlite, 16 connections  289-316 /s        211-314 /s        32-47 s
=====================================  ================  ================  ==============

Nodes heartbeat every 30 s and expire after 10 minutes without one: on this machine two auth
servers on etcd keep about 6,000 nodes on schedule (10,000 stay listed, a round taking under
the 10-minute expiry); more cores, or etcd on its own hosts, raise that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import TeleportError

TELEPORT = str(Path(sys.executable).with_name("teleport"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready at {url} within {timeout:g} s")


class Processes:
    """What a setup started; ``close()`` terminates them (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_etcd(procs: Processes, folder: Path, members: int) -> list[str]:
    etcd = os.environ.get("ETCD_BIN") or shutil.which("etcd")
    if not etcd:
        raise SystemExit("etcd is not installed (apt-get install etcd-server), or pass --setups sqlite")
    ports = [(free_port(), free_port()) for _ in range(members)]
    cluster = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    urls = []
    for i, (client, peer) in enumerate(ports):
        url = f"http://127.0.0.1:{client}"
        proc = procs.spawn([etcd, "--name", f"m{i}", "--data-dir", str(folder / f"m{i}"),
                            "--listen-client-urls", url, "--advertise-client-urls", url,
                            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                            "--initial-cluster", cluster, "--initial-cluster-state", "new",
                            "--initial-cluster-token", "bench"], folder / f"etcd-m{i}.log")
        urls.append((url, proc))
    for url, proc in urls:
        wait_ready(url + "/health", proc, f"etcd at {url}")
    return [url for url, _ in urls]


def start_auth(procs: Processes, folder: Path, name: str, storage: dict[str, Any] | None) -> tuple[str, Path]:
    """A ``teleport start`` auth server; its API address and its identity directory."""
    port, diag = free_port(), free_port()
    data = folder / name
    teleport: dict[str, Any] = {"data_dir": str(data), "nodename": name, "diag_addr": f"127.0.0.1:{diag}",
                                "log": {"output": str(folder / f"{name}.log"), "severity": "WARN"}}
    if storage:
        teleport["storage"] = storage
    config = {"version": "v3", "teleport": teleport,
              "auth_service": {"cluster_name": "bench.example.com", "listen_addr": f"127.0.0.1:{port}"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.spawn([TELEPORT, "start", "-c", str(path)], folder / f"{name}.stderr")
    wait_ready(f"http://127.0.0.1:{diag}/readyz", proc, f"auth server {name}")
    return f"127.0.0.1:{port}", data / "keys" / "auth"


async def heartbeat_worker(client: AuthClient, queue: asyncio.Queue[int], uuids: list[str], number: int,
                           failures: list[str]) -> None:
    """Send heartbeats for the nodes in ``queue``; a failed one is retried after 0.5 s (as a
    node does, sooner) and counted."""
    while not queue.empty():
        i = queue.get_nowait()
        while True:
            try:
                await client.upsert_node({"uuid": uuids[i], "nodename": f"sim-{i:05d}",
                                          "addr": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:3022",
                                          "labels": {"env": "bench", "round": str(number)}})
                break
            except TeleportError as exc:
                failures.append(str(exc))
                await asyncio.sleep(0.5)


async def heartbeat_rounds(auths: list[tuple[str, Path]], nodes: int, rounds: int,
                           per_auth: int) -> list[dict[str, Any]]:
    """``rounds`` rounds of one heartbeat per node; the workers (connections) are split evenly over
    the auth servers and take the next node from a shared queue."""
    clients = [AuthClient(addr, [load_identity_dir(keys)], timeout=120) for addr, keys in auths]
    workers = [clients[w % len(clients)] for w in range(per_auth * len(clients))]
    uuids = [str(uuid.uuid4()) for _ in range(nodes)]
    results: list[dict[str, Any]] = []
    try:
        # warm: every connection's mTLS handshake happens before the clock starts
        await asyncio.gather(*(client.ping() for client in workers))
        for number in range(rounds):
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(nodes):
                queue.put_nowait(i)
            failures: list[str] = []
            start = time.perf_counter()
            await asyncio.gather(*(heartbeat_worker(client, queue, uuids, number, failures) for client in workers))
            seconds = time.perf_counter() - start
            results.append({"round": number + 1, "seconds": round(seconds, 2),
                            "heartbeats_per_second": round(nodes / seconds, 1), "retried": len(failures),
                            **({"first_failure": failures[0]} if failures else {})})
        for client in clients:  # every auth server sees every node
            listed = sum(1 for n in await client.get_nodes() if n["nodename"].startswith("sim-"))
            if listed != nodes:
                raise SystemExit(f"auth server {client.addr} lists {listed} simulated nodes, expected {nodes}")
    finally:
        for client in clients:
            await client.close()
    return results


def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix=f"bench-heartbeats-{name}-") as tmp:
        folder = Path(tmp)
        try:
            if name == "etcd":
                peers = start_etcd(procs, folder, args.etcd_members)
                # several auth servers must share their audit destinations (teleport_auth.ha)
                storage = {"type": "etcd", "peers": peers, "prefix": "/bench-heartbeats",
                           "audit_events_uri": [f"file://{folder / 'shared' / 'audit'}"],
                           "audit_sessions_uri": f"file://{folder / 'shared' / 'records'}"}
                auths = [start_auth(procs, folder, "auth-1", storage)]
                auths.append(start_auth(procs, folder, "auth-2", storage))
                layout = f"2 auth servers, etcd ({args.etcd_members} members)"
            else:
                auths = [start_auth(procs, folder, "auth-1", None)]
                layout = "1 auth server, sqlite"
            rounds = asyncio.run(heartbeat_rounds(auths, args.nodes, args.rounds, args.connections_per_auth))
        finally:
            procs.close()
    return {"setup": name, "layout": layout, "nodes": args.nodes,
            "connections": args.connections_per_auth * (2 if name == "etcd" else 1), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections-per-auth", type=int, default=16,
                        help="kept-alive connections (concurrent heartbeats) to each auth server")
    parser.add_argument("--etcd-members", type=int, default=3)
    parser.add_argument("--setups", default="etcd,sqlite", help="comma-separated: etcd, sqlite")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    results = [run_setup(name.strip(), args) for name in args.setups.split(",") if name.strip()]
    if args.format == "json":
        print(json.dumps({"benchmark": "heartbeats", "cpus": os.cpu_count(), "results": results}, indent=2))
        return 0
    print(f"node heartbeats, {args.nodes} simulated nodes, {args.connections_per_auth} connections per auth server, "
          f"{os.cpu_count()} CPUs")
    for result in results:
        for r in result["rounds"]:
            kind = "create" if r["round"] == 1 else "update"
            print(f"  {result['layout']:<34} round {r['round']} ({kind}): {r['seconds']:>7.2f} s  "
                  f"{r['heartbeats_per_second']:>8.1f} heartbeats/s  ({r['retried']} retried)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
