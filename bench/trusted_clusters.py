"""Trusted clusters at scale (issue 19): N leaf clusters on one root, their tunnels, ``tsh clusters`` and a
session through a randomly chosen leaf.

    python bench/trusted_clusters.py [--leaves 100] [--repeat 5] [--idle-seconds 30] [--leaf-nodes chosen|all]
                                     [--start-concurrency 4] [--join-concurrency 8] [--seed S] [--format text|json]
    python bench/trusted_clusters.py --leaves 5            # the quick mode

Every cluster is real and in its own ``teleport start`` process on 127.0.0.1 (free ports), each with
its own SQLite backend under a temporary directory:

- the root: auth, proxy and a node (``root-node``) in one process; a role ``dev`` (logins, every node
  label, ``cluster_labels: {env: bench}``), a user ``bench`` with it, logged in with ``tsh``;
- N leaves ``leaf-NNN.example.com``: auth and proxy in one process each (``--start-concurrency`` of them
  starting at a time); the randomly chosen leaf (``--seed``), or every leaf with ``--leaf-nodes all``, also
  runs a node (``leaf-node``) in that process.

Joining, as ``tctl`` does it but from this process (``--join-concurrency`` at a time): a single-use
``trusted_cluster`` token on the root (``POST /v1/tokens``, labels ``env=bench``), then the leaf's
``trusted_cluster`` (``PUT /v1/trusted_clusters/root.example.com`` on the leaf's auth, with the root's
``ca_pin`` and ``role_map: [{remote: dev, local: [access]}]``): the leaf's auth runs the handshake through
the root proxy's web port; the leaf's proxy then dials the root's tunnel port. A leaf's tunnel is up at
the time of the root's ``reverse_tunnel.connect`` event naming it (``leaf_cluster``). Then ``tsh login``
(after the joins: the login brings the leaves' host CAs) and the checks that ``tsh clusters`` shows all N
leaves ``online`` and that the root's auth lists N ``remote_cluster`` (``tctl get rc``) online.

Measured and reported:

- leaf start-up (``teleport start`` to ``/readyz``): total and per leaf;
- join: handshake (the ``PUT``) per leaf; from the first join to the last tunnel up (total) and each
  leaf's join to its tunnel's connect event (per leaf, median/p95/max);
- idle with N tunnels (``--idle-seconds`` after a 10 s settle): PSS (``/proc/<pid>/smaps_rollup``) and RSS
  of the root (and its growth from before the first join, per leaf) and of the leaves (median, max, sum),
  CPU of the root and of all leaves (user + system from ``/proc/<pid>/stat``, in cores);
- wall time, median of ``--repeat`` runs (and min/max): ``tsh version`` (tsh's own start-up, the floor),
  ``tsh clusters``, ``tsh ls --cluster=<leaf>``, ``tsh ssh --cluster=<leaf> <login>@leaf-node true`` and
  ``tsh ssh <login>@root-node true`` (the root's own node, the same run, alternated), and their ratio;
- the 1-minute load average at each phase.

Every process this script starts is stopped at the end (SIGTERM, then SIGKILL), also on errors and ^C.

Figures: see the end of docs/trusted-clusters.md ("Figures"); measured on the 2-vCPU, 24 GiB VM.

``python bench/trusted_clusters.py --leaves 3 --seed 7`` (a CI run shared the machine: load 5-5.8):

    leaf start-up              16.8 s for 3 (4 at a time); 3.3 CPU s per leaf to /readyz
    join                       handshake 0.65 s median; each leaf's join to its tunnel up 0.95 s median,
                               first join to last tunnel up 1.1 s
    idle, 3 tunnels (30 s)     root 76 MiB PSS (99 RSS), 0.018 cores; leaf 73 MiB PSS (95 RSS), 0.013 cores
    tsh wall, median of 5      version 0.38 s, clusters 1.02 s, ls --cluster 1.29 s,
                               ssh --cluster=leaf 1.53 s vs ssh to the root's node 1.24 s: 1.23x
    all 3 leaves online in tsh clusters and tctl get rc

``python bench/trusted_clusters.py --leaves 50 --repeat 3 --idle-seconds 20 --seed 11`` (load 5.9-12.3):

    leaf start-up              115 s for 50 (4 at a time); 2.8 CPU s per leaf to /readyz
    join                       31 s for 50 handshakes, 28 retried: the root proxy's per-address rate limit
                               on the validate route (every leaf is 127.0.0.1); handshake 2.1 s median
                               (p95 14.9 s with the waits); first join to last tunnel up 32.7 s
    idle, 50 tunnels (20 s)    root 105 MiB PSS (131 RSS; 70 before the joins: 0.71 MiB per leaf), 0.118 cores;
                               leaf 69.6 MiB PSS (95.5 RSS), 0.011 cores each, 0.56 cores for the 50
    tsh wall, median of 3      version 0.29 s, clusters 0.92 s, ls --cluster 0.88 s,
                               ssh --cluster=leaf 1.27 s vs ssh to the root's node 1.49 s: 0.85x
    all 50 leaves online in tsh clusters and tctl get rc

``python bench/trusted_clusters.py --leaves 100 --repeat 3 --idle-seconds 20 --seed 11 --leaf-nodes chosen``
(load 11.7 at start-up, 22-29 from the joins on: the idle leaves alone take 1.1 of the 2 cores):

    leaf start-up              298 s for 100 (4 at a time); 3.2 CPU s per leaf to /readyz
    join                       185 s for 100 handshakes, 123 retries (the rate limit); handshake 9.3 s median
                               (p95 39.8 s); each leaf's join to its tunnel up 107 s median; first join to
                               last tunnel up 264 s
    idle, 100 tunnels (20 s)   root 122 MiB PSS (149 RSS; 69.8 before the joins: 0.53 MiB per leaf), 0.208 cores;
                               leaf (no node) 66.1 MiB PSS (92.5 RSS), 0.011 cores each, 1.11 cores for the 100
    tsh wall, median of 3      version 0.50 s, clusters 3.90 s, ls --cluster 3.02 s,
                               ssh --cluster=leaf 6.41 s vs ssh to the root's node 4.90 s: 1.31x
    all 100 leaves online in tsh clusters and tctl get rc
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import TeleportError
from teleport_core.policy.trust import parse_trusted_cluster, trusted_cluster_to_dict
from teleport_core.testing.processes import free_port

BIN = Path(sys.executable).parent
ROOT = "root.example.com"
USER = "bench"
PASSWORD = "trusted-clusters-bench-password-0123"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROLE = {"kind": "role", "version": "v7", "metadata": {"name": "dev"},
        "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                           "cluster_labels": {"env": "bench"}}}}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def leaf_name(i: int) -> str:
    return f"leaf-{i:03d}.example.com"


# ---------------------------------------------------------------- processes


class Cluster:
    """One ``teleport start`` process (auth, proxy, maybe a node) and its admin identity."""

    def __init__(self, folder: Path, name: str, *, node: str | None) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.name = name
        self.auth_port, self.web_port, self.ssh_port, self.tunnel_port, self.diag_port = (
            free_port() for _ in range(5))
        ssh: dict[str, Any] = {"enabled": False}
        if node is not None:
            ssh = {"enabled": True, "listen_addr": f"127.0.0.1:{free_port()}", "labels": {"env": "bench"}}
        config = {
            "version": "v3",
            "teleport": {"data_dir": str(folder / "data"), "nodename": node or f"{name.split('.')[0]}-auth",
                         "diag_addr": f"127.0.0.1:{self.diag_port}",
                         "log": {"output": str(folder / "teleport.log"), "severity": "WARN"}},
            "auth_service": {"cluster_name": name, "listen_addr": f"127.0.0.1:{self.auth_port}",
                             "authentication": {"second_factor": "off"}},
            "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{self.web_port}",
                              "listen_addr": f"127.0.0.1:{self.ssh_port}",
                              "tunnel_listen_addr": f"127.0.0.1:{self.tunnel_port}"},
            "ssh_service": ssh,
        }
        (folder / "teleport.yaml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.ready_s = 0.0
        self.ready_cpu_s = 0.0

    @property
    def web(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    @property
    def auth(self) -> str:
        return f"127.0.0.1:{self.auth_port}"

    def spawn(self) -> None:
        with open(self.folder / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([str(BIN / "teleport"), "start", "-c", str(self.folder / "teleport.yaml")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.started = time.monotonic()

    def ready(self) -> bool:
        """``/readyz`` answers 200 (every service up); raises if the process ended."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = (self.folder / "stderr.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{self.name} exited with {self.proc.returncode}: {tail}")
        try:
            ok = httpx.get(f"http://127.0.0.1:{self.diag_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
        if ok:
            self.ready_s = time.monotonic() - self.started
            self.ready_cpu_s = cpu_seconds(self.pids())
        return ok

    def client(self) -> AuthClient:
        return AuthClient(self.auth, [load_identity_dir(self.folder / "data" / "keys" / "auth")])

    def pids(self) -> list[int]:
        return descendants([self.proc.pid]) if self.proc is not None else []


def stop_all(clusters: list[Cluster]) -> None:
    """SIGTERM every process, then SIGKILL what is left after 30 s."""
    live = [c.proc for c in clusters if c.proc is not None and c.proc.poll() is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in live:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_all(clusters: list[Cluster], concurrency: int, timeout: float = 300.0) -> None:
    """Start ``clusters``, ``concurrency`` of them starting at a time; wait until each is ready."""
    waiting = list(clusters)
    starting: list[Cluster] = []
    done = 0
    while waiting or starting:
        while waiting and len(starting) < concurrency:
            waiting[0].spawn()
            starting.append(waiting.pop(0))
        for c in list(starting):
            if c.ready():
                starting.remove(c)
                done += 1
                if done % 10 == 0 or done == len(clusters):
                    progress(f"started {done}/{len(clusters)} (load {os.getloadavg()[0]:.1f})")
            elif time.monotonic() - c.started > timeout:
                raise SystemExit(f"{c.name} not ready within {timeout:g} s")
        time.sleep(0.1)


# ---------------------------------------------------------------- /proc


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every live process below them."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """(PSS, RSS) in MiB of ``pids``."""
    pss = rss = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        pss += int(_field(rollup, "Pss"))
        rss += int(_field(rollup, "Rss"))
    return pss / 1024, rss / 1024


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(\d+)", text, re.M)
    return match.group(1) if match else "0"


def stats(values: list[float], digits: int = 2) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), digits),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], digits),
            "max": round(ordered[-1], digits), "min": round(ordered[0], digits)}


# ---------------------------------------------------------------- the root, its user, tsh


async def prepare_root(root: Cluster, login: str) -> str:
    """The user (the role ``dev`` exists) with their password set; the root's CA pin."""
    async with root.client() as client:
        created = await client.create_user(USER, ["dev"], {"logins": [login]})
        pin = str((await client.status())["ca_pin"])
    with httpx.Client(base_url=f"https://{root.web}", verify=False, timeout=30) as web:
        done = web.put("/v1/webapi/users/password/token",
                       json={"token": created["invite"]["token"], "password": PASSWORD, "second_factor_token": ""})
        if done.status_code != 200:
            raise SystemExit(f"setting the password: {done.status_code} {done.text}")
    return pin


def tctl(root: Cluster, *args: str, stdin: str = "") -> str:
    config = root.folder / "tctl.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(root.folder / "data"), "nodename": "tctl"},
            "auth_service": {"cluster_name": root.name, "listen_addr": root.auth},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}))
    done = subprocess.run([str(BIN / "tctl"), "-c", str(config), *args], input=stdin, capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tctl {' '.join(args)}: {done.stderr}")
    return done.stdout


class Tsh:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "TELEPORT_CLUSTER")}
        self.env["TELEPORT_HOME"] = str(home)

    def run(self, *args: str, stdin: str = "") -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.perf_counter()
        done = subprocess.run([str(BIN / "tsh"), *args], input=stdin, capture_output=True, text=True, timeout=180,
                              env=self.env, check=False)
        return time.perf_counter() - start, done

    def ok(self, *args: str, stdin: str = "") -> tuple[float, str]:
        took, done = self.run(*args, stdin=stdin)
        if done.returncode != 0:
            raise SystemExit(f"tsh {' '.join(args)}: {done.stderr}")
        return took, done.stdout


