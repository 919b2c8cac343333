"""Node heartbeats at scale: simulated nodes announce once, then keep their entries alive through the real auth API.

    python bench/heartbeats.py [--nodes 50000] [--clients 4] [--connections 8] [--rounds 2] [--format text|json]
    python bench/heartbeats.py --nodes 2000 --rounds 1        # the quick mode
    python bench/heartbeats.py --setups sqlite                # only one auth server on SQLite

Setups (each started fresh, every server its own ``teleport start`` process on loopback):

- ``sqlite``: one auth server on the embedded SQLite backend;
- ``etcd``: two auth servers on one etcd cluster (``--etcd-members``, default 3, the HA layout).

The nodes are driven by ``--clients`` separate client processes (this script with
``--worker``), each with its own connections (``--connections`` concurrent requests) to one
auth server (round robin), each owning a slice of the nodes. As a node does
(``teleport_core.api.heartbeat``), a simulated node first **announces** its full entry
(``PUT /v1/nodes/<uuid>``), then every heartbeat period sends a **keepalive**
(``PUT /v1/nodes/<uuid>/keepalive``, no body: auth moves one key's expiry); a keepalive answered
NotFound is followed by an announce (counted). Requests use the auth server's own identity
(joining 50,000 hosts would measure joining): the keepalive path is the one real nodes take (a
host identity; lock check; one backend write); a real node's announce also reads its host record.
The client processes send those requests over the same mutual TLS with a lean HTTP/1.1 client
(``--client raw``, the default: 0.25-0.33 ms of their CPU per request) instead of the nodes'
``AuthClient`` (``--client httpx``: about 4 ms per request, which on this machine starved auth).

A round sends one request per node, all client processes at once. Reported per setup:

- the announce round (the old cost of every heartbeat: a full upsert) and each keepalive round:
  wall time, requests per second, and the round's wall time as a share of the 30 s heartbeat
  period (under 1.0: every node is kept alive on schedule);
- auth CPU seconds (user + system, from ``/proc/<pid>/stat`` of the auth processes and their
  children) per 1,000 nodes per period: one keepalive round is one period's work;
- backend writes per keepalive and the backend write rate per 1,000 nodes on a 30 s period (from
  the auth servers' ``backend_requests`` metric on their diagnostics endpoint); on etcd, the mean
  batch size by operation (requests per etcd call, from ``teleport_etcd_batch_size``);
- the raw primitive measured in the same run, ``Backend.keep_alive`` called in this process on the
  same kind of backend (16 tasks), and the API's keepalive rate as a ratio of it;
- that every auth server lists every simulated node afterwards (else the run fails);
- per round: auth CPU per request and the event loop thread's share of it, the client processes'
  CPU per request, the 1-minute load average at its end; with ``--profile PREFIX``, py-spy on the
  auth processes during each keepalive round, summarized per category (:data:`PROFILE_RULES`).

Needs ``etcd`` (Debian ``etcd-server``) for the etcd setup and the auth and etcd plugins.

Measured on the 2-vCPU VM of /work/shared/PERFORMANCE.md; every process (auth, etcd members,
the four client processes) shares both cores with other helpers' tests and benches (load average
4-9 in the runs below): the rates are what auth got of a shared machine; the CPU per request is
the figure that carries over.

Where a keepalive's auth time goes, and what changed (issue 17, second round).
``python bench/heartbeats.py --nodes 5000 --setups sqlite --rounds 2 --format json --profile P``,
before (commit 12236f9, the bench's lean client already in) and after, alternated twice (load
6.3-9.6), the keepalive rounds:

=====================================  ==============================  ==============================
                                       before                          after
=====================================  ==============================  ==============================
auth CPU per keepalive                 0.906 / 0.844 / 0.984 / 0.838   0.680 / 0.638 / 0.608 / 0.610
                                       ms (median 0.875)               ms (median 0.624): 0.71x
keepalives/s (what auth got)           488 / 544 / 590 / 528           694 / 659 / 1,119 / 1,051
event loop thread's share of auth CPU  0.77-0.79                       0.77-0.79
=====================================  ==============================  ==============================

py-spy (wall-clock samples of every auth thread while not waiting; a thread runnable but not
running on the busy machine counts too), share of the busy samples, before -> after: SQLite
writer thread (statements, COMMIT with its fsync, waking the loop) 35 % -> 32 %; TLS records
and socket reads/writes 31 % -> 38 % (uvicorn writes a response's head and body as two TLS
records and two ``send()`` calls: the head's write alone is 2.5x the body's); Starlette's middleware
and route matching 10.2 % -> 1.1 %; the loop's side of the backend write 4.1 % -> 6.0 %;
identity and authorization (certificate cache lookup, RBAC decision through the pluggy hook) 3.3 %
-> 4.3 %; HTTP parsing and limits (httptools, GuardedApp) 3.1 % -> 3.7 %; response 2.9 % -> 3.6 %;
event loop 3.5 % -> 3.6 %; endpoint wrapper and handler 1.9 % -> 3.2 %; metrics 2.2 % -> 1.8 %;
lock check 1.0 % -> 0.9 %; path validation 0.6 % -> 0.8 %; audit 0 (nothing refused). What
changed: the keepalive routes go straight to their endpoint-wrapped handler
(``teleport_auth.api.hot``: the endpoint's checks all run, Starlette's middleware and its match
against the routes before them do not); SQLite's keep_alive is one ``UPDATE ... RETURNING``
without a SAVEPOINT, and a group commit wakes the event loop once per batch, not once per write;
the reply is encoded with one shared encoder and the heartbeat counters are looked up once.

``python bench/heartbeats.py --nodes 50000 --setups sqlite --rounds 2 --format json`` (load
average 5.0 at start, 6.7-9.1 at the rounds' ends):

=====================================  ========  ========  ===============  ============  =========
setup, phase                           wall      per s     auth CPU ms per  auth cores    share of
                                                           request (= s     for 50,000    a 30 s
                                                           per 1,000 nodes  on a 30 s     period
                                                           per period)      period
=====================================  ========  ========  ===============  ============  =========
1 auth, sqlite: announce               91.5 s    546       1.071            1.79          3.05
1 auth, sqlite: keepalive, 2 rounds    96.5 /    518 /     0.696 / 0.678    1.16 / 1.13   3.22 /
                                       70.3 s    712                                      2.34
=====================================  ========  ========  ===============  ============  =========

Every one of the 50,000 nodes stayed online (none re-announced: each round ended well within the
10-minute expiry) and was listed afterwards; one backend write per keepalive (33.3 writes/s per
1,000 nodes on a 30 s period); raw ``Backend.keep_alive`` 3,522/s in the same run (the API's
keepalives 0.20x of it). The rounds took 2.3-3.2 periods: auth got 36-48 % of a core (34-35 CPU s
per round) on the shared machine, where 50,000 nodes on a 30 s period need 1.13-1.16 of its cores
(the client processes 0.26-0.27 ms per request besides). On a machine that gives auth 1.2 cores
the SQLite setup holds them on schedule; with this load, the 50,000 entries held online amount
to a 70-96 s heartbeat period.

``python bench/heartbeats.py --nodes 50000 --setups etcd --rounds 2 --format json`` (right after,
load average 15-20 at the rounds' ends: the etcd members, two auth servers, the clients and other
jobs): announce 94.0 s (532/s, 1.243 ms of auth CPU each); keepalive rounds 145.4 / 115.6 s (344 /
433/s, 4.8 / 3.9 periods) at **1.516 / 1.422 ms of auth CPU per keepalive** (both auth servers
together, the event loop 89-91 % of it), 0.34-0.35 ms of the clients'; the three etcd members used
132.6 CPU s over the two rounds (1.33 ms per keepalive). Both auth servers listed all 50,000 nodes,
none re-announced. Raw ``Backend.keep_alive`` on that etcd: 512/s (16 tasks), and the API's
keepalives reached 0.84x of it: on etcd the backend's keep_alive (one guarded etcd transaction
each, not shared with concurrent ones as puts are) is the limit, 1.5 cores of auth for 50,000
nodes on a 30 s period besides.

Quiet machine (load 0.9 at start, nothing else running), ``python bench/heartbeats.py --nodes 50000
--setups sqlite --rounds 2 --auth-workers 2`` then ``--auth-workers 1``: with two auth processes
(``auth_service.workers: 2``) the announce round took 51.9 s (963/s, 1.08 ms of auth CPU each), the
keepalive rounds 37.8 / 48.7 s (1,324 / 1,027/s, 0.75 / 0.81 ms); with one, announce 56.7 s (882/s,
0.96 ms), keepalives 40.3 / 56.0 s (1,242 / 894/s, 0.61 / 0.62 ms). Every node listed, none
re-announced; the clients 0.21-0.26 ms a request. Two processes hold 39,700 nodes per 30 s against
37,300 for one, for 1.23x the CPU per keepalive, on two cores that the four client processes share.
The same bench with ``--connections 32`` (128 requests in flight) while other jobs kept the load at
8-10: 0.53-0.57 ms of auth CPU per keepalive (larger group commits), 686-710/s (auth got 38 % of a core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from lean_client import LeanConnection  # bench/lean_client.py (this folder is on sys.path)
from prometheus_client.parser import text_string_to_metric_families

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import NotFound, TeleportError
from teleport_core.pki.serverrole import AUTH, require_server_role
from teleport_core.testing.processes import free_port

TELEPORT = str(Path(sys.executable).with_name("teleport"))
PERIOD = 30.0  # seconds: a node's heartbeat period (teleport_node.service.HEARTBEAT)
NAMESPACE = uuid.UUID("6f0d0a56-1d1e-4c5e-9a51-0b7c3b1f0e11")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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

    def spawn(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **{"stdin": subprocess.DEVNULL, **kw})
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


def start_etcd(procs: Processes, folder: Path, members: int) -> tuple[list[str], list[int]]:
    """``members`` etcd members; their client URLs and process ids."""
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
    return [url for url, _ in urls], [proc.pid for _, proc in urls]


class AuthServer:
    """A ``teleport start`` auth server: its API address, identity directory, diagnostics URL, pid."""

    def __init__(self, procs: Processes, folder: Path, name: str, storage: dict[str, Any] | None,
                 workers: int = 1) -> None:
        port, diag = free_port(), free_port()
        data = folder / name
        teleport: dict[str, Any] = {"data_dir": str(data), "nodename": name, "diag_addr": f"127.0.0.1:{diag}",
                                    "log": {"output": str(folder / f"{name}.log"), "severity": "WARN"}}
        if storage:
            teleport["storage"] = storage
        config = {"version": "v3", "teleport": teleport,
                  "auth_service": {"cluster_name": "bench.example.com", "listen_addr": f"127.0.0.1:{port}",
                                   **({"workers": workers} if workers > 1 else {})},
                  "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = procs.spawn([TELEPORT, "start", "-c", str(path)], folder / f"{name}.stderr")
        self.diag = f"http://127.0.0.1:{diag}"
        wait_ready(f"{self.diag}/readyz", self.proc, f"auth server {name}")
        self.addr = f"127.0.0.1:{port}"
        self.keys = data / "keys" / "auth"

    def backend_writes(self) -> dict[str, float]:
        """``backend_requests`` of this auth server by operation (its diagnostics endpoint)."""
        text = httpx.get(f"{self.diag}/metrics", timeout=10).text
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "backend_requests":
                for sample in family.samples:
                    found[sample.labels["req"]] = found.get(sample.labels["req"], 0.0) + sample.value
        return found

    def etcd_batches(self) -> dict[str, tuple[float, float]]:
        """``teleport_etcd_batch_size`` of this auth server by operation: (requests carried, etcd calls)."""
        text = httpx.get(f"{self.diag}/metrics", timeout=10).text
        found: dict[str, tuple[float, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "teleport_etcd_batch_size":
                for sample in family.samples:
                    carried, calls = found.get(sample.labels["operation"], (0.0, 0.0))
                    if sample.name.endswith("_sum"):
                        carried += sample.value
                    elif sample.name.endswith("_count"):
                        calls += sample.value
                    found[sample.labels["operation"]] = (carried, calls)
        return found


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        children: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total + sum(tree_cpu(child) for child in children)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id (the event loop's is ``pid``)."""
    found: dict[int, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


# -- the client processes -------------------------------------------------------------------------------


def node_uuid(i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, str(i)))


