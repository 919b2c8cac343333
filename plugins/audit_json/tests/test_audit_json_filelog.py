"""The file:// sink beyond the conformance suite: layout, modes, crashes, dedup, search paths."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
from audit_json_helpers import BASE, EVERYTHING, MS, ROOT, emit_all, event, search_all, stored, with_sink
from teleport_audit_json import filelog, index
from teleport_audit_json.filelog import CONFIG_KEY, FileAuditLog, InvalidCursor, Position

from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditError, AuditEvent, AuditQuery, AuditSink, new_event

DAY = dt.timedelta(days=1)


def uri_of(directory: Path, server: str = "auth-1") -> str:
    return f"file://{directory}?server_id={server}"


def day_file(directory: Path, day: str, server: str = "auth-1") -> Path:
    return directory / server / f"{day}.00:00:00.log"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# -- layout, rollover, modes ---------------------------------------------------------------------


def test_one_file_per_utc_day_by_event_time(tmp_path):
    directory = tmp_path / "log"
    late = event("session.start", dt.datetime(2024, 5, 1, 23, 59, 59, 999000, tzinfo=dt.UTC), user="a")
    midnight = event("session.end", dt.datetime(2024, 5, 2, 0, 0, tzinfo=dt.UTC), user="a")
    # 01:30 at UTC+02:00 is 23:30 UTC of the day before
    local = event("exec", dt.datetime(2024, 5, 2, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), user="b")
    emit_all(uri_of(directory), [midnight, late, local])

    assert sorted(p.name for p in (directory / "auth-1").glob("*.log")) == [
        "2024-05-01.00:00:00.log",
        "2024-05-02.00:00:00.log",
    ]
    first = [json.loads(line) for line in lines_of(day_file(directory, "2024-05-01"))[:-1]]
    second = [json.loads(line) for line in lines_of(day_file(directory, "2024-05-02"))[:-1]]
    assert first == [late.to_dict(), local.to_dict()]  # in append order within the file
    assert second == [midnight.to_dict()]
    assert [e["uid"] for e in stored(uri_of(directory))] == [local.uid, late.uid, midnight.uid]


def test_lines_are_compact_ascii_json_of_to_dict(tmp_path):
    directory = tmp_path / "log"
    e = event(user="zoë", note="line\nbreak \u202e ✓", roles=["a"], **{"addr.remote": "192.0.2.1:5"})
    emit_all(uri_of(directory), [e])
    raw = day_file(directory, "2024-05-01").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert raw.isascii()
    assert raw == json.dumps(e.to_dict(), separators=(",", ":")).encode() + b"\n"
    assert stored(uri_of(directory)) == [e.to_dict()]


def test_server_id_defaults_to_the_host_name(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog.socket, "gethostname", lambda: "node-7.example.com")
    emit_all(f"file://{tmp_path}/log", [event()])
    assert (tmp_path / "log" / "node-7.example.com" / "2024-05-01.00:00:00.log").is_file()


def test_host_name_unusable_as_directory_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog.socket, "gethostname", lambda: "../evil")
    with pytest.raises(ConfigError, match=r"add \?server_id=NAME") as caught:
        asyncio.run(open_audit_sink(make_plugins(), f"file://{tmp_path}/log", tmp_path))
    assert caught.value.path == CONFIG_KEY


def test_directories_are_0700_and_files_0600_whatever_the_umask(tmp_path):
    directory = tmp_path / "a" / "b" / "log"
    old = os.umask(0)
    try:
        emit_all(uri_of(directory), [event(), event(when=BASE + DAY)])
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", directory, directory / "auth-1"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (directory / "auth-1").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_opening_and_searching_create_nothing(tmp_path):
    directory = tmp_path / "missing" / "log"

    async def body(sink: AuditSink) -> None:
        page = await sink.search(EVERYTHING)
        assert (page.events, page.next_cursor) == ((), "")

    with_sink(uri_of(directory), body)
    assert not (tmp_path / "missing").exists()


# -- bad URIs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file://relative/log", "names the host 'relative'"),
        ("file:relative/log", "is relative"),
        ("file:///var/log/teleport?garbage", "cannot parse the query"),
        ("file:///var/log/teleport?server_id=", "server_id ''"),
        ("file:///var/log/teleport?server_id=../etc", "server_id '../etc'"),
        ("file:///var/log/teleport?server_id=a/b", "server_id 'a/b'"),
        ("file:///var/log/teleport?server_id=a&server_id=b", "given twice"),
        ("file:///var/log/teleport?mode=ro", "unknown option 'mode'"),
        ("file:///var/log/teleport?server_id=a&&x", "cannot parse the query"),
        ("file:///var/log/teleport#frag", "has a fragment"),
        ("file:///var/log/tele\nport", "control character"),
        ("file:///var/log/%00x", "NUL byte"),
    ],
)
def test_bad_uri_is_a_config_error(tmp_path, uri, message):
    with pytest.raises(ConfigError, match="expected file:///absolute/directory") as caught:
        asyncio.run(open_audit_sink(make_plugins(), uri, tmp_path))
    assert caught.value.path == CONFIG_KEY
    assert message in str(caught.value)


def test_uri_naming_a_regular_file_is_a_config_error(tmp_path):
    (tmp_path / "log").write_text("not a directory")
    with pytest.raises(ConfigError, match="is not a directory") as caught:
        asyncio.run(open_audit_sink(make_plugins(), f"file://{tmp_path}/log", tmp_path))
    assert caught.value.path == CONFIG_KEY


def test_localhost_and_percent_encoding_are_accepted(tmp_path):
    directory = tmp_path / "with space"
    emit_all(f"file://localhost{str(directory).replace(' ', '%20')}?server_id=x", [event()])
    assert day_file(directory, "2024-05-01", "x").is_file()


# -- torn lines and crashes ---------------------------------------------------------------------


def test_torn_last_line_is_skipped_reported_and_terminated(tmp_path, caplog):
    directory = tmp_path / "log"
    events = [event(when=BASE + i * MS, user="alice", sid=f"s{i}") for i in range(3)]
    emit_all(uri_of(directory), events)
    path = day_file(directory, "2024-05-01")
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # the third line loses its end, newline included

    caplog.set_level(logging.WARNING, logger="teleport.audit")
    assert [e["uid"] for e in stored(uri_of(directory))] == [events[0].uid, events[1].uid]
    torn = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert torn and f"{path} line 3 is incomplete" in torn[0], caplog.text

    caplog.clear()
    later = event(when=BASE + dt.timedelta(hours=1), user="bob")
    emit_all(uri_of(directory), [later])
    assert any(f"{path} line 3 is incomplete" in r.getMessage() and "terminated" in r.getMessage()
               for r in caplog.records), caplog.text
    lines = lines_of(path)
    assert lines[:2] == data.split(b"\n")[:2]
    assert lines[2] == data.split(b"\n")[2][:-24]  # the fragment, now ended by a newline
    assert json.loads(lines[3]) == later.to_dict() and lines[4] == b""

    assert [e["uid"] for e in stored(uri_of(directory))] == [events[0].uid, events[1].uid, later.uid]
    caplog.clear()  # an index rebuilt from the log reports the fragment as an invalid line
    path.with_name(path.name + ".index").unlink()
    assert [e["uid"] for e in stored(uri_of(directory))] == [events[0].uid, events[1].uid, later.uid]
    bad = [r.getMessage() for r in caplog.records if "not a valid event" in r.getMessage()]
    assert bad and f"{path} line 3 is not a valid event" in bad[0], caplog.text


def test_torn_last_line_is_reported_once_per_sink(tmp_path, caplog):
    directory = tmp_path / "log"
    emit_all(uri_of(directory), [event(), event(when=BASE + MS)])
    path = day_file(directory, "2024-05-01")
    path.write_bytes(path.read_bytes()[:-3])
    caplog.set_level(logging.WARNING, logger="teleport.audit")

    async def body(sink: AuditSink) -> None:
        for _ in range(3):
            assert len(await search_all(sink)) == 1

    with_sink(uri_of(directory), body)
    assert sum("incomplete" in r.getMessage() for r in caplog.records) == 1


def test_acknowledged_events_survive_kill_9(tmp_path):
    directory = tmp_path / "log"
    uri = uri_of(directory)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("audit_json_child.py")), uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 400:
            line = child.stdout.readline()
            assert line, f"child ended early: {child.stderr.read().decode() if child.stderr else ''}"
            acknowledged.append(line.decode().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    everything = stored(uri)
    found = {e["uid"] for e in everything}
    missing = [uid for uid in acknowledged if uid not in found]
    assert not missing, f"{len(missing)} acknowledged events lost"
    # the index, whose last rows died with the process, catches up from the log
    by_user = stored(uri, attrs.evolve(EVERYTHING, user="worker-3"))
    assert [e["uid"] for e in by_user] == [e["uid"] for e in everything if e.get("user") == "worker-3"]
    assert by_user
    # and the log stays appendable and whole
    later = new_event("session.end")
    emit_all(uri, [later])
    assert later.uid in {e["uid"] for e in stored(uri)}


# -- dedup ----------------------------------------------------------------------------------------


def test_redelivery_after_a_json_round_trip_is_a_no_op(tmp_path):
    uri = uri_of(tmp_path / "log")
    original = new_event("user.login", user="alice", when=BASE + dt.timedelta(microseconds=123_456))
    redelivered = AuditEvent.from_dict(json.loads(json.dumps(original.to_dict())))  # microseconds lost
    emit_all(uri, [original])
    emit_all(uri, [redelivered, original])
    assert stored(uri) == [original.to_dict()]


def test_dedup_checks_every_event_in_the_same_millisecond(tmp_path):
    uri = uri_of(tmp_path / "log")
    crowd = [event("exec", BASE, user=f"u{i}") for i in range(300)]
    emit_all(uri, crowd)

    async def again(sink: AuditSink) -> None:
        await asyncio.gather(*(sink.emit(e) for e in reversed(crowd)))
        await sink.emit(crowd[150])

    with_sink(uri, again)
    assert sorted(e["uid"] for e in stored(uri)) == sorted(e.uid for e in crowd)
    assert len(lines_of(day_file(tmp_path / "log", "2024-05-01"))) == 301


def test_same_uid_at_another_time_is_another_event(tmp_path):
    uri = uri_of(tmp_path / "log")
    first = event(when=BASE)
    moved = attrs.evolve(first, time=BASE + dt.timedelta(seconds=1))
    emit_all(uri, [first, moved])
    assert [e["time"] for e in stored(uri)] == ["2024-05-01T12:00:00.000Z", "2024-05-01T12:00:01.000Z"]


def test_refused_events(tmp_path):
    uri = uri_of(tmp_path / "log")

    async def body(sink: AuditSink) -> None:
        with pytest.raises(AuditError, match="not JSON-serializable"):
            await sink.emit(event(data=object()))
        with pytest.raises(AuditError, match="not JSON-serializable"):
            await sink.emit(event(ratio=float("nan")))
        with pytest.raises(AuditError, match="'time' is reserved"):
            await sink.emit(new_event("exec", when=BASE, time="2001-01-01T00:00:00.000Z"))
        with pytest.raises(AuditError, match="empty uid"):
            await sink.emit(attrs.evolve(event(), uid=""))

    with_sink(uri, body)
    assert stored(uri) == []


def test_emit_after_close_fails(tmp_path):
    async def main() -> None:
        sink = await open_audit_sink(make_plugins(), uri_of(tmp_path / "log"), tmp_path)
        await sink.close()
        with pytest.raises(AuditError, match="closed"):
            await sink.emit(event())

    asyncio.run(main())


def test_write_failure_is_an_audit_error_for_every_waiting_emitter(tmp_path):
    directory = tmp_path / "log"
    directory.mkdir()
    (directory / "auth-1").write_text("a file where the server directory belongs")

    async def body(sink: AuditSink) -> None:
        results = await asyncio.gather(*(sink.emit(event(user=f"u{i}")) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, AuditError) and "cannot write audit log" in str(r) for r in results), results

    with_sink(uri_of(directory), body)


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_emitters_share_fsyncs(tmp_path, monkeypatch):
    uri = uri_of(tmp_path / "log")
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(filelog.os, "fsync", counting_fsync)
    per_emitter = 40
    events = [[event("exec", BASE + (i % 7) * MS, user=f"w{w}", sid=f"{w}-{i}") for i in range(per_emitter)]
              for w in range(32)]

    async def body(sink: AuditSink) -> None:
        async def emitter(batch: list[AuditEvent]) -> None:
            for e in batch:
                await sink.emit(e)

        await asyncio.gather(*(emitter(batch) for batch in events))

    with_sink(uri, body)
    total = 32 * per_emitter
    assert sorted(e["uid"] for e in stored(uri)) == sorted(e.uid for batch in events for e in batch)
    # file fsyncs plus the directory fsyncs of the first write: far fewer than one per event (a
    # batch takes every emitter the previous one woke, so batches are about 32 events)
    assert fsyncs <= total // 8, f"{fsyncs} fsyncs for {total} events"


def test_emit_returns_only_after_an_fsync_covering_its_line(tmp_path, monkeypatch):
    directory = tmp_path / "log"
    path = day_file(directory, "2024-05-01")
    synced = 0
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        nonlocal synced
        real_fsync(fd)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and path.exists() and os.path.samestat(st, path.stat()):
            synced = max(synced, st.st_size)

    monkeypatch.setattr(filelog.os, "fsync", recording_fsync)

    async def body(sink: AuditSink) -> None:
        async def emit_and_check(e: AuditEvent) -> None:
            await sink.emit(e)
            data = path.read_bytes()
            end = data.index(e.uid.encode())
            end = data.index(b"\n", end) + 1
            assert synced >= end, f"emit returned before its line (ending at {end}) was fsynced ({synced})"

        await asyncio.gather(*(emit_and_check(event(when=BASE + i * MS, sid=str(i))) for i in range(200)))

    with_sink(uri_of(directory), body)
    assert synced == path.stat().st_size


def test_emitters_on_several_event_loops(tmp_path):
    """One sink shared by threads that each run their own event loop."""
    directory = tmp_path / "log"
    sink = FileAuditLog(directory, "auth-1")
    batches = [[event("exec", BASE + i * MS, user=f"t{t}") for i in range(100)] for t in range(4)]

    def run(batch: list[AuditEvent]) -> None:
        async def main() -> None:
            await asyncio.gather(*(sink.emit(e) for e in batch))

        asyncio.run(main())

    threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    asyncio.run(sink.close())
    assert sorted(e["uid"] for e in stored(uri_of(directory))) == sorted(e.uid for b in batches for e in b)


def test_a_failing_writer_fails_its_batch_and_keeps_running(tmp_path, monkeypatch, caplog):
    uri = uri_of(tmp_path / "log")
    real = filelog.day_file_name

    def broken(day: dt.date) -> str:
        raise RuntimeError("boom")

    async def body(sink: AuditSink) -> None:
        monkeypatch.setattr(filelog, "day_file_name", broken)
        with pytest.raises(AuditError, match="the writer failed: RuntimeError"):
            await sink.emit(event(user="lost"))
        monkeypatch.setattr(filelog, "day_file_name", real)
        await sink.emit(event(user="kept"))

    with_sink(uri, body)
    assert [e["user"] for e in stored(uri)] == ["kept"]
    assert "the writer failed" in caplog.text


def test_cancelled_emitter_does_not_withdraw_its_event(tmp_path):
    uri = uri_of(tmp_path / "log")
    e = event()

    async def body(sink: AuditSink) -> None:
        task = asyncio.create_task(sink.emit(e))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with_sink(uri, body)  # closing drains the queue
    assert stored(uri) == [e.to_dict()]


# -- searching ------------------------------------------------------------------------------------


def test_search_opens_only_the_day_files_in_range(tmp_path, monkeypatch):
    directory = tmp_path / "log"
    emit_all(uri_of(directory), [event(when=BASE + i * DAY, user="u") for i in range(5)])
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(filelog.os, "open", recording_open)
    query = AuditQuery(since=BASE + DAY, until=BASE + 2 * DAY)  # 2024-05-02 12:00 .. 2024-05-03 12:00
    found = stored(uri_of(directory), query)
    assert [e["time"][:10] for e in found] == ["2024-05-02"]
    day_files = sorted(Path(p).name for p in opened if p.endswith(".log"))
    assert day_files == ["2024-05-02.00:00:00.log", "2024-05-03.00:00:00.log"]


def test_search_merges_server_directories_and_drops_copies(tmp_path):
    directory = tmp_path / "log"
    a = [event(when=BASE + i * 2 * MS, user="a", sid=f"a{i}") for i in range(20)]
    b = [event(when=BASE + (i * 2 + 1) * MS, user="b", sid=f"b{i}") for i in range(20)]
    shared = event(when=BASE + 7 * MS, user="both")
    tie = [event(when=BASE + 7 * MS, user=f"tie{i}") for i in range(3)]
    emit_all(uri_of(directory, "auth-a"), [*a, shared, tie[0], tie[2]])
    emit_all(uri_of(directory, "auth-b"), [*b, tie[1], shared])
    for limit in (1, 2, 3, 1000):

        async def body(sink: AuditSink, limit: int = limit) -> list[AuditEvent]:
            return await search_all(sink, limit=limit)

        found = with_sink(uri_of(directory, "auth-a"), body)
        uids = [e.uid for e in found]
        assert len(uids) == len(set(uids)) == 44, limit
        assert set(uids) == {e.uid for e in [*a, *b, shared, *tie]}
        assert [e.time for e in found] == sorted(e.time for e in found)


def test_paging_is_stable_while_events_are_appended(tmp_path):
    uri = uri_of(tmp_path / "log")
    first = [event(when=BASE + i * MS, sid=f"f{i}") for i in range(50)]
    emit_all(uri, first)
    later = [event(when=BASE + (100 + i) * MS, sid=f"l{i}") for i in range(30)]

    async def body(sink: AuditSink) -> list[AuditEvent]:
        page = await sink.search(attrs.evolve(EVERYTHING, limit=20))
        found = list(page.events)
        for e in later:
            await sink.emit(e)
        cursor = page.next_cursor
        while cursor:
            page = await sink.search(attrs.evolve(EVERYTHING, limit=20, cursor=cursor))
            found.extend(page.events)
            cursor = page.next_cursor
        return found

    found = with_sink(uri, body)
    assert [e.uid for e in found] == [e.uid for e in [*first, *later]]


def test_out_of_order_writes_and_evicted_indexes_search_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "RECENT_CODES", 8)  # most dedup checks query the index
    monkeypatch.setattr(filelog, "INDEX_BUDGET", 50)
    uri = uri_of(tmp_path / "log")
    events = [event("exec", BASE + DAY * (i % 3) + ((i * 7919) % 500) * MS, sid=f"s{i}") for i in range(600)]

    async def body(sink: AuditSink) -> list[AuditEvent]:
        for start in range(0, len(events), 25):
            await asyncio.gather(*(sink.emit(e) for e in events[start : start + 25]))
        return await search_all(sink, limit=37)

    found = with_sink(uri, body)
    expected = sorted(events, key=lambda e: e.time)
    assert [e.time for e in found] == [e.time for e in expected]
    assert {e.uid for e in found} == {e.uid for e in events} and len(found) == len(events)
    again = stored(uri, attrs.evolve(EVERYTHING, sid="s599"))
    assert [e["uid"] for e in again] == [events[599].uid]


def test_eviction_keeps_the_writers_recent_day_files(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog, "INDEX_BUDGET", 10)
    directory = tmp_path / "log"
    today = dt.datetime.now(dt.UTC)
    old = [event(when=BASE + i * DAY, user="old") for i in range(5) for _ in range(4)]
    emit_all(uri_of(directory, "other"), old)

    async def body(sink: AuditSink) -> set[str]:
        await sink.emit(event(when=today, user="new"))  # today's index is now the least recently used
        assert len(await search_all(sink, AuditQuery(since=BASE - DAY, until=BASE + 10 * DAY))) == 20
        assert isinstance(sink, FileAuditLog)
        return {path.name for path in sink._indexes}

    kept = with_sink(uri_of(directory), body)
    assert f"{today.date().isoformat()}.00:00:00.log" in kept
    assert len(kept) < 6  # the old day files were evicted


def test_long_lines_are_indexed_and_read(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "SCAN_CHUNK", 1024)
    uri = uri_of(tmp_path / "log")
    big = [event(when=BASE + i * MS, payload="x" * size) for i, size in enumerate((10, 5000, 300_000, 20, 70_000))]
    emit_all(uri, big)
    assert stored(uri) == [e.to_dict() for e in big]


def test_lines_not_written_by_the_sink_are_still_found(tmp_path, caplog):
    directory = tmp_path / "log"
    emit_all(uri_of(directory), [event(when=BASE, user="alice")])
    path = day_file(directory, "2024-05-01")
    foreign = {"time": "2024-05-01T13:00:00.5Z", "user": "carol", "code": "T2000I", "event": "session.start",
               "uid": "hand-written", "note": "é"}
    other_day = {"event": "exec", "code": "T3002I", "uid": "wrong-day", "time": "2024-05-02T00:00:00.000Z"}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(foreign, ensure_ascii=False, indent=None) + "\n")
        f.write(json.dumps(other_day) + "\n")
        f.write("[1, 2]\n")
    caplog.set_level(logging.WARNING, logger="teleport.audit")
    found = stored(uri_of(directory))
    assert [e["uid"] for e in found] == [found[0]["uid"], "hand-written"]
    assert found[1]["note"] == "é"
    assert [e["uid"] for e in stored(uri_of(directory), attrs.evolve(EVERYTHING, user="carol"))] == ["hand-written"]
    messages = caplog.text
    assert f"{path} line 3 holds an event of 2024-05-02" in messages
    assert f"{path} line 4 is not a valid event" in messages


def test_filters_are_exact_for_unusual_values(tmp_path):
    uri = uri_of(tmp_path / "log")
    numeric = event(when=BASE, user=5)
    nested = event(when=BASE + MS, user="dave", traits={"user": "erin", "sid": "x"})
    quoted = event(when=BASE + 2 * MS, user='er"in\\', sid="ü-1")
    emit_all(uri, [numeric, nested, quoted])

    def uids(**filters: Any) -> list[str]:
        return [e["uid"] for e in stored(uri, attrs.evolve(EVERYTHING, **filters))]

    assert uids(user="5") == [numeric.uid]
    assert uids(user="erin") == []
    assert uids(sid="x") == []
    assert uids(user='er"in\\') == [quoted.uid]
    assert uids(sid="ü-1") == [quoted.uid]
    assert uids(event_types=("user.login", "exec"), user="dave") == [nested.uid]


def test_time_bounds_at_sub_millisecond_precision(tmp_path):
    uri = uri_of(tmp_path / "log")
    e = event(when=BASE + 5 * MS)
    emit_all(uri, [e])
    micro = dt.timedelta(microseconds=1)
    assert stored(uri, AuditQuery(since=BASE + 5 * MS - micro, until=BASE + 5 * MS + micro)) == [e.to_dict()]
    assert stored(uri, AuditQuery(since=BASE + 5 * MS + micro, until=BASE + DAY)) == []
    assert stored(uri, AuditQuery(since=BASE, until=BASE + 5 * MS)) == []


def test_bad_cursor_and_limit(tmp_path):
    uri = uri_of(tmp_path / "log")
    emit_all(uri, [event()])

    async def body(sink: AuditSink) -> None:
        for cursor in ("garbage!", "Zm9v", Position(dt.date(2024, 5, 1), 1, "a", 0).encode()[:-2] + "@@"):
            with pytest.raises(InvalidCursor, match="invalid audit search cursor"):
                await sink.search(attrs.evolve(EVERYTHING, cursor=cursor))
        with pytest.raises(ValueError, match="limit must be positive"):
            await sink.search(attrs.evolve(EVERYTHING, limit=0))

    with_sink(uri, body)


def test_cursor_round_trip():
    position = Position(dt.date(2024, 5, 1), 235959999, "auth-1.example.com", (1 << 36) - 1)
    assert Position.decode(position.encode()) == position


def test_sink_is_a_file_audit_log(tmp_path):
    async def main() -> None:
        sink = await open_audit_sink(make_plugins(), uri_of(tmp_path), tmp_path)
        assert isinstance(sink, FileAuditLog)
        assert (sink.directory, sink.server_id) == (tmp_path, "auth-1")
        await sink.close()

    asyncio.run(main())


def test_many_events_in_one_day_page_completely(tmp_path):
    uri = uri_of(tmp_path / "log")
    events = [event("exec", BASE + (i // 3) * MS, user=f"u{i % 4}", sid=f"s{i}") for i in range(3000)]

    async def body(sink: AuditSink) -> dict[str, list[str]]:
        await asyncio.gather(*(sink.emit(e) for e in events))
        everything = [e.uid for e in await search_all(sink, limit=250)]
        by_user = [e.uid for e in await search_all(sink, attrs.evolve(EVERYTHING, user="u2"), limit=99)]
        return {"all": everything, "u2": by_user}

    found = with_sink(uri, body)
    assert found["all"] == [e.uid for e in events]
    assert found["u2"] == [e.uid for e in events if e.user == "u2"]
