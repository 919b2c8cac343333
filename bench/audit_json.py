"""Durable append rate and search latency of the file:// audit sink (teleport-audit-json).

    python bench/audit_json.py [--dir DIR] [--data DIR] [--appends 20000] [--events 1000000] [--days 10]
                               [--full] [--appends-only] [--emitters 32[,256...]] [--no-spool]
                               [--profile FILE] [--format text|json]

Appends: events per second through ``emit`` (each durable, fsynced, when it returns) with
1 emitter and with 32 concurrent emitters (``--emitters``: other counts too), with the process's
CPU per event and its split by thread (the event loop's, the sink's writer and indexer), and the
CPU of the bench's own ``new_event`` per event (the callers' share, included in the event loop's).
``--profile FILE`` records the run with the most emitters with py-spy and prints where the event
loop thread's busy samples went (the bench's ``new_event``, ``encode``, queueing, waking a round).

Search: ``--events`` events (default one million, over ``--days`` UTC days, 100 users, 8 event
types) are written through the sink itself in concurrent batches of 5,000 (so the files are
exactly what the sink writes); then a fresh sink (cold index, warm page cache) and the same sink
again (warm index) time the first page of several queries and paging through a query filtered by
user (1% of the events).
``--full`` also pages through every event; ``--repeat N`` pages through the user's events N more
times warm and reports the min and median, wall time and this process's CPU (the CPU is what to
compare between trees on a busy machine: run this script alternately with ``PYTHONPATH`` set to a
clone of the older tree and without). ``--dir`` should be on the disk you care about
(default: a temporary directory).

Measured in the same run, as ratios: the raw primitive under a durable append (``write`` +
``fsync`` of lines of the same size, 1 and 32 lines per fsync, no JSON, no event loop, no
index) against the sink with 1 and 32 emitters; and the floor of a search (``json.loads`` +
``AuditEvent.from_dict`` of the 10,000 matching lines, already in memory, and the same lines
through the sink's own ``decode``, orjson where it reads as json does) against paging through
them with the warm index.

Measured (shared 2-vCPU VM, other benchmarks running, 1-minute load average about 30), one
million events over ten days (298 MiB of log, 129 MiB of index), before (commit 9f8ecbc) and
after the index and round-based group commit, back to back on the same files::

    python bench/audit_json.py --data /tmp/h4data --appends 6400 --format json
                                                    before      after
    raw write+fsync, 1 / 32 lines per fsync      6,413/168,090  6,545/144,982 lines/s
    append, 1 emitter (ratio to raw)             1,802 (0.28)   2,099 (0.32) events/s
    append, 32 emitters (ratio to raw 32/fsync)  12,680 (0.075) 15,274 (0.105) events/s
    first page, fresh sink                       274 ms         8.5 ms
    first page by user, fresh / warm             125 / 113 ms   9.4 / 9.2 ms
    one user's 10,000 events, fresh / warm       3,366 / 2,122  216 / 226 ms
    ... as a multiple of json.loads+from_dict    35x            3.5x
    page through all (--full, load about 20)     -              25.6 s

CPU and voluntary context switches per event (this process; steadier than rates under load),
``--events 2000 --appends 12800``, load about 60, after the last write-path change::

                                                    before         after
    32 emitters: CPU, context switches per event    54 us, 0.34    50 us, 0.24
    1 emitter: CPU, context switches per event      407 us, 5.6    376 us, 5.6

Issue 17, auth's path (``--appends-only``; the row "append 32 emitters through auth's spool"):
each emit is appended and fsynced to an audit spool and returns once the spool's sender delivered
it to this sink (``emit(event, wait_delivered=1.0)``, as auth's events are). Before, the sender
decoded each line, built the event and handed it to ``emit`` (which encoded it again) from a task
per line, and each waiting emit had its own timeout; now it hands the sink up to 256 lines as they
are on disk (``emit_lines``: one queue entry, one future, one group commit) and a batch of emits
shares one timer. Before (fc840e4 with the five files of e97d07e reverted) and after
(fc840e4), alternating three times, 12,800 events, 32 emitters, load 8.1-11.3, while the
disk was slow (raw ``write``+``fsync`` of one line: 245/s; of 32 lines: 6.4k lines/s, so the
rates are the disk's)::

                                                    before                  after
    through auth's spool: CPU per event             308 / 367 / 337 us      160 / 170 / 191 us (0.46-0.57)
    through auth's spool: context switches          1.67 / 1.72 / 1.43      0.67 / 0.74 / 0.77
    through auth's spool: events/s                  1,607 / 1,162 / 1,358   2,296 / 1,549 / 1,218
    sink alone (emit), CPU per event                115 / 144 / 121 us      120 / 128 / 130 us (unchanged)

Issue 17, the sink's own append path (``encode`` without ``to_dict`` and the line's regex, one uid
hash and one dedup lock per batch, no coroutine per queued event; see the plugin's README):
before (32eda8e) and after (538feda) from clones with this bench, alternating three times (the
third in reverse order), load 1.8-3.6, fsync rate moving 3x between runs::

    python bench/audit_json.py --appends-only --appends 12800 --emitters 32,256
                                                    before                  after
    raw write+fsync, 32 lines per fsync             131k / 124k / 76k       69k / 70k / 47k lines/s
    32 emitters, events/s                           7,827 / 7,663 / 5,091   5,684 / 9,093 / 10,619
    32 emitters, ratio to raw 32 per fsync          0.060-0.067             0.082-0.225
    32 emitters, CPU per event                      112 / 109 / 136 us      86 / 83 / 77 us (0.56-0.77)
    ... event loop thread                           73 / 73 / 89 us         50 / 51 / 48 us
    ... writer thread / indexer thread              30 / 28 / 35, 9-10 us   27 / 23 / 20, 8-9 us
    256 emitters, events/s                          9.7k / 9.4k / 8.3k      9.0k / 11.0k / 8.2k
    256 emitters, CPU per event                     100 / 95 / 108 us       67 / 72 / 69 us
    through auth's spool, CPU per event             140 / 139 / 185 us      136 / 152 / 147 us
    new_event (the bench's), CPU per event          12-15 us                12-16 us

Issue 17, fourth round (``new_uid``, ``event_line`` without ``to_dict``, the spool's writer thread
storing a batch in the log in the same hand-off through ``emit_lines_now``, ``FanOutSpool.emit``
without a task per queue): before (0f02f31) and after (6a0feea) from worktrees with this bench,
alternating three times, load 5-8::

    python bench/audit_json.py --appends-only --appends 12800 --emitters 32,256
                                                    before                  after
    through auth's FanOutSpool, CPU per event       168 / 190 / 183 us      87 / 85 / 95 us (0.45-0.52)
    through auth's spool (AuditSpool), CPU          142 / 144 / 155 us      105 / 90 / 109 us (0.62-0.74)
    256 emitters, CPU per event                     68 / 69 / 84 us         59 / 52 / 51 us
    ... event loop thread                           50 / 49 / 59 us         40 / 35 / 34 us
    32 emitters, CPU per event                      84 / 83 / 92 us         76 / 82 / 65 us
    new_event (the bench's), CPU per event          13-16 us                6-9 us
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditEvent, AuditQuery, AuditSink, new_event

KINDS = ("user.login", "session.start", "session.end", "exec", "session.join", "port", "scp", "cert.create")
OUTCOMES = {"scp": "upload"}
START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
PAGE = 500
FLUSH_WAIT = 0.5  # seconds: longer than the sink's indexer waits to insert pending rows


async def open_sink(directory: Path) -> AuditSink:
    return await open_audit_sink(make_plugins(), f"file://{directory}?server_id=bench", directory)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each of this process's Python threads, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # a thread that ended meanwhile
            continue
        out[thread.name] = out.get(thread.name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


THREAD_NAMES = {"MainThread": "event loop thread", "audit-json-writer": "writer thread",
                "audit-json-indexer": "indexer thread"}


async def append_rate(directory: Path, total: int, emitters: int,
                      profile: str | None = None) -> tuple[float, float, float, dict[str, float]]:
    """Events per second, and this process's CPU microseconds and voluntary context switches
    per event (steadier than the rate on a loaded machine: they do not count waiting), and the
    CPU microseconds per event of the event loop's thread, the sink's writer and its indexer."""
    sink = await open_sink(directory)
    await sink.emit(new_event("exec"))  # start the sink's threads before measuring
    per = total // emitters

    async def emitter(worker: int) -> None:
        for i in range(per):
            await sink.emit(new_event("exec", user=f"w{worker}", sid=f"{worker}-{i}", command="ls -l"))

    spy = start_profile(profile) if profile else None
    threads = thread_cpu()
    before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    await asyncio.gather(*(emitter(w) for w in range(emitters)))
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(FLUSH_WAIT)  # the indexer inserts the last rows (its CPU counts per event too)
    threads_after = thread_cpu()
    if spy is not None:
        stop_profile(spy)
    await sink.close()
    count = per * emitters
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    split = {label: (threads_after.get(name, 0.0) - threads.get(name, 0.0)) / count * 1e6
             for name, label in THREAD_NAMES.items()}
    return count / elapsed, cpu / count * 1e6, (after.ru_nvcsw - before.ru_nvcsw) / count, split


def new_event_cpu(count: int = 20000) -> float:
    """CPU microseconds of the bench's own ``new_event`` per event (the callers' share of the
    event loop's CPU above, not the sink's)."""
    began = time.process_time()
    for i in range(count):
        new_event("exec", user="w1", sid=f"1-{i}", command="ls -l")
    return (time.process_time() - began) / count * 1e6


def start_profile(out: str) -> subprocess.Popen[bytes]:
    """py-spy recording this process (every thread, collapsed stacks) until :func:`stop_profile`."""
    command = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # the venv's
    spy = subprocess.Popen([command, "record", "--pid", str(os.getpid()), "--format", "raw", "--threads",
                            "--rate", "500", "--nonblocking", "-o", out],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return spy


def stop_profile(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    spy.wait(timeout=60)


#: where the event loop thread's time goes during the concurrent appends, by the first rule whose
#: function is anywhere in the sampled stack (else "asyncio and the rest")
PROFILE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the bench's own new_event (the caller's)", ("new_event (",)),
    ("sink: encode the line", ("encode (teleport_audit_json",)),
    ("sink: queue the event, await its future", ("FileAuditLog._enqueue", "FileAuditLog.emit ")),
    ("sink: wake a batch's emitters, then the writer", ("_settle_round", "_round_done", "_settle (")),
)


def profile_summary(path: str) -> dict[str, float]:
    """Shares of the event loop thread's busy samples (py-spy raw output) per :data:`PROFILE_RULES`,
    and the share of all its samples it waited in ``select()``."""
    counts: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        if "MainThread" not in frames[0] or "run_forever" not in stack:  # the event loop, not imports
            continue
        if frames[-1].startswith("EpollSelector.select"):
            name = "idle (select)"
        else:
            name = next((n for n, keys in PROFILE_RULES if any(k in f for f in frames for k in keys)),
                        "asyncio and the rest")
        counts[name] = counts.get(name, 0) + int(number)
    idle = counts.pop("idle (select)", 0)
    busy = sum(counts.values()) or 1
    shares = {f"profile: {n}": c / busy for n, c in sorted(counts.items(), key=lambda item: -item[1])}
    return {**shares, "profile: idle (waiting in select), of all samples": idle / ((busy + idle) or 1)}


class _Log:
    """The spool's logger: its warnings (a failing delivery) are printed."""

    def warning(self, message: str, **fields: Any) -> None:
        print(f"WARN {message} {fields}", file=sys.stderr)

    info = error = warning