# ---------------------------------------------------------------- joining


async def join_all(root: Cluster, leaves: list[Cluster], pin: str,
                   concurrency: int) -> dict[str, tuple[dt.datetime, float]]:
    """Join every leaf (``concurrency`` at a time); when each leaf's join began and its handshake's seconds."""
    gate = asyncio.Semaphore(concurrency)
    took: dict[str, tuple[dt.datetime, float]] = {}
    retries: list[str] = []
    async with root.client() as root_client:

        async def join(leaf: Cluster) -> None:
            async with gate:
                began, start = dt.datetime.now(dt.UTC), time.perf_counter()
                token = await root_client.call("POST", "/v1/tokens", {"roles": ["trusted_cluster"], "ttl": "30m",
                                                                      "labels": {"env": "bench"}})
                doc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                       "spec": {"enabled": True, "token": token["token"], "web_proxy_addr": root.web,
                                "tunnel_addr": f"127.0.0.1:{root.tunnel_port}", "ca_pin": pin,
                                "role_map": [{"remote": "dev", "local": ["access"]}]}}
                resource = trusted_cluster_to_dict(parse_trusted_cluster(doc, leaf.name))
                async with leaf.client() as client:
                    while True:  # every leaf is 127.0.0.1: the root proxy's per-address limit on this route
                        try:
                            await client.call("PUT", f"/v1/trusted_clusters/{ROOT}", resource, timeout=120.0)
                            break
                        except TeleportError as exc:
                            wait = re.search(r"too many attempts .* retry in (\d+)s", str(exc))
                            if wait is None:
                                raise
                            retries.append(leaf.name)
                            await asyncio.sleep(int(wait.group(1)))
                took[leaf.name] = began, time.perf_counter() - start
                if len(took) % 10 == 0 or len(took) == len(leaves):
                    progress(f"joined {len(took)}/{len(leaves)} (load {os.getloadavg()[0]:.1f})")

        await asyncio.gather(*(join(leaf) for leaf in leaves))
    took["rate-limited retries"] = (dt.datetime.now(dt.UTC), float(len(retries)))
    return took


