"""Hostile clients against the HTTPS listeners of one ``teleport start`` process (auth and proxy).

    python bench/hostile.py [--clients 50] [--gib 1] [--slow 500] [--format text|json]

For the auth port (``POST /v1/login``, no client certificate) and the proxy's web port
(``POST /v1/webapi/ssh/certs``), ``--clients`` parallel connections each push a ``--gib`` GiB
body, generated (one buffer sent again and again, nothing stored), without waiting for the
answer; a thread per connection takes whatever answer arrives. Once with ``Content-Length``,
once chunked. Reported: the server process's peak RSS growth during the attack (``VmHWM``
reset through ``/proc/PID/clear_refs`` before it), how many answers were 413, how many
connections ended with no answer seen (the server closes after its 413, and a TCP reset can
drop the answer before the client reads it), and a legitimate client's ``GET ping`` the whole
time (count, failures, p99 latency).

A warm-up round (the same clients, 4 MiB each, to the ``ping`` paths: a 405) runs first,
unmeasured, so the first row does not count the process's first-use growth (imports, arenas).

Then ``--slow`` slow-header connections per port (a request head started, one byte a second):
how long until the server closed each (max and median) and the legitimate client meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

TELEPORT = str(Path(sys.executable).with_name("teleport"))
CHUNK = 64 * 1024
PATHS = {"auth": "/v1/login", "proxy": "/v1/webapi/ssh/certs"}
PINGS = {"auth": "/v1/ping", "proxy": "/v1/webapi/ping"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def start(folder: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"auth": free_port(), "proxy": free_port()}
    diag = free_port()
    config = {
        "version": "v3",
        "teleport": {"data_dir": str(folder / "data"), "nodename": "hostile", "diag_addr": f"127.0.0.1:{diag}",
                     "log": {"output": str(folder / "teleport.log"), "severity": "WARN"}},
        "auth_service": {"cluster_name": "bench.example.com", "listen_addr": f"127.0.0.1:{ports['auth']}"},
        "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{ports['proxy']}",
                          "listen_addr": f"127.0.0.1:{free_port()}", "tunnel_listen_addr": f"127.0.0.1:{free_port()}"},
        "ssh_service": {"enabled": False},
    }
    (folder / "teleport.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "stderr", "wb") as out:
        proc = subprocess.Popen([TELEPORT, "start", "-c", str(folder / "teleport.yaml")], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"teleport start exited with {proc.returncode}; see {folder / 'stderr'}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{diag}/readyz", timeout=2).status_code == 200:
                return proc, ports
        time.sleep(0.2)
    raise SystemExit("teleport start not ready within 180 s")


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


class Prober(threading.Thread):
    """A legitimate client: ``GET ping`` on a port every 0.1 s on a fresh connection until stopped."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.url = f"https://127.0.0.1:{port}{path}"
        self.stopping = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            begun = time.perf_counter()
            try:
                status = httpx.get(self.url, verify=False, timeout=10).status_code
                if status != 200:
                    self.failures.append(str(status))
                else:
                    self.latencies.append(time.perf_counter() - begun)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            self.stopping.wait(0.1)

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"served": len(lat), "failed": len(self.failures),
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None}


async def push(port: int, path: str, size: int, chunked: bool, answers: list[str]) -> None:
    """One hostile client: the head, then ``size`` bytes of body as fast as the server takes them;
    a second task takes whatever answer arrives (the sender never waits for it)."""
    body = b"x" * CHUNK
    frame = f"{CHUNK:x}\r\n".encode() + body + b"\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    except OSError as exc:
        answers.append(f"connect failed: {exc}")
        return

    async def take() -> bytes:
        got = b""
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                got += data
        return got

    taking = asyncio.create_task(take())
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        writer.write(head.encode())
        sent = 0
        while sent < size and not taking.done():
            writer.write(frame if chunked else body)
            await writer.drain()
            sent += CHUNK
    try:
        answer = await asyncio.wait_for(taking, 60)
    except TimeoutError:
        answer = b"(no answer, connection still open)"
    writer.close()
    answers.append(answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "none")


