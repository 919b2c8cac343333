"""The stdout:// sink, run in a subprocess so its output can be read."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import textwrap

import pytest
from audit_json_helpers import python
from teleport_audit_json import stdout
from teleport_audit_json.stdout import NOT_SEARCHABLE, StdoutAuditSink

from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditError, AuditQuery, new_event

CHILD = textwrap.dedent(
    """
    import asyncio, datetime as dt, json, sys
    from pathlib import Path
    from teleport_core.state.audit import AuditQuery, new_event
    from teleport_core.plugins import make_plugins
    from teleport_core.resources import open_audit_sink

    async def main():
        sink = await open_audit_sink(make_plugins(), "stdout://", Path("/nonexistent"))
        when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
        events = [
            new_event("user.login", when=when, user="alice", note="zoë\\n✓"),
            new_event("session.start", when=when, user="bob", sid="s-1", **{"addr.remote": "192.0.2.1:22"}),
        ]
        for event in events:
            await sink.emit(event)
        await sink.emit(events[0])  # emitted again: not written twice
        await asyncio.gather(*(sink.emit(new_event("exec", user=f"u{i}")) for i in range(20)))
        try:
            await sink.search(AuditQuery(since=when, until=when))
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        await sink.close()
        print(json.dumps([e.to_dict() for e in events]), file=sys.stderr)

    asyncio.run(main())
    """
)


def test_stdout_sink_writes_json_lines_and_refuses_search():
    result = python("-c", CHILD)
    assert result.returncode == 0, result.stderr
    error, expected = result.stderr.strip().splitlines()
    assert error == f"AuditError: {NOT_SEARCHABLE}"
    lines = result.stdout.splitlines()
    assert len(lines) == 22
    assert [json.loads(line) for line in lines[:2]] == json.loads(expected)
    assert all(json.loads(line)["event"] == "exec" for line in lines[2:])
    assert all(line.isascii() for line in lines)


def test_search_error_names_the_fix_and_the_log_searches_the_first_searchable_sink(tmp_path):
    """stdout:// is write-only: searching it says what to add; an audit log that lists it first
    searches the next, searchable sink; a log of write-only sinks alone says none can be searched."""
    from teleport_audit_json.filelog import open_sink

    from teleport_core.state.audit import AuditLog

    async def main() -> None:
        event = new_event("exec", user="alice")
        query = AuditQuery(since=event.time - dt.timedelta(seconds=1), until=event.time + dt.timedelta(seconds=1))
        out = StdoutAuditSink(io.BytesIO())
        assert out.searchable is False
        with pytest.raises(AuditError, match="add a file:// URI to teleport.storage.audit_events_uri"):
            await out.search(query)
        file_sink = await open_sink(f"file://{tmp_path}/log", tmp_path)
        log = AuditLog([out, file_sink])
        await log.emit(event)
        assert [e.uid for e in (await log.search(query)).events] == [event.uid]
        with pytest.raises(AuditError, match="no sink of teleport.storage.audit_events_uri can be searched"):
            await AuditLog([out]).search(query)
        await log.close()

    asyncio.run(main())


def test_write_failure_and_closed_sink_are_audit_errors():
    class Broken(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            raise OSError(28, "No space left on device")

    async def main() -> None:
        with pytest.raises(AuditError, match="No space left on device"):
            await StdoutAuditSink(Broken()).emit(new_event("exec"))
        sink = StdoutAuditSink(io.BytesIO())
        await sink.close()
        with pytest.raises(AuditError, match="closed"):
            await sink.emit(new_event("exec"))

    asyncio.run(main())


def test_regular_file_output_is_written_and_synced(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    event = new_event("exec", user="alice")
    synced: list[int] = []
    monkeypatch.setattr(stdout.os, "fsync", synced.append)

    async def main() -> None:
        with path.open("wb") as stream:
            sink = StdoutAuditSink(stream)
            await sink.emit(event)
            assert path.read_bytes() == json.dumps(event.to_dict(), separators=(",", ":")).encode() + b"\n"
            assert synced == [stream.fileno()]
            await sink.close()

    asyncio.run(main())


@pytest.mark.parametrize("uri", ["stdout:///", "stdout://x", "stdout://?a=b", "stdout:"])
def test_bad_stdout_uri(tmp_path, uri):
    with pytest.raises(ConfigError, match="expected stdout://") as caught:
        asyncio.run(open_audit_sink(make_plugins(), uri, tmp_path))
    assert caught.value.path == "teleport.storage.audit_events_uri"