async def tunnel_times(root: Cluster, since: dt.datetime, names: set[str], timeout: float) -> dict[str, dt.datetime]:
    """Each leaf's first ``reverse_tunnel.connect`` at the root after ``since`` (waits for all of them)."""
    found: dict[str, dt.datetime] = {}
    deadline = time.monotonic() + timeout
    last = -1
    async with root.client() as client:
        while len(found) < len(names):
            if time.monotonic() > deadline:
                missing = sorted(names - set(found))
                raise SystemExit(f"{len(missing)} tunnel(s) not up within {timeout:g} s: {missing[:10]}")
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
            page = await client.search_events(type="reverse_tunnel.connect", since=since.isoformat(),
                                              until=until.isoformat(), limit=5000)
            for event in page["events"]:
                leaf = event.get("leaf_cluster")
                if leaf in names:
                    at = dt.datetime.fromisoformat(event["time"])
                    found[leaf] = min(at, found.get(leaf, at))
            if len(found) != last and (len(found) % 10 == 0 or len(found) == len(names)):
                progress(f"tunnels up {len(found)}/{len(names)}")
            last = len(found)
            await asyncio.sleep(1.0)
    return found


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    chosen = rng.randrange(args.leaves)
    out: dict[str, Any] = {"leaves": args.leaves, "chosen leaf": leaf_name(chosen),
                           "leaf nodes": args.leaf_nodes, "cores": os.cpu_count(),
                           "load average at start": [round(x, 2) for x in os.getloadavg()]}
    root = Cluster(folder / "root", ROOT, node="root-node")
    leaves = [Cluster(folder / f"leaf-{i:03d}", leaf_name(i),
                      node="leaf-node" if args.leaf_nodes == "all" or i == chosen else None)
              for i in range(args.leaves)]
    everything = [root, *leaves]
    try:
        progress("starting the root (auth, proxy, node)")
        start_all([root], 1)
        tctl(root, "create", "-f", "-", stdin=yaml.safe_dump(ROLE))
        pin = asyncio.run(prepare_root(root, args.login))

        progress(f"starting {args.leaves} leaves, {args.start_concurrency} at a time")
        t0 = time.monotonic()
        start_all(leaves, args.start_concurrency)
        out["leaf start-up"] = {"total s": round(time.monotonic() - t0, 1),
                                "per leaf s (teleport start to /readyz)": stats([c.ready_s for c in leaves], 1),
                                "CPU s per leaf to /readyz": stats([c.ready_cpu_s for c in leaves], 1),
                                "load average": round(os.getloadavg()[0], 2)}

        root_before = memory_mib(root.pids())
        progress(f"joining {args.leaves} leaves, {args.join_concurrency} at a time")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        t0 = time.monotonic()
        wall0 = dt.datetime.now(dt.UTC)
        handshakes = asyncio.run(join_all(root, leaves, pin, args.join_concurrency))
        joined_s = time.monotonic() - t0
        connected = asyncio.run(tunnel_times(root, since, {c.name for c in leaves}, args.tunnel_timeout))
        total = (max(connected.values()) - wall0).total_seconds()
        retried = int(handshakes.pop("rate-limited retries")[1])
        own = [(connected[c.name] - handshakes[c.name][0]).total_seconds() for c in leaves]
        out["join"] = {"handshakes s (all, wall)": round(joined_s, 1),
                       "handshakes retried (root proxy's per-address rate limit)": retried,
                       "handshake per leaf s (token + PUT trusted_cluster)":
                           stats([h[1] for h in handshakes.values()]),
                       "first join to last tunnel up s (total)": round(total, 1),
                       "each leaf's join to its tunnel up s": stats(own),
                       "tunnels up per s": round(args.leaves / max(total, 1e-9), 2),
                       "load average": round(os.getloadavg()[0], 2)}

        progress("tsh login (brings the leaves' host CAs)")
        tsh = Tsh(folder / "tsh")
        tsh.ok("login", f"--proxy={root.web}", f"--user={USER}", "--insecure", stdin=f"{PASSWORD}\n")
        shown = check_online(tsh, root, {c.name for c in leaves}, args.tunnel_timeout)
        out["all online"] = shown

        progress(f"idle with {args.leaves} tunnels: 10 s settle, then {args.idle_seconds:g} s measured")
        time.sleep(10)
        out["idle"] = idle(root, leaves, args.idle_seconds, root_before)

        leaf = leaves[chosen].name
        progress(f"tsh timings, {args.repeat} each (leaf {leaf})")
        out["tsh wall s"] = timings(tsh, leaf, args.login, args.repeat, args.leaves)
        out["load average at end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        progress("stopping every process")
        stop_all(everything)
    return out


def check_online(tsh: Tsh, root: Cluster, names: set[str], timeout: float) -> dict[str, Any]:
    """``tsh clusters`` shows every leaf online; the root's auth lists every remote_cluster online."""
    deadline = time.monotonic() + timeout
    while True:
        _, text = tsh.ok("clusters", "--format=json")
        shown = {c["cluster_name"]: c["status"] for c in json.loads(text)}
        online = {n for n in names if shown.get(n) == "online"}
        rcs = json.loads(tctl(root, "get", "rc", "--format=json"))
        rc_online = {r["metadata"]["name"] for r in rcs if r["status"]["connection"] == "online"} & names
        if (online == names and rc_online == names) or time.monotonic() > deadline:
            break
        progress(f"online: tsh clusters {len(online)}/{len(names)}, tctl get rc {len(rc_online)}/{len(names)}")
        time.sleep(5)
    if online != names:
        raise SystemExit(f"tsh clusters: {len(names - online)} leaves not online: {sorted(names - online)[:10]}")
    n = len(names)
    return {"tsh clusters online": f"{len(online)}/{n}", "tctl get rc online": f"{len(rc_online)}/{n}"}


def idle(root: Cluster, leaves: list[Cluster], seconds: float, root_before: tuple[float, float]) -> dict[str, Any]:
    root_pids = root.pids()
    leaf_pids = [c.pids() for c in leaves]
    cpu0 = cpu_seconds(root_pids), [cpu_seconds(p) for p in leaf_pids]
    load0 = os.getloadavg()[0]
    time.sleep(seconds)
    cpu1 = cpu_seconds(root_pids), [cpu_seconds(p) for p in leaf_pids]
    root_pss, root_rss = memory_mib(root_pids)
    leaf_mem = [memory_mib(p) for p in leaf_pids]
    leaf_cpu = [(b - a) / seconds for a, b in zip(cpu0[1], cpu1[1], strict=True)]
    n = max(1, len(leaves))
    return {
        "root PSS / RSS MiB": f"{root_pss:.0f} / {root_rss:.0f}",
        "root PSS MiB before the joins": round(root_before[0], 1),
        "root PSS MiB per leaf (growth / N)": round((root_pss - root_before[0]) / n, 2),
        "root CPU cores": round((cpu1[0] - cpu0[0]) / seconds, 4),
        "leaf PSS MiB": stats([m[0] for m in leaf_mem], 1),
        "leaf RSS MiB": stats([m[1] for m in leaf_mem], 1),
        "leaves PSS / RSS MiB, sum": f"{sum(m[0] for m in leaf_mem):.0f} / {sum(m[1] for m in leaf_mem):.0f}",
        "leaf CPU cores, each": stats(leaf_cpu, 4),
        "leaves CPU cores, sum": round(sum(leaf_cpu), 3),
        "load average (start / end)": f"{load0:.2f} / {os.getloadavg()[0]:.2f}",
    }


def timings(tsh: Tsh, leaf: str, login: str, repeat: int, leaves: int) -> dict[str, Any]:
    argv = {"tsh version": ["version"], "tsh clusters": ["clusters"],
            f"tsh ls --cluster={leaf}": ["ls", f"--cluster={leaf}"],
            "tsh ssh --cluster=<leaf> leaf-node true": ["ssh", f"--cluster={leaf}", f"{login}@leaf-node", "true"],
            "tsh ssh root-node true": ["ssh", f"{login}@root-node", "true"]}
    runs: dict[str, list[float]] = {name: [] for name in argv}
    for _ in range(repeat):  # alternated: the machine's load hits every command alike
        for name, args in argv.items():
            took, text = tsh.ok(*args)
            if name == "tsh clusters":
                online = sum(1 for line in text.splitlines() if " online leaf " in f" {' '.join(line.split())} ")
                if online != leaves:
                    raise SystemExit(f"tsh clusters shows {online} leaves online, not {leaves}:\n{text}")
            runs[name].append(took)
    out: dict[str, Any] = {name: stats(values, 3) for name, values in runs.items()}
    leaf_ssh = statistics.median(runs["tsh ssh --cluster=<leaf> leaf-node true"])
    root_ssh = statistics.median(runs["tsh ssh root-node true"])
    out["ssh through the leaf / through the root only (medians)"] = round(leaf_ssh / root_ssh, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=100, help="leaf clusters (quick mode: 5)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each tsh command (medians)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="the idle CPU window")
    parser.add_argument("--leaf-nodes", choices=("chosen", "all"), default="all",
                        help="a node in every leaf's process, or in the chosen leaf's only")
    parser.add_argument("--start-concurrency", type=int, default=4, help="leaves starting at a time")
    parser.add_argument("--join-concurrency", type=int, default=8, help="handshakes at a time")
    parser.add_argument("--tunnel-timeout", type=float, default=600.0, help="seconds to wait for all tunnels")
    parser.add_argument("--seed", type=int, default=None, help="the random choice of the leaf")
    parser.add_argument("--login", default=getpass.getuser(), help="OS login of the sessions")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if min(args.leaves, args.repeat, args.start_concurrency, args.join_concurrency) < 1 or args.idle_seconds <= 0:
        parser.error("--leaves, --repeat, the concurrencies and --idle-seconds must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-trusted-clusters-") as tmp:
        results = run(args, Path(tmp))
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


def _print(results: dict[str, Any], indent: int = 0) -> None:
    for key, value in results.items():
        if isinstance(value, dict) and set(value) == {"median", "p95", "max", "min"}:
            value = f"median {value['median']}, p95 {value['p95']}, max {value['max']}, min {value['min']}"
        if isinstance(value, dict):
            print(" " * indent + f"{key}:")
            _print(value, indent + 2)
        else:
            print(" " * indent + f"{key:<56} {value}")


if __name__ == "__main__":
    sys.exit(main())
