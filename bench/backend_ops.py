"""Operations per second of a cluster-state backend, opened from a ``teleport.storage`` mapping.

    python bench/backend_ops.py                       # the embedded sqlite backend
    python bench/backend_ops.py --n 2000 --format json
    python bench/backend_ops.py --config '{"type": "etcd", "peers": ["127.0.0.1:2379"], "prefix": "/bench"}'
    python bench/backend_ops.py --config '{"type": "etcd", ...}' --against '{"type": "sqlite"}'

Each operation runs ``--n`` times sequentially (one at a time) and then ``--n`` times from
``--concurrency`` tasks at once. ``put`` writes fresh keys, ``get`` reads them back, ``range``
reads a page of ``--page`` items under a 100-key prefix, ``create`` makes fresh keys and
``cas`` swaps the values of existing keys (each task its own keys, so swaps do not collide).
The backend's ``data_dir`` is a temporary directory (``--data-dir`` to choose one); the
benchmark writes only under ``/bench/`` and deletes it afterwards. ``--against`` measures a
second backend in the same run, after the first, and adds each rate's ratio to it;
``--raw-etcd`` measures etcd's own ``Put`` call on a gRPC channel (the primitive, no backend)
to the first peer, and the backend's put rate as a ratio of it.

Measured (2 cores shared with four other benchmarking sessions; one etcd
3.4.23 member on loopback, fsync on, default settings; n=2000)::

    python bench/backend_ops.py --n 2000 --against '{"type": "sqlite"}' \
        --config '{"type": "etcd", "peers": ["http://127.0.0.1:23791"], "prefix": "/bench"}'

    run A (load average 9.7-11.5; n=2000):
    before (issue 17's start: the JSON gateway through httpx; PYTHONPATH=<the plugin at 9f8ecbc>):
    op        sequential ops/s    16 tasks ops/s  ratio seq  ratio tasks   (to SQLite, same run)
    put                    324               223      0.45x        0.04x
    get                    275               186      0.03x        0.01x
    range                  234               156      0.06x        0.02x
    create                 304               272      0.56x        0.05x
    cas                    119               100      0.11x        0.02x
    after (native gRPC, group commit of concurrent puts; reads not yet batched), with --raw-etcd:
    put                  1,290             4,061      1.97x        0.75x
    get                  1,252             1,326      0.16x        0.07x
    range                  823             1,196      0.18x        0.39x
    create                 634             1,530      1.32x        0.22x
    cas                    264               438      0.17x        0.08x
    raw etcd Put: 1,374/s sequential (the backend's put 0.94x of it), 4,010/s with 16 tasks (1.01x)

    run B (final code, reads batched too; load average 32-45, another session's burst; n=1000):
    before: put 213 / 250 (16 tasks), get 244 / 226, create 242 / 101, cas 74 / 34
    after:  put 650 / 4,242 (16 tasks), get 836 / 7,441, range 647 / 1,184, create 518 / 1,077,
            cas 273 / 884; raw etcd Put 1,154 / 5,026 (the backend's put 0.56x / 0.84x of it)

Puts with 16 tasks: 223-250/s -> 4,061-4,242/s (17-18x; the goal was 3,000/s); gets with 16
tasks 186-226/s -> 7,441/s. SQLite's own rates moved 3-6x between runs minutes apart (put with 16
tasks 3,062 to 17,466/s in run B): the machine's load, not the backends, moved them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Backend, Item, range_end

ROOT = b"/bench/"
VALUE = os.urandom(256)

Op = Callable[[int], Awaitable[Any]]


async def timed(op: Op, n: int, concurrency: int) -> float:
    """Ops per second of ``op(0..n-1)`` run by ``concurrency`` tasks (1: sequentially)."""

    async def worker(first: int) -> None:
        for i in range(first, n, concurrency):
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return n / (time.perf_counter() - start)


def operations(backend: Backend, mode: str, workers: int, page: int) -> dict[str, Op]:
    """The measured operations of one run; ``mode`` keeps its keys apart from the other run's."""
    tag = mode.encode() + b"/"

    def key(kind: bytes, i: int) -> bytes:
        return ROOT + kind + b"/" + tag + f"{i:08d}".encode()

    async def put(i: int) -> None:
        await backend.put(Item(key(b"put", i), VALUE))

    async def get(i: int) -> None:
        await backend.get(key(b"put", i))

    async def range_(i: int) -> None:
        prefix = ROOT + b"range/"
        items = await backend.get_range(prefix, range_end(prefix), limit=page)
        assert len(items) == page

    async def create(i: int) -> None:
        await backend.create(Item(key(b"create", i), VALUE))

    async def cas(i: int) -> None:
        k = key(b"cas", i % workers)  # task w runs i = w, w + workers, ...: its own key
        current = await backend.get(k)
        await backend.compare_and_swap(current, Item(k, str(i).encode()))

    async def setup(_: int) -> None:
        for w in range(workers):
            await backend.put(Item(key(b"cas", w), b"start"))

    return {"setup": setup, "put": put, "get": get, "range": range_, "create": create, "cas": cas}


