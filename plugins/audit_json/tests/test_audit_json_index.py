"""The file:// sink's SQLite sidecar index: used by filtered searches, rebuilt from the log when
torn, corrupt, stale or from another log, in memory where it cannot be written, and cursors
that stay complete while another task appends."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
from pathlib import Path

import attrs
from audit_json_helpers import BASE, EVERYTHING, MS, emit_all, event, search_all, stored, with_sink
from teleport_audit_json import filelog, index

from teleport_core.state.audit import AuditEvent, AuditQuery, AuditSink


def uri_of(directory: Path) -> str:
    return f"file://{directory}?server_id=auth-1"


def log_file(directory: Path) -> Path:
    return directory / "auth-1" / "2024-05-01.00:00:00.log"


def sidecar(directory: Path) -> Path:
    return directory / "auth-1" / "2024-05-01.00:00:00.log.index"


def some_events(count: int, start: int = 0) -> list[AuditEvent]:
    kinds = ("user.login", "session.start", "exec", "session.end")
    return [
        event(kinds[i % 4], BASE + i * MS, user=f"user-{i % 5}", sid=f"sid-{i // 10}")
        for i in range(start, start + count)
    ]


def uids(found: list[dict] | list[AuditEvent]) -> list[str]:
    return [e["uid"] if isinstance(e, dict) else e.uid for e in found]


def expect_filters(directory: Path, events: list[AuditEvent]) -> None:
    """Every filter a fresh sink answers from the index matches the events' own filtering."""
    uri = uri_of(directory)
    for query in (
        EVERYTHING,
        attrs.evolve(EVERYTHING, user="user-3"),
        attrs.evolve(EVERYTHING, sid="sid-7"),
        attrs.evolve(EVERYTHING, event_types=("exec", "session.end")),
        attrs.evolve(EVERYTHING, user="user-2", event_types=("session.start",)),
        attrs.evolve(EVERYTHING, since=BASE + 50 * MS, until=BASE + 90 * MS, user="user-1"),
    ):
        assert uids(stored(uri, query)) == [e.uid for e in events if query.matches(e)], query


def index_rows(directory: Path) -> int:
    with sqlite3.connect(sidecar(directory)) as conn:
        return int(conn.execute("SELECT count(*) FROM ev").fetchone()[0])


def test_the_sidecar_indexes_every_event_and_answers_filters(tmp_path):
    directory = tmp_path / "log"
    events = some_events(200)
    emit_all(uri_of(directory), events)
    assert index_rows(directory) == 200
    assert oct(sidecar(directory).stat().st_mode & 0o777) == "0o600"
    expect_filters(directory, events)


def test_a_filtered_search_reads_only_the_lines_of_its_events(tmp_path, monkeypatch):
    directory = tmp_path / "log"
    events = some_events(500)
    emit_all(uri_of(directory), events)
    read: list[int] = []
    real = filelog._LineReader.line

    def recording(self: filelog._LineReader, offset: int) -> bytes | None:
        read.append(offset)
        return real(self, offset)

    monkeypatch.setattr(filelog._LineReader, "line", recording)
    found = stored(uri_of(directory), attrs.evolve(EVERYTHING, sid="sid-13"))
    assert uids(found) == [e.uid for e in events if e.sid == "sid-13"]
    assert len(read) == 10  # the ten events of that sid, none of the other 490


def test_a_torn_or_corrupt_sidecar_is_rebuilt_from_the_log(tmp_path, caplog):
    directory = tmp_path / "log"
    events = some_events(120)
    emit_all(uri_of(directory), events)
    data = sidecar(directory).read_bytes()
    caplog.set_level(logging.WARNING, logger="teleport.audit")
    for damaged in (data[: len(data) // 2], b"", b"not a database" * 300, data[:100] + b"\0" * (len(data) - 100)):
        sidecar(directory).write_bytes(damaged)
        expect_filters(directory, events)
        assert index_rows(directory) == 120, damaged[:20]
    assert any("rebuilding" in r.getMessage() for r in caplog.records), caplog.text


def test_a_stale_sidecar_catches_up_and_one_of_another_log_is_rebuilt(tmp_path):
    directory = tmp_path / "log"
    first, later = some_events(60), some_events(60, start=60)
    emit_all(uri_of(directory), first)
    old = tmp_path / "old.index"
    shutil.copyfile(sidecar(directory), old)
    emit_all(uri_of(directory), later)
    shutil.copyfile(old, sidecar(directory))  # indexes only the first 60 lines
    expect_filters(directory, [*first, *later])
    assert index_rows(directory) == 120

    # the log replaced by a different one (another inode) under the same name
    other = some_events(30, start=500)
    replacement = tmp_path / "replacement"
    emit_all(uri_of(replacement), other)
    os.replace(log_file(replacement), log_file(directory))
    expect_filters(directory, other)
    assert index_rows(directory) == 30


def test_a_log_edited_below_the_indexed_size_is_reindexed(tmp_path):
    directory = tmp_path / "log"
    events = some_events(40)
    emit_all(uri_of(directory), events)
    path = log_file(directory)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:10] + lines[20:]))  # an operator cut ten lines out
    expect_filters(directory, events[:10] + events[20:])


