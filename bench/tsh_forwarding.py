"""Throughput of ``tsh ssh -R`` and ``tsh ssh -D`` through one process running auth, the proxy and
our node, all on 127.0.0.1.

    python bench/tsh_forwarding.py [--mib 256] [--runs 3]

- ``-R``: N MiB written into the node's listener arrive at a sink on tsh's side (the node's
  ``forwarded-tcpip`` channel, spliced on its pump, and tsh's splice to the sink);
- ``-D``: curl downloads an N MiB file from a local HTTP server through ``--socks5-hostname``
  (tsh's SOCKS handshake, a ``direct-tcpip`` channel, the node's connection to the server).

Best of ``--runs``. Uses the proxy tests' harness (plugins/proxy/tests/proxy_helpers.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins" / "proxy" / "tests"))

from proxy_helpers import LOGIN, Env, free_port, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.sockets import listening
from teleport_core.testing.waiting import wait_for

PASSWORD = "a long enough password 123"
NODE = "bench-node"


@contextlib.contextmanager
def tsh(home: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", "-N", *args, f"{LOGIN}@{NODE}"],
                            env={**os.environ, "TELEPORT_HOME": str(home)}, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def remote(home: Path, size: int) -> float:
    sink = socket.create_server(("127.0.0.1", 0))
    received: list[int] = []

    def drain() -> None:
        while True:
            try:
                conn, _ = sink.accept()
            except OSError:
                return
            count = 0
            while data := conn.recv(1 << 20):
                count += len(data)
            conn.close()
            if count:
                received.append(count)

    threading.Thread(target=drain, daemon=True).start()
    port = free_port()
    block = os.urandom(1 << 20)
    with tsh(home, "-R", f"{port}:127.0.0.1:{sink.getsockname()[1]}"):
        wait_for(lambda: listening(port), what="the -R listener", interval=0.2, timeout=60)
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(size >> 20):
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
        wait_for(lambda: received, what="the sink", timeout=600, interval=0.02)
        elapsed = time.monotonic() - start
    sink.close()
    assert received[0] == size, received
    return size / 2**20 / elapsed


def dynamic(home: Path, root: Path, size: int) -> float:
    (root / "blob").write_bytes(os.urandom(size))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    try:
        with tsh(home, "-D", str(port)):
            wait_for(lambda: listening(port), what="the -D listener", interval=0.2, timeout=60)
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                                  "--socks5-hostname", f"127.0.0.1:{port}",
                                  f"http://localhost:{server.server_address[1]}/blob"],
                                 capture_output=True, text=True, check=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    got, seconds = out.stdout.split()
    assert int(got) == size, out.stdout
    return size / 2**20 / float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    root = Path(tempfile.mkdtemp(prefix="tsh-forwarding-bench-"))
    with start_cluster(one_process_config(root, NODE), make_plugins(), timeout=120) as cluster:
        env = Env(root, cluster, cluster)
        env.signup("bench", ["access"], [LOGIN], PASSWORD)
        wait_for(lambda: env.call("get_nodes"), what="the node")
        home = root / "home"
        home.mkdir()
        login = env.tsh(home, "login", f"--proxy={env.web}", "--user=bench", "--insecure", stdin=f"{PASSWORD}\n")
        assert login.returncode == 0, login.stderr
        best_r = max(remote(home, size) for _ in range(args.runs))
        best_d = max(dynamic(home, root, size) for _ in range(args.runs))
    print(f"tsh ssh -R: {args.mib} MiB into the node's listener, best of {args.runs}: {best_r:.0f} MiB/s")
    print(f"tsh ssh -D: {args.mib} MiB downloaded by curl --socks5-hostname, best of {args.runs}: {best_d:.0f} MiB/s")


if __name__ == "__main__":
    main()