def announcement(i: int) -> dict[str, Any]:
    addr = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:3022"
    return {"uuid": node_uuid(i), "nodename": f"sim-{i:05d}", "addr": addr,
            "labels": {"env": "bench", "rack": f"r{i % 40}"}}


async def run_phase(client: AuthClient, phase: str, nodes: range, connections: int,
                    lean: list[LeanConnection]) -> dict[str, Any]:
    """One request per node of ``nodes``, ``connections`` at a time; failures retried after 0.5 s."""
    pending = iter(nodes)
    counts = {"retried": 0, "reannounced": 0}
    failures: list[str] = []

    async def call(conn: LeanConnection | None, i: int, announce: bool) -> None:
        if conn is None:
            await (client.upsert_node(announcement(i)) if announce else client.keep_alive_node(node_uuid(i)))
            return
        try:
            if announce:
                status, answer = await conn.request(f"/v1/nodes/{node_uuid(i)}", json.dumps(announcement(i)).encode())
            else:
                status, answer = await conn.request(f"/v1/nodes/{node_uuid(i)}/keepalive")
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise TeleportError(f"{'announce' if announce else 'keepalive'}: {exc!r}") from None
        if status == 404:
            raise NotFound("the node must announce itself again")
        if status != 200:
            raise TeleportError(f"{'announce' if announce else 'keepalive'} answered {status}: {answer[:200]!r}")

    async def one(i: int, conn: LeanConnection | None) -> None:
        while True:
            try:
                if phase == "announce":
                    await call(conn, i, announce=True)
                else:
                    try:
                        await call(conn, i, announce=False)
                    except NotFound:  # auth lost the entry: the node announces again
                        counts["reannounced"] += 1
                        await call(conn, i, announce=True)
                return
            except TeleportError as exc:
                counts["retried"] += 1
                failures.append(str(exc))
                await asyncio.sleep(0.5)

    async def lane(conn: LeanConnection | None) -> None:
        for i in pending:
            await one(i, conn)

    start = time.perf_counter()
    await asyncio.gather(*(lane(lean[n] if lean else None) for n in range(connections)))
    return {"seconds": time.perf_counter() - start, **counts, "first_failure": failures[0] if failures else ""}