def test_without_a_writable_sidecar_the_index_lives_in_memory(tmp_path, monkeypatch, caplog):
    directory = tmp_path / "log"
    events = some_events(80)
    emit_all(uri_of(directory), events)
    sidecar(directory).unlink()

    def refuse(path: Path) -> sqlite3.Connection:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(index, "_connect_file", refuse)
    caplog.set_level(logging.WARNING, logger="teleport.audit")
    expect_filters(directory, events)
    more = some_events(20, start=80)
    emit_all(uri_of(directory), more)  # the writer indexes in memory too
    expect_filters(directory, [*events, *more])
    assert not sidecar(directory).exists()
    assert any("in memory" in r.getMessage() for r in caplog.records), caplog.text


def test_dedup_of_late_redeliveries_queries_the_sidecar(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "RECENT_CODES", 4)  # old time codes leave memory quickly
    directory = tmp_path / "log"
    events = some_events(100)
    uri = uri_of(directory)

    async def body(sink: AuditSink) -> None:
        for e in events:
            await sink.emit(e)
        for e in events[::7]:  # late redeliveries, older than the recent window
            await sink.emit(e)

    with_sink(uri, body)
    emit_all(uri, events[::3])  # and after a restart
    assert uids(stored(uri)) == [e.uid for e in events]


def test_paging_while_another_task_appends_never_skips_or_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog, "FLUSH_ROWS", 16)  # the indexer flushes while the pages are read
    directory = tmp_path / "log"
    uri = uri_of(directory)
    before = some_events(300)
    emit_all(uri, before)
    during = some_events(600, start=300)
    query = attrs.evolve(EVERYTHING, user="user-4", limit=7)

    async def body(sink: AuditSink) -> tuple[list[AuditEvent], list[AuditEvent]]:
        async def appender() -> None:
            for start in range(0, len(during), 8):
                await asyncio.gather(*(sink.emit(e) for e in during[start : start + 8]))

        async def pager() -> list[AuditEvent]:
            found: list[AuditEvent] = []
            cursor = ""
            while True:
                page = await sink.search(attrs.evolve(query, cursor=cursor))
                found.extend(page.events)
                if not page.next_cursor:
                    return found
                cursor = page.next_cursor

        writing = asyncio.create_task(appender())
        found = await pager()
        await writing
        return found, await search_all(sink, query, limit=7)

    found, complete = with_sink(uri, body)
    expected = [e.uid for e in [*before, *during] if e.user == "user-4"]
    assert uids(complete) == expected
    assert len(found) >= sum(e.user == "user-4" for e in before)
    assert uids(found) == expected[: len(found)]  # a prefix: nothing skipped, nothing twice


def test_a_fresh_sink_answers_from_the_sidecar_without_scanning_the_log(tmp_path, monkeypatch):
    directory = tmp_path / "log"
    events = some_events(300)
    emit_all(uri_of(directory), events)
    scanned: list[int] = []
    real = index.DayIndex.scan

    def recording(self: index.DayIndex, fd: int, file_size: int) -> int:
        scanned.append(file_size - self.size)
        return real(self, fd, file_size)

    monkeypatch.setattr(index.DayIndex, "scan", recording)
    found = stored(uri_of(directory), AuditQuery(since=BASE, until=BASE + 1000 * MS, user="user-0"))
    assert uids(found) == [e.uid for e in events if e.user == "user-0"]
    assert sum(scanned) == 0
