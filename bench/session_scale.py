"""New SSH sessions per second and memory per open idle session: our proxy + node against sshd, in one run.

    python bench/session_scale.py rate [--clients 16,64] [--seconds 15] [--no-profile] [--gate sshd|default]
                                       [--format text|json]
    python bench/session_scale.py idle [--sessions 100] [--nodes 1] [--client auto|openssh|asyncssh]
                                       [--sshd-max 500] [--echo-sample 200] [--format text|json]

Starts the harness of bench/proxy_ssh.py (auth and proxy in this process, OpenSSH sshd
``sshd-node`` registered in the cluster), a user ``scale`` logged in with tsh, an OpenSSH sshd
jump host (host certificate from the cluster, trusting the user CA), and our node service
(``teleport start``, bench/proxy_tunnel.py's ``_start_node``). Every session logs in as
``--login`` (default ``teleport-test``, the node tests' OS user: its rc files are Debian's skel
ones, which do nothing for a non-interactive shell), on both sides alike.

``rate``: each of N client loops (one driver process) runs OpenSSH ``ssh -J proxy node true``
again and again for ``--seconds``; sessions/s through our proxy to our node with
``session_recording: off`` and ``node`` (two nodes; auth is in this process, and the bench sets
its recording mode before each node starts, as the node reads it once at start), and ``ssh -J``
through the sshd jump host to sshd; ratio ours/sshd. The three targets take turns at each N.
Both sides get the same connection limits (``--gate sshd``, the default): the harness's sshd has
``MaxStartups 1000`` and no ``PerSourceMaxStartups``, so our proxy's and nodes'
``connection_limits`` are ``max_startups: 1000`` and ``per_source_max_startups: 1000`` (the nodes'
``teleport.yaml``; the proxy runs in this process and its SSH gate takes them before the first
figure). Our defaults (``--gate default``: 64:30:256 and 32 unauthenticated connections per
source) are for many clients on many addresses; here every client is 127.0.0.1, so under load the
per-source cap refused some of ours before the SSH banner while sshd refused none, which measured
the gate, not the session path. Sessions that failed are counted (``failed sessions``); the limit
our gates refused with, from their audit events, is shown beside them. Then
(unless ``--no-profile``) one more unmeasured pass per recording mode with ``py-spy record --gil``
on the proxy (this process: auth runs in it too, its frames are counted apart) and on the node:
the GIL-holding time per new session by category (key exchange, certificate checks, auth API
calls, audit emits, recording, process spawn, ...) and the top frames.

``idle``: ``--sessions`` K interactive sessions (a pty running ``cat``) open at once through the
one proxy to ``--nodes`` M of our nodes (round robin), then the same K through the sshd jump host to
sshd (only when K <= ``--sshd-max``: sshd costs about 4 MiB a session). Memory per session =
(PSS of proxy + nodes + their descendants, the sessions' processes, after - before) / K, from
``/proc/<pid>/smaps_rollup``; threads per session likewise from ``/proc/<pid>/status``; the
in-process auth server is inside the proxy's figure. Echo: one line to each of ``--echo-sample``
sessions in turn (through the pty and ``cat`` and back), p50/p99. Clients: OpenSSH ``ssh -tt -J``
(two processes per session, measured and reported apart as ``client PSS per session``) up to 500
sessions, above that (``--client auto``) an asyncssh client: worker processes each holding many
sessions, every session its own SSH connection to the proxy and its own to the node through it,
as ``ssh -J`` does (asyncssh is a bench-only dependency: ``pip install asyncssh``). The script
raises ``RLIMIT_NOFILE`` and, for more than 1,000 sessions, ``kernel.pid_max`` (threads take pids)
and ``kernel.pty.max`` (a pty a session), both put back at the end.

Figures, 2 vCPU shared with four other helpers' benchmarks and tests. The load average ran from
15 to 300 during these runs, so compare the ratios within one run only. "before" is HEAD 9f8ecbc;
"after" has the proxy listener without a per-connection accept() thread and the node's 1 s
transport poll. The 5,000-session run also has the proxy's 10 s poll (plugins/proxy/README.md,
"Sessions at scale").

``python bench/session_scale.py rate`` (16 and 64 clients, 15 s each):

    before (load 5 -> 37)      sessions/s off / node   vs sshd curve25519   vs sshd sntrup761
      16 clients               5.2 / 5.1               0.85 / 0.84          1.93 / 1.89
      64 clients               11.5 / 11.5 (12 refused) 1.39 / 1.39         5.75 / 5.75
    after (load 70-300; our default limits against sshd's MaxStartups 1000)
      16 clients               17.5 / 16.0             1.42 / 1.30          5.15 / 4.71
      64 clients               6.5 / 9.1 (27 / 4 refused) 1.12 / 1.57       2.60 / 3.64
    after, the same limits on both sides (--gate sshd; load 26 -> 34; 0 refused on either side)
      16 clients               9.1 / 8.8               1.32 / 1.28          5.35 / 5.18
      64 clients               9.6 / 10.0              1.37 / 1.43          5.33 / 5.56

    The refusals: with our defaults (--gate default) at 64 and 128 clients, load 2 -> 46, none
    happened; with the per-source cap lowered to 4 (a one-off run), 269 / 340 of ours failed
    with ``kex_exchange_identification: Connection closed by remote host`` (the gate closing the
    connection before the banner), and the proxy's and nodes' audit events named
    ``per_source_max_startups``, the only gate limit one address reaches here (32 per source
    stays below ``max_startups``' start of 64). The earlier 27 / 4 were, most likely, handshakes
    slow enough under load 70-300 for 32 of ours to be unauthenticated at once (not reproduced).

    py-spy --gil, 16 clients, ms of GIL per new session (after): proxy 19-25 (event loop and
    thread hand-offs 11-13, paramiko packets 3-6, kex 1-2, audit + in-process auth 3-4, cert
    checks 0.3-0.5); node 33-45 (process spawn 10.5-16.6: fork() of the node with the GIL held,
    auth API calls 5.5-7, event loop 10-12, paramiko 4-5, cert checks 1.3-1.9).

``python bench/session_scale.py idle`` (100 sessions, OpenSSH ``ssh -tt -J``, 1 node):

    before: 0.386 MiB and 6.06 threads per session, echo p50/p99 0.92/3.0 ms
    after:  0.313 MiB and 5.04 threads per session, echo p50/p99 1.00/4.79 ms
    sshd two hops (same run): 3.82-3.85 MiB, 5 threads, 5 processes per session (ours: 1)
    client: OpenSSH ssh -J costs 3.1 MiB PSS per session (two processes)

``python bench/session_scale.py idle --sessions 2000 --nodes 10`` (asyncssh client, 0.07 MiB/session):

    after: 2,000 open, 0 failed, 131 s to open; 0.374 MiB and 5.0 threads per session;
    echo p50/p99 1.36/9.69 ms (200 sessions sampled)

``python bench/session_scale.py idle --sessions 5000 --nodes 10`` (asyncssh client, after):

    5,000 open, 0 failed, 225 s to open; 0.374 MiB and 5.0 threads per session (proxy 3, node 1,
    the session's process 1); echo p50/p99 0.92/2.17 ms (200 sampled); the client 0.058 MiB a
    session. The run before capped at 4,095 (905 failed): a pty per session, kernel.pty.max
    4,096. sshd is not run at this size (~3.8 MiB a session).
    An earlier attempt with the proxy's transports polling every 1 s stalled at about
    3,250 sessions: the proxy used 1.4 cores, 80 % in futex, and its heartbeat to auth timed out.
Limits met: RLIMIT_NOFILE could not be raised past its hard limit of 20,000 here (no
CAP_SYS_RESOURCE), which is enough for 5,000 sessions (two descriptors each at the proxy).
kernel.pid_max is raised from 32,768 to 65,536 for the run, because every thread takes a pid.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import re
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "proxy" / "tests"))

from node_ssh import progress
from proxy_helpers import CLUSTER, Env, Sshd, profile_ssh_config, running_env
from proxy_ssh import _Dirs
from proxy_tunnel import _start_node, _wait_ready

from teleport_core.testing.processes import free_port

USER = "scale"
PASSWORD = "scale-bench-password-0123456789"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
PROFILE_HZ = 200
# ``--gate sshd``: our proxy's and nodes' ``connection_limits`` as the harness's sshd allows
# (``MaxStartups 1000``, no ``PerSourceMaxStartups``: 1,000 from one source is all of them)
SSHD_GATE = {"max_startups": "1000", "per_source_max_startups": 1000}


# ---------------------------------------------------------------- the cluster


class Cluster:
    """The running harness: proxy (this process), our nodes, the sshd jump host and target."""

    def __init__(self, env: Env, root: Path, login: str, gate: str = "sshd") -> None:
        self.env = env
        self.root = root
        self.login = login
        # the nodes' ssh_service section; the proxy runs in this process: its gate takes the same limits
        self.node_ssh: dict[str, Any] = {"connection_limits": SSHD_GATE} if gate == "sshd" else {}
        if gate == "sshd":
            import attrs

            from teleport_core.config.limits import Startups

            gate_of = env.proxy.ssh.gate
            gate_of.limits = attrs.evolve(gate_of.limits, max_startups=Startups(1000, 100, 1000),
                                          per_source_max_startups=SSHD_GATE["per_source_max_startups"])
        self.home = root / "tsh"
        self.config = profile_ssh_config(self.home, root / "ssh_config", "Ciphers aes128-gcm@openssh.com")
        # a command-line -o does not reach the -J hop: a config file for the curve25519-only rows
        self.curve25519 = profile_ssh_config(self.home, root / "ssh_config_curve25519",
                                             "Ciphers aes128-gcm@openssh.com", "KexAlgorithms curve25519-sha256")
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        port = free_port()
        identity, key = env.join_node("jump", f"127.0.0.1:{port}", {"role": "jump"})
        user_ca = env.call("get_cert_authority", "user")["ssh_public_keys"]
        self.jump = Sshd(root / "jump", port, identity, key, user_ca)
        self.target: Sshd = env.sshd  # type: ignore[attr-defined, unused-ignore]

    def start_nodes(self, names: list[str], recording: str) -> None:
        """Our nodes, started while the cluster's ``session_recording`` is ``recording``."""
        import attrs

        auth = self.env.auth_handle.process.services["auth_service"]
        auth.settings = attrs.evolve(auth.settings, session_recording=recording)
        for name in names:
            self.nodes[name], _ = _start_node(self.env, self.root, name, tunnel=False, ssh_extra=self.node_ssh)
        _wait_ready(self.env, names)
        for name in names:
            log = (self.root / name / "node.log").read_text(errors="replace")
            if f"session_recording={recording}" not in log and f'"session_recording": "{recording}"' not in log:
                raise SystemExit(f"node {name} did not start with session_recording {recording}: {log[-2000:]}")

    def ours(self, node: str, *extra: str) -> list[str]:
        return ["ssh", "-F", str(self.config), *extra, "-J", f"{USER}@127.0.0.1:{self.env.ssh_port}",
                f"{self.login}@{node}.{CLUSTER}"]

    def sshd(self, *extra: str, curve25519: bool = False) -> list[str]:
        # sshd cannot resolve node.cluster names: the target by address, checking the same host certificate
        config = self.curve25519 if curve25519 else self.config
        return ["ssh", "-F", str(config), *extra, "-J", f"{self.login}@127.0.0.1:{self.jump.port}",
                "-p", str(self.target.port), "-o", f"HostKeyAlias=sshd-node.{CLUSTER}", f"{self.login}@127.0.0.1"]

    def stop(self) -> None:
        for proc in self.nodes.values():
            proc.terminate()
        for proc in self.nodes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.jump.stop()


