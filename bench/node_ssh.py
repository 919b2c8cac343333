"""The node service (``ssh_service``) against OpenSSH ``sshd``, side by side in one run.

    python bench/node_ssh.py [--size 1G] [--download-size 256M] [--runs 10] [--repeat 3]
                             [--login USER] [--cipher CIPHER] [--format text|json]

Starts an auth server (in this process) and a node (``teleport start``) for each recording
mode (``node`` and ``off``), plus ``sshd`` on a free port with a temporary config trusting the
same user CA (``TrustedUserCAKeys``), so the same OpenSSH client and certificate reach both.
Measures, with the real OpenSSH client:

* upload throughput: ``head -c SIZE /dev/zero | ssh host 'cat > /dev/null'`` (MiB/s);
* download throughput: ``ssh host 'head -c SIZE /dev/zero' > /dev/null`` (MiB/s; this is
  what a recording has to write);
* connection setup: ``ssh host true``, median of ``--runs``.

Throughputs are the best of ``--repeat`` transfers, taken in turn on the node and on sshd (on a
shared 2-vCPU machine one transfer can lose a third of its speed to a neighbour; noise only ever
slows a transfer down, so the best of a few is the figure that compares).

Ratios are node/sshd for throughput (higher is better) and node/sshd for setup time (lower
is better). ``--login`` picks the OS user both servers run the commands as (default: the
current user); its shell start-up files run on both sides alike. sshd (``UsePAM no``) refuses
a locked account: unlock a test user with ``usermod -p '*' USER``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

CLUSTER = "bench.test"
TOKEN = "bench-node-token-0123456789abcdef"
TELEPORT = str(Path(sys.executable).with_name("teleport"))
STEP_TIMEOUT = 600


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


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


@contextmanager
def cluster(work: Path, recording: str, login: str) -> Iterator[dict[str, Any]]:
    """An auth server with ``session_recording: recording`` and a node joined to it."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    auth_dir = work / f"auth-{recording}"
    config = {"teleport": {"data_dir": str(auth_dir), "nodename": "auth", "log": {"severity": "WARN"}},
              "auth_service": {"cluster_name": CLUSTER, "listen_addr": addr, "tokens": [f"node:{TOKEN}"],
                               "session_recording": recording},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60):
        pin = admin_call(auth_dir, addr, lambda a: a.status())["ca_pin"]
        node_port = free_port()
        node_dir = work / f"node-{recording}"
        node_dir.mkdir()
        (node_dir / "teleport.yaml").write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(node_dir / "data"), "nodename": "node", "auth_server": addr,
                         "auth_token": TOKEN, "ca_pin": pin,
                         "log": {"output": str(node_dir / "node.log"), "severity": "WARN"}},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"listen_addr": f"127.0.0.1:{node_port}"}}))
        node = subprocess.Popen([TELEPORT, "start", "-c", str(node_dir / "teleport.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(node_port)
            key = keys.generate_private_key("ed25519")
            key_path = work / f"id-{recording}"
            write_private(key_path, keys.private_key_openssh(key))

            async def sign(admin: AuthClient) -> dict[str, Any]:
                await admin.create_user("bench", ["access"], {"logins": [login]})
                return await admin.sign_user_cert("bench", keys.public_key_openssh(key), ttl="2h")

            certs = admin_call(auth_dir, addr, sign)
            write_public(Path(f"{key_path}-cert.pub"), certs["ssh_cert"] + "\n")
            known = admin_call(auth_dir, addr, lambda a: a.get_cert_authority("host"))["known_hosts"]
            user_ca = admin_call(auth_dir, addr, lambda a: a.get_cert_authority("user"))["ssh_public_keys"]
            (work / f"known-{recording}").write_text(known)
            yield {"port": node_port, "key": key_path, "known_hosts": work / f"known-{recording}",
                   "alias": f"node.{CLUSTER}", "user_ca": user_ca, "pid": node.pid, "addr": addr,
                   "auth_dir": auth_dir}
        finally:
            node.terminate()
            node.wait(30)


@contextmanager
def sshd(work: Path, user_ca: list[str]) -> Iterator[dict[str, Any]]:
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    port = free_port()
    host = keys.generate_private_key("ed25519")
    write_private(work / "sshd_host_key", keys.private_key_openssh(host))
    (work / "sshd_user_ca.pub").write_text("\n".join(user_ca) + "\n")
    (work / "known-sshd").write_text(f"[127.0.0.1]:{port} {keys.public_key_openssh(host)}\n")
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'sshd_host_key'}\n"
        f"TrustedUserCAKeys {work / 'sshd_user_ca.pub'}\nAuthorizedKeysFile none\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {work / 'sshd.pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([binary, "-D", "-f", str(work / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield {"port": port, "known_hosts": work / "known-sshd", "alias": None}
    finally:
        proc.terminate()
        proc.wait(30)


def ssh_cmd(target: dict[str, Any], key: Path, login: str, cipher: str, *command: str) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-p", str(target["port"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={target['known_hosts']}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-i", str(key), "-o", f"CertificateFile={key}-cert.pub"]
    if target["alias"]:
        argv += ["-o", f"HostKeyAlias={target['alias']}"]
    if cipher:
        argv += ["-c", cipher]
    return [*argv, f"{login}@127.0.0.1", *command]


def upload(target: dict[str, Any], key: Path, login: str, cipher: str, size: int) -> float:
    argv = ssh_cmd(target, key, login, cipher, "cat > /dev/null")
    source = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert source.stdout is not None
    start = time.perf_counter()
    try:
        result = subprocess.run(argv, stdin=source.stdout, capture_output=True, timeout=STEP_TIMEOUT)
    finally:
        source.stdout.close()  # so head gets SIGPIPE if ssh failed early
        source.kill()
        source.wait()
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"upload failed: {result.stderr.decode()[-500:]}")
    return size / elapsed / (1 << 20)


