"""SSH through the proxy vs OpenSSH's ``ssh -J`` through OpenSSH sshd, in the same run (ratios).

    python bench/proxy_ssh.py [--mib 256] [--runs 10] [--sessions 500] [--nodes 10000] [--format text|json]

Starts the end-to-end harness of plugins/proxy/tests (auth and proxy services in this process,
two OpenSSH sshd nodes with cluster host certificates, a user logged in with tsh), plus an
OpenSSH sshd used as a plain jump host. Measures:

- throughput of ``head -c N /dev/zero | <client> node 'cat > /dev/null'``: ``tsh ssh`` through the
  proxy, OpenSSH ``ssh -J`` through the proxy, ``ssh -J`` through sshd;
- setup time (median): ``tsh ssh node true``, ``ssh -J proxy node true``, ``ssh -J sshd node true``;
- ``--sessions`` sessions open at once through the proxy: one-byte echo round trip p50/p99;
- ``tsh ls`` with ``--nodes`` registered nodes, and a label lookup at the proxy.

The target node is OpenSSH sshd in every case (our node service is measured in its own bench).
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

from proxy_helpers import CLUSTER, LOGIN, Env, Sshd, free_port, running_env


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10000, help="registered nodes for the listing figures (0: skip)")
    parser.add_argument("--sessions", type=int, default=500, help="concurrent sessions through the proxy (0: skip)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        root = Path(tmp)
        with running_env(_Dirs(root)) as env:  # type: ignore[arg-type]
            results = run(env, root, args.mib, args.runs)
            if args.sessions:
                results.update(sessions(root / "tsh", args.sessions))
            if args.nodes:
                results.update(listing(env, root / "tsh", args.nodes))
    if args.format == "json":
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:<48} {value}")
    return 0


def run(env: Env, root: Path, mib: int, runs: int) -> dict[str, Any]:
    env.signup("bench", ["dev"], [LOGIN], "bench-password-0123456789")
    home = root / "tsh"
    login = env.login(home, "bench")
    if login.returncode != 0:
        raise SystemExit(login.stderr)
    folder = home / "profiles" / "127.0.0.1"
    # an OpenSSH sshd as the plain jump host (same host certificate scheme, trusts the user CA)
    port = free_port()
    identity, key = env.join_node("jump", f"127.0.0.1:{port}", {"role": "jump"})
    user_ca = env.call("get_cert_authority", "user")["ssh_public_keys"]
    jump = Sshd(root / "jump", port, identity, key, user_ca)
    config = root / "ssh_config"
    config.write_text(f"""Host *
    IdentityFile {folder / 'id'}
    CertificateFile {folder / 'id-cert.pub'}
    UserKnownHostsFile {folder / 'known_hosts'}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    IdentitiesOnly yes
    BatchMode yes
    Ciphers aes128-gcm@openssh.com
""")
    shell_env = {**os.environ, "TELEPORT_HOME": str(home), "SSH_AUTH_SOCK": ""}
    target = f"{LOGIN}@sshd-node.{CLUSTER}"
    tsh = [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@sshd-node"]
    via_proxy = ["ssh", "-F", str(config), "-J", f"bench@127.0.0.1:{env.ssh_port}", target]
    node_port = env.sshd.port  # type: ignore[attr-defined]
    # sshd cannot resolve node.cluster names: address the node directly, checking the same host certificate
    via_sshd = ["ssh", "-F", str(config), "-J", f"{LOGIN}@127.0.0.1:{port}", "-p", str(node_port),
                "-o", f"HostKeyAlias=sshd-node.{CLUSTER}", f"{LOGIN}@127.0.0.1"]
    size = mib * 1024 * 1024
    out: dict[str, Any] = {}
    try:
        for name, cmd in (("tsh ssh via proxy", tsh), ("ssh -J via proxy", via_proxy), ("ssh -J via sshd", via_sshd)):
            timed([*cmd, "true"], env=shell_env)  # warm up
            seconds = min(timed([*cmd, "cat > /dev/null"], stdin_bytes=size, env=shell_env) for _ in range(2))
            out[f"throughput MiB/s: {name}"] = round(mib / seconds, 1)
            out[f"setup ms (median of {runs}): {name}"] = round(
                statistics.median(timed([*cmd, "true"], env=shell_env) for _ in range(runs)) * 1000, 1)
    finally:
        jump.stop()
    base_tp = out["throughput MiB/s: ssh -J via sshd"]
    base_setup = out[f"setup ms (median of {runs}): ssh -J via sshd"]
    for name in ("tsh ssh via proxy", "ssh -J via proxy"):
        out[f"throughput ratio vs ssh -J via sshd: {name}"] = round(out[f"throughput MiB/s: {name}"] / base_tp, 2)
        out[f"setup ratio vs ssh -J via sshd: {name}"] = round(
            out[f"setup ms (median of {runs}): {name}"] / base_setup, 2)
    return out


def sessions(home: Path, count: int) -> dict[str, Any]:
    """``count`` sessions open at once through the proxy (tsh's client code in this process,
    8 connecting at a time), each running ``cat``; then the round trip of one byte through
    every session, three times: p50/p99 in ms, and how many sessions failed."""
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
            return proxy, node, channel
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            return None

    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(open_one, range(count)))
    live = [o for o in opened if o is not None]
    rtts: list[float] = []
    errors = count - len(live)
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
    for proxy, node, _channel in live:
        node.close()
        proxy.close()
    rtts.sort()
    pick = (lambda q: round(rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1000, 2)) if rtts else (lambda q: -1.0)
    return {f"sessions open at once (of {count})": len(live), "session errors": errors,
            "echo round trip p50 ms": pick(0.5), "echo round trip p99 ms": pick(0.99),
            **({"first session error": failures[0]} if failures else {})}  # type: ignore[dict-item]


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