async def pushes(port: int, path: str, size: int, chunked: bool, clients: int) -> list[str]:
    """The clients' answers; "stuck" for those still pushing after 120 s (the server neither reads nor closes)."""
    answers: list[str] = []
    tasks = [asyncio.create_task(push(port, path, size, chunked, answers)) for _ in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=120)
    for task in pending:
        task.cancel()
    return answers + ["stuck"] * len(pending)


def flood(pid: int, ports: dict[str, int], clients: int, size: int) -> list[dict[str, Any]]:
    rows = []
    for target, port in ports.items():  # warm-up, not measured: the first connections' imports and buffers
        asyncio.run(pushes(port, PINGS[target], 4 * 2**20, True, clients))  # (not the login: it is rate-limited)
    for target, port in ports.items():
        for chunked in (False, True):
            prober = Prober(port, PINGS[target])
            prober.start()
            time.sleep(0.5)
            reset_peak(pid)
            before = rss(pid, "VmRSS")
            begun = time.monotonic()
            answers = asyncio.run(pushes(port, PATHS[target], size, chunked, clients))
            elapsed = time.monotonic() - begun
            peak = rss(pid, "VmHWM")
            prober.stopping.set()
            prober.join()
            rows.append({"target": target, "body": "chunked" if chunked else "content-length", "clients": clients,
                         "rss_before_mib": round(before / 2**20, 1),
                         "peak_growth_mib": round((peak - before) / 2**20, 1),
                         "answers": {a: answers.count(a) for a in sorted(set(answers))},
                         "seconds": round(elapsed, 1), "legit": prober.report()})
    return rows


def slow_heads(ports: dict[str, int], count: int) -> list[dict[str, Any]]:
    rows = []
    for target, port in ports.items():
        prober = Prober(port, PINGS[target])
        prober.start()
        socks: list[ssl.SSLSocket] = []
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=60)
            socks.append(client_context().wrap_socket(raw))
        opened = time.monotonic()
        closed_after: list[float] = []
        lock = threading.Lock()

        def drip(sock: ssl.SSLSocket, path: str = PINGS[target], opened: float = opened, lock: threading.Lock = lock,
                 closed_after: list[float] = closed_after) -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
                sock.settimeout(1.0)
                while time.monotonic() - opened < 120:
                    sock.sendall(b"X")
                    try:
                        if sock.recv(100) == b"":
                            break
                    except TimeoutError:
                        continue
            with lock:
                closed_after.append(time.monotonic() - opened)
            sock.close()

        threads = [threading.Thread(target=drip, args=(sock,), daemon=True) for sock in socks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        prober.stopping.set()
        prober.join()
        rows.append({"target": target, "connections": count, "closed": len(closed_after),
                     "closed_after_max_s": round(max(closed_after), 1),
                     "closed_after_median_s": round(statistics.median(closed_after), 1), "legit": prober.report()})
    return rows


def main() -> None:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # our clients writing to connections the server cut
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        proc, ports = start(Path(tmp))
        try:
            bodies = flood(proc.pid, ports, args.clients, int(args.gib * 2**30))
            slow = slow_heads(ports, args.slow)
            alive = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {"bodies": bodies, "slow_headers": slow, "server_alive": alive}
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"{args.clients} parallel {args.gib:g} GiB bodies per row, answers not awaited:")
    for row in bodies:
        print(f"  {row['target']:5} {row['body']:14} peak RSS growth {row['peak_growth_mib']:6.1f} MiB "
              f"(from {row['rss_before_mib']} MiB)  answers {row['answers']}  {row['seconds']} s  "
              f"legit: {row['legit']}")
    for row in slow:
        print(f"  {row['target']:5} {row['connections']} slow-header connections: {row['closed']} closed, "
              f"after max {row['closed_after_max_s']} s (median {row['closed_after_median_s']} s)  "
              f"legit: {row['legit']}")
    print(f"server alive at the end: {alive}")


if __name__ == "__main__":
    main()
