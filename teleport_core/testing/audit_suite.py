"""Conformance suite for audit-sink plugins.

Subclass :class:`AuditSinkConformance` in a class named ``Test...`` and define one fixture,
``teleport_audit_uri``, returning a URI of your scheme that names a fresh, empty sink for
each test (the same URI must reopen the same events)::

    class TestSqliteAuditSink(AuditSinkConformance):
        @pytest.fixture
        def teleport_audit_uri(self, tmp_path):
            return f"sqlite://{tmp_path}/audit.db"

The suite opens the sink exactly as ``teleport start`` does (installed plugins,
:func:`~teleport_core.resources.open_audit_sink`, ``data_dir`` = ``tmp_path``), so the
plugin must be installed (``pip install -e .``) or listed in ``$TELEPORT_PLUGINS``.
Event times are whole milliseconds, the precision of an event's ``time`` field.

Capabilities, as devpi's test markers select tests: a sink whose class says
``searchable = False`` (a webhook, syslog or SIEM forwarder) cannot be searched, so the suite
reads what it stored through a second fixture, ``teleport_audit_delivered``: a callable
returning the events the sink has delivered so far (as event dicts, in delivery order), for
example by reading what your test receiver got::

    class TestWebhookSink(AuditSinkConformance):
        @pytest.fixture
        def teleport_audit_uri(self, receiver):
            return f"webhook://127.0.0.1:{receiver.port}/events"

        @pytest.fixture
        def teleport_audit_delivered(self, receiver):
            return receiver.events

Every sink runs the tests of emitting (every field), ordering, de-duplication, durability
across reopening and concurrency; only searchable sinks run the search tests (time range,
filters, paging), and a write-only sink must refuse ``search`` with an ``AuditError``. A
write-only sink de-duplicates within one process's life; across a restart its receiver
de-duplicates by ``uid``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.state.audit import AuditError, AuditEvent, AuditQuery, AuditSink, event_line, new_event

BASE = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
EVERYTHING = AuditQuery(since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC), until=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
MS = dt.timedelta(milliseconds=1)
MINUTE = dt.timedelta(minutes=1)


def _event(kind: str, when: dt.datetime, outcome: str = "ok", **fields: Any) -> AuditEvent:
    return new_event(kind, outcome, when=when, **fields)


def _dicts(events: tuple[AuditEvent, ...] | list[AuditEvent]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in events]


async def search_all(sink: AuditSink, query: AuditQuery, max_pages: int = 10_000) -> list[AuditEvent]:
    """Every event ``query`` matches, following ``next_cursor`` page by page."""
    events: list[AuditEvent] = []
    cursor = ""
    for _ in range(max_pages):
        page = await sink.search(attrs.evolve(query, cursor=cursor))
        assert len(page.events) <= query.limit, f"page of {len(page.events)} events exceeds limit {query.limit}"
        events.extend(page.events)
        if not page.next_cursor:
            return events
        assert page.next_cursor != cursor, "next_cursor did not advance"
        cursor = page.next_cursor
    pytest.fail(f"paging did not end after {max_pages} pages")


Delivered = Callable[[], list[dict[str, Any]]]


class AuditSinkConformance:
    """Behaviour every ``AuditSink`` must have. Define the ``teleport_audit_uri`` fixture (and
    ``teleport_audit_delivered`` for a sink that is not searchable)."""

    @pytest.fixture
    def teleport_audit_delivered(self) -> Delivered | None:
        """What a write-only sink delivered; searchable sinks need not define it."""
        return None

    @staticmethod
    async def stored(sink: AuditSink, delivered: Delivered | None) -> list[dict[str, Any]]:
        """Everything the sink holds: searched (oldest first) or, for a write-only sink, as delivered."""
        if sink.searchable:
            return _dicts(await search_all(sink, EVERYTHING))
        if delivered is None:
            pytest.fail(f"{type(sink).__name__} is not searchable: define the teleport_audit_delivered fixture "
                        "to say what it delivered")
        return delivered()

    @staticmethod
    def needs_search(sink: AuditSink) -> None:
        if not sink.searchable:
            pytest.skip(f"{type(sink).__name__} declares searchable = False")

    @asynccontextmanager
    async def opened(self, uri: str, data_dir: Path) -> AsyncIterator[AuditSink]:
        """The sink ``uri`` names, opened through the installed plugins and closed on exit."""
        sink = await open_audit_sink(make_plugins(), uri, data_dir)
        try:
            yield sink
        finally:
            await sink.close()

    def with_sink(self, uri: str, data_dir: Path, body: Callable[[AuditSink], Awaitable[None]]) -> None:
        """Run ``body(sink)`` in a fresh event loop, opening and closing the sink around it."""

        async def main() -> None:
            async with self.opened(uri, data_dir) as sink:
                await body(sink)

        asyncio.run(main())

    # -- tests ------------------------------------------------------------------------------------

    def test_empty_sink_finds_nothing(self, teleport_audit_uri: str, tmp_path: Path,
                                      teleport_audit_delivered: Delivered | None) -> None:
        """A new sink holds nothing; a write-only one refuses to search, saying so."""

        async def body(sink: AuditSink) -> None:
            if not sink.searchable:
                with pytest.raises(AuditError):
                    await sink.search(EVERYTHING)
                assert await self.stored(sink, teleport_audit_delivered) == []
                return
            page = await sink.search(EVERYTHING)
            assert (page.events, page.next_cursor) == ((), "")

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_emit_then_search_returns_every_field(self, teleport_audit_uri: str, tmp_path: Path,
                                                  teleport_audit_delivered: Delivered | None) -> None:
        event = _event(
            "user.login",
            BASE + 123 * MS,
            user="alice",
            login="root",
            method="local",
            success=True,
            sid="4f2c0a7e-1b7e-4d0c-9c1e-2a3b4c5d6e7f",
            server_id="node-1",
            size=1234,
            roles=["access", "editor"],
            traits={"logins": ["root", "ubuntu"], "note": "naïve ✓"},
            **{"addr.remote": "192.0.2.10:51234", "addr.local": "198.51.100.1:3022"},
        )

        async def body(sink: AuditSink) -> None:
            await sink.emit(event)
            if not sink.searchable:
                assert await self.stored(sink, teleport_audit_delivered) == [event.to_dict()]
                return
            page = await sink.search(EVERYTHING)
            assert _dicts(page.events) == [event.to_dict()]
            assert page.next_cursor == ""
            [found] = page.events
            assert (found.uid, found.time, found.user, found.sid) == (event.uid, event.time, "alice", event.sid)

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_time_range_since_inclusive_until_exclusive(self, teleport_audit_uri: str, tmp_path: Path) -> None:
        events = [_event("session.start", BASE + i * MINUTE, user="bob", sid=f"s{i}") for i in range(10)]

        async def body(sink: AuditSink) -> None:
            self.needs_search(sink)
            for event in reversed(events):
                await sink.emit(event)
            query = AuditQuery(since=BASE + 2 * MINUTE, until=BASE + 5 * MINUTE)
            assert _dicts(await search_all(sink, query)) == _dicts(events[2:5])
            just_inside = AuditQuery(since=BASE + 2 * MINUTE - MS, until=BASE + 2 * MINUTE + MS)
            assert _dicts(await search_all(sink, just_inside)) == _dicts(events[2:3])
            before_all = AuditQuery(since=BASE - MINUTE, until=BASE)
            assert await search_all(sink, before_all) == []
            assert _dicts(await search_all(sink, EVERYTHING)) == _dicts(events)

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_filters(self, teleport_audit_uri: str, tmp_path: Path) -> None:
        kinds = ["user.login", "session.start", "exec", "session.end"]
        events = [
            _event(kinds[i % 4], BASE + i * MS, user=("alice", "bob", "carol")[i % 3], sid=f"sid-{i % 5}")
            for i in range(60)
        ]

        async def body(sink: AuditSink) -> None:
            self.needs_search(sink)
            await asyncio.gather(*(sink.emit(e) for e in events))

            async def found(**filters: Any) -> list[dict[str, Any]]:
                return _dicts(await search_all(sink, attrs.evolve(EVERYTHING, **filters)))

            def expected(keep: Callable[[AuditEvent], bool]) -> list[dict[str, Any]]:
                wanted = _dicts([e for e in events if keep(e)])
                assert wanted, "the filter must match something for the test to mean anything"
                return wanted

            assert await found(event_types=("exec", "session.end")) == expected(
                lambda e: e.event in ("exec", "session.end")
            )
            assert await found(event_types=("user.login",)) == expected(lambda e: e.event == "user.login")
            assert await found(user="bob") == expected(lambda e: e.user == "bob")
            assert await found(sid="sid-3") == expected(lambda e: e.sid == "sid-3")
            assert await found(event_types=("session.start",), user="carol") == expected(
                lambda e: e.event == "session.start" and e.user == "carol"
            )
            assert await found(user="nobody") == []
            assert await found(event_types=("role.created",)) == []

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_paging_returns_every_event_once_in_time_order(self, teleport_audit_uri: str, tmp_path: Path) -> None:
        # 1,200 events, four per millisecond (so pages split ties), emitted in random order.
        events = [_event("exec", BASE + (i // 4) * MS, user="pager", sid=f"s-{i}") for i in range(1200)]
        shuffled = events[:]
        random.Random(1200).shuffle(shuffled)  # noqa: S311 (a reproducible order, not a secret)
        by_uid = {e.uid: e for e in events}

        async def body(sink: AuditSink) -> None:
            self.needs_search(sink)
            for start in range(0, len(shuffled), 100):
                await asyncio.gather(*(sink.emit(e) for e in shuffled[start : start + 100]))
            for limit in (100, 7, 5000):
                found = await search_all(sink, attrs.evolve(EVERYTHING, limit=limit))
                uids = [e.uid for e in found]
                assert len(uids) == len(events), f"limit {limit}: got {len(uids)} of {len(events)} events"
                assert len(set(uids)) == len(uids), f"limit {limit}: an event was returned twice"
                assert set(uids) == set(by_uid)
                times = [e.time for e in found]
                assert times == sorted(times), f"limit {limit}: events are not oldest first"
                assert _dicts(found) == _dicts([by_uid[uid] for uid in uids])
            first = await sink.search(attrs.evolve(EVERYTHING, limit=100))
            assert len(first.events) == 100 and first.next_cursor, "a full page must offer the next one"

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_search_lines_is_search_as_json(self, teleport_audit_uri: str, tmp_path: Path) -> None:
        """``search_lines`` (what auth's ``GET /v1/events`` answers with) gives ``search``'s pages: the
        same events in the same order and the same cursors, each event one JSON object (no newline)
        that reads as its ``to_dict``, and its record what that object reads as."""
        events = [
            _event(("exec", "session.start", "user.login")[i % 3], BASE + (i // 2) * MS, user=("alice", "bob")[i % 2],
                   sid=f"s-{i % 4}", n=i, nested={"list": [1, 2.5, None, True], "text": 'naïve ✓ \u2028 "]},'})
            for i in range(45)
        ]
        queries = [
            attrs.evolve(EVERYTHING, limit=7),
            attrs.evolve(EVERYTHING, user="bob", limit=5),
            attrs.evolve(EVERYTHING, event_types=("exec", "user.login"), limit=100),
            attrs.evolve(EVERYTHING, since=BASE + 5 * MS, until=BASE + 15 * MS, sid="s-1", limit=2),
        ]

        async def body(sink: AuditSink) -> None:
            self.needs_search(sink)
            await asyncio.gather(*(sink.emit(e) for e in events))
            for query in queries:
                cursor, found = "", list[AuditEvent]()
                while True:
                    page = await sink.search(attrs.evolve(query, cursor=cursor))
                    lines = await sink.search_lines(attrs.evolve(query, cursor=cursor))
                    assert lines.next_cursor == page.next_cursor
                    assert len(lines.lines) == len(lines.records) == len(page.events)
                    for line, record, event in zip(lines.lines, lines.records, page.events, strict=True):
                        assert type(line) is bytes and b"\n" not in line
                        assert json.loads(line) == record == event.to_dict()
                    found.extend(page.events)
                    if not page.next_cursor:
                        break
                    cursor = page.next_cursor
                expected = sorted((e for e in events if query.matches(e)), key=lambda e: e.time)
                assert expected and sorted(_dicts(found), key=lambda d: (d["time"], d["uid"])) == sorted(
                    _dicts(expected), key=lambda d: (d["time"], d["uid"]))

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_same_uid_is_stored_once(self, teleport_audit_uri: str, tmp_path: Path,
                                     teleport_audit_delivered: Delivered | None) -> None:
        event = _event("user.login", BASE, user="alice")

        async def body(sink: AuditSink) -> None:
            await sink.emit(event)
            await sink.emit(event)
            await asyncio.gather(sink.emit(event), sink.emit(event))
            assert await self.stored(sink, teleport_audit_delivered) == [event.to_dict()]

        async def reopened(sink: AuditSink) -> None:
            if not sink.searchable:
                return  # across a restart a write-only sink's receiver de-duplicates (see the module doc)
            await sink.emit(event)
            assert _dicts(await search_all(sink, EVERYTHING)) == [event.to_dict()]

        self.with_sink(teleport_audit_uri, tmp_path, body)
        self.with_sink(teleport_audit_uri, tmp_path, reopened)

    def test_concurrent_emits_are_all_stored(self, teleport_audit_uri: str, tmp_path: Path,
                                             teleport_audit_delivered: Delivered | None) -> None:
        events = [_event("session.start", BASE + (i % 10) * MS, user=f"user-{i}", sid=f"c-{i}") for i in range(200)]

        async def body(sink: AuditSink) -> None:
            await asyncio.gather(*(sink.emit(e) for e in events))
            if sink.searchable:
                found = _dicts(await search_all(sink, attrs.evolve(EVERYTHING, limit=50)))
            else:
                found = await self.stored(sink, teleport_audit_delivered)
            assert sorted(e["uid"] for e in found) == sorted(e.uid for e in events)
            assert all(e in found for e in _dicts(events))  # whole, not torn by concurrent writes

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_ordering(self, teleport_audit_uri: str, tmp_path: Path,
                      teleport_audit_delivered: Delivered | None) -> None:
        """Emitted one after another with times out of order: a searchable sink returns them oldest
        first, a write-only one delivers them in the order they were emitted."""
        events = [_event("exec", BASE + ((i * 7) % 20) * MS, user="ordered", sid=f"o-{i}") for i in range(20)]

        async def body(sink: AuditSink) -> None:
            for event in events:
                await sink.emit(event)
            found = await self.stored(sink, teleport_audit_delivered)
            expected = sorted(events, key=lambda e: e.time) if sink.searchable else events
            assert [e["uid"] for e in found] == [e.uid for e in expected]

        self.with_sink(teleport_audit_uri, tmp_path, body)

    def test_acknowledged_events_survive_reopening(self, teleport_audit_uri: str, tmp_path: Path,
                                                   teleport_audit_delivered: Delivered | None) -> None:
        events = [_event("user.login", BASE + i * MINUTE, user="alice", sid=f"p-{i}") for i in range(3)]
        later = _event("session.end", BASE + 10 * MINUTE, user="alice")

        async def first(sink: AuditSink) -> None:
            for event in events:
                await sink.emit(event)

        async def second(sink: AuditSink) -> None:
            assert await self.stored(sink, teleport_audit_delivered) == _dicts(events)
            await sink.emit(later)

        async def third(sink: AuditSink) -> None:
            assert await self.stored(sink, teleport_audit_delivered) == _dicts([*events, later])

        self.with_sink(teleport_audit_uri, tmp_path, first)
        self.with_sink(teleport_audit_uri, tmp_path, second)
        self.with_sink(teleport_audit_uri, tmp_path, third)

    def test_emit_lines_stores_what_emit_stores(self, teleport_audit_uri: str, tmp_path: Path,
                                                teleport_audit_delivered: Delivered | None) -> None:
        """The audit spool hands a sink its lines as they are on disk (``emit_lines``): the sink
        stores the same events as through ``emit``, in order, a uid once (also one stored through
        ``emit``), and skips a line that is not an event."""
        nested = _event("session.start", BASE + 2 * MS, user="bob", sid="n-1",
                        traits={"user": ["mallory"], "sid": "x"}, note="naïve ✓")
        plain = [_event("exec", BASE + i * MS, user="alice", sid=f"l-{i}") for i in (3, 1, 5)]
        earlier = _event("user.login", BASE, user="alice")
        lines = [event_line(nested), event_line(plain[0]), b"{not json\n", event_line(plain[1]),
                 b'{"event":"exec"}\n', event_line(plain[0]), event_line(earlier), event_line(plain[2])]
        expected = [nested, plain[0], plain[1], earlier, plain[2]]

        async def body(sink: AuditSink) -> None:
            await sink.emit(earlier)
            await sink.emit_lines(lines)
            await sink.emit_lines([])
            found = await self.stored(sink, teleport_audit_delivered)
            if sink.searchable:
                assert found == _dicts(sorted(expected, key=lambda e: e.time))
                by_user = _dicts(await search_all(sink, attrs.evolve(EVERYTHING, user="mallory")))
                assert by_user == []  # a nested "user" is not the event's user
                assert _dicts(await search_all(sink, attrs.evolve(EVERYTHING, user="bob"))) == [nested.to_dict()]
            else:
                assert found == _dicts([earlier, *[e for e in expected if e is not earlier]])

        self.with_sink(teleport_audit_uri, tmp_path, body)
