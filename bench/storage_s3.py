"""Upload/download throughput of the s3:// session storage (teleport-storage-s3).

    python bench/storage_s3.py [--endpoint URL] [--bucket NAME] [--sizes 1,8,64,256]
                               [--small 200] [--format text|json]

Without ``--endpoint`` it starts moto's S3 server (``pip install 'moto[server]'``) on a free
loopback port with dummy credentials; moto keeps objects in memory, so the figures measure the
plugin, boto3 and the HTTP path, not a disk or a network. Point ``--endpoint`` at a real
S3-compatible server (credentials from the standard AWS chain) for figures that mean more.

For each size in MiB: one upload (single PUT below 8 MiB, multipart above) and one download,
in MiB/s. ``--small``: that many 4 KiB recordings uploaded 16 at a time (recordings per second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_session_storage

MiB = 1 << 20


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port; returns the process and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return proc, url
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto server did not start (pip install 'moto[server]')") from None
            time.sleep(0.1)


async def run(uri: str, work: Path, sizes: list[int], small: int) -> dict[str, Any]:
    """Time uploads and downloads through the storage ``uri`` names."""
    results: dict[str, Any] = {"sizes": []}
    storage = await open_session_storage(make_plugins(), uri, work)
    try:
        for size in sizes:
            source = work / f"rec-{size}.cast"
            with open(source, "wb") as f:
                for _ in range(size):
                    f.write(os.urandom(MiB))
            start = time.perf_counter()
            await storage.upload(f"bench-{size}", source)
            up = time.perf_counter() - start
            start = time.perf_counter()
            await storage.download(f"bench-{size}", work / "out.cast")
            down = time.perf_counter() - start
            results["sizes"].append({"mib": size, "upload_mib_s": size / up, "download_mib_s": size / down})
            source.unlink()
        if small:
            source = work / "small.cast"
            source.write_bytes(os.urandom(4096))
            sem = asyncio.Semaphore(16)

            async def one(n: int) -> None:
                async with sem:
                    await storage.upload(f"small-{n}", source)

            start = time.perf_counter()
            await asyncio.gather(*(one(n) for n in range(small)))
            results["small_4k_per_s"] = small / (time.perf_counter() - start)
    finally:
        await storage.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="an S3-compatible endpoint (default: start moto on loopback)")
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--sizes", default="1,8,64,256", help="recording sizes in MiB, comma-separated")
    parser.add_argument("--small", type=int, default=200, help="number of 4 KiB recordings (0: skip)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()

    proc = None
    endpoint = args.endpoint
    if endpoint is None:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        proc, endpoint = start_moto()
    insecure = "&insecure=true" if endpoint.startswith("http://") else ""
    uri = f"s3://{args.bucket}/bench?region={args.region}&endpoint={endpoint}{insecure}"
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    try:
        results = asyncio.run(run(uri, work, [int(s) for s in args.sizes.split(",") if s], args.small))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if proc is not None:
            proc.terminate()
            proc.wait()
    results["endpoint"] = "moto (in-memory, loopback)" if proc is not None else endpoint
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return
    print(f"s3 session storage against {results['endpoint']}")
    for row in results["sizes"]:
        up, down = row["upload_mib_s"], row["download_mib_s"]
        print(f"  {row['mib']:>5} MiB: upload {up:7.1f} MiB/s, download {down:7.1f} MiB/s")
    if "small_4k_per_s" in results:
        print(f"  4 KiB recordings, 16 concurrent: {results['small_4k_per_s']:.0f} uploads/s")


if __name__ == "__main__":
    main()