@contextmanager
def cluster(root: Path, login: str, gate: str = "sshd") -> Iterator[Cluster]:
    with running_env(_Dirs(root)) as env:  # type: ignore[arg-type, unused-ignore]
        env.signup(USER, ["dev"], [login], PASSWORD)
        done = env.login(root / "tsh", USER)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        running = Cluster(env, root, login, gate)
        try:
            yield running
        finally:
            running.stop()


PID_MAX = Path("/proc/sys/kernel/pid_max")
PTY_MAX = Path("/proc/sys/kernel/pty/max")


def raise_limits(sessions: int) -> list[str]:
    """Open files for the proxy (two sockets a session) and pids for the threads (``main`` puts
    ``kernel.pid_max`` and ``kernel.pty.max`` back at the end); what was raised."""
    raised = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 8 * sessions + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        raised.append(f"RLIMIT_NOFILE {soft} -> {want}")
    except (ValueError, OSError) as exc:
        raised.append(f"RLIMIT_NOFILE stays {soft} ({exc})")
    pid_max = PID_MAX
    if sessions > 1000 and int(pid_max.read_text()) < 8 * sessions:
        try:
            old = pid_max.read_text().strip()
            pid_max.write_text(str(max(8 * sessions, 65536)))
            raised.append(f"kernel.pid_max {old} -> {pid_max.read_text().strip()}")
        except OSError as exc:
            raised.append(f"kernel.pid_max not raised ({exc})")
    pty_max = PTY_MAX  # every interactive session holds a pty (default 4,096)
    if int(pty_max.read_text()) < sessions + 1024:
        try:
            old = pty_max.read_text().strip()
            pty_max.write_text(str(sessions + 1024))
            raised.append(f"kernel.pty.max {old} -> {pty_max.read_text().strip()}")
        except OSError as exc:
            raised.append(f"kernel.pty.max not raised ({exc})")
    return raised