async def spool_append_rate(directory: Path, total: int, emitters: int,
                            fan_out: bool = False) -> tuple[float, float, float]:
    """:func:`append_rate` through auth's path: each emit is appended and fsynced to an audit
    spool (``AuditSpool``, delivery window 256, as auth's), and returns once the spool's sender
    has delivered it to the sink (``emit_lines``: one more group commit and fsync), as auth's
    ``emit(event, wait_delivered=1.0)`` does. Where the sink offers ``emit_lines_now``, the spool's
    writer stores each batch in it right after its own fsync, as auth's does. ``fan_out``: through
    the object auth's emits go through (``FanOutSpool`` with this one destination) rather than
    the ``AuditSpool`` under it."""
    from teleport_core.state.audit_spool import AuditSpool, FanOutSpool

    sink = await open_sink(directory / "log")

    async def send(data: dict[str, Any]) -> None:
        await sink.emit(AuditEvent.from_dict(data))

    direct = getattr(sink, "lines_now", False)  # absent before issue 17's one hand-off
    spool: Any
    if fan_out:
        name = f"file://{directory / 'log'}"
        stores: dict[str, Any] = {"stores": {name: sink.emit_lines_now}} if direct else {}
        spool = FanOutSpool(directory / "spool", {name: send}, _Log(), primary=name, window=256,
                            lines={name: sink.emit_lines}, **stores)
    else:
        store: dict[str, Any] = {"store_lines": sink.emit_lines_now} if direct else {}
        spool = AuditSpool(directory / "spool", send, _Log(), window=256, send_lines=sink.emit_lines, **store)
    runner = asyncio.create_task(spool.run())
    per = total // emitters

    async def emitter(worker: int) -> None:
        for i in range(per):
            await spool.emit(new_event("exec", user=f"w{worker}", sid=f"{worker}-{i}", command="ls -l"),
                             wait_delivered=1.0)

    before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    await asyncio.gather(*(emitter(w) for w in range(emitters)))
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    if spool.backlog():
        raise RuntimeError(f"{spool.backlog()} events were not delivered within the emits' 1 s wait")
    await sink.close()
    count = per * emitters
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return count / elapsed, cpu / count * 1e6, (after.ru_nvcsw - before.ru_nvcsw) / count


