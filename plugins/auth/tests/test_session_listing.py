"""Session records in cluster state (the real SQLite backend): created by the owner's
``session.start``, completed by its first ``session.end``, never by another host's; the listing
of ended sessions reads them newest first, the same through any store on the backend."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import attrs
import pytest
from teleport_auth.recordings import session_entry
from teleport_auth.session_records import SessionNotOwned, SessionRecords, record_key

from teleport_core.errors import AlreadyExists
from teleport_core.state.audit import new_event
from teleport_core.state.backend import Backend
from teleport_core.state.sessions import InvalidSessionID

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)


def event(kind: str, sid: str, server: str, minutes: float, **fields: Any):
    return new_event(kind, when=T0 + dt.timedelta(minutes=minutes), sid=sid, server_id=server, **fields)


def start(sid: str, server: str = "victim", minutes: float = 0, **fields: Any):
    values = {"user": "alice", "login": "root", "proto": "ssh", "initial_command": [""], "session_recording": "node",
              **fields}
    return event("session.start", sid, server, minutes, **values)


def end(sid: str, server: str = "victim", minutes: float = 5, **fields: Any):
    values = {"user": "alice", "login": "root", "interactive": True, "session_recording": "node", **fields}
    return event("session.end", sid, server, minutes, **values)


def window(records: SessionRecords, hours: float = 3, limit: int = 50, keep: Any = None):
    return records.ended(T0 - dt.timedelta(hours=hours), T0 + dt.timedelta(hours=hours), limit, keep)


def test_the_owners_start_and_end_make_the_record(with_backend) -> None:
    sid = str(uuid.uuid4())

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        started = start(sid)
        assert await records.accept(started) is True
        assert await records.accept(started) is True  # a redelivery: idempotent
        record = await records.get(sid)
        assert record is not None and record.end is None and record.recording.state == "pending"
        assert await window(records) == []  # running sessions are not listed
        ended = end(sid, end_reason="exit", recorded_bytes=42)
        assert await records.accept(ended) is True
        assert await records.accept(ended) is True  # the same end redelivered: logged again
        record = await records.get(sid)
        assert record is not None and record.start_uid == started.uid and record.end_uid == ended.uid
        assert (record.end_reason, record.recorded_bytes, record.interactive) == ("exit", 42, True)
        [listed] = await window(records)
        entry = session_entry(listed, "pending")
        assert (entry["user"], entry["login"], entry["server_id"], entry["recording"]) == (
            "alice", "root", "victim", "pending")
        assert entry["duration_seconds"] == 300 and not entry["recorded"]
        # the recording is stored: marked uploaded once; a different one is refused
        await records.uploaded(sid, 10, "a" * 64)
        await records.uploaded(sid, 10, "a" * 64)
        with pytest.raises(AlreadyExists):
            await records.uploaded(sid, 11, "b" * 64)
        record = await records.get(sid)
        assert record is not None and (record.recording.state, record.recording.size) == ("uploaded", 10)

    with_backend(body)


def test_a_later_end_of_an_ended_session_is_not_logged(with_backend) -> None:
    sid = str(uuid.uuid4())

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        await records.accept(start(sid))
        first = end(sid, minutes=5)
        assert await records.accept(first) is True
        # the node's node_restart end, emitted after a crash although its normal end got through
        assert await records.accept(end(sid, minutes=9, end_reason="node_restart")) is False
        record = await records.get(sid)
        assert record is not None and record.end_uid == first.uid and record.end_reason == "exit"
        assert [r.sid for r in await window(records)] == [sid]  # listed once

    with_backend(body)


def test_another_host_cannot_take_start_or_end_a_session(with_backend) -> None:
    sid = str(uuid.uuid4())

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        await records.accept(start(sid))
        before = await backend.get(record_key(sid))
        with pytest.raises(SessionNotOwned, match="belongs to host victim"):
            await records.accept(start(sid, server="attacker", user="mallory"))
        with pytest.raises(SessionNotOwned, match="may not end it"):
            await records.accept(end(sid, server="attacker", minutes=1))
        assert (await backend.get(record_key(sid))).value == before.value
        assert await window(records) == []
        with pytest.raises(InvalidSessionID):
            await records.accept(start("../escape"))

    with_backend(body)


def test_an_end_without_start_creates_the_record(with_backend) -> None:
    sid = str(uuid.uuid4())

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        began = T0 + dt.timedelta(minutes=1)
        assert await records.accept(end(sid, minutes=4, end_reason="node_restart",
                                        session_start=began.isoformat())) is True
        record = await records.get(sid)
        assert record is not None and record.server_id == "victim" and record.start == began
        assert record.end_reason == "node_restart" and record.recording.state == "pending"

    with_backend(body)


def test_window_limit_order_and_recording_off(with_backend) -> None:
    sids = [str(uuid.uuid4()) for _ in range(5)]

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        for n, sid in enumerate(sids):  # ended at T0+1m, +2m, ... +5m
            await records.accept(start(sid, minutes=0))
            await records.accept(end(sid, minutes=n + 1))
        off = str(uuid.uuid4())
        await records.accept(start(off, session_recording="off"))
        await records.accept(end(off, minutes=10, session_recording="off"))
        late = str(uuid.uuid4())
        await records.accept(start(late))
        await records.accept(end(late, minutes=200))  # after the window below
        since, until = T0 + dt.timedelta(minutes=2), T0 + dt.timedelta(minutes=30)
        listed = await records.ended(since, until, 50)
        assert [r.sid for r in listed] == [off, *reversed(sids[1:])]  # newest first; [since, until)
        assert listed[0].recording.state == "off"
        assert [r.sid for r in await records.ended(since, until, 2)] == [off, sids[4]]
        # exactly at until: excluded; exactly at since: included
        assert [r.sid for r in await records.ended(since, T0 + dt.timedelta(minutes=5), 50)] == [
            sids[3], sids[2], sids[1]]

    with_backend(body)


def test_two_stores_on_one_backend_agree_under_concurrent_redeliveries(with_backend) -> None:
    sids = [str(uuid.uuid4()) for _ in range(10)]

    async def body(backend: Backend) -> None:
        first, second = SessionRecords(backend), SessionRecords(backend)
        starts = [start(sid) for sid in sids]
        ends = [end(sid, minutes=n + 1) for n, sid in enumerate(sids)]
        # each event delivered to both stores at once (two auth servers taking a redelivery)
        await asyncio.gather(*(store.accept(e) for e in starts for store in (first, second)))
        results = await asyncio.gather(*(store.accept(e) for e in ends for store in (first, second)))
        assert all(results)  # the same uid twice: both logged (the audit log de-duplicates by uid)
        a, b = await window(first), await window(second)
        assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
        assert [r.sid for r in a] == list(reversed(sids))
        assert all(r.end_uid == e.uid for r, e in zip(reversed(a), ends, strict=True))

    with_backend(body)


def test_participants_and_a_filtered_listing_that_pages(with_backend) -> None:
    """The record keeps who took part (the user, then the events' participants; an old record without the
    field counts its user); a listing with ``keep`` reads page after page until ``limit`` are kept."""
    mine = [str(uuid.uuid4()) for _ in range(3)]
    others = [str(uuid.uuid4()) for _ in range(250)]

    async def body(backend: Backend) -> None:
        records = SessionRecords(backend)
        shared = str(uuid.uuid4())
        await records.accept(start(shared, user="bob", participants=["bob", "carol", 7, "x" * 5000]))
        await records.accept(end(shared, minutes=1, user="bob", participants=["alice", "bob"]))
        record = await records.get(shared)
        assert record is not None and record.participants == ("bob", "carol", "alice")
        assert session_entry(record, "pending")["participants"] == ["bob", "carol", "alice"]
        # a record stored before the field existed: its user is the participant
        legacy = record.to_dict()
        legacy.pop("participants")
        item = await backend.get(record_key(shared))
        await backend.put(attrs.evolve(item, value=json.dumps(legacy).encode()))
        assert (await records.get(shared)).participants == ("bob",)  # type: ignore[union-attr]

        # alice's three sessions are the oldest, behind 250 of bob's: the listing pages past them
        for n, sid in enumerate(mine):
            await records.accept(start(sid, minutes=n + 2))
            await records.accept(end(sid, minutes=n + 3))
        for n, sid in enumerate(others):
            await records.accept(start(sid, user="bob", minutes=10))
            await records.accept(end(sid, user="bob", minutes=10 + n / 100))
        own = await window(records, limit=2, keep=lambda r: "alice" in r.participants)
        assert [r.sid for r in own] == [mine[2], mine[1]]
        own = await window(records, limit=50, keep=lambda r: "alice" in r.participants)
        assert [r.sid for r in own] == [mine[2], mine[1], mine[0]]  # not the shared one: now only bob's
        assert len(await window(records, limit=50)) == 50  # unfiltered: one page

    with_backend(body)
