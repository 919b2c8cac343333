"""SSH through the proxy vs OpenSSH's ``ssh -J`` through OpenSSH sshd, in the same run (ratios).

    python bench/proxy_ssh.py [--mib 256] [--runs 10] [--sessions 500] [--nodes 10000] [--format text|json]

Starts the end-to-end harness of plugins/proxy/tests (auth and proxy services in this process,
two OpenSSH sshd nodes with cluster host certificates, a user logged in with tsh), plus an
OpenSSH sshd used as a plain jump host. Measures:

- throughput of ``head -c N /dev/zero | <client> node 'cat > /dev/null'``: ``tsh ssh`` through the
  proxy (TLS routing on the web port, tsh's default), ``tsh ssh`` through the proxy's SSH port
  (a profile without TLS routing), OpenSSH ``ssh -J`` through the proxy, ``ssh -J`` through sshd;
- setup time (median): the same clients running ``true``;
- ``--sessions`` sessions open at once through the one proxy process, opened by ``--workers``
  client processes (tsh's client code; the clients do not share the proxy's process): how many
  failed, and the one-byte echo round trip p50/p99 through every open session, for TLS routing
  and for the SSH port;
- ``tsh ls`` with ``--nodes`` registered nodes, and a label lookup at the proxy.

The target node is OpenSSH sshd for every client, so the rows compare the proxies alone; two
more rows take the product's whole path, ``tsh ssh`` and ``ssh -J`` through our proxy to our node
service (``teleport start``), against the same ``ssh -J`` through sshd to sshd baseline, and one
more OpenSSH ``ssh`` with ``tsh config``'s ProxyCommand (``tsh proxy ssh``, TLS routing) to our node.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "proxy" / "tests"))

from proxy_helpers import CLUSTER, LOGIN, Env, Sshd, free_port, profile_ssh_config, running_env


class _Dirs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=name, dir=self.root))
        return path


def timed(cmd: list[str], *, stdin_bytes: int = 0, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    if stdin_bytes:
        feeder = subprocess.Popen(["head", "-c", str(stdin_bytes), "/dev/zero"], stdout=subprocess.PIPE)
        result = subprocess.run(cmd, stdin=feeder.stdout, capture_output=True, env=env, check=False)
        feeder.wait()
    else:
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def main() -> int:
    from teleport_core.net.allocator import keep_large_blocks

    keep_large_blocks()  # the proxy runs in this process: tune it as ``teleport start`` does
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10000, help="registered nodes for the listing figures (0: skip)")
    parser.add_argument("--sessions", type=int, default=500, help="concurrent sessions through the proxy (0: skip)")
    parser.add_argument("--workers", type=int, default=4, help="client processes opening the --sessions")
    parser.add_argument("--sessions-only", action="store_true", help="skip the throughput and setup figures")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--tunnel", action="store_true",
                        help="only: our node reached through a reverse tunnel vs directly (bench/proxy_tunnel.py)")
    args = parser.parse_args()
    if args.worker:
        return session_worker(Path(args.worker[0]), int(args.worker[1]))
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        with running_env(_Dirs(root)) as env:  # type: ignore[arg-type]
            if args.tunnel:
                from proxy_tunnel import run_tunnel

                results = run_tunnel(env, root, args.mib, args.runs, with_tsh=os.environ.get("TUNNEL_BENCH_TSH") == "1")
                args.sessions = args.nodes = 0
            elif args.sessions_only:
                results = {}
                login_bench(env, root / "tsh")
            else:
                results = run(env, root, args.mib, args.runs)
            if args.sessions:
                for name, home in (("TLS routing", root / "tsh"), ("SSH port", without_tls_routing(root))):
                    results.update({f"{key} [{name}]": value
                                    for key, value in sessions(home, args.sessions, args.workers).items()})
            if args.nodes:
                results.update(listing(env, root / "tsh", args.nodes))
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:<48} {value}")
    return 0


def login_bench(env: Env, home: Path) -> None:
    env.signup("bench", ["dev"], [LOGIN], "bench-password-0123456789")
    login = env.login(home, "bench")
    if login.returncode != 0:
        raise SystemExit(login.stderr)


def without_tls_routing(root: Path) -> Path:
    """A copy of the bench user's tsh home whose profile uses the proxy's SSH port."""
    import shutil

    home = root / "tsh-ssh-port"
    if not home.exists():
        shutil.copytree(root / "tsh", home)
        meta_path = home / "profiles" / "127.0.0.1" / "profile.json"
        meta = json.loads(meta_path.read_text())
        meta["tls_routing"] = False
        meta_path.write_text(json.dumps(meta))
    return home


def run(env: Env, root: Path, mib: int, runs: int) -> dict[str, Any]:
    home = root / "tsh"
    login_bench(env, home)
    # an OpenSSH sshd as the plain jump host (same host certificate scheme, trusts the user CA)
    port = free_port()
    identity, key = env.join_node("jump", f"127.0.0.1:{port}", {"role": "jump"})
    user_ca = env.call("get_cert_authority", "user")["ssh_public_keys"]
    jump = Sshd(root / "jump", port, identity, key, user_ca)
    config = profile_ssh_config(home, root / "ssh_config", "Ciphers aes128-gcm@openssh.com")
    shell_env = {**os.environ, "TELEPORT_HOME": str(home), "SSH_AUTH_SOCK": ""}
    target = f"{LOGIN}@sshd-node.{CLUSTER}"
    tsh = [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@sshd-node"]
    tsh_port_env = {**shell_env, "TELEPORT_HOME": str(without_tls_routing(root))}
    via_proxy = ["ssh", "-F", str(config), "-J", f"bench@127.0.0.1:{env.ssh_port}", target]
    node_port = env.sshd.port  # type: ignore[attr-defined]
    # sshd cannot resolve node.cluster names: address the node directly, checking the same host certificate
    via_sshd = ["ssh", "-F", str(config), "-J", f"{LOGIN}@127.0.0.1:{port}", "-p", str(node_port),
                "-o", f"HostKeyAlias=sshd-node.{CLUSTER}", f"{LOGIN}@127.0.0.1"]
    size = mib * 1024 * 1024
    out: dict[str, Any] = {}
    from proxy_tunnel import _start_node, _wait_ready

    ours, _ = _start_node(env, root, "our-node", tunnel=False)
    try:
        _wait_ready(env, ["our-node"])
        tsh_ours = [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@our-node"]
        via_proxy_ours = ["ssh", "-F", str(config), "-J", f"bench@127.0.0.1:{env.ssh_port}",
                          f"{LOGIN}@our-node.{CLUSTER}"]
        # what `tsh config` gives OpenSSH users: a ProxyCommand through `tsh proxy ssh` (TLS routing)
        tsh_config = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "config"], env=shell_env,
                                    capture_output=True, text=True, check=True).stdout
        (root / "tsh_ssh_config").write_text(tsh_config + "\nHost *\n    StrictHostKeyChecking yes\n"
                                             "    BatchMode yes\n    Ciphers aes128-gcm@openssh.com\n")
        via_config_ours = ["ssh", "-F", str(root / "tsh_ssh_config"), f"{LOGIN}@our-node.{CLUSTER}"]
        clients = (("tsh ssh via proxy", tsh, shell_env), ("tsh ssh via proxy SSH port", tsh, tsh_port_env),
                   ("ssh -J via proxy", via_proxy, shell_env), ("ssh -J via sshd", via_sshd, shell_env),
                   ("tsh ssh via proxy to our node", tsh_ours, shell_env),
                   ("ssh -J via proxy to our node", via_proxy_ours, shell_env),
                   ("ssh via tsh config to our node", via_config_ours, shell_env))
        # interleaved (client A, B, C, D, A, B, ...) so that a load change hits every client alike
        transfer: dict[str, list[float]] = {name: [] for name, _, _ in clients}
        setup: dict[str, list[float]] = {name: [] for name, _, _ in clients}
        for _name, cmd, cmd_env in clients:
            timed([*cmd, "true"], env=cmd_env)  # warm up
        for _ in range(3):
            for name, cmd, cmd_env in clients:
                transfer[name].append(timed([*cmd, "cat > /dev/null"], stdin_bytes=size, env=cmd_env))
        for _ in range(runs):
            for name, cmd, cmd_env in clients:
                setup[name].append(timed([*cmd, "true"], env=cmd_env))
        for name, _, _ in clients:
            out[f"throughput MiB/s (best of 3): {name}"] = round(mib / min(transfer[name]), 1)
            out[f"setup ms (median of {runs}): {name}"] = round(statistics.median(setup[name]) * 1000, 1)
    finally:
        jump.stop()
        ours.terminate()
        ours.wait(30)
    base_tp = out["throughput MiB/s (best of 3): ssh -J via sshd"]
    base_setup = out[f"setup ms (median of {runs}): ssh -J via sshd"]
    for name in ("tsh ssh via proxy", "tsh ssh via proxy SSH port", "ssh -J via proxy",
                 "tsh ssh via proxy to our node", "ssh -J via proxy to our node", "ssh via tsh config to our node"):
        out[f"throughput ratio vs ssh -J via sshd: {name}"] = round(
            out[f"throughput MiB/s (best of 3): {name}"] / base_tp, 2)
        out[f"setup ratio vs ssh -J via sshd: {name}"] = round(
            out[f"setup ms (median of {runs}): {name}"] / base_setup, 2)
    return out


def sessions(home: Path, count: int, workers: int) -> dict[str, Any]:
    """``count`` sessions open at once through the proxy, opened by ``workers`` client processes
    (tsh's client code, 8 connecting at a time in each), each running ``cat`` (and echoing once:
    the login shell's rc files run before ``cat`` starts); once all are open,
    the round trip of one byte through every session, three times: p50/p99 in ms, and how many
    sessions failed to open or to echo."""
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(home), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for n in shares if n]
    opened = [json.loads(p.stdout.readline() or "{}") for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdin.write("go\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
    measured = [json.loads(p.stdout.readline() or "{}") for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(60)
    rtts = sorted(rtt for m in measured for rtt in m.get("rtts", []))
    failures = [f for o in opened for f in o.get("failures", [])]
    errors = len(failures) + sum(m.get("errors", 0) for m in measured)
    pick = (lambda q: round(rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000, 2)) if rtts else (lambda q: -1.0)
    return {f"sessions open at once (of {count})": sum(o.get("open", 0) for o in opened), "session errors": errors,
            "echo round trip p50 ms": pick(0.5), "echo round trip p99 ms": pick(0.99),
            **({"first session error": failures[0]} if failures else {})}


def session_worker(home: Path, count: int) -> int:
    """One client process of :func:`sessions`: open ``count`` sessions, print how it went,
    wait for ``go``, echo, print the round trips, hold the sessions until stdin closes."""
    from concurrent.futures import ThreadPoolExecutor

    from teleport_core.tsh.profile import Profile
    from teleport_core.tsh.sshclient import connect_node

    profile = Profile.load(home)
    failures: list[str] = []

    def open_one(_: int) -> tuple[Any, Any, Any] | None:
        try:
            proxy, node = connect_node(profile, LOGIN, "sshd-node")
            channel = node.open_session()
            channel.exec_command("cat")
            # the login shell's rc files run before cat does (root's .bashrc here runs pyenv init):
            # one echo first, so the figures below time the session, not shells starting
            channel.sendall(b"w")
            if channel.recv(1) != b"w":
                raise RuntimeError("the session did not echo")
            return proxy, node, channel
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return None

    with ThreadPoolExecutor(8) as pool:
        live = [o for o in pool.map(open_one, range(count)) if o is not None]
    print(json.dumps({"open": len(live), "failures": failures}), flush=True)
    sys.stdin.readline()
    rtts: list[float] = []
    errors = 0
    for _ in range(3):
        for _proxy, _node, channel in live:
            start = time.perf_counter()
            try:
                channel.sendall(b"x")
                if channel.recv(1) != b"x":
                    errors += 1
                    continue
            except Exception:
                errors += 1
                continue
            rtts.append(time.perf_counter() - start)
    print(json.dumps({"rtts": rtts, "errors": errors}), flush=True)
    sys.stdin.read()
    for proxy, node, _channel in live:
        node.close()
        proxy.close()
    return 0


def listing(env: Env, home: Path, count: int) -> dict[str, float]:
    """``tsh ls`` with ``count`` registered nodes (heartbeats through the real API), and a label
    lookup at the proxy (the routing step of ``tsh ssh login@idx=N``)."""
    import asyncio

    from teleport_proxy.certs import UserCert

    async def register() -> None:
        async with env.admin() as client:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with gate:
                    await client.upsert_node({"uuid": f"00000000-0000-4000-8000-{i:012d}", "nodename": f"sim-{i}",
                                              "addr": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:3022",
                                              "labels": {"env": "test", "idx": str(i)}})

            await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(register())
    shell_env = {**os.environ, "TELEPORT_HOME": str(home)}
    tsh_ls = [sys.executable, "-m", "teleport_core.cli.tsh", "ls", "--format=json"]
    seconds = statistics.median(timed(tsh_ls, env=shell_env) for _ in range(3))
    user = UserCert("bench", ("dev",), {"logins": (LOGIN,)})
    proxy = env.proxy

    async def lookup() -> float:
        start = time.perf_counter()
        await proxy.route(user, "", f"idx={count // 2}")
        return time.perf_counter() - start

    lookups = [env.proxy_handle.call(lookup) for _ in range(5)]
    return {f"tsh ls s ({count} nodes, median of 3)": round(seconds, 3),
            f"label lookup at the proxy ms ({count} nodes, median of 5)": round(statistics.median(lookups) * 1000, 1)}


if __name__ == "__main__":
    sys.exit(main())
