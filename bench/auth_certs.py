"""User-certificate issuance: in process, over the mutual-TLS API, beside the raw signing rate
of the CA's key type (the ceiling), plus full login latency (bcrypt + two certificates).

    python bench/auth_certs.py [--seconds 3] [--concurrency 16] [--format text|json]

Starts a real auth server as its own `teleport start` process (SQLite state in a temporary
directory); the client side runs in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519


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


async def api_rate(client: Any, public_key: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.sign_user_cert("bench", public_key, ttl="1h")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--logins", type=int, default=10)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()

    from teleport_auth.authority import generate_authority
    from teleport_auth.issuer import issue_ssh_user_cert

    from teleport_core.api.client import AuthClient, load_identity_dir, load_tls, register
    from teleport_core.pki import keys
    from teleport_core.pki.identity import LocalIdentity
    from teleport_core.plugins import make_plugins
    from teleport_core.policy.access import Identity

    results: dict[str, Any] = {}
    signer = ed25519.Ed25519PrivateKey.generate()
    results["raw_ed25519_sign_per_s"] = rate(lambda: signer.sign(b"x" * 64), args.seconds)
    plugins = make_plugins()
    ca = generate_authority("user", "bench.example")
    subject = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    identity = Identity("bench", roles=("access",), traits={"logins": ["root"]}, logins=("root",))
    results["in_process_ssh_user_cert_per_s"] = rate(
        lambda: issue_ssh_user_cert(ca, plugins.hook, public_key=subject, identity=identity), args.seconds
    )

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        addr, diag = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = {"teleport": {"data_dir": str(data), "nodename": "bench", "diag_addr": diag,
                               "log": {"severity": "WARN"}},
                  "auth_service": {"cluster_name": "bench.example", "listen_addr": addr,
                                   "authentication": {"second_factor": "off"},
                                   "tokens": ["proxy:bench-proxy-token-0123456789"]},
                  "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
        config_file = Path(tmp) / "teleport.yaml"
        config_file.write_text(json.dumps(config))
        # the auth server runs as its own `teleport start` process, as in production
        server = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.teleport", "start", "-c", str(config_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://{diag}/readyz")

            async def over_api() -> None:
                async with AuthClient(addr, [load_identity_dir(data / "keys" / "auth")]) as admin:
                    created = await admin.create_user("bench", ["access"], {"logins": ["root"]})
                    await admin.sign_user_cert("bench", subject)  # warm the pool
                    results["api_ssh_tls_user_certs_per_s"] = await api_rate(
                        admin, subject, args.seconds, args.concurrency)
                    pin = (await admin.status())["ca_pin"]
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
    results["api_vs_ceiling"] = results["api_ssh_tls_user_certs_per_s"] / results["raw_ed25519_sign_per_s"]
    results["in_process_vs_ceiling"] = results["in_process_ssh_user_cert_per_s"] / results["raw_ed25519_sign_per_s"]
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    print(f"raw Ed25519 sign (ceiling)          {results['raw_ed25519_sign_per_s']:>10,.0f} /s")
    print(f"SSH user cert, in process           {results['in_process_ssh_user_cert_per_s']:>10,.0f} /s"
          f"   ({results['in_process_vs_ceiling']:.2f} of ceiling)")
    print(f"SSH+TLS user certs over mTLS API    {results['api_ssh_tls_user_certs_per_s']:>10,.0f} /s"
          f"   ({args.concurrency} concurrent; 2 signatures each)")
    print(f"login via proxy identity            {results['login_latency_ms_median']:>10,.0f} ms median"
          "   (bcrypt cost 12 + 2 certs; second factor off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
