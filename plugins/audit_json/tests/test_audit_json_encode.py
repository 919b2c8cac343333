"""The append path's encoder: byte for byte what ``event_line_slowly`` (``to_dict`` through the
JSON encoder) writes, with the day and time code the reader derives from the line; and the reading of
the spool's lines (``emit_lines``) without regular expressions, as they read them."""

from __future__ import annotations

import datetime as dt
import math
import random
from zoneinfo import ZoneInfo

import pytest
from teleport_audit_json.index import _line_record_slowly, _plain_record, line_record
from teleport_audit_json.lines import LINE, Encoded, encode, tc_from_text

from teleport_core.state.audit import AuditError, AuditEvent, event_line, event_line_slowly, new_event


def _expected(e: AuditEvent) -> tuple[bytes, dt.date, int]:
    line = event_line_slowly(e)
    match = LINE.match(line)
    assert match is not None
    return line, dt.date.fromisoformat(match.group(2).decode()), tc_from_text(match.group(3))


def _times() -> list[dt.datetime]:
    rnd = random.Random(17)
    epoch = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
    times = [epoch + dt.timedelta(microseconds=rnd.randrange(300 * 365 * 86_400 * 10**6)) for _ in range(20_000)]
    edges = [t.replace(microsecond=us) for t in times[:2000] for us in (0, 999, 1000, 999_000, 999_999)]
    zones = [t.astimezone(ZoneInfo("Asia/Kolkata")) for t in times[:500]] + [
        t.astimezone(dt.timezone(dt.timedelta(hours=-7))) for t in times[500:1000]]
    return [*times, *edges, *zones, dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)]


def test_encode_is_event_line_for_any_time() -> None:
    for i, when in enumerate(_times()):
        e = AuditEvent("exec", "T3002I", f"uid-{i}", when, {"user": "u"} if i % 2 else {})
        record = encode(e)
        assert (record.line, record.day, record.code) == _expected(e), when


@pytest.mark.parametrize(
    "e",
    [
        new_event("exec", user="alice", sid="s1", command="ls -l"),
        new_event("user.login"),
        AuditEvent("x\n\"", "c\\", "u\u00ff\u2028", dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
                   {"user": "é\u0000", "nested": {"a": [1, 2.5, None, True, "\ud83d"], 3: "an int key"}}),
        AuditEvent("exec", "T3002I", "u1", dt.datetime(2024, 5, 1, 12), {"user": 5}),  # naive: local time, as to_dict
        AuditEvent("exec", "T3002I", "u2", dt.datetime(2024, 5, 1, tzinfo=dt.UTC), {"sid": "s"}.items().mapping),
    ],
)
def test_encode_of_unusual_events_is_event_line(e: AuditEvent) -> None:
    record = encode(e)
    assert (record.line, record.day, record.code) == _expected(e)
    assert (record.uid, record.event, record.user, record.sid) == (e.uid, e.event, e.user, e.sid)


def test_encode_refuses_what_cannot_be_stored() -> None:
    now = dt.datetime.now(dt.UTC)
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    for fields, message in (({"n": math.nan}, "not JSON-serializable"), ({"o": object()}, "not JSON-serializable"),
                            ({"d": cycle}, "not JSON-serializable"), ({"time": "x"}, "'time' is reserved")):
        with pytest.raises(AuditError, match=message):
            encode(AuditEvent("exec", "T3002I", "u", now, fields))
    with pytest.raises(AuditError, match="empty uid"):
        encode(AuditEvent("exec", "T3002I", "", now, {}))


def _lines() -> list[bytes]:
    """Lines as the spool holds them (event_line of assorted events), and damaged copies."""
    rnd = random.Random(5)
    texts = ["alice", "", "bob smith", 'q"uote', "back\\slash", "é", "NaN", "x\u2028", "Infinity", '"user":"x"']
    base = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    lines = []
    for i in range(3000):
        fields: dict[str, object] = {}
        for key in ("user", "sid", "login", "command"):
            if rnd.random() < 0.6:
                fields[key] = rnd.choice(texts) if rnd.random() < 0.8 else rnd.choice([5, None, [1], {"user": "n"}])
        if rnd.random() < 0.1:
            fields["details"] = {rnd.choice(["user", "sid"]): rnd.choice(texts)}
        when = base + dt.timedelta(milliseconds=rnd.randrange(86_400_000))
        e = AuditEvent(rnd.choice(["exec", "", "a,b", "x}"]), "T3002I", rnd.choice([f"uid-{i}", f'u"{i}', ""]),
                       when, fields)
        try:
            lines.append(event_line(e))
        except ValueError:
            continue
    damaged = []
    for line in lines[:1500]:
        at = rnd.randrange(len(line))
        damaged.append(line[:at] + bytes([rnd.choice(b'"\\}{,:\n0aZ\xff')]) + line[at + 1:])
        damaged.append(line[:at] + line[at + 1:])
        damaged.append(line.replace(b"2024-05-01", b"2024-02-30"))
    return lines + damaged


def _record(line: bytes, read: object) -> object:
    try:
        return read(line)  # type: ignore[operator]
    except Exception as exc:  # the same error either way
        return type(exc)


def test_line_record_without_regexes_reads_lines_as_the_regexes_do() -> None:
    fast = slow = 0
    for line in _lines():
        expected = _record(line, _line_record_slowly)
        assert _record(line, line_record) == expected, line
        if isinstance(expected, Encoded) and _plain_record(line) is not None:
            fast += 1
        slow += expected is None
    assert fast > 300 and slow > 1000  # both paths taken


def test_encode_with_the_callers_line_is_encode_and_what_readers_read() -> None:
    """``encode(event, line)`` (the audit spool's writer passes the line it built) gives exactly
    ``encode(event)``, and for a line the readers take without decoding, what they read from it."""
    rnd = random.Random(11)
    texts = ["alice", "", 'q"uote', "back\\slash", "é", "x\u2028", "NaN"]
    base = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    plain = 0
    for i in range(3000):
        fields: dict[str, object] = {}
        for key in ("user", "sid", "login"):
            if rnd.random() < 0.7:
                fields[key] = rnd.choice(texts) if rnd.random() < 0.85 else rnd.choice([5, None, {"user": "n"}])
        e = AuditEvent(rnd.choice(["exec", "a,b"]), "T3002I", f"uid-{i}",
                       base + dt.timedelta(microseconds=rnd.randrange(86_400 * 10**6)), fields)
        line = event_line(e)
        assert encode(e, line) == encode(e)
        read = line_record(line)
        # (a line whose only "user" or "sid" key is nested, {"login":{"user":"n"}}, reads as that user:
        # a false candidate of the index, which the exact filter drops; emit's rows say "" there)
        if read is not None and not any(isinstance(value, dict) for value in fields.values()):
            assert read == encode(e, line)
            plain += 1
    assert plain > 1000
