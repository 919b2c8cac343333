"""The JSON file log on a real full filesystem (a 1 MiB tmpfs, root only): a failed append leaves
no partial line; behind auth's audit spool, once space returns everything drains in order,
exactly once, with no torn line."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

from teleport_audit_json.filelog import FileAuditLog

from teleport_core.state.audit import AuditEvent, AuditQuery, new_event
from teleport_core.state.audit_spool import AuditSpool
from teleport_core.testing.fulldisk import fill, free_bytes, small_tmpfs


class Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict]] = []

    def warning(self, message: str, **kw: object) -> None:
        self.warnings.append((message, kw))

    def error(self, message: str, **kw: object) -> None:
        raise AssertionError(f"unexpected error log: {message} {kw}")


def whole_lines(path: Path) -> list[dict]:
    """Every line of ``path``, each one whole JSON ending in a newline (no torn line anywhere)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a partial line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def test_file_log_append_on_a_full_disk_leaves_no_partial_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        with small_tmpfs(tmp_path / "fs") as fs:
            sink = FileAuditLog(fs / "log", "auth-1")
            stored = [new_event("user.login", user=f"u{i}") for i in range(3)]
            for event in stored:
                await sink.emit(event)
            day_file = next((fs / "log" / "auth-1").glob("*.log"))
            size = day_file.stat().st_size
            fill(fs)
            free_bytes(fs, 4096)  # part of the next batch fits: a partial write, then ENOSPC
            failed = [new_event("role.created", name=f"r{i}", padding="x" * 20000) for i in range(3)]
            results = await asyncio.gather(*(sink.emit(e) for e in failed), return_exceptions=True)
            assert all(isinstance(r, Exception) and "No space left on device" in str(r) for r in results), results
            assert day_file.stat().st_size == size  # the partial write was cut back off
            whole_lines(day_file)
            (fs / "filler").unlink()  # space returns: the emitter retries the same events
            for event in failed:
                await sink.emit(event)
            for event in [*stored, *failed]:  # a redelivery is stored once (same uid and millisecond)
                await sink.emit(event)
            uids = [line["uid"] for line in whole_lines(day_file)]
            assert uids == [e.uid for e in [*stored, *failed]]
            await sink.close()

    asyncio.run(scenario())


def test_spool_holds_events_while_the_sink_is_full_then_drains_in_order_once(tmp_path: Path) -> None:
    """Auth's arrangement: the spool on a disk with room, the JSON log on a full one."""
    log = Log()

    async def scenario() -> None:
        with small_tmpfs(tmp_path / "fs") as fs:
            sink = FileAuditLog(fs / "log", "auth-1")
            first = new_event("user.login", user="first")
            await sink.emit(first)
            day_file = next((fs / "log" / "auth-1").glob("*.log"))

            async def send(data: dict) -> None:
                await sink.emit(AuditEvent.from_dict(data))

            spool = AuditSpool(tmp_path / "spool", send, log, retry=0.05, max_retry=0.2)
            sender = asyncio.create_task(spool.run())
            fill(fs)
            events = [new_event("role.created", name=f"role-{i}", padding="x" * 3000) for i in range(40)]
            for event in events:  # each durable in the spool; the sink takes none of them
                await spool.emit(event, wait_delivered=0.2)
            assert spool.backlog() > 0 and spool.failing
            whole_lines(day_file)
            (fs / "filler").unlink()
            spool.nudge()
            for _ in range(200):
                if spool.backlog() == 0:
                    break
                await asyncio.sleep(0.05)
            assert spool.backlog() == 0
            sender.cancel()
            uids = [line["uid"] for line in whole_lines(day_file)]
            assert uids == [first.uid, *(e.uid for e in events)]  # in order, exactly once, no torn line
            second = dt.timedelta(seconds=1)
            page = await sink.search(AuditQuery(since=first.time - second, until=events[-1].time + second, limit=100))
            assert [e.uid for e in page.events] == uids
            await sink.close()

    asyncio.run(scenario())
    assert log.warnings and log.warnings[0][0] == "audit events not delivered, will retry"