async def bench(backend: Backend, n: int, concurrency: int, page: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    await backend.delete_range(ROOT, range_end(ROOT))
    for i in range(100):
        await backend.put(Item(ROOT + b"range/" + f"{i:03d}".encode(), VALUE))
    for mode, workers in (("sequential", 1), ("concurrent", concurrency)):
        ops = operations(backend, mode, workers, page)
        await ops.pop("setup")(0)
        for name, op in ops.items():
            rate = await timed(op, n, workers)
            results.append({"op": name, "mode": mode, "tasks": workers, "n": n, "ops_per_s": round(rate, 1)})
    await backend.delete_range(ROOT, range_end(ROOT))
    return results


async def raw_etcd_puts(raw: dict[str, Any], n: int, concurrency: int) -> list[dict[str, Any]]:
    """The raw primitive: etcd ``Put`` calls straight on a grpc.aio channel (no backend), to plain-http peers."""
    from teleport_storage_etcd.client import DELETE_RANGE, PUT, Peer, pb
    from teleport_storage_etcd.config import EtcdOptions

    url = str(raw["peers"][0])
    url = url if "://" in url else f"http://{url}"
    peer = Peer(url, EtcdOptions(peers=(url,)))
    call = peer.unary(*PUT)
    results = []
    try:
        for mode, workers in (("sequential", 1), ("concurrent", concurrency)):
            tag = mode.encode()

            async def put(i: int, tag: bytes = tag) -> None:
                await call(pb.PutRequest(key=b"/bench-raw/%s/%08d" % (tag, i), value=VALUE))

            rate = await timed(put, n, workers)
            results.append({"op": "put", "mode": mode, "tasks": workers, "n": n, "ops_per_s": round(rate, 1)})
        await peer.unary(*DELETE_RANGE)(pb.DeleteRangeRequest(key=b"/bench-raw/", range_end=b"/bench-raw0"))
    finally:
        await peer.close()
    return results


def with_ratios(results: list[dict[str, Any]], against: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` with each rate's ratio to the same measurement of the ``against`` backend."""
    base = {(row["op"], row["mode"]): row["ops_per_s"] for row in against}
    return [
        {**row, "ratio": round(row["ops_per_s"] / base[row["op"], row["mode"]], 3)}
        if base.get((row["op"], row["mode"]))
        else row
        for row in results
    ]


def table(results: list[dict[str, Any]], concurrency: int) -> str:
    rates: dict[str, dict[str, dict[str, Any]]] = {}
    for row in results:
        rates.setdefault(row["op"], {})[row["mode"]] = row
    ratios = any("ratio" in row for row in results)
    head = f"{'op':<8}{'sequential ops/s':>18}{f'{concurrency} tasks ops/s':>18}"
    if ratios:
        head += f"{'ratio seq':>11}{'ratio tasks':>13}"
    lines = [head, "-" * len(head)]
    for op, by_mode in rates.items():
        seq, con = by_mode["sequential"], by_mode["concurrent"]
        line = f"{op:<8}{seq['ops_per_s']:>18,.0f}{con['ops_per_s']:>18,.0f}"
        if ratios:
            line += f"{seq.get('ratio', 0):>10.2f}x{con.get('ratio', 0):>12.2f}x"
        lines.append(line)
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, raw: dict[str, Any]) -> list[dict[str, Any]]:
    plugins = make_plugins()
    with tempfile.TemporaryDirectory(prefix="backend-bench-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        backend = await open_backend(plugins, storage_config(plugins, raw), data_dir)
        try:
            return await bench(backend, args.n, args.concurrency, args.page)
        finally:
            await backend.close()


def parse_config(parser: argparse.ArgumentParser, text: str, option: str) -> dict[str, Any]:
    """A ``teleport.storage`` mapping given as JSON."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"{option}: not JSON: {exc}")
    if not isinstance(raw, dict):
        parser.error(f"{option} must be a JSON object")
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--type", default="sqlite", help="backend type, when --config is not given")
    parser.add_argument("--config", help="the teleport.storage mapping as JSON (overrides --type)")
    parser.add_argument("--n", type=int, default=5000, help="operations per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks in the concurrent runs")
    parser.add_argument("--page", type=int, default=50, help="items per range read (of 100)")
    parser.add_argument("--data-dir", help="data_dir to open the backend in (default: a temporary one)")
    parser.add_argument("--against", help="a second teleport.storage mapping (JSON) measured in the same run")
    parser.add_argument(
        "--raw-etcd", action="store_true", help="also measure raw etcd Put calls (the primitive) to the first peer"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if args.n < 1 or args.concurrency < 1 or not 1 <= args.page <= 100:
        parser.error("--n and --concurrency must be positive, --page between 1 and 100")
    raw = parse_config(parser, args.config, "--config") if args.config else {"type": args.type}
    against = parse_config(parser, args.against, "--against") if args.against else None
    results = asyncio.run(main_async(args, raw))
    base = asyncio.run(main_async(args, against)) if against is not None else []
    raw_puts = asyncio.run(raw_etcd_puts(raw, args.n, args.concurrency)) if args.raw_etcd else []
    if base:
        results = with_ratios(results, base)
    put_vs_raw = {}
    if raw_puts:
        rates = {row["mode"]: row["ops_per_s"] for row in raw_puts}
        put_vs_raw = {
            row["mode"]: round(row["ops_per_s"] / rates[row["mode"]], 3) for row in results if row["op"] == "put"
        }
    if args.format == "json":
        report: dict[str, Any] = {"config": raw, "results": results, "load_average": os.getloadavg()}
        if against is not None:
            report |= {"against": against, "against_results": base}
        if raw_puts:
            report |= {"raw_etcd_puts": raw_puts, "put_ratio_to_raw": put_vs_raw}
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(f"backend {json.dumps(raw)}: n={args.n}, value 256 bytes, range page {args.page}")
        if against is not None:
            print(f"ratios against {json.dumps(against)} measured in the same run")
        print(table(results, args.concurrency))
        if base:
            print(f"{json.dumps(against)}:")
            print(table(base, args.concurrency))
        for row in raw_puts:
            print(
                f"raw etcd Put ({row['mode']}, {row['tasks']} tasks): {row['ops_per_s']:,.0f}/s; "
                f"the backend's put: {put_vs_raw[row['mode']]:.2f}x of it"
            )
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
