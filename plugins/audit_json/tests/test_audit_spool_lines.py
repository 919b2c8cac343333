"""Auth's audit path with lines passed through: the spool hands the JSON audit log its lines as
they are on disk (``send_lines`` / ``AuditSink.emit_lines``), one batch and one group commit at
a time; emits that wait for delivery share one timer per batch. With ``store_lines``
(``emit_lines_now``, as auth's spool has for the JSON log) the spool's writer thread stores each
batch in the log right after its own fsync, while delivery is caught up; the same guarantees hold
either way (the tests run both)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from audit_json_helpers import ROOT
from teleport_audit_json.filelog import FileAuditLog

from teleport_core.state.audit import AuditError, AuditEvent, AuditQuery, event_line, new_event
from teleport_core.state.audit_spool import AuditSpool
from teleport_core.testing.audit_suite import search_all

EVERYTHING = AuditQuery(since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


async def no_send(data: dict[str, Any]) -> None:
    """The per-event ``send`` of a spool that delivers with ``send_lines`` (never called)."""
    raise AssertionError("send_lines delivers")


class Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, object]]] = []

    def warning(self, message: str, **kw: object) -> None:
        self.warnings.append((message, kw))

    def info(self, message: str, **kw: object) -> None:
        pass

    def error(self, message: str, **kw: object) -> None:
        pass


def _stores(sink: FileAuditLog, direct: bool, calls: list[int] | None = None) -> dict[str, Any]:
    """The spool's ``store_lines`` keyword: the sink's ``emit_lines_now`` (counting its calls), or none."""
    if not direct:
        return {}

    def store(lines: list[bytes], events: list[AuditEvent]) -> None:
        sink.emit_lines_now(lines, events)
        if calls is not None:
            calls.append(len(lines))

    return {"store_lines": store}


@pytest.mark.parametrize("direct", [False, True], ids=["sender", "writer-stores"])
def test_lines_reach_the_log_byte_for_byte_in_order_once_and_indexed(tmp_path: Path, direct: bool) -> None:
    async def scenario() -> None:
        sink = FileAuditLog(tmp_path / "log", "auth")
        calls: list[int] = []
        spool = AuditSpool(tmp_path / "spool", no_send, Log(), window=7, send_lines=sink.emit_lines,
                           **_stores(sink, direct, calls))
        runner = asyncio.create_task(spool.run())
        events = [new_event("exec", user=f"u{i % 3}", sid=f"s-{i}", command=f"cmd {i}") for i in range(40)]
        await asyncio.gather(*(spool.emit(e, wait_delivered=30) for e in events[:20]))
        for event in events[20:]:
            await spool.emit(event, wait_delivered=30)  # returns once delivered: in the log now
        spooled = (tmp_path / "spool" / "events.jsonl").read_bytes()
        [day_file] = (tmp_path / "log" / "auth").glob("*.log")
        assert day_file.read_bytes() == spooled  # stored as spooled: nothing decoded and encoded again
        assert [e.uid for e in await search_all(sink, AuditQuery(EVERYTHING.since, EVERYTHING.until, user="u1"))] \
            == [e.uid for e in sorted(events, key=lambda e: e.time) if e.user == "u1"]
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        (tmp_path / "spool" / "sent").write_text("0\n")  # as if the progress mark was lost in a crash
        again = AuditSpool(tmp_path / "spool", no_send, Log(), window=7, send_lines=sink.emit_lines)
        assert await again.deliver() == 40  # resent ...
        assert day_file.read_bytes() == spooled  # ... and each uid kept once
        await sink.close()
        assert sum(calls) == (40 if direct else 0)  # with store_lines, the writer stored every batch

    asyncio.run(scenario())


def test_a_failing_direct_store_leaves_the_lines_to_the_sender(tmp_path: Path) -> None:
    """When the writer's ``store_lines`` fails, the events are still acknowledged as durable (in
    the spool), and the sender delivers them from the file, in order and once; the writer stores
    again once delivery has caught up."""
    fail = True
    stored: list[bytes] = []
    direct: list[int] = []

    def store_lines(lines: list[bytes], events: list[AuditEvent]) -> None:
        if fail:
            raise OSError("the log's disk is gone")
        stored.extend(lines)
        direct.append(len(lines))

    async def send_lines(lines: list[bytes]) -> None:
        if fail:
            raise OSError("the log's disk is gone")
        stored.extend(lines)

    async def scenario() -> None:
        nonlocal fail
        log = Log()
        spool = AuditSpool(tmp_path / "spool", no_send, log, retry=0.05, max_retry=0.1, window=4,
                           send_lines=send_lines, store_lines=store_lines)
        runner = asyncio.create_task(spool.run())
        first = [new_event("exec", user="joe", command=f"cmd {i}") for i in range(10)]
        await asyncio.gather(*(spool.emit(e, wait_delivered=0.2) for e in first))  # durable, not delivered
        assert spool.backlog() == 10 and not stored
        assert any("not stored directly" in message for message, _ in log.warnings)
        fail = False
        spool.nudge()
        for _ in range(200):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        assert spool.backlog() == 0 and not direct  # the sender delivered them
        second = [new_event("exec", user="joe", command=f"more {i}") for i in range(5)]
        for event in second:
            await spool.emit(event, wait_delivered=30)
        assert sum(direct) == 5 and spool.backlog() == 0  # caught up: the writer stores again
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert stored == [line + b"\n" for line in (tmp_path / "spool" / "events.jsonl").read_bytes().splitlines()]
        assert [e.uid for e in first + second] == [line.split(b'"uid":"')[1].split(b'"')[0].decode()
                                                   for line in stored]

    asyncio.run(scenario())


def test_lines_another_process_appended_are_not_skipped_by_the_writer(tmp_path: Path) -> None:
    """A line someone else appended to the spool's file (between two of ours) is delivered like
    ours: the writer stores its own batch only when it starts where delivery stopped."""
    async def scenario() -> None:
        sink = FileAuditLog(tmp_path / "log", "auth")
        spool = AuditSpool(tmp_path / "spool", no_send, Log(), window=7, send_lines=sink.emit_lines,
                           store_lines=sink.emit_lines_now)
        runner = asyncio.create_task(spool.run())
        await spool.emit(new_event("exec", user="a"), wait_delivered=30)
        foreign = new_event("exec", user="foreign")
        with open(tmp_path / "spool" / "events.jsonl", "ab") as handle:
            handle.write(event_line(foreign))
        last = new_event("exec", user="b")
        await spool.emit(last, wait_delivered=30)
        for _ in range(200):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        found = [e.uid for e in await search_all(sink, EVERYTHING)]
        await sink.close()
        assert foreign.uid in found and last.uid in found and len(found) == len(set(found)) == 3

    asyncio.run(scenario())


def test_a_failing_sink_keeps_lines_on_disk_and_waiting_emits_return(tmp_path: Path) -> None:
    """While the sink fails, an emit waiting for delivery returns after its wait (the batch's one
    timer), the lines stay on disk and are delivered in order once the sink works."""
    stored: list[bytes] = []
    up = False

    async def send_lines(lines: list[bytes]) -> None:
        if not up:
            raise OSError("the log's disk is gone")
        stored.extend(lines)

    async def scenario() -> None:
        nonlocal up
        log = Log()
        spool = AuditSpool(tmp_path / "spool", no_send, log, retry=0.05, max_retry=0.1, window=4,
                           send_lines=send_lines)
        runner = asyncio.create_task(spool.run())
        events = [new_event("exec", user="joe", command=f"cmd {i}") for i in range(10)]
        await asyncio.gather(*(spool.emit(e, wait_delivered=0.2) for e in events))  # returns: waits end
        assert spool.backlog() == 10 and not stored and log.warnings
        up = True
        spool.nudge()
        for _ in range(200):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert [line for line in stored] == [line + b"\n" for line in
                                             (tmp_path / "spool" / "events.jsonl").read_bytes().splitlines()]
        assert [e.uid for e in events] == [line.split(b'"uid":"')[1].split(b'"')[0].decode() for line in stored]

    asyncio.run(scenario())


@pytest.mark.parametrize("direct", [False, True], ids=["sender", "writer-stores"])
def test_events_acknowledged_as_delivered_survive_kill_9_of_spool_and_log(tmp_path: Path, direct: bool) -> None:
    """A process emitting through its spool into the JSON log (auth's path), killed with SIGKILL:
    every event whose emit returned is in the log after the next start delivers, exactly once."""
    child = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from teleport_audit_json.filelog import FileAuditLog
        from teleport_core.state.audit import new_event
        from teleport_core.state.audit_spool import AuditSpool

        class Log:
            def warning(self, *a, **k): pass
            info = error = warning

        async def main():
            sink = FileAuditLog(Path({str(tmp_path / 'log')!r}), "auth")
            spool = AuditSpool(Path({str(tmp_path / 'spool')!r}), sink.emit_lines, Log(), window=16,
                               send_lines=sink.emit_lines,
                               store_lines=sink.emit_lines_now if {direct!r} else None)
            asyncio.create_task(spool.run())

            async def emitter(n):
                for i in range(100000):
                    event = new_event("exec", user="joe", command=f"{{n}} {{i}}")
                    await spool.emit(event, wait_delivered=30)
                    print(event.uid, flush=True)

            await asyncio.gather(*(emitter(n) for n in range(8)))

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(400)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    async def restart() -> list[str]:
        sink = FileAuditLog(tmp_path / "log", "auth")
        spool = AuditSpool(tmp_path / "spool", no_send, Log(), window=16, send_lines=sink.emit_lines)
        await spool.deliver()
        assert spool.backlog() == 0
        found = [e.uid for e in await search_all(sink, EVERYTHING)]
        await sink.close()
        return found

    found = asyncio.run(restart())
    assert set(acknowledged) <= set(found)  # every acknowledged event, none lost
    assert len(found) == len(set(found))  # and none twice


def test_emit_lines_now_from_threads_beside_emit_keeps_each_uid_once(tmp_path: Path) -> None:
    """``emit_lines_now`` from several threads at once, while the event loop emits through the
    writer thread and some lines are stored twice: every event once, every line whole, the same
    bytes with or without the events given; after ``close`` it refuses."""
    async def scenario() -> None:
        sink = FileAuditLog(tmp_path / "log", "auth")
        events = [new_event("exec", user=f"u{i % 5}", sid=f"s-{i}") for i in range(600)]
        lines = [event_line(e) for e in events]

        def store(part: range) -> None:
            for start in range(part.start, part.stop, 20):
                chunk = slice(start, min(start + 20, part.stop))
                sink.emit_lines_now(lines[chunk], events[chunk] if start % 40 else None)

        loop_part = [sink.emit(e) for e in events[400:]]
        await asyncio.gather(asyncio.to_thread(store, range(0, 200)), asyncio.to_thread(store, range(200, 400)),
                             asyncio.to_thread(store, range(100, 300)),  # stored twice: kept once
                             *loop_part)
        found = await search_all(sink, EVERYTHING)
        assert sorted(e.uid for e in found) == sorted(e.uid for e in events)
        stored = b"".join(p.read_bytes() for p in (tmp_path / "log" / "auth").glob("*.log"))
        assert sorted(stored.splitlines(keepends=True)) == sorted(lines)
        by_user = await search_all(sink, AuditQuery(EVERYTHING.since, EVERYTHING.until, user="u3"))
        assert sorted(e.uid for e in by_user) == sorted(e.uid for e in events if e.user == "u3")
        await sink.close()
        with pytest.raises(AuditError, match="closed"):
            sink.emit_lines_now(lines[:1], events[:1])

    asyncio.run(scenario())


def test_a_progress_mark_that_cannot_be_written_does_not_fail_stored_events(tmp_path: Path) -> None:
    """The writer stored a batch in the log but cannot record the progress (``sent`` is a symlink,
    which the spool refuses to follow): the emits still succeed, the events are in the log once."""
    (tmp_path / "spool").mkdir(mode=0o700)
    (tmp_path / "elsewhere").write_text("0\n")
    (tmp_path / "spool" / "sent").symlink_to(tmp_path / "elsewhere")

    async def scenario() -> None:
        sink = FileAuditLog(tmp_path / "log", "auth")
        spool = AuditSpool(tmp_path / "spool", no_send, Log(), window=7, send_lines=sink.emit_lines,
                           store_lines=sink.emit_lines_now)
        events = [new_event("exec", user="joe", command=f"cmd {i}") for i in range(5)]
        for event in events:  # no sender runs: only the writer's direct store delivers
            await spool.emit(event, wait_delivered=30)
        found = [e.uid for e in await search_all(sink, EVERYTHING)]
        await sink.close()
        assert found == [e.uid for e in events]
        assert (tmp_path / "elsewhere").read_text() == "0\n"  # nothing written through the link

    asyncio.run(scenario())