def raw_append_rate(directory: Path, total: int, per_fsync: int) -> float:
    """The primitive under a durable append: ``write`` + ``fsync`` of lines the size of the
    append benchmark's, ``per_fsync`` lines per fsync (no JSON, no index, no event loop)."""
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps(new_event("exec", user="w0", sid="0-0", command="ls -l").to_dict()).encode() + b"\n"
    fd = os.open(directory / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        began = time.perf_counter()
        for _ in range(total // per_fsync):
            os.write(fd, line * per_fsync)
            os.fsync(fd)
        return total // per_fsync * per_fsync / (time.perf_counter() - began)
    finally:
        os.close(fd)


def decode_rate(directory: Path, user: str) -> tuple[int, float, float]:
    """The floor of a search: ``json.loads`` + ``from_dict`` of every line of ``user`` already in
    memory, and the same through the sink's own ``decode`` (orjson where it reads as json does)."""
    from teleport_audit_json.lines import decode

    needle = f'"user":"{user}"'.encode()
    lines = [line for path in sorted(directory.rglob("*.log")) for line in path.read_bytes().splitlines()
             if needle in line]
    began = time.perf_counter()
    for line in lines:
        AuditEvent.from_dict(json.loads(line))
    middle = time.perf_counter()
    for line in lines:
        decode(line)
    return len(lines), middle - began, time.perf_counter() - middle


async def generate(directory: Path, total: int, days: int) -> float:
    sink = await open_sink(directory)
    step = dt.timedelta(days=days) / total
    began = time.perf_counter()
    for start in range(0, total, 5000):
        batch = []
        for i in range(start, min(start + 5000, total)):
            kind = KINDS[i % len(KINDS)]
            batch.append(
                sink.emit(
                    new_event(
                        kind,
                        OUTCOMES.get(kind, "ok"),
                        when=START + i * step,
                        user=f"user-{(i * 7) % 100}",
                        login="root",
                        sid=f"{i // 50:08x}-0000-4000-8000-000000000000",
                        server_id="2f4c0a7e-1b7e-4d0c-9c1e-2a3b4c5d6e7f",
                        cluster_name="bench.example.com",
                        **{"addr.remote": f"192.0.2.{i % 250}:5{i % 10000:04d}"},
                    )
                )
            )
        await asyncio.gather(*batch)
    elapsed = time.perf_counter() - began
    await sink.close()
    return total / elapsed


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await call()
    return time.perf_counter() - began, result


async def page_through(sink: AuditSink, query: AuditQuery, lines: bool = False) -> tuple[int, int]:
    """Events and pages of ``query``, through ``search`` or (``lines``) ``search_lines``, what auth's
    ``GET /v1/events`` calls."""
    count = pages = 0
    cursor = ""
    while True:
        if lines:
            stored = await sink.search_lines(attrs.evolve(query, limit=PAGE, cursor=cursor))
            count, cursor = count + len(stored.lines), stored.next_cursor
        else:
            page = await sink.search(attrs.evolve(query, limit=PAGE, cursor=cursor))
            count, cursor = count + len(page.events), page.next_cursor
        pages += 1
        if not cursor:
            return count, pages


async def searches(directory: Path, days: int, full: bool, repeat: int = 0) -> dict[str, Any]:
    everything = AuditQuery(since=START, until=START + dt.timedelta(days=days), limit=PAGE)
    by_user = attrs.evolve(everything, user="user-42")
    last_day = attrs.evolve(everything, since=START + dt.timedelta(days=days - 1))
    by_type = attrs.evolve(everything, event_types=("cert.create",))
    out: dict[str, Any] = {}
    fresh: dict[str, float] = {}  # a sink of its own each time: nothing of the day's indexes read before
    for name, call in (("first page, user", "search"), ("first page, user, as lines", "search_lines")):
        cpus = []
        for _ in range(5):
            sink = await open_sink(directory)
            try:
                cpu = time.process_time()
                await getattr(sink, call)(by_user)
                cpus.append(time.process_time() - cpu)
            finally:
                await sink.close()
        cpus.sort()
        fresh[f"{name}, CPU min of 5"], fresh[f"{name}, CPU median of 5"] = cpus[0], cpus[2]
    out["fresh sink"] = fresh
    sink = await open_sink(directory)
    try:
        for label in ("cold", "warm"):
            row: dict[str, Any] = {}
            for name, query in (("first page", everything), ("first page, last day", last_day),
                                ("first page, user", by_user), ("first page, type", by_type)):
                seconds, _ = await timed(lambda q=query: sink.search(q))  # type: ignore[misc]
                row[name] = seconds
            seconds, (count, pages) = await timed(lambda: page_through(sink, by_user))
            row["page through user"] = seconds
            row["page through user events"] = count
            row["page through user pages"] = pages
            seconds, (count, pages) = await timed(lambda: page_through(sink, by_user, lines=True))
            row["page through user, as lines"] = seconds
            row["page through user events, as lines"] = count
            if full and label == "warm":
                seconds, (count, pages) = await timed(lambda: page_through(sink, everything))
                row["page through all"] = seconds
                row["page through all events"] = count
            out[label] = row  # the warm run reuses the indexes the cold run built
        if repeat:  # the warm paging again: its spread, and this process's CPU, steadier than wall time under load
            repeated: dict[str, Any] = {"runs": repeat}
            for suffix, lines in (("", False), (", as lines", True)):
                walls, cpus = [], []
                for _ in range(repeat):
                    cpu = time.process_time()
                    seconds, _ = await timed(lambda lines=lines: page_through(sink, by_user, lines))  # type: ignore[misc]
                    walls.append(seconds)
                    cpus.append(time.process_time() - cpu)
                walls.sort()
                cpus.sort()
                name = f"page through user{suffix}"
                repeated.update({f"{name}, min": walls[0], f"{name}, median": walls[repeat // 2],
                                 f"{name}, CPU min": cpus[0], f"{name}, CPU median": cpus[repeat // 2]})
            out["warm, repeated"] = repeated
    finally:
        await sink.close()
    return out


async def append_rates(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """The sink's append runs (1 emitter, then each of ``--emitters``), and auth's path."""
    results: dict[str, Any] = {}
    for emitters, total in ((1, args.appends // 4), *((n, args.appends) for n in args.emitters)):
        profile = args.profile if emitters == max(args.emitters) else None
        rate, cpu, switches, split = await append_rate(directory / f"append-{emitters}", total, emitters, profile)
        label = f"{emitters} emitter{'s' if emitters > 1 else ''}"
        results[f"append {label} (events/s)"] = rate
        results[f"append {label}: CPU us per event"] = cpu
        for name, micros in split.items():
            results[f"append {label}: CPU us per event, {name}"] = micros
        results[f"append {label}: voluntary context switches per event"] = switches
        if profile:
            results.update(profile_summary(profile))
    results["new_event (the bench's, included above): CPU us per event"] = new_event_cpu()
    if not args.no_spool:
        rate, cpu, switches = await spool_append_rate(directory / "spool-32", args.appends, 32)
        results["append 32 emitters through auth's spool (events/s)"] = rate
        results["append 32 emitters through auth's spool: CPU us per event"] = cpu
        results["append 32 emitters through auth's spool: voluntary context switches per event"] = switches
        rate, cpu, switches = await spool_append_rate(directory / "fan-out-32", args.appends, 32, fan_out=True)
        results["append 32 emitters through auth's FanOutSpool (events/s)"] = rate
        results["append 32 emitters through auth's FanOutSpool: CPU us per event"] = cpu
    return results


async def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["raw write+fsync, 1 line per fsync (lines/s)"] = raw_append_rate(directory / "raw", args.appends // 4, 1)
    results["raw write+fsync, 32 lines per fsync (lines/s)"] = raw_append_rate(directory / "raw", args.appends, 32)
    results.update(await append_rates(args, directory))
    results["load average (1 min) after the appends"] = os.getloadavg()[0]
    results["append 1 emitter / raw 1 per fsync"] = (
        results["append 1 emitter (events/s)"] / results["raw write+fsync, 1 line per fsync (lines/s)"])
    if 32 in args.emitters:
        results["append 32 emitters / raw 32 per fsync"] = (
            results["append 32 emitters (events/s)"] / results["raw write+fsync, 32 lines per fsync (lines/s)"])
    if args.appends_only:
        return results
    big = args.data or directory / "big"
    stamp = big / f"generated-{args.events}-{args.days}"
    if not stamp.exists():
        began = time.perf_counter()
        results["bulk write (events/s)"] = await generate(big, args.events, args.days)
        results["bulk write seconds"] = time.perf_counter() - began
        stamp.touch()
    size = sum(p.stat().st_size for p in big.rglob("*.log"))
    results["log size (MiB)"] = size / 2**20
    results["index size (MiB)"] = sum(p.stat().st_size for p in big.rglob("*.index")) / 2**20
    results["search"] = await searches(big, args.days, args.full, args.repeat)
    _, seconds, own = decode_rate(big, "user-42")
    results["json.loads of the user's lines in memory (s)"] = seconds
    results["the sink's decode of the user's lines in memory (s)"] = own
    results["page through user, warm / json.loads floor"] = results["search"]["warm"]["page through user"] / seconds
    results["page through user, warm / the sink's decode floor"] = results["search"]["warm"]["page through user"] / own
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory, removed after)")
    parser.add_argument("--appends", type=int, default=20000, help="events for the 32-emitter append run")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="also page through every event")
    parser.add_argument("--repeat", type=int, default=0, metavar="N",
                        help="page through the user's events N more times warm: min and median, wall and CPU")
    parser.add_argument("--data", type=Path,
                        help="keep the searched events here and reuse them in later runs (same --events and --days)")
    parser.add_argument("--appends-only", action="store_true", help="measure the appends only (no search data)")
    parser.add_argument("--emitters", type=lambda text: [int(n) for n in text.split(",")], default=[32],
                        help="concurrent emitters of the concurrent append runs, comma-separated (default 32)")
    parser.add_argument("--no-spool", action="store_true", help="skip the run through auth's audit spool")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy this process during the run with the most emitters (raw collapsed stacks to "
                             "FILE) and print where the event loop thread's time went")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    try:
        results = asyncio.run(run(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.format == "json":
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    if args.appends_only:
        print("file:// audit sink, appends")
    else:
        print(f"file:// audit sink, {args.events:,} events over {args.days} days ({results['log size (MiB)']:.0f} MiB, "
              f"index {results['index size (MiB)']:.0f} MiB)")
    for key, value in results.items():
        if isinstance(value, float) and "size" not in key:
            print(f"  {key:<50} {value:>12,.2f}")
    for label, row in results.get("search", {}).items():
        print(f"  search, {label} index:")
        for key, value in row.items():
            text = f"{value * 1000:>10,.1f} ms" if isinstance(value, float) else f"{value:>10,}"
            print(f"    {key:<48} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
