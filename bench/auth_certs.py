"""User-certificate issuance: in process, over the mutual-TLS API, beside the raw signing rate
of the CA's key type (the ceiling), plus full login latency (bcrypt + two certificates).

    python bench/auth_certs.py [--seconds 3] [--concurrency 16] [--http1 hypercorn,httptools] [--rounds 2]
                               [--format text|json] [--profile FILE]

Starts a real auth server as its own `teleport start` process (SQLite state in a temporary
directory, the audit_json sink: every certificate has its durable ``cert.create`` event); the
client side runs in this process. Beside the rates it reports the auth process's CPU time and
context switches (all its threads) per certificate pair, which a loaded machine disturbs less
than the rates, and the clients' own CPU per pair (they share the machine's cores with auth).
``--http1`` names auth's HTTP/1.1 server(s) (``TELEPORT_HTTP1``): each gets a fresh auth process,
in turn, ``--rounds`` times, and the medians and the CPU ratio come from that one run.
``--profile FILE`` records the auth process with py-spy during the API phase (collapsed stacks of
every thread to ``FILE.<server>.<round>``) and prints where its event loop's busy time goes.

Figures (2 cores, shared with four other helpers' tests and benches: load is given per run;
``python bench/auth_certs.py --format json --seconds 5``):

* before issue 17's work (9f8ecbc), quiet machine (load 0.2-0.4): raw Ed25519 28.1k/s, in-process
  SSH certificate 6.29k/s, over mTLS 301/s (0.011 of raw signing).
* before (9f8ecbc) and after (e169204) run side by side, three times, at load 37-49:
  API 24.9 / 21.3 / 20.9 /s before, 29.0 / 17.7 / 20.4 /s after (the rates follow the load);
  auth CPU per pair 5.45 / 4.33 / 4.11 ms before, 4.75 / 3.27 / 3.63 ms after;
  context switches per pair 32.2 / 25.7 / 41.5 before, 22.3 / 12.7 / 26.1 after.
* one after the other at load 15-18: before 79.4/s (raw 11.7k/s, in-process SSH+TLS pair
  708/s), 4.45 ms CPU and 34.2 switches per pair; after 97.8/s (raw 6.97k/s, pair 696/s),
  3.59 ms and 18.0.

Where the auth process's time goes (py-spy, GIL held by the event loop thread, 16 concurrent):
before, HTTP server (hypercorn, h11, TLS records, starlette) 26%, signing 24%, audit spool and
delivery 17% (the sender handed the log one event at a time: each certificate waited for its own
fsync; on a quiet machine the loop sat idle 24% of the time), reading the user's
record through SQLite's thread pool 10%, the rest routing, body validation, JSON. After, HTTP
server 22%, signing 32%, audit 23% (events are handed to the log up to 256 at a time and stored
with one fsync), user reads 0% (cached, watcher-invalidated), idle 1.5%. The auth process is
now CPU-bound; the 1,000/s goal needs the HTTP layer and the per-event audit work to shrink
further, or several auth processes (not done: see docs/auth.md).

Issue 17, second round (HTTP/1.1 on uvicorn's httptools, SSH certificates serialized directly;
docs/scaling.md), machine shared with other helpers' test runs at load 3.4-8.7:

* before (00d9f1a) and after (ed28051), alternating, ``--seconds 6``: auth CPU per pair 5.91 /
  5.35 ms before, 5.00 / 4.42 ms after (0.85 / 0.83); context switches 24.2 / 18.7 before,
  22.6 / 18.4 after; rates 62.9 / 45.8 before, 60.3 / 60.3 /s after.
* ``--http1 hypercorn,httptools --rounds 2 --seconds 6`` (ed28051, load 5.4-6.6): auth CPU per pair
  5.36 / 5.13 ms on hypercorn, 4.57 / 4.35 ms on httptools (median ratio 0.85; 0.79-0.91 over four
  such runs); 84.5 / 86.4 /s and 83.9 / 89.6 /s; the clients took 7.2-7.9 ms of CPU per pair: on
  these two cores the rate is the clients' and auth's CPU together, not auth's alone. In process,
  same run: raw Ed25519 14.6k/s, SSH certificate 2.35k/s, SSH+TLS pair 890/s.

Auth worker processes (``--workers 1,2 --rounds 2 --logins 0``, ``auth_service.workers``; auth CPU
is the leader's and its worker's together), two runs at load 13-32 (raw Ed25519 2-3.7k/s, the
machine four to ten times slower than quiet): 14 / 13 and 22 / 11 pairs/s with one process, 21 / 11
and 20 / 19 with two; auth CPU per pair, median, 8.51 and 7.05 ms with one, 9.72 and 7.77 ms with
two (1.14x, 1.10x); the clients took 11-16 ms per pair: on two cores shared with them a second auth
process has no core of its own (docs/scaling.md).

Quiet machine (load 0.9-1.5, raw Ed25519 18.5k/s), ``--workers 1,2 --rounds 2 --seconds 8 --logins 0``:
162 / 170 pairs/s with one process, 155 / 173 with two; auth CPU per pair 3.43 and 3.86 ms (medians,
1.13x); the httpx clients 5.7-6.2 ms per pair, so the two cores cap the sum at about 210/s.
With the lean client (``--client raw --workers 1,2 --rounds 2 --seconds 6``, load 5.7-6.2 from other
jobs): 163 / 256 pairs/s with one, 267 / 259 with two; auth CPU per pair 2.64 and 3.03 ms (1.15x);
the clients 0.17-0.22 ms per pair. The same on the quiet machine (load 1.1-1.3): 379 / 366 pairs/s with
one process, 512 / 365 with two; auth CPU per pair 2.82 and 3.14 ms (medians, 1.11x).

Where auth's event loop spends its busy time (``--profile``, a run at 62c7074, load 6.8; httptools,
hypercorn in brackets): signing 32 % (26 %), audit spool and delivery 30 % (24 %), event loop hand-offs 11 %
(14 %), HTTP server 8 % (10 %), TLS records 6 % (11 %), endpoint wrapper and handler 4 % (6 %),
JSON 4 % (3 %), authorization, locks, user 3 % (2 %), starlette routing 2 % (3 %), body
validation 0.5 % (1 %); idle in select() 29 % (25 %) of all samples: auth is not the bottleneck here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from lean_client import LeanConnection  # bench/lean_client.py (this folder is on sys.path)

from teleport_core.pki.serverrole import AUTH, require_server_role


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"auth server not ready at {url}")


def rate(fn: Any, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


async def api_rate(client: Any, public_key: str, seconds: float, concurrency: int,
                   lean: list[LeanConnection] | None = None) -> float:
    """Certificate pairs per second from ``concurrency`` clients: ``client`` (an AuthClient) each, or
    each its own ``lean`` connection (the same request, without httpx)."""
    done = 0
    deadline = time.perf_counter() + seconds
    body = json.dumps({"user": "bench", "public_key": public_key, "ttl": "1h"}).encode()

    async def worker(conn: LeanConnection | None) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if conn is None:
                await client.sign_user_cert("bench", public_key, ttl="1h")
            else:
                status, answer = await conn.request("/v1/certs/user", body, "POST")
                if status != 200:
                    raise SystemExit(f"POST /v1/certs/user answered {status}: {answer[:200]!r}")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(lean[i] if lean else None) for i in range(concurrency)))
    return done / (time.perf_counter() - start)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its live child processes (auth's worker processes, ``auth_service.workers``)."""
    found = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds so far of every process in ``pids`` (:func:`process_cpu`; gone ones count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += process_cpu(pid)
    return total


def context_switches(pid: int | list[int]) -> int:
    """Voluntary and involuntary context switches so far of every thread of process ``pid`` (or of each)."""
    if isinstance(pid, list):
        return sum(context_switches(one) for one in pid)
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
    return total


def profiler(pid: int, out: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` for ``seconds``: collapsed stacks of every thread while it runs (not
    waiting), to ``out``; :func:`profile_summary` reads the event loop thread's (C code that lets the
    GIL go, such as OpenSSL's record layer, is counted too)."""
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads", "--rate", "200",
               "--duration", str(max(1, int(seconds))), "--nonblocking", "-o", out]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: where the auth process's time goes, by the frames of each sampled stack: the first rule whose
#: files are anywhere in the stack for the "strong" ones (the domain work), else the nearest frame's
PROFILE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("audit (spool, JSON log)", ("audit_spool", "teleport_core/state/audit", "teleport_audit_json")),
    ("signing (SSH + X.509)", ("cryptography/", "teleport_core/pki/", "teleport_auth/issuer.py",
                               "teleport_auth/authority.py")),
    ("authz, locks, user", ("teleport_core/policy/", "teleport_auth/authz", "teleport_auth/locks",
                            "teleport_auth/users")),
    ("body validation (pydantic)", ("pydantic", "teleport_core/api/schema.py")),
    ("JSON", ("json/",)),
    ("routing (starlette)", ("starlette/",)),
    ("TLS records", ("ssl.py", "sslproto.py")),
    ("HTTP server", ("hypercorn/", "h11/", "h2/", "uvicorn/", "httptools", "teleport_core/net/")),
    ("endpoint wrapper + handler", ("teleport_auth/api/",)),
    ("event loop", ("asyncio/", "selectors.py", "concurrent/futures", "threading.py")),
)
STRONG = 3  # the first three rules win wherever their frames are in the stack


def profile_category(frames: list[str]) -> str:
    files = [frame.rpartition(" (")[2] for frame in frames]
    if files and files[-1].startswith("selectors.py"):
        return "idle (waiting in select)"
    for name, keys in PROFILE_RULES[:STRONG]:
        if any(key in file for file in files for key in keys):
            return name
    for file in reversed(files):
        for name, keys in PROFILE_RULES:
            if any(key in file for key in keys):
                return name
    return "other"


def profile_summary(path: str) -> dict[str, float]:
    """Share of the event loop thread's busy samples per :data:`PROFILE_RULES` category (py-spy raw
    output), and the share of all its samples it waited in ``select()`` ("idle")."""
    counts: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" in frames[0]:
            name = profile_category(frames[1:])
            counts[name] = counts.get(name, 0) + int(count)
    idle = counts.pop("idle (waiting in select)", 0)
    busy = sum(counts.values()) or 1
    shares = {name: count / busy for name, count in sorted(counts.items(), key=lambda item: -item[1])}
    return {**shares, "idle (waiting in select), of all samples": idle / ((busy + idle) or 1)}


def run_server(tmp: Path, http1: str, args: argparse.Namespace, subject: str, logins: bool,
               profile: str | None, workers: int = 1) -> dict[str, Any]:
    """Start auth (its own `teleport start` process, HTTP/1.1 served by ``http1``), issue
    certificates over mTLS for ``args.seconds``; with ``logins``, time full logins after."""
    from teleport_core.api.client import AuthClient, load_identity_dir, load_tls, register
    from teleport_core.pki import keys
    from teleport_core.pki.identity import LocalIdentity

    results: dict[str, Any] = {}
    data = tmp / "data"
    addr, diag = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = {"teleport": {"data_dir": str(data), "nodename": "bench", "diag_addr": diag,
                           "log": {"severity": "WARN"}},
              "auth_service": {"cluster_name": "bench.example", "listen_addr": addr, "workers": workers,
                               "authentication": {"second_factor": "off"},
                               "tokens": ["proxy:bench-proxy-token-0123456789"]},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    config_file = tmp / "teleport.yaml"
    config_file.write_text(json.dumps(config))
    # the auth server runs as its own `teleport start` process, as in production
    server = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.teleport", "start", "-c", str(config_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TELEPORT_HTTP1": http1})
    try:
        wait_ready(f"http://{diag}/readyz")

        async def over_api() -> None:
            async with AuthClient(addr, [load_identity_dir(data / "keys" / "auth")]) as admin:
                created = await admin.create_user("bench", ["access"], {"logins": ["root"]})
                # warm the pool: one connection per concurrent client, so no handshake is measured
                await asyncio.gather(*(admin.sign_user_cert("bench", subject) for _ in range(args.concurrency)))
                lean = None
                if args.client == "raw":
                    context = require_server_role(admin.credentials.context, AUTH)
                    lean = [LeanConnection(addr, context) for _ in range(args.concurrency)]
                    await asyncio.gather(*(conn.connect() for conn in lean))
                procs = tree(server.pid)  # with workers: the leader and each worker process
                cpu_before, switches_before = tree_cpu(procs), context_switches(procs)
                client_before = time.process_time()
                spy = profiler(server.pid, profile, args.seconds) if profile else None
                results["api_ssh_tls_user_certs_per_s"] = await api_rate(
                    admin, subject, args.seconds, args.concurrency, lean)
                for conn in lean or ():
                    conn.close()
                issued = results["api_ssh_tls_user_certs_per_s"] * args.seconds
                results["auth_cpu_ms_per_cert"] = (tree_cpu(procs) - cpu_before) * 1000 / issued
                # the clients' side (httpx, TLS, this process) shares the machine's cores with auth
                results["client_cpu_ms_per_cert"] = (time.process_time() - client_before) * 1000 / issued
                results["auth_context_switches_per_cert"] = (
                    context_switches(procs) - switches_before) / issued
                if spy is not None:
                    spy.wait(timeout=60)
                    results["profile"] = profile_summary(str(profile))
                pin = (await admin.status())["ca_pin"]
            if not logins:
                return
            key = keys.generate_private_key("ed25519")
            joined = await register(addr, {"token": "bench-proxy-token-0123456789", "role": "Proxy",
                                           "nodename": "bench-proxy", "public_key": keys.public_key_openssh(key)},
                                    [pin])
            proxy_id = LocalIdentity(keys.private_key_pem(key), joined.answer["tls_cert"].encode(),
                                     tuple(p.encode() for p in joined.answer["host_ca_pems"]))
            async with AuthClient(addr, [load_tls(proxy_id.client_context())]) as proxy:
                await proxy.complete_user_token(created["invite"]["token"], "bench-password-123")
                latencies = []
                for _ in range(args.logins):  # a TOTP code is accepted once per 30 s: second factor off here
                    start = time.perf_counter()
                    await proxy.login("bench", "bench-password-123", "", subject)
                    latencies.append(time.perf_counter() - start)
                results["login_latency_ms_median"] = statistics.median(latencies) * 1000

        asyncio.run(over_api())
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--logins", type=int, default=10)
    parser.add_argument("--client", choices=("raw", "httpx"), default="httpx",
                        help="the clients: AuthClient (httpx) or a lean HTTP/1.1 client (bench/lean_client.py), "
                             "which leaves more of a shared machine's cores to auth")
    parser.add_argument("--http1", default="httptools",
                        help="auth's HTTP/1.1 server(s), comma-separated (hypercorn, httptools): each gets its own "
                             "auth process, in turn, --rounds times")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each --http1 server, alternating")
    parser.add_argument("--workers", default="1",
                        help="auth_service.workers value(s), comma-separated (1,2): each with each --http1 server, "
                             "alternating; auth CPU is then the leader's and its workers' together")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the auth process with py-spy during the API phase (collapsed stacks to "
                             "FILE.<server>.<round>) and summarize where its time goes")
    args = parser.parse_args()
    http1s = [name.strip() for name in args.http1.split(",") if name.strip()]
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    # each variant: (label, HTTP/1.1 server, auth processes); the label is the server alone with one count
    variants = [(http1 if len(counts) == 1 else f"{http1}-w{n}", http1, n) for http1 in http1s for n in counts]
    servers = [label for label, _, _ in variants]

    from teleport_auth.authority import generate_authority
    from teleport_auth.issuer import issue_ssh_user_cert, issue_tls_user_cert

    from teleport_core.pki import keys
    from teleport_core.plugins import make_plugins
    from teleport_core.policy.access import Identity

    results: dict[str, Any] = {"load_average_before": os.getloadavg()}
    signer = ed25519.Ed25519PrivateKey.generate()
    results["raw_ed25519_sign_per_s"] = rate(lambda: signer.sign(b"x" * 64), args.seconds)
    plugins = make_plugins()
    ca = generate_authority("user", "bench.example")
    subject = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    identity = Identity("bench", roles=("access",), traits={"logins": ["root"]}, logins=("root",))
    results["in_process_ssh_user_cert_per_s"] = rate(
        lambda: issue_ssh_user_cert(ca, plugins.hook, public_key=subject, identity=identity), args.seconds
    )

    def pair() -> None:  # what one API call signs: an SSH and a TLS certificate
        issue_ssh_user_cert(ca, plugins.hook, public_key=subject, identity=identity)
        issue_tls_user_cert(ca, plugins.hook, public_key=subject, identity=identity)

    results["in_process_ssh_tls_pair_per_s"] = rate(pair, args.seconds)

    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for label, http1, count in variants:
            with tempfile.TemporaryDirectory() as tmp:
                profile = f"{args.profile}.{label}.{round_}" if args.profile else None
                run = run_server(Path(tmp), http1, args, subject, logins=not runs and args.logins > 0,
                                 profile=profile, workers=count)
            run.update(http1=label, workers=count, round=round_, load_average=os.getloadavg()[0])
            if "login_latency_ms_median" in run:
                results["login_latency_ms_median"] = run.pop("login_latency_ms_median")
            runs.append(run)
    results["runs"] = runs
    for http1 in servers:
        mine = [run for run in runs if run["http1"] == http1]
        results[f"{http1}_api_ssh_tls_user_certs_per_s"] = statistics.median(
            run["api_ssh_tls_user_certs_per_s"] for run in mine)
        results[f"{http1}_auth_cpu_ms_per_cert"] = statistics.median(run["auth_cpu_ms_per_cert"] for run in mine)
    if len(servers) > 1:
        first, other = servers[0], servers[1]
        results[f"auth_cpu_per_cert_{other}_vs_{first}"] = (
            results[f"{other}_auth_cpu_ms_per_cert"] / results[f"{first}_auth_cpu_ms_per_cert"])
    api = results[f"{servers[-1]}_api_ssh_tls_user_certs_per_s"]
    results["api_vs_ceiling"] = api / results["raw_ed25519_sign_per_s"]
    results["in_process_vs_ceiling"] = results["in_process_ssh_user_cert_per_s"] / results["raw_ed25519_sign_per_s"]
    results["api_vs_in_process_pair"] = api / results["in_process_ssh_tls_pair_per_s"]
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    print(f"load average before                 {results['load_average_before'][0]:>10.2f}")
    print(f"raw Ed25519 sign (ceiling)          {results['raw_ed25519_sign_per_s']:>10,.0f} /s")
    print(f"SSH user cert, in process           {results['in_process_ssh_user_cert_per_s']:>10,.0f} /s"
          f"   ({results['in_process_vs_ceiling']:.2f} of ceiling)")
    print(f"SSH+TLS pair, in process            {results['in_process_ssh_tls_pair_per_s']:>10,.0f} /s")
    for run in runs:
        print(f"[{run['http1']:>12} #{run['round']}] over mTLS {run['api_ssh_tls_user_certs_per_s']:>10,.0f} /s"
              f"   auth CPU {run['auth_cpu_ms_per_cert']:.2f} ms/pair (clients {run['client_cpu_ms_per_cert']:.2f}), "
              f"{run['auth_context_switches_per_cert']:.1f} switches/pair, load {run['load_average']:.1f}")
        for name, share in run.get("profile", {}).items():
            print(f"        {share:6.1%}  {name}")
    print(f"SSH+TLS user certs over mTLS API    {api:>10,.0f} /s"
          f"   ({args.concurrency} concurrent; 2 signatures each; {results['api_vs_in_process_pair']:.2f}"
          f" of the in-process pair; {servers[-1]}, median)")
    for http1 in servers:
        print(f"auth CPU per certificate pair       {results[f'{http1}_auth_cpu_ms_per_cert']:>10.2f} ms"
              f"   ({http1}, median; the auth process: TLS, HTTP, authorization, signing, durable audit event)")
    if len(servers) > 1:
        key = f"auth_cpu_per_cert_{servers[1]}_vs_{servers[0]}"
        print(f"auth CPU per pair, {servers[1]} / {servers[0]}  {results[key]:>8.2f}")
    if "login_latency_ms_median" in results:
        print(f"login via proxy identity            {results['login_latency_ms_median']:>10,.0f} ms median"
              "   (bcrypt cost 12 + 2 certs; second factor off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
