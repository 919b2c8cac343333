"""AuditEvent.from_dict and parse_time, which every search runs once per event read: what they
accept, what they refuse, and that the fields keep their order and values."""

from __future__ import annotations

import datetime as dt

import pytest

from teleport_core.state.audit import AuditEvent, format_time, new_event, parse_time


def test_a_round_trip_keeps_every_field_in_order() -> None:
    event = new_event("session.start", user="alice", sid="s-1", **{"addr.remote": "127.0.0.1:5"}, size="80:25")
    data = event.to_dict()
    again = AuditEvent.from_dict(data)
    assert again.to_dict() == data and list(again.to_dict()) == list(data)
    assert list(again.fields) == ["user", "sid", "addr.remote", "size"]
    assert again.time == event.time.replace(microsecond=event.time.microsecond // 1000 * 1000)
    assert data["event"] == "session.start"  # the caller's dict is left alone


@pytest.mark.parametrize(("data", "message"), [
    ({"code": "T2000I", "uid": "u", "time": "2024-05-01T00:00:00Z"}, "audit event lacks event"),
    ({"event": "x", "code": 5, "uid": "u", "time": "2024-05-01T00:00:00Z"}, "audit event lacks code"),
    ({"event": "x", "code": "c", "uid": None}, "audit event lacks uid, time"),
    ({}, "audit event lacks event, code, uid, time"),
])
def test_missing_or_non_string_fixed_fields_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        AuditEvent.from_dict(data)


def test_a_malformed_time_is_refused() -> None:
    with pytest.raises(ValueError):
        AuditEvent.from_dict({"event": "x", "code": "c", "uid": "u", "time": "yesterday"})


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T10:20:30.123Z", dt.datetime(2024, 5, 1, 10, 20, 30, 123000, tzinfo=dt.UTC)),
    ("2024-05-01T10:20:30.123+00:00", dt.datetime(2024, 5, 1, 10, 20, 30, 123000, tzinfo=dt.UTC)),
    ("2024-05-01T10:20:30", dt.datetime(2024, 5, 1, 10, 20, 30, tzinfo=dt.UTC)),  # no zone: UTC
    ("2024-05-01T12:20:30+02:00", dt.datetime(2024, 5, 1, 10, 20, 30, tzinfo=dt.UTC)),
])
def test_times_are_read_as_utc(text: str, expected: dt.datetime) -> None:
    when = parse_time(text)
    assert when == expected and when.utcoffset() == dt.timedelta(0) and when.tzinfo is dt.UTC
    assert parse_time(format_time(when)) == when
