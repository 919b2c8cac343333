"""The node's CPU and wall time per new session (``ssh node true``, without and with a PTY), two
nodes side by side: this tree's and an older one's (``--before DIR``, a ``git worktree``).

    python bench/node_session_cost.py --before DIR [--sessions 40] [--rounds 3] [--login USER]

Starts an auth server in this process (``session_recording: off``) and two nodes (``teleport
start``), the second with DIR's kernel and plugins first on ``PYTHONPATH``; then, round after
round, ``--sessions`` sequential OpenSSH ``ssh -T node true`` and as many ``ssh -tt node true`` to
each node in turn. Per session: the node process's CPU (user + system of all its threads, from
``/proc/PID/stat``; the sessions' own processes are not in it) and the ssh client's median wall.
``--login`` (default ``teleport-test``) is the OS user the sessions run as; run as root, the
nodes start each session's process as that user.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_ssh import CLUSTER, TELEPORT, TOKEN, admin_call, free_port, ssh_cmd, wait_port

from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime of every thread


def python_path(folder: Path) -> str:
    return os.pathsep.join([str(folder), *(str(p) for p in sorted((folder / "plugins").iterdir()) if p.is_dir())])


def start_node(work: Path, name: str, addr: str, pin: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folder = work / name
    folder.mkdir()
    (folder / "teleport.yaml").write_text(yaml.safe_dump({
        "teleport": {"data_dir": str(folder / "data"), "nodename": name, "auth_server": addr, "auth_token": TOKEN,
                     "ca_pin": pin, "log": {"output": str(folder / "node.log"), "severity": "WARN"}},
        "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
        "ssh_service": {"listen_addr": f"127.0.0.1:{port}"}}))
    node = subprocess.Popen([TELEPORT, "start", "-c", str(folder / "teleport.yaml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd="/")
    wait_port(port)
    return node, port


def sessions(target: dict[str, Any], key: Path, login: str, count: int, pty: bool, pid: int) -> tuple[float, float]:
    """(node CPU per session, median wall per session), seconds."""
    argv = ssh_cmd(target, key, login, "", "true")
    argv.insert(1, "-tt" if pty else "-T")
    walls = []
    before = cpu_seconds(pid)
    for _ in range(count):
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"ssh failed: {result.stderr.decode()[-500:]}")
    return (cpu_seconds(pid) - before) / count, statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--login", default="teleport-test")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="node-session-cost-"))
    addr = f"127.0.0.1:{free_port()}"
    auth_dir = work / "auth"
    config = {"teleport": {"data_dir": str(auth_dir), "nodename": "auth", "log": {"severity": "WARN"}},
              "auth_service": {"cluster_name": CLUSTER, "listen_addr": addr, "tokens": [f"node:{TOKEN}"],
                               "session_recording": "off"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60):
        pin = admin_call(auth_dir, addr, lambda a: a.status())["ca_pin"]
        key = keys.generate_private_key("ed25519")
        key_path = work / "id"
        write_private(key_path, keys.private_key_openssh(key))

        async def sign(admin: Any) -> dict[str, Any]:
            await admin.create_user("bench", ["access"], {"logins": [args.login]})
            return dict(await admin.sign_user_cert("bench", keys.public_key_openssh(key), ttl="2h"))

        certs = admin_call(auth_dir, addr, sign)
        write_public(Path(f"{key_path}-cert.pub"), certs["ssh_cert"] + "\n")
        (work / "known").write_text(admin_call(auth_dir, addr, lambda a: a.get_cert_authority("host"))["known_hosts"])
        here = Path(__file__).resolve().parent.parent  # both nodes search as many paths
        envs = {"after": {**os.environ, "PYTHONPATH": python_path(here)},
                "before": {**os.environ, "PYTHONPATH": python_path(args.before.resolve())}}
        nodes = {label: start_node(work, f"node-{label}", addr, pin, env) for label, env in envs.items()}
        results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        try:
            targets = {label: {"port": port, "known_hosts": work / "known", "alias": f"node-{label}.{CLUSTER}"}
                       for label, (_, port) in nodes.items()}
            for label in nodes:  # warm up
                for pty in (False, True):
                    sessions(targets[label], key_path, args.login, 3, pty, nodes[label][0].pid)
            for round_ in range(args.rounds):
                for label in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
                    for pty in (False, True):
                        got = sessions(targets[label], key_path, args.login, args.sessions, pty, nodes[label][0].pid)
                        results.setdefault((label, pty), []).append(got)
                        print(f"round {round_ + 1} {label:<6} {'pty   ' if pty else 'no pty'} node CPU/session "
                              f"{got[0] * 1000:6.1f} ms, wall median {got[1] * 1000:6.1f} ms", file=sys.stderr)
        finally:
            for node, _ in nodes.values():
                node.terminate()
                node.wait(30)
    print(f"{args.sessions} sessions x {args.rounds} rounds, login {args.login}, load {os.getloadavg()[0]:.1f}")
    for (label, pty), runs in sorted(results.items()):
        cpus = ", ".join(f"{c * 1000:.1f}" for c, _ in runs)
        walls = ", ".join(f"{w * 1000:.0f}" for _, w in runs)
        print(f"{label:<6} {'pty   ' if pty else 'no pty'}  node CPU ms/session: {cpus}   wall ms (median): {walls}")


if __name__ == "__main__":
    main()