async def worker(spec: dict[str, Any]) -> None:
    """A client process: warm its connections, then run each phase named on stdin; answer in JSON."""
    nodes = range(spec["first"], spec["last"])
    async with AuthClient(spec["addr"], [load_identity_dir(Path(spec["keys"]))], timeout=300) as client:
        await asyncio.gather(*(client.ping() for _ in range(spec["connections"])))
        lean: list[LeanConnection] = []
        if spec["client"] == "raw":
            context = require_server_role(client.credentials.context, AUTH)
            lean = [LeanConnection(spec["addr"], context) for _ in range(spec["connections"])]
            await asyncio.gather(*(conn.connect() for conn in lean))
        print(json.dumps({"ready": True}), flush=True)
        while phase := (await asyncio.to_thread(sys.stdin.readline)).strip():
            if phase == "quit":
                break
            print(json.dumps(await run_phase(client, phase, nodes, spec["connections"], lean)), flush=True)
        for conn in lean:
            conn.close()


# -- the driver ---------------------------------------------------------------------------------------------


class Clients:
    """``count`` client processes, each owning a slice of the nodes and talking to one auth server."""

    def __init__(self, procs: Processes, folder: Path, auths: list[AuthServer], nodes: int, count: int,
                 connections: int, client: str) -> None:
        self.procs = []
        for w in range(count):
            auth = auths[w % len(auths)]
            spec = {"addr": auth.addr, "keys": str(auth.keys), "connections": connections, "client": client,
                    "first": nodes * w // count, "last": nodes * (w + 1) // count}
            with open(folder / f"client-{w}.log", "ab") as log:
                proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
            procs.procs.append(proc)  # type: ignore[arg-type]
            self.procs.append(proc)
        for proc in self.procs:
            self._answer(proc)

    @staticmethod
    def _answer(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a client process exited with {proc.wait()} (see client-*.log)")
        return dict(json.loads(line))

    def phase(self, name: str) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(name + "\n")
            proc.stdin.flush()
        return [self._answer(proc) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.close()


# -- the profile of a keepalive round ---------------------------------------------------------------


#: where an auth process's keepalive time goes, by the frames of each sampled stack (py-spy raw):
#: the first of the STRONG rules whose key is anywhere in the stack (the work a call was made for,
#: wherever it happens), else the rule of the nearest frame that has one
PROFILE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("audit", ("audit_spool", "teleport_core/state/audit", "teleport_audit_json", "audit_denial")),
    ("metrics, logging", ("prometheus_client", "teleport_core/metrics", "count_heartbeat", "structlog",
                          "logging/")),
    ("lock check", ("refuse_locked", "teleport_auth/locks", "teleport_core/policy/locks")),
    ("identity, authorization", ("identify (", "identity_from_tls_cert", "client_certificate", "authorize (",
                                 "decision (", "teleport_core/policy/", "teleport_auth/authz", "check_keepalive",
                                 "check_audit", "pluggy/")),
    ("TLS records, socket reads and writes", ("ssl.py", "sslproto.py", "_read_ready", "Transport.write")),
    ("backend (the loop's side of a write)", ("teleport_core/state/", "teleport_auth/presence", "storage_etcd")),
    ("response (JSON, headers)", ("starlette/responses.py", "error_response")),
    ("path and body validation", ("pydantic", "teleport_core/api/schema.py")),
)
NEAREST: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("routing, middleware (starlette)", ("starlette/",)),
    ("HTTP server (uvicorn, httptools, limits)", ("uvicorn/", "httptools", "hypercorn/", "h11/", "h2/",
                                                  "teleport_core/net/")),
    ("endpoint wrapper and handler", ("teleport_auth/api/",)),
    ("JSON", ("json/",)),
    ("event loop", ("asyncio/", "selectors.py", "contextvars")),
)
#: a thread sampled here is waiting (a lock, a queue, a condition, the GIL at a thread's entry)
WAITS = ("Event.wait (", "Condition.wait (", "_worker (concurrent/futures/thread.py", "_writer_main (",
         "_poll_main (")


def profiler(pids: list[int], out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy sampling each of ``pids`` (every thread, while running) until :func:`stop_profilers`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--threads", "--rate", "250",
                              "--nonblocking", "-o", f"{out}.{pid}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
    for spy in spies:
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()


def profile_category(thread: str, frames: list[str]) -> str:
    if "MainThread" not in thread:
        if frames and frames[-1].startswith(WAITS):
            return "idle"
        if any("_writer_main" in frame for frame in frames):
            return "backend thread: SQLite writer (statements, COMMIT and its fsync, waking the loop)"
        return "backend thread: other (readers, poller, gRPC)"
    if frames and "select (selectors.py" in frames[-1]:
        return "event loop idle"
    for name, keys in PROFILE_RULES:
        if any(key in frame for frame in frames for key in keys):
            return name
    for frame in reversed(frames):
        for name, keys in NEAREST:
            if any(key in frame for key in keys):
                return name
    return "other"


def profile_summary(paths: list[Path]) -> dict[str, float]:
    """Share of the auth processes' busy samples (every thread, waits left out) per category, and the
    event loop's samples waiting in ``select()`` as a share of all its samples. py-spy samples wall
    time: a thread runnable but not running (a busy machine), or waiting in C code (fsync), counts."""
    counts: dict[str, int] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            thread, *frames = stack.split(";")
            name = profile_category(thread, frames)
            counts[name] = counts.get(name, 0) + int(count)
    counts.pop("idle", 0)
    loop_idle = counts.pop("event loop idle", 0)
    busy = sum(counts.values()) or 1
    loop = busy - sum(v for k, v in counts.items() if k.startswith("backend thread"))
    shares = {name: round(count / busy, 3) for name, count in sorted(counts.items(), key=lambda item: -item[1])}
    return {**shares, "event loop idle (in select), of its samples": round(loop_idle / ((loop + loop_idle) or 1), 3)}


def measured_round(name: str, clients: Clients, auths: list[AuthServer], nodes: int,
                   profile: Path | None = None) -> dict[str, Any]:
    spies = profiler([a.proc.pid for a in auths], profile) if profile else []
    cpu_before = sum(tree_cpu(a.proc.pid) for a in auths)
    threads_before = [thread_cpu(a.proc.pid) for a in auths]
    clients_before = sum(tree_cpu(c.pid) for c in clients.procs)
    writes_before = [a.backend_writes() for a in auths]
    batches_before = [a.etcd_batches() for a in auths]
    start = time.perf_counter()
    answers = clients.phase(name)
    seconds = time.perf_counter() - start
    cpu = sum(tree_cpu(a.proc.pid) for a in auths) - cpu_before
    clients_cpu = sum(tree_cpu(c.pid) for c in clients.procs) - clients_before
    loop_cpu = 0.0  # the event loop threads' share (the rest: backend threads, gRPC, ...)
    for auth, tids in zip(auths, threads_before, strict=True):
        loop_cpu += thread_cpu(auth.proc.pid).get(auth.proc.pid, 0.0) - tids.get(auth.proc.pid, 0.0)
    writes: dict[str, float] = {}
    for auth, before in zip(auths, writes_before, strict=True):
        for op, value in auth.backend_writes().items():
            writes[op] = writes.get(op, 0.0) + value - before.get(op, 0.0)
    write_ops = ("put", "create", "update", "compare_and_swap", "conditional_update", "delete",
                 "conditional_delete", "keep_alive", "atomic_write")
    backend_writes = sum(writes.get(op, 0.0) for op in write_ops)
    batched: dict[str, list[float]] = {}  # etcd: requests carried and etcd calls made, by operation
    for auth, seen in zip(auths, batches_before, strict=True):
        for op, (carried, calls) in auth.etcd_batches().items():
            was = seen.get(op, (0.0, 0.0))
            total = batched.setdefault(op, [0.0, 0.0])
            total[0] += carried - was[0]
            total[1] += calls - was[1]
    stop_profilers(spies)
    per_thousand = nodes / 1000
    failures = [a["first_failure"] for a in answers if a["first_failure"]]
    return {
        "phase": name, "seconds": round(seconds, 2), "per_second": round(nodes / seconds, 1),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 1),
        "share_of_period": round(seconds / PERIOD, 3),
        "auth_cpu_seconds": round(cpu, 2), "auth_cpu_seconds_per_1000_nodes_per_period": round(cpu / per_thousand, 3),
        "auth_cpu_ms_per_request": round(cpu / nodes * 1000, 3),
        "event_loop_share_of_auth_cpu": round(loop_cpu / cpu, 3) if cpu else None,
        "clients_cpu_ms_per_request": round(clients_cpu / nodes * 1000, 3),
        "backend_writes": int(backend_writes), "backend_writes_per_request": round(backend_writes / nodes, 3),
        "backend_writes_per_second_per_1000_nodes": round(backend_writes / per_thousand / PERIOD, 2),
        "keep_alive_writes": int(writes.get("keep_alive", 0)), "put_writes": int(writes.get("put", 0)),
        "retried": sum(a["retried"] for a in answers), "reannounced": sum(a["reannounced"] for a in answers),
        **({"etcd_mean_batch_size": {op: round(carried / calls, 2) for op, (carried, calls) in batched.items()
                                     if calls}} if batched else {}),
        **({"first_failure": failures[0]} if failures else {}),
        **({"profile": profile_summary([Path(f"{profile}.{a.proc.pid}") for a in auths])} if profile else {}),
    }


async def raw_keep_alive(storage: dict[str, Any], folder: Path, count: int, tasks: int = 16) -> float:
    """``Backend.keep_alive`` per second, ``tasks`` at a time, on ``storage`` opened in this process."""
    import datetime as dt

    from teleport_core.plugins import make_plugins
    from teleport_core.resources import open_backend, storage_config
    from teleport_core.state.backend import Item

    plugins = make_plugins()
    folder.mkdir(parents=True, exist_ok=True)
    backend = await open_backend(plugins, storage_config(plugins, storage), folder)
    try:
        keys = [f"/bench-raw/{i}".encode() for i in range(count)]
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
        for key in keys:
            await backend.put(Item(key, b'{"node": "x"}', expires))
        pending = iter(keys)

        async def lane() -> None:
            for key in pending:
                await backend.keep_alive(key, expires + dt.timedelta(minutes=1))

        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(tasks)))
        return count / (time.perf_counter() - start)
    finally:
        await backend.close()


