"""Live sessions with observers: N interactive sessions, each joined by K observers, through one proxy.

    python bench/live_sessions.py [--sessions 100] [--observers 2] [--seconds 30] [--format text|json]

One teleport process runs auth, the proxy and our node on 127.0.0.1 (the proxy tests' cluster:
plugins/proxy/tests/proxy_helpers.py). A second process (this script with ``--client``) opens
the sessions as alice (``tsh ssh``'s path: SSH to the proxy, its subsystem to the node, SSH to
the node with a PTY) and joins each with K observers as bob (``tsh join``'s path: the join
principal, ``TELEPORT_SESSION`` and ``TELEPORT_SSH_JOIN_MODE=observer``). Each session runs

    echo "SID=$TELEPORT_SESSION"; while :; do echo "T$EPOCHREALTIME"; read -t 0.2 ...; done

(bash builtins only: no process per line), so every line carries the time the node's shell
wrote it, on the same clock as the readers. For ``--seconds`` once everyone has joined:

* **delivered**: the share of the owner's lines (written after the observers joined) that every
  observer received;
* **latency**: from the shell's write to each reader's receipt, p50/p99, owner and observers;
  **added**: observer minus owner for the same line (p50/p99): what the fan-out costs;
* **CPU per session**: the cluster process's CPU time (user + system, all its threads: auth,
  proxy, node) over the window, divided by N, as a share of one core.

The client side (300 paramiko connections by default, each through the proxy) is its own
process, so its CPU is not counted; on a 2-core machine it competes with the cluster for CPU,
which shows in the latencies (both sides alike).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from node_ssh import progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "proxy" / "tests"))

NODENAME = "bench-live"
PASSWORD = "a long enough password 123"
SCRIPT = ('echo "SID=$TELEPORT_SESSION"; exec 3<> <(:); '
          'while :; do echo "T${EPOCHREALTIME/./}"; read -t 0.2 -u 3; done')
JOINER = {"kind": "role", "version": "v7", "metadata": {"name": "joiner"},
          "spec": {"allow": {"node_labels": {"*": "*"},
                             "join_sessions": [{"name": "watch", "roles": ["access"], "kinds": ["ssh"],
                                                "modes": ["observer"]}]}}}


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max_ms": round(ordered[-1], 2)}


# -- the client process -----------------------------------------------------------------------------


class Reader:
    """One channel's lines: {line timestamp (µs): receipt latency (ms)} while recording."""

    def __init__(self, channel: Any, recording: threading.Event) -> None:
        self.channel = channel
        self.recording = recording
        self.got: dict[int, float] = {}
        self.sid = ""
        self.sid_seen = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        rest = b""
        while True:
            try:
                data = self.channel.recv(65536)
            except Exception:
                return
            if not data:
                return
            now = time.time_ns() // 1000
            rest += data
            *lines, rest = rest.split(b"\n")
            for line in lines:
                line = line.strip()
                if line.startswith(b"SID="):
                    self.sid = line[4:].decode()
                    self.sid_seen.set()
                elif line.startswith(b"T") and line[1:].isdigit() and self.recording.is_set():
                    stamp = int(line[1:])
                    self.got[stamp] = (now - stamp) / 1000.0


def client(args: argparse.Namespace) -> int:
    from teleport_core.tsh import sshclient
    from teleport_core.tsh.join import JOIN_PRINCIPAL, MODE_ENV, SESSION_ENV
    from teleport_core.tsh.profile import Profile

    alice, bob = Profile.load(Path(args.alice)), Profile.load(Path(args.bob))
    recording = threading.Event()
    keep: list[Any] = []

    def owner(_: int) -> Reader:
        proxy, node = sshclient.connect_node(alice, args.login, NODENAME)
        keep.extend((proxy, node))
        channel = node.open_session(timeout=60)
        channel.get_pty("xterm", 120, 40)
        channel.exec_command(SCRIPT)
        reader = Reader(channel, recording)
        if not reader.sid_seen.wait(60):
            raise RuntimeError("no session ID from the owner's session")
        return reader

    def observer(sid: str) -> Reader:
        proxy, node = sshclient.connect_node(bob, JOIN_PRINCIPAL, NODENAME)
        keep.extend((proxy, node))
        channel = node.open_session(timeout=60)
        channel.set_environment_variable(SESSION_ENV, sid)
        channel.set_environment_variable(MODE_ENV, "observer")
        channel.get_pty("xterm", 120, 40)
        channel.invoke_shell()
        return Reader(channel, recording)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        owners = list(pool.map(owner, range(args.sessions)))
        progress(f"  {len(owners)} sessions running; joining {args.observers} observers each ...")
        watchers = list(pool.map(observer, [o.sid for o in owners for _ in range(args.observers)]))
    time.sleep(2)  # every join through, its notices passed
    print("STEADY", flush=True)
    recording.set()
    time.sleep(args.seconds)
    recording.clear()
    print("END", flush=True)
    time.sleep(1)  # lines in flight reach every reader
    owner_ms: list[float] = []
    observer_ms: list[float] = []
    added_ms: list[float] = []
    expected = delivered = 0
    for index, session in enumerate(owners):
        lines = session.got
        owner_ms.extend(lines.values())
        for watcher in watchers[index * args.observers:(index + 1) * args.observers]:
            observer_ms.extend(watcher.got.values())
            expected += len(lines)
            delivered += sum(1 for stamp in lines if stamp in watcher.got)
            added_ms.extend(watcher.got[stamp] - lines[stamp] for stamp in lines if stamp in watcher.got)
    print(json.dumps({"owner": percentiles(owner_ms), "observer": percentiles(observer_ms),
                      "added": percentiles(added_ms), "lines_owner": sum(len(o.got) for o in owners),
                      "delivered": round(delivered / expected, 4) if expected else 0.0}), flush=True)
    for item in keep:
        item.close()
    return 0