# ---------------------------------------------------------------- rate


def rate_driver(spec: dict[str, Any]) -> int:
    """The client loops of one rate figure (its own process, so the proxy's process only serves)."""
    deadline = time.monotonic() + spec["seconds"]
    done: list[float] = []
    errors: list[str] = []

    def loop() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            result = subprocess.run([*spec["argv"], "true"], stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=120, check=False)
            if result.returncode == 0:
                done.append(time.monotonic() - started)
            else:
                errors.append(result.stderr.decode(errors="replace").strip()[-300:])

    start = time.monotonic()
    threads = [threading.Thread(target=loop) for _ in range(spec["clients"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    print(json.dumps({"sessions": len(done), "elapsed": elapsed, "errors": len(errors),
                      "first_error": errors[0] if errors else "",
                      "p50_ms": round(statistics.median(done) * 1000, 1) if done else -1}), flush=True)
    return 0


def drive_rate(argv: list[str], clients: int, seconds: float) -> dict[str, Any]:
    spec = json.dumps({"argv": argv, "clients": clients, "seconds": seconds})
    out = subprocess.run([sys.executable, __file__, "_rate_driver", spec], capture_output=True, text=True,
                         check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["per_s"] = round(result["sessions"] / result["elapsed"], 1)
    return result


def run_rate(c: Cluster, clients: list[int], seconds: float, profile: bool) -> dict[str, Any]:
    c.start_nodes(["rate-off"], "off")
    c.start_nodes(["rate-node"], "node")
    # OpenSSH negotiates sntrup761 (post-quantum, slower) with sshd, curve25519 with paramiko: a second
    # sshd row with curve25519 on every hop takes the key exchange out of the comparison
    targets = {"sshd -> sshd": c.sshd(), "sshd -> sshd, curve25519 kex": c.sshd(curve25519=True),
               "proxy -> node, recording off": c.ours("rate-off"),
               "proxy -> node, recording node": c.ours("rate-node")}
    for argv in targets.values():  # warm up, and fail early
        drive_rate(argv, 1, 0.1)
    ours = c.env.proxy.ssh.gate.limits
    out: dict[str, Any] = {"load average before": os.getloadavg(), "our connection_limits":
                           f"max_startups {ours.max_startups}, per_source_max_startups {ours.per_source_max_startups}"}
    for n in clients:
        for name, argv in targets.items():
            progress(f"rate: {n} clients, {name}")
            since = dt.datetime.now(dt.UTC)
            result = drive_rate(argv, n, seconds)
            if name.startswith("proxy"):
                refusals = gate_refusals(c, since)
                if refusals:
                    out[f"gate refusal events (audit T3007W, 1 per source a minute), {n} clients: {name}"] = refusals
            out[f"sessions/s, {n} clients: {name}"] = result["per_s"]
            out[f"session p50 ms, {n} clients: {name}"] = result["p50_ms"]
            if result["errors"]:
                out[f"failed sessions, {n} clients: {name}"] = result["errors"]
                out[f"first failure, {n} clients: {name}"] = result["first_error"]
        for base in ("sshd -> sshd", "sshd -> sshd, curve25519 kex"):
            for name in ("proxy -> node, recording off", "proxy -> node, recording node"):
                out[f"ratio vs {base}, {n} clients: {name}"] = round(
                    out[f"sessions/s, {n} clients: {name}"] / out[f"sessions/s, {n} clients: {base}"], 2)
    out["load average after"] = os.getloadavg()
    if profile:
        for mode in ("off", "node"):
            progress(f"rate: profiling the proxy and the node, recording {mode}")
            out[f"profile, recording {mode}"] = profile_rate(c, f"rate-{mode}", min(clients), seconds)
    return out


def gate_refusals(c: Cluster, since: dt.datetime) -> dict[str, int]:
    """Which limit our proxy's and nodes' connection gates refused with since ``since``: their audit
    events (T3007W) by server and limit. A gate audits a source's refusals once a minute (the next
    event counts those held back), so these say which limit refused, not how many: the client side's
    ``failed sessions`` is the count (``kex_exchange_identification: Connection closed by remote
    host``, the gate closing the connection before the SSH banner)."""

    async def search() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        cursor = ""
        async with c.env.admin() as client:
            while True:
                page = await client.search_events(type=["auth"], since=since.isoformat(), limit=5000,
                                                  cursor=cursor)
                events.extend(page["events"])
                cursor = page.get("next_cursor") or ""
                if not cursor:
                    return events

    time.sleep(1)  # the servers emit their refusals in the background
    counts: collections.Counter[str] = collections.Counter()
    for event in asyncio.run(search()):
        error = str(event.get("error", ""))
        limit = re.search(r"\((per_source_max_startups|max_startups [^)]*|max_connections)\)", error)
        if event.get("code") != "T3007W" or not limit:
            continue
        held = re.search(r"\((\d+) more refused", error)
        counts[f"{event.get('server_hostname')}: {limit.group(1)}"] += 1 + (int(held.group(1)) if held else 0)
    return dict(counts)


def profile_rate(c: Cluster, node: str, clients: int, seconds: float) -> dict[str, Any]:
    """``py-spy record --gil`` on the proxy (this process) and the node while ``clients`` loops run."""
    files = {"proxy": c.root / f"prof-proxy-{node}.txt", "node": c.root / f"prof-node-{node}.txt"}
    pids = {"proxy": os.getpid(), "node": c.nodes[node].pid}
    spies = [subprocess.Popen([PY_SPY, "record", "--pid", str(pids[who]), "--gil", "--nonblocking", "--rate",
                               str(PROFILE_HZ), "--duration", str(int(seconds)), "--format", "raw",
                               "-o", str(files[who])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for who in files]
    result = drive_rate(c.ours(node), clients, seconds)
    for spy in spies:
        spy.wait(120)
    out: dict[str, Any] = {"sessions (profiled pass)": result["sessions"]}
    for who, path in files.items():
        if path.exists():
            out[who] = summarize_profile(path.read_text(), max(1, result["sessions"]))
    return out


# category: a frame matching any of these (scanned from the leaf up: the innermost match names it)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("process spawn (fork/exec, pty)", ("subprocess.py", "_posixsubprocess", "pty.py", "os.py", "spawn")),
    ("key exchange (kex, host key signature)", ("paramiko/kex_", "_negotiate_keys", "_parse_kex", "_activate",
                                                 "ed25519key.py", "_compute_key")),
    ("certificate checks", ("/certs.py", "verify_cert", "check_cert", "load_ssh_public_identity")),
    ("audit emits", ("emit", "audit")),
    ("recording setup/writes", ("recording", "spool", "record")),
    ("auth API calls", ("teleport_core/api/", "httpx", "httpcore", "h11", "h2/")),
    ("auth server (in-process)", ("teleport_auth/",)),
    ("SSH packets, ciphers (paramiko)", ("paramiko/packet.py", "paramiko/transport.py", "paramiko/channel.py",
                                         "paramiko/message.py", "paramiko/")),
    ("logging", ("structlog", "/logging/", "logs.py")),
    ("event loop / threads", ("asyncio/", "threading.py", "selectors.py", "concurrent/")),
)


def summarize_profile(raw: str, sessions: int) -> dict[str, Any]:
    """Collapsed stacks (py-spy ``--format raw``) -> ms of GIL time per session by category, top frames."""
    by_category: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        total += count
        name = "other"
        for frame in reversed(frames):
            hit = next((cat for cat, needles in CATEGORIES if any(n in frame for n in needles)), None)
            if hit:
                name = hit
                break
        by_category[name] += count
        if frames:
            leaves[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames if "teleport_" in f}:
            inclusive[frame] += count
    per_session = 1000.0 / PROFILE_HZ / sessions

    def table(counter: collections.Counter[str], n: int) -> dict[str, str]:
        return {k: f"{v * per_session:.2f} ms ({100 * v / max(1, total):.0f} %)" for k, v in counter.most_common(n)}

    return {"GIL-held ms per session": round(total * per_session, 2), "by category": table(by_category, 12),
            "top leaf frames": table(leaves, 10), "top project frames (inclusive)": table(inclusive, 12)}


def _short(frame: str) -> str:
    match = re.match(r"(.*?) \((.*?):(\d+)\)", frame)
    if not match:
        return frame
    func, path, _line = match.groups()
    parts = Path(path).parts
    return f"{func} ({'/'.join(parts[-2:])})"


# ---------------------------------------------------------------- idle


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            children[int(stat[stat.rindex(")") + 2:].split()[1])].append(int(entry.name))
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(out)


def usage(pids: list[int]) -> tuple[float, int, int]:
    """(PSS MiB, threads, processes) of ``pids``."""
    pss_kib = threads = procs = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        pss_kib += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))  # type: ignore[union-attr]
        threads += int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        procs += 1
    return pss_kib / 1024, threads, procs


def idle_sessions(c: Cluster, servers: list[int], targets: list[list[str]], count: int, client: str,
                  echo_sample: int, concurrency: int) -> dict[str, Any]:
    """Open ``count`` sessions (round robin over ``targets``), measure, echo, close."""
    time.sleep(1)
    pss0, threads0, procs0 = usage(descendants(servers))  # (this process's children: nodes, sshd)
    spec = {"client": client, "targets": targets, "count": count, "concurrency": concurrency,
            "echo_sample": echo_sample, "profile": str(c.home / "profiles" / "127.0.0.1")}
    worker = subprocess.Popen([sys.executable, __file__, "_idle_worker", json.dumps(spec)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None
    started = time.monotonic()
    opened = json.loads(worker.stdout.readline() or "{}")
    open_s = time.monotonic() - started
    time.sleep(2)  # let the servers settle (buffers, lazily started threads)
    clients = descendants([worker.pid])  # (the worker is a child of this process, the proxy's)
    pss1, threads1, procs1 = usage(sorted(set(descendants(servers)) - set(clients)))
    client_pss, client_threads, client_procs = usage(clients)
    worker.stdin.write("go\n")
    worker.stdin.flush()
    echoed = json.loads(worker.stdout.readline() or "{}")
    worker.stdin.close()
    worker.wait(600)
    n = max(1, opened.get("open", 0))
    rtts = sorted(echoed.get("rtts", []))
    pick = (lambda q: round(rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000, 2)) if rtts else (lambda q: -1.0)
    out = {"sessions open": opened.get("open", 0), "failed to open": len(opened.get("failures", [])),
           "seconds to open": round(open_s, 1),
           "server MiB per session (PSS)": round((pss1 - pss0) / n, 3),
           "server threads per session": round((threads1 - threads0) / n, 2),
           "server processes per session": round((procs1 - procs0) / n, 2),
           "server PSS MiB before / after": f"{pss0:.0f} / {pss1:.0f}",
           "client MiB per session (PSS)": round(client_pss / n, 3),
           "client processes": client_procs, "client threads": client_threads,
           "echo p50 ms": pick(0.5), "echo p99 ms": pick(0.99), "echo errors": echoed.get("errors", 0),
           "echo sample": len(rtts)}
    if opened.get("failures"):
        out["first failure"] = opened["failures"][0]
    return out


def run_idle(c: Cluster, count: int, nodes: int, client: str, sshd_max: int, echo_sample: int,
             concurrency: int) -> dict[str, Any]:
    names = [f"idle-{i}" for i in range(nodes)]
    c.start_nodes(names, "node")
    if client == "auto":
        client = "openssh" if count <= 500 else "asyncssh"
    out: dict[str, Any] = {"client": client, "load average before": os.getloadavg()}
    servers = [os.getpid(), *(c.nodes[n].pid for n in names)]
    progress(f"idle: {count} sessions through the proxy to {nodes} node(s), {client} client")
    targets = [c.ours(n, "-tt") if client == "openssh" else ["ours", f"{n}.{CLUSTER}", str(c.env.ssh_port)]
               for n in names]
    out["proxy -> nodes"] = idle_sessions(c, servers, targets, count, client, echo_sample, concurrency)
    if count <= sshd_max:
        progress(f"idle: {count} sessions through the sshd jump host to sshd")
        target = (c.sshd("-tt") if client == "openssh"
                  else ["sshd", str(c.jump.port), str(c.target.port), f"sshd-node.{CLUSTER}"])
        out["sshd -> sshd"] = idle_sessions(c, [c.jump.proc.pid, c.target.proc.pid], [target], count, client,
                                            echo_sample, concurrency)
        ours, theirs = out["proxy -> nodes"], out["sshd -> sshd"]
        out["memory per session ratio ours/sshd"] = round(
            ours["server MiB per session (PSS)"] / max(1e-9, theirs["server MiB per session (PSS)"]), 3)
    out["load average after"] = os.getloadavg()
    return out


MARK = b"p\n"
ECHOED = b"p\r\np\r\n"  # the pty's echo of the line, then cat's copy of it


def idle_worker(spec: dict[str, Any]) -> int:
    """The client side of :func:`idle_sessions`: open, report, wait for ``go``, echo, report, hold."""
    if spec["client"] == "openssh":
        return _openssh_worker(spec)
    return asyncio.run(_asyncssh_worker(spec))


def _read_until(fd: int, want: bytes, timeout: float) -> None:
    got = b""
    deadline = time.monotonic() + timeout
    while not got.endswith(want):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no echo (got {got[-80:]!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise EOFError(f"the session ended (got {got[-200:]!r})")
        got += chunk


def _openssh_worker(spec: dict[str, Any]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    failures: list[str] = []

    def open_one(i: int) -> subprocess.Popen[bytes] | None:
        argv = spec["targets"][i % len(spec["targets"])]
        proc = subprocess.Popen([*argv, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(MARK)
            proc.stdin.flush()
            _read_until(proc.stdout.fileno(), ECHOED, 120)
            return proc
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            proc.kill()
            proc.wait()
            return None

    with ThreadPoolExecutor(spec["concurrency"]) as pool:
        live = [p for p in pool.map(open_one, range(spec["count"])) if p is not None]
    print(json.dumps({"open": len(live), "failures": failures}), flush=True)
    sys.stdin.readline()
    rtts: list[float] = []
    errors = 0
    for proc in live[:: max(1, len(live) // max(1, spec["echo_sample"]))][: spec["echo_sample"]]:
        assert proc.stdin is not None and proc.stdout is not None
        start = time.perf_counter()
        try:
            proc.stdin.write(MARK)
            proc.stdin.flush()
            _read_until(proc.stdout.fileno(), ECHOED, 30)
            rtts.append(time.perf_counter() - start)
        except Exception:
            errors += 1
    print(json.dumps({"rtts": rtts, "errors": errors}), flush=True)
    sys.stdin.read()
    for proc in live:
        proc.kill()
    for proc in live:
        proc.wait()
    return 0


async def _asyncssh_worker(spec: dict[str, Any]) -> int:
    import asyncssh  # bench-only dependency: pip install asyncssh

    folder = Path(spec["profile"])
    key = asyncssh.read_private_key(str(folder / "id"))
    cert = asyncssh.read_certificate(str(folder / "id-cert.pub"))
    known = asyncssh.read_known_hosts(str(folder / "known_hosts"))
    login = os.environ["SCALE_LOGIN"]
    options = {"client_keys": [(key, cert)], "known_hosts": known, "agent_path": None,
               "encryption_algs": ["aes128-gcm@openssh.com"]}
    gate = asyncio.Semaphore(spec["concurrency"])
    failures: list[str] = []
    live: list[tuple[Any, Any, Any]] = []

    async def echo(process: Any) -> None:
        process.stdin.write(MARK)
        got = b""
        while not got.endswith(ECHOED):
            chunk = await process.stdout.read(4096)
            if not chunk:
                raise EOFError(f"the session ended (got {got[-200:]!r})")
            got += chunk

    async def open_one(i: int) -> None:
        target = spec["targets"][i % len(spec["targets"])]
        async with gate:
            try:
                if target[0] == "ours":
                    jump = await asyncssh.connect("127.0.0.1", int(target[2]), username=USER, **options)
                    node = await jump.connect_ssh(target[1], username=login, **options)
                else:
                    jump = await asyncssh.connect("127.0.0.1", int(target[1]), username=login, **options)
                    node = await jump.connect_ssh("127.0.0.1", int(target[2]), username=login,
                                                  host_key_alias=target[3], **options)
                process = await node.create_process("cat", term_type="xterm", encoding=None)
                await asyncio.wait_for(echo(process), 120)
                live.append((jump, node, process))
                if len(live) % 500 == 0:
                    progress(f"idle: {len(live)} sessions open")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(open_one(i) for i in range(spec["count"])))
    print(json.dumps({"open": len(live), "failures": failures}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    rtts: list[float] = []
    errors = 0
    for _jump, _node, process in live[:: max(1, len(live) // max(1, spec["echo_sample"]))][: spec["echo_sample"]]:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(echo(process), 30)
            rtts.append(time.perf_counter() - start)
        except Exception:
            errors += 1
    print(json.dumps({"rtts": rtts, "errors": errors}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for jump, node, _process in live:
        node.close()
        jump.close()
    return 0


# ---------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_rate_driver":
        return rate_driver(json.loads(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "_idle_worker":
        return idle_worker(json.loads(sys.argv[2]))
    from teleport_core.net.allocator import keep_large_blocks

    keep_large_blocks()  # the proxy runs in this process: tune it as ``teleport start`` does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("rate", "idle"))
    parser.add_argument("--login", default="teleport-test", help="OS login of every session, on both sides")
    parser.add_argument("--clients", default="16,64", help="rate: concurrent client loops, comma-separated")
    parser.add_argument("--seconds", type=float, default=15.0, help="rate: seconds per figure")
    parser.add_argument("--no-profile", action="store_true", help="rate: skip the py-spy pass")
    parser.add_argument("--gate", choices=("sshd", "default"), default="sshd",
                        help="our proxy's and nodes' connection_limits: the harness sshd's (MaxStartups 1000, "
                             "no per-source cap) or our defaults (64:30:256, 32 per source)")
    parser.add_argument("--sessions", type=int, default=100, help="idle: sessions open at once")
    parser.add_argument("--nodes", type=int, default=1, help="idle: our nodes the sessions spread over")
    parser.add_argument("--client", choices=("auto", "openssh", "asyncssh"), default="auto")
    parser.add_argument("--sshd-max", type=int, default=500, help="idle: measure sshd only up to this many sessions")
    parser.add_argument("--echo-sample", type=int, default=200, help="idle: sessions the echo is timed on")
    parser.add_argument("--concurrency", type=int, default=16, help="idle: sessions being opened at once")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    try:
        clients = [int(n) for n in args.clients.split(",")]
    except ValueError:
        parser.error("--clients: comma-separated integers")
    if min(clients, default=0) < 1 or args.seconds <= 0 or args.sessions < 1 or args.nodes < 1:
        parser.error("--clients, --seconds, --sessions and --nodes must be positive")
    os.environ["SCALE_LOGIN"] = args.login
    pid_max, pty_max = PID_MAX.read_text(), PTY_MAX.read_text()
    results: dict[str, Any] = {"mode": args.mode, "limits": raise_limits(args.sessions if args.mode == "idle" else 64)}
    try:
        with (tempfile.TemporaryDirectory(prefix="bench-session-scale-") as tmp,
              cluster(Path(tmp), args.login, args.gate) as c):
            if args.mode == "rate":
                results.update(run_rate(c, clients, args.seconds, not args.no_profile))
            else:
                results.update(run_idle(c, args.sessions, args.nodes, args.client, args.sshd_max, args.echo_sample,
                                        args.concurrency))
    finally:
        for path, value in ((PID_MAX, pid_max), (PTY_MAX, pty_max)):
            if path.read_text() != value:
                path.write_text(value)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


def _print(results: dict[str, Any], indent: int = 0) -> None:
    for key, value in results.items():
        if isinstance(value, dict):
            print(" " * indent + f"{key}:")
            _print(value, indent + 2)
        else:
            print(" " * indent + f"{key:<56} {value}")


if __name__ == "__main__":
    sys.exit(main())