def list_all(auths: list[AuthServer]) -> list[int]:
    """How many simulated nodes each auth server lists (the run fails unless every one lists all)."""
    async def listed(auth: AuthServer) -> int:
        async with AuthClient(auth.addr, [load_identity_dir(auth.keys)], timeout=300) as client:
            return sum(1 for n in await client.get_nodes() if n["nodename"].startswith("sim-"))

    return [asyncio.run(listed(auth)) for auth in auths]


def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix=f"bench-heartbeats-{name}-") as tmp:
        folder = Path(tmp)
        clients: Clients | None = None
        try:
            backend_pids: list[int] = []
            if name == "etcd":
                peers, backend_pids = start_etcd(procs, folder, args.etcd_members)
                # several auth servers must share their audit destinations (teleport_auth.ha)
                storage = {"type": "etcd", "peers": peers, "prefix": "/bench-heartbeats",
                           "audit_events_uri": [f"file://{folder / 'shared' / 'audit'}"],
                           "audit_sessions_uri": f"file://{folder / 'shared' / 'records'}"}
                auths = [AuthServer(procs, folder, "auth-1", storage), AuthServer(procs, folder, "auth-2", storage)]
                layout = f"2 auth servers, etcd ({args.etcd_members} members)"
                raw_storage: dict[str, Any] = {"type": "etcd", "peers": peers, "prefix": "/bench-raw"}
            else:
                auths = [AuthServer(procs, folder, "auth-1", None, args.auth_workers)]
                layout = "1 auth server, sqlite" + (f", {args.auth_workers} worker processes" if args.auth_workers > 1
                                                    else "")
                raw_storage = {"type": "sqlite"}
            clients = Clients(procs, folder, auths, args.nodes, args.clients, args.connections, args.client)
            rounds = [measured_round("announce", clients, auths, args.nodes)]
            backend_cpu = sum(tree_cpu(pid) for pid in backend_pids)
            for round_ in range(args.rounds):
                profile = Path(f"{args.profile}.{name}.{round_ + 1}") if args.profile else None
                rounds.append(measured_round("keepalive", clients, auths, args.nodes, profile))
            backend_cpu = sum(tree_cpu(pid) for pid in backend_pids) - backend_cpu
            listed = list_all(auths)
            raw = asyncio.run(raw_keep_alive(raw_storage, folder / "raw", min(args.nodes, 5000)))
        finally:
            if clients is not None:
                clients.close()
            procs.close()
    keepalive = [r for r in rounds if r["phase"] == "keepalive"]
    best = max(r["per_second"] for r in keepalive) if keepalive else 0.0
    return {"setup": name, "layout": layout, "nodes": args.nodes, "clients": args.clients,
            "connections_per_client": args.connections, "rounds": rounds, "listed_by_each_auth": listed,
            "all_listed": all(count == args.nodes for count in listed),
            "raw_backend_keep_alive_per_second": round(raw, 1),
            "api_keepalive_vs_raw_backend": round(best / raw, 3) if raw else None,
            "keepalive_vs_announce": round(best / rounds[0]["per_second"], 2),
            "nodes_held_on_30s_period": int(best * PERIOD),
            **({"etcd_cpu_seconds_during_keepalives": round(backend_cpu, 2)} if backend_pids else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=4, help="separate client processes driving the nodes")
    parser.add_argument("--connections", type=int, default=8, help="concurrent requests of each client process")
    parser.add_argument("--rounds", type=int, default=2, help="keepalive rounds after the announce round")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="the simulated nodes' client: a lean HTTP/1.1 one (raw) or AuthClient (httpx)")
    parser.add_argument("--etcd-members", type=int, default=3)
    parser.add_argument("--auth-workers", type=int, default=1,
                        help="auth_service.workers of the sqlite setup's auth server (its CPU counts every process; "
                             "its backend write counts are the leader's alone)")
    parser.add_argument("--setups", default="sqlite,etcd", help="comma-separated: sqlite, etcd")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="record the auth processes with py-spy during each keepalive round (raw stacks to "
                             "PREFIX.<setup>.<round>.<pid>) and summarize where their time went")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(json.loads(args.worker)))
        return 0
    if args.nodes < 1 or args.clients < 1 or args.connections < 1 or args.rounds < 0 or args.auth_workers < 1:
        parser.error("--nodes, --clients, --connections and --auth-workers must be positive, --rounds not negative")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and clients it started
    load = os.getloadavg()
    results = []
    for name in (n.strip() for n in args.setups.split(",")):
        if name:
            results.append(run_setup(name, args))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # kept if a later setup is stopped
    failed = [r["setup"] for r in results if not r["all_listed"]]
    if failed:
        print(f"FAILED: not every simulated node is listed by every auth server in {', '.join(failed)}",
              file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"benchmark": "heartbeats", "cpus": os.cpu_count(), "loadavg_at_start": load,
                          "period_seconds": PERIOD, "results": results}, indent=2))
        return 1 if failed else 0
    print(f"node heartbeats: {args.nodes} simulated nodes from {args.clients} client processes x {args.connections} "
          f"connections, {os.cpu_count()} CPUs, load average at start {load[0]:.1f}")
    for result in results:
        print(f"  {result['layout']}")
        for r in result["rounds"]:
            print(f"    {r['phase']:<9} {r['seconds']:>7.2f} s  {r['per_second']:>8.1f}/s  "
                  f"{r['share_of_period']:>6.2f} of a 30 s period  auth CPU {r['auth_cpu_seconds']:>6.1f} s "
                  f"({r['auth_cpu_seconds_per_1000_nodes_per_period']:.3f} s per 1,000 nodes)  backend writes "
                  f"{r['backend_writes_per_request']:.2f}/request, "
                  f"{r['backend_writes_per_second_per_1000_nodes']:.1f}/s per 1,000 nodes  "
                  f"({r['retried']} retried, {r['reannounced']} re-announced)")
            for category, share in r.get("profile", {}).items():
                print(f"      {share:6.1%}  {category}")
        print(f"    raw Backend.keep_alive: {result['raw_backend_keep_alive_per_second']:.0f}/s (16 tasks); API "
              f"keepalives {result['api_keepalive_vs_raw_backend']}x of it, {result['keepalive_vs_announce']}x "
              f"announces; holds {result['nodes_held_on_30s_period']} nodes on a 30 s period; every auth lists "
              f"{result['listed_by_each_auth']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