def download(target: dict[str, Any], key: Path, login: str, cipher: str, size: int) -> float:
    argv = ssh_cmd(target, key, login, cipher, f"head -c {size} /dev/zero")
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        result = subprocess.run(argv, stdout=sink, stderr=subprocess.PIPE, timeout=STEP_TIMEOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"download failed: {result.stderr.decode()[-500:]}")
    return size / elapsed / (1 << 20)


def setup_ms(target: dict[str, Any], key: Path, login: str, cipher: str, runs: int) -> float:
    argv = ssh_cmd(target, key, login, cipher, "true")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=STEP_TIMEOUT)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="upload size (default 1G)")
    parser.add_argument("--download-size", default="256M", help="download size (default 256M)")
    parser.add_argument("--runs", type=int, default=10, help="connection setups to take the median of")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per throughput figure (the best counts)")
    parser.add_argument("--login", default=os.environ.get("USER") or "root", help="OS login on both servers")
    parser.add_argument("--cipher", default="", help="force the client's cipher (default: negotiated)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    size, down_size = parse_size(args.size), parse_size(args.download_size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-node-ssh-") as tmp:
        work = Path(tmp)
        for recording in ("off", "node"):
            with cluster(work, recording, args.login) as node:
                key = node["key"]
                with sshd(work, node["user_ca"]) as openssh:
                    figures: dict[str, Any] = {"recording": recording}
                    targets = (("node", node), ("sshd", openssh))
                    for turn in range(max(1, args.repeat)):
                        for name, target in targets:
                            progress(f"recording {recording}: throughput {turn + 1}/{args.repeat} on {name}")
                            for figure, value in ((f"{name}_upload_mibs",
                                                   upload(target, key, args.login, args.cipher, size)),
                                                  (f"{name}_download_mibs",
                                                   download(target, key, args.login, args.cipher, down_size))):
                                figures[figure] = max(figures.get(figure, 0.0), value)
                    for name, target in targets:
                        progress(f"recording {recording}: setup on {name}")
                        figures[f"{name}_setup_ms"] = setup_ms(target, key, args.login, args.cipher, args.runs)
                    figures["upload_ratio"] = figures["node_upload_mibs"] / figures["sshd_upload_mibs"]
                    figures["download_ratio"] = figures["node_download_mibs"] / figures["sshd_download_mibs"]
                    figures["setup_ratio"] = figures["node_setup_ms"] / figures["sshd_setup_ms"]
                    rows.append(figures)
    if args.format == "json":
        print(json.dumps({"size": size, "download_size": down_size, "runs": args.runs, "repeat": args.repeat,
                          "login": args.login,
                          "cipher": args.cipher or "negotiated", "results": rows}, indent=2))
        return 0
    print(f"upload {args.size}, download {args.download_size} (best of {args.repeat}), setup median of {args.runs}, "
          f"login {args.login}, cipher {args.cipher or 'negotiated'}")
    header = f"{'recording':<10} {'':<6} {'upload MiB/s':>13} {'download MiB/s':>15} {'setup ms':>9}"
    print(header)
    for row in rows:
        for name in ("node", "sshd"):
            print(f"{row['recording']:<10} {name:<6} {row[f'{name}_upload_mibs']:>13.1f} "
                  f"{row[f'{name}_download_mibs']:>15.1f} {row[f'{name}_setup_ms']:>9.1f}")
        print(f"{row['recording']:<10} {'ratio':<6} {row['upload_ratio']:>13.2f} {row['download_ratio']:>15.2f} "
              f"{row['setup_ratio']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