# -- the cluster process ----------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--observers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--alice", help=argparse.SUPPRESS)
    parser.add_argument("--bob", help=argparse.SUPPRESS)
    parser.add_argument("--login", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client(args)
    if args.sessions < 1 or args.observers < 0 or args.seconds <= 0:
        parser.error("--sessions must be at least 1, --observers at least 0, --seconds positive")
    from proxy_helpers import LOGIN, Env, one_process_config

    from teleport_core.plugins import make_plugins
    from teleport_core.testing.cluster import start_cluster

    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        root = Path(tmp)
        progress("starting auth, proxy and node ...")
        config = one_process_config(root, NODENAME)
        with start_cluster(config, make_plugins(), timeout=120) as cluster:
            env = Env(root, cluster, cluster)
            env.call("upsert_role", JOINER)
            env.signup("alice", ["access"], [LOGIN], PASSWORD)
            env.signup("bob", ["access", "joiner"], [LOGIN], PASSWORD)
            homes = {}
            for user in ("alice", "bob"):
                homes[user] = root / f"{user}-tsh"
                homes[user].mkdir()
                result = env.login(homes[user], user)
                assert result.returncode == 0, result.stderr
            deadline = time.monotonic() + 60
            while not env.call("get_nodes") and time.monotonic() < deadline:
                time.sleep(0.2)
            progress(f"opening {args.sessions} sessions ...")
            proc = subprocess.Popen(
                [sys.executable, __file__, "--client", f"--sessions={args.sessions}",
                 f"--observers={args.observers}", f"--seconds={args.seconds}", f"--alice={homes['alice']}",
                 f"--bob={homes['bob']}", f"--login={LOGIN}"],
                stdout=subprocess.PIPE, text=True, env={**os.environ, "TELEPORT_HOME": str(homes["alice"])})
            assert proc.stdout is not None
            started = ended = 0.0
            wall = 0.0
            result_line = ""
            for line in proc.stdout:
                if line.startswith("STEADY"):
                    started, wall = cpu_seconds(), time.monotonic()
                    progress(f"measuring for {args.seconds:.0f} s ...")
                elif line.startswith("END"):
                    ended, wall = cpu_seconds(), time.monotonic() - wall
                elif line.startswith("{"):
                    result_line = line
            if proc.wait() != 0 or not result_line:
                progress("the client failed")
                return 1
    result = json.loads(result_line)
    result.update({"sessions": args.sessions, "observers_per_session": args.observers, "seconds": args.seconds,
                   "cpu_per_session_pct_of_core": round(100 * (ended - started) / wall / args.sessions, 3),
                   "cluster_cpu_pct_of_core": round(100 * (ended - started) / wall, 1)})
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.sessions} sessions x {args.observers} observers through one proxy, {args.seconds:.0f} s")
        print(f"  delivered to every observer: {100 * result['delivered']:.2f} % of {result['lines_owner']} lines")
        for name in ("owner", "observer", "added"):
            r = result[name]
            print(f"  {name:9} latency p50 {r['p50_ms']:8.2f}  p99 {r['p99_ms']:8.2f}  max {r['max_ms']:8.2f} ms")
        print(f"  CPU: {result['cluster_cpu_pct_of_core']} % of a core for the cluster process, "
              f"{result['cpu_per_session_pct_of_core']} % per session")
    return 0


if __name__ == "__main__":
    sys.exit(main())
