"""A legitimate OpenSSH login to the node during a banner-only connection flood.

    python bench/ssh_flood.py [--flood 2000] [--tries 20] [--sources 1] [--victim 127.0.0.2]
                              [--node-tree DIR] [--format text|json]

Starts an auth server (in this process) and a node (``teleport start``, default
``connection_limits``), then keeps ``--flood`` TCP connections to the node's SSH port that
send only an SSH banner, from ``--sources`` loopback addresses (127.0.1.1, 127.0.1.2 ...;
1: the flood comes from 127.0.1.1 alone). Every connection the node closes or refuses is
reopened at once, so the pressure holds for the whole run. Meanwhile the real OpenSSH client
logs in ``--tries`` times (``ssh -b VICTIM node true`` with a user certificate, one after the
other) and the figures are the login times: p50, p99 (of 20 tries: the slowest) and how many
failed. ``--victim`` is the client's address (``127.0.1.1`` puts the victim behind the
flooding address itself).

``--node-tree DIR`` runs the node from another checkout (e.g. ``git archive <commit> | tar -x
-C DIR``), to compare with the behaviour before ``connection_limits``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

CLUSTER = "flood.test"
TOKEN = "flood-node-token-0123456789abcdef"
TELEPORT = str(Path(sys.executable).with_name("teleport"))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def admin_call(data_dir: Path, addr: str, fn: Any) -> Any:
    import asyncio

    async def body() -> Any:
        async with AuthClient(addr, [load_identity_dir(data_dir / "keys" / "auth")]) as admin:
            return await fn(admin)

    return asyncio.run(body())


class Flood:
    """Holds ``count`` banner-only connections to ``port`` from ``sources``, reopening closed ones."""

    def __init__(self, port: int, count: int, sources: list[str]) -> None:
        self.port = port
        self.count = count
        self.sources = sources
        self.selector = selectors.DefaultSelector()
        self.stopping = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open_one(self, slot: int) -> None:
        source = self.sources[slot % len(self.sources)]
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0))
            sock.sendall(b"SSH-2.0-flood\r\n")
            sock.setblocking(False)
        except OSError:
            return
        self.opened += 1
        self.selector.register(sock, selectors.EVENT_READ, slot)

    def run(self) -> None:
        for slot in range(self.count):
            self.open_one(slot)
        while not self.stopping.is_set():
            for key, _ in self.selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # the server's banner and key exchange: ignored, never answered
                self.selector.unregister(sock)
                sock.close()
                self.closed_by_server += 1
                if not self.stopping.is_set():
                    self.open_one(key.data)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        for key in list(self.selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000, help="banner-only connections held open")
    parser.add_argument("--tries", type=int, default=20, help="legitimate ssh logins during the flood")
    parser.add_argument("--sources", type=int, default=1, help="flooding addresses (127.0.1.1 ...)")
    parser.add_argument("--victim", default="127.0.0.2", help="the legitimate client's address")
    parser.add_argument("--node-tree", type=Path, help="run the node from this checkout (PYTHONPATH)")
    parser.add_argument("--login", default=os.environ.get("USER") or "root")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(args.sources)]
    with tempfile.TemporaryDirectory(prefix="ssh-flood-") as tmp:
        work = Path(tmp)
        port = free_port()
        addr = f"127.0.0.1:{port}"
        auth_dir = work / "auth"
        config = {"teleport": {"data_dir": str(auth_dir), "nodename": "auth", "log": {"severity": "ERROR"}},
                  "auth_service": {"cluster_name": CLUSTER, "listen_addr": addr, "tokens": [f"node:{TOKEN}"]},
                  "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
        with start_cluster(config, make_plugins(), timeout=60):
            pin = admin_call(auth_dir, addr, lambda a: a.status())["ca_pin"]
            node_port = free_port()
            node_dir = work / "node"
            node_dir.mkdir()
            (node_dir / "teleport.yaml").write_text(yaml.safe_dump({
                "teleport": {"data_dir": str(node_dir / "data"), "nodename": "node", "auth_server": addr,
                             "auth_token": TOKEN, "ca_pin": pin,
                             "log": {"output": str(node_dir / "node.log"), "severity": "WARN"}},
                "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
                "ssh_service": {"listen_addr": f"127.0.0.1:{node_port}"}}))
            env = dict(os.environ)
            if args.node_tree:
                tree = args.node_tree.resolve()
                env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (tree, tree / "plugins" / "node"))
            node = subprocess.Popen([TELEPORT, "start", "-c", str(node_dir / "teleport.yaml")], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_port(node_port)
                figures = measure(args, work, auth_dir, addr, node_port, sources)
            finally:
                node.terminate()
                node.wait(30)
    if args.format == "json":
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


def measure(args: argparse.Namespace, work: Path, auth_dir: Path, addr: str, node_port: int,
            sources: list[str]) -> dict[str, Any]:
    key = keys.generate_private_key("ed25519")
    key_path = work / "id"
    write_private(key_path, keys.private_key_openssh(key))

    async def sign(admin: AuthClient) -> dict[str, Any]:
        await admin.create_user("victim", ["access"], {"logins": [args.login]})
        return await admin.sign_user_cert("victim", keys.public_key_openssh(key), ttl="2h")

    certs = admin_call(auth_dir, addr, sign)
    write_public(Path(f"{key_path}-cert.pub"), certs["ssh_cert"] + "\n")
    known = work / "known_hosts"
    known.write_text(admin_call(auth_dir, addr, lambda a: a.get_cert_authority("host"))["known_hosts"])
    argv = ["ssh", "-F", "/dev/null", "-p", str(node_port), "-b", args.victim, "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias=node.{CLUSTER}", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-i", str(key_path), "-o", f"CertificateFile={key_path}-cert.pub",
            "-o", "ConnectTimeout=30", f"{args.login}@127.0.0.1", "true"]

    def login() -> tuple[float, bool, str]:
        start = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        return time.perf_counter() - start, result.returncode == 0, result.stderr.strip()[-200:]

    idle = [login()[0] for _ in range(3)]
    flood = Flood(node_port, args.flood, sources)
    progress(f"flooding with {args.flood} banner-only connections from {len(sources)} address(es)")
    flood.start()
    time.sleep(5)  # the flood is in place (and has met the node's limits)
    times, failures, errors = [], 0, []
    for i in range(args.tries):
        seconds, ok, stderr = login()
        times.append(seconds)
        if not ok:
            failures += 1
            errors.append(stderr)
        progress(f"try {i + 1}: {seconds:.2f}s {'ok' if ok else 'FAILED: ' + stderr}")
    held = len(flood.selector.get_map())
    flood.stop()
    ordered = sorted(times)
    return {"flood": args.flood, "flood_sources": len(sources), "victim": args.victim,
            "node_tree": str(args.node_tree or "this checkout"),
            "idle_login_s": round(statistics.median(idle), 3),
            "login_p50_s": round(statistics.median(ordered), 3),
            "login_p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            "failed": failures, "tries": args.tries, "flood_open_at_end": held,
            "flood_connections_opened": flood.opened, "flood_closed_by_node": flood.closed_by_server,
            "errors": errors[:3]}


if __name__ == "__main__":
    sys.exit(main())
