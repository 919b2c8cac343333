"""Proxy recording of an agentless OpenSSH node against ``ssh -J`` through an sshd jump host, in one run.

    python bench/proxy_recording.py [--size 256M] [--upload-size 256M] [--runs 10] [--repeat 3]
                                    [--login USER] [--recording proxy|proxy-sync] [--format text|json]

Starts, in this process, a cluster with auth and the proxy (``session_recording: proxy``), then
two OpenSSH ``sshd`` on free ports, both with host certificates from the cluster's host CA and
trusting its user CA: the *target* (registered as an agentless node, ``sub_kind: openssh``) and
a *jump host*. The same OpenSSH client and user certificate reach the target two ways:

* ``proxy``: ``ssh -J bench@proxy login@target.<cluster>``: the proxy terminates SSH, checks
  the user, records the output and dials sshd with a per-session certificate from auth;
* ``jump``: ``ssh -J login@jumphost login@target``: sshd forwards the bytes (no recording).

Figures: download throughput (``head -c SIZE /dev/zero`` on the target: every byte is recorded
at the proxy), upload throughput (``cat > /dev/null``), connection setup (``ssh ... true``,
median of ``--runs``: at the proxy this includes the two certificates from auth). Throughputs are
the best of ``--repeat``, taken in turn. Ratios: proxy/jump (throughput: higher is better; setup:
lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node_ssh import parse_size, progress

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing import openssh
from teleport_core.testing.cluster import start_cluster

CLUSTER = "bench.test"
NODE_UUID = "0b5e7c1a-0000-4000-8000-00000000be0c"
STEP_TIMEOUT = 600


def sshd(folder: Path, admin: Any, names: list[str], user_ca: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """An sshd with a host certificate for ``names`` from the cluster, trusting the user CA."""
    folder.mkdir()
    key = keys.generate_private_key("ed25519")
    write_private(folder / "host", keys.private_key_openssh(key))

    async def sign(client: AuthClient) -> dict[str, Any]:
        return await client.call("POST", "/v1/certs/openssh-host",  # type: ignore[no-any-return]
                                 {"public_key": keys.public_key_openssh(key), "principals": names})

    write_public(folder / "host-cert.pub", admin(sign)["ssh_cert"] + "\n")
    write_public(folder / "user_ca.pub", "".join(line + "\n" for line in user_ca))
    return openssh.start_sshd(folder, host_key=folder / "host", host_cert=folder / "host-cert.pub",
                              user_ca=folder / "user_ca.pub", extra=["AllowTcpForwarding yes", "LogLevel ERROR"])


def timed(argv: list[str], stdin: Any = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True,
                   timeout=STEP_TIMEOUT)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M", help="download size (recorded at the proxy; default 256M)")
    parser.add_argument("--upload-size", default="256M", help="upload size (default 256M)")
    parser.add_argument("--runs", type=int, default=10, help="connection setups to take the median of")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per throughput figure (the best counts)")
    parser.add_argument("--login", default=os.environ.get("USER") or "root", help="OS login on the sshd hosts")
    parser.add_argument("--recording", choices=("proxy", "proxy-sync"), default="proxy",
                        help="the cluster's session_recording (proxy-sync: streamed to auth while it runs)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if not (Path(openssh.SSHD).exists() and shutil.which("ssh")):
        parser.error("needs OpenSSH sshd and ssh (apt-get install openssh-server openssh-client)")
    size, upload = parse_size(args.size), parse_size(args.upload_size)
    with tempfile.TemporaryDirectory(prefix="bench-proxy-rec-") as tmp:
        work = Path(tmp)
        config = {"teleport": {"data_dir": str(work / "auth"), "nodename": "proxy", "log": {"severity": "WARN"}},
                  "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                                   "session_recording": args.recording, "authentication": {"second_factor": "off"}},
                  "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                                    "tunnel_listen_addr": "127.0.0.1:0"},
                  "ssh_service": {"enabled": False}}
        progress("starting auth and the proxy")
        with start_cluster(config, make_plugins(), timeout=60) as handle:
            addr = handle.process.services["auth_service"].address
            proxy = handle.process.services["proxy_service"]

            def admin(fn: Any) -> Any:
                async def body() -> Any:
                    async with AuthClient(addr, [load_identity_dir(work / "auth" / "keys" / "auth")]) as client:
                        return await fn(client)

                return asyncio.run(body())

            user_ca = admin(lambda a: a.get_cert_authority("user"))["ssh_public_keys"]
            host_ca = admin(lambda a: a.get_cert_authority("host"))["ssh_public_keys"]
            target, target_port = sshd(work / "target", admin, ["target", "127.0.0.1", NODE_UUID], user_ca)
            jump, jump_port = sshd(work / "jump", admin, ["127.0.0.1"], user_ca)
            try:
                admin(lambda a: a.create_resources([{
                    "kind": "node", "sub_kind": "openssh", "version": "v2",
                    "metadata": {"name": NODE_UUID, "labels": {"env": "bench"}},
                    "spec": {"addr": f"127.0.0.1:{target_port}", "hostname": "target"}}]))
                key = keys.generate_private_key("ed25519")
                write_private(work / "id", keys.private_key_openssh(key))

                async def sign(client: AuthClient) -> dict[str, Any]:
                    await client.create_user("bench", ["access"], {"logins": [args.login]})
                    return await client.sign_user_cert("bench", keys.public_key_openssh(key), ttl="2h")

                write_public(work / "id-cert.pub", admin(sign)["ssh_cert"] + "\n")
                (work / "known_hosts").write_text("".join(f"@cert-authority * {k}\n" for k in host_ca))
                (work / "ssh_config").write_text("Host *\n" + "".join(f"    {line}\n" for line in (
                    f"IdentityFile {work / 'id'}", f"CertificateFile {work / 'id-cert.pub'}",
                    f"UserKnownHostsFile {work / 'known_hosts'}", "GlobalKnownHostsFile /dev/null",
                    "StrictHostKeyChecking yes", "IdentitiesOnly yes", "BatchMode yes")))
                ssh = ["ssh", "-F", str(work / "ssh_config")]
                ways = {
                    "proxy": [*ssh, "-J", f"bench@127.0.0.1:{proxy.ssh_address.port}",
                              f"{args.login}@target.{CLUSTER}"],
                    "jump": [*ssh, "-J", f"{args.login}@127.0.0.1:{jump_port}", "-p", str(target_port),
                             f"{args.login}@127.0.0.1"],
                }
                for argv in ways.values():  # both work before anything is measured
                    subprocess.run([*argv, "true"], check=True, timeout=60, capture_output=True)
                setup: dict[str, list[float]] = {name: [] for name in ways}
                down: dict[str, list[float]] = {name: [] for name in ways}
                up: dict[str, list[float]] = {name: [] for name in ways}
                progress(f"setup x{args.runs}, download {args.size} and upload {args.upload_size} x{args.repeat}")
                for _ in range(args.runs):
                    for name, argv in ways.items():
                        setup[name].append(timed([*argv, "true"]))
                for _ in range(args.repeat):
                    for name, argv in ways.items():
                        down[name].append(size / timed([*argv, f"head -c {size} /dev/zero"]) / (1 << 20))
                        with subprocess.Popen(["head", "-c", str(upload), "/dev/zero"], stdout=subprocess.PIPE) as src:
                            up[name].append(upload / timed([*argv, "cat > /dev/null"], stdin=src.stdout) / (1 << 20))
            finally:
                for proc in (target, jump):
                    proc.terminate()
                    proc.wait(10)
            recorded = sorted((work / "auth" / "log" / "upload" / "proxy-sessions").glob("*"))
    result = {
        "setup_ms": {n: round(statistics.median(v) * 1000, 1) for n, v in setup.items()},
        "download_mib_s": {n: round(max(v), 1) for n, v in down.items()},
        "upload_mib_s": {n: round(max(v), 1) for n, v in up.items()},
        "download_bytes": size, "upload_bytes": upload, "runs": args.runs, "repeat": args.repeat,
        "left_in_spool": len(recorded),
    }
    result["ratios"] = {
        "download": round(result["download_mib_s"]["proxy"] / result["download_mib_s"]["jump"], 2),
        "upload": round(result["upload_mib_s"]["proxy"] / result["upload_mib_s"]["jump"], 2),
        "setup": round(result["setup_ms"]["proxy"] / result["setup_ms"]["jump"], 2),
    }
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'':24}{'proxy (recorded)':>18}{'ssh -J via sshd':>18}{'ratio':>8}")
    rows = (("download MiB/s", "download_mib_s", "download"), ("upload MiB/s", "upload_mib_s", "upload"),
            ("setup ms (median)", "setup_ms", "setup"))
    for label, key, ratio in rows:
        print(f"{label:24}{result[key]['proxy']:>18}{result[key]['jump']:>18}{result['ratios'][ratio]:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
