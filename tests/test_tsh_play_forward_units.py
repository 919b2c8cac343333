"""tsh's -L spec parsing, play flags and asciicast replay, without a cluster (the end-to-end
tests are in plugins/proxy/tests/test_tsh_play_forward.py)."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from teleport_core.errors import TeleportError
from teleport_core.tsh.forward import BadForwardSpec, LocalForward, parse_local_forward
from teleport_core.tsh.recordings import BadRecording, listing_window, parse_speed, read_cast, replay, write_json


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:web:80", LocalForward("127.0.0.1", 8080, "web", 80)),
    ("localhost:8080:web:80", LocalForward("127.0.0.1", 8080, "web", 80)),
    ("*:8080:10.0.0.5:80", LocalForward("0.0.0.0", 8080, "10.0.0.5", 80)),
    (":8080:web:80", LocalForward("0.0.0.0", 8080, "web", 80)),
    ("[::1]:8080:[2001:db8::5]:443", LocalForward("::1", 8080, "2001:db8::5", 443)),
    ("10.1.2.3:2222:db.internal:5432", LocalForward("10.1.2.3", 2222, "db.internal", 5432)),
])
def test_local_forward_specs(spec: str, expected: LocalForward) -> None:
    assert parse_local_forward(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("8080", "expected [bind_address:]port:host:hostport"),
    ("8080:web", "expected [bind_address:]port:host:hostport"),
    ("a:b:c:d:e", "expected [bind_address:]port:host:hostport"),
    ("http:web:80", "port 'http' is not a number from 1 to 65535"),
    ("8080:web:0", "port '0' is not a number from 1 to 65535"),
    ("8080:web:65536", "port '65536' is not a number from 1 to 65535"),
    ("8080::80", "the host is empty"),
    ("[::1:8080:web:80", "unbalanced '['"),
    ("::1]:8080:web:80", "unbalanced ']'"),
])
def test_bad_local_forward_specs(spec: str, message: str) -> None:
    with pytest.raises(BadForwardSpec, match="invalid -L spec") as caught:
        parse_local_forward(spec)
    assert message in str(caught.value)


def test_speed() -> None:
    assert parse_speed("2") == 2.0 and parse_speed("0.5x") == 0.5 and parse_speed("8X") == 8.0
    for bad in ("0", "-1", "fast", "inf", "nan", "1000"):
        with pytest.raises(TeleportError, match="--speed"):
            parse_speed(bad)


def test_listing_window() -> None:
    since, until = listing_window("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "")
    assert (since, until) == (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    since, until = listing_window("", "2024-01-02T00:00:00Z", "90m")
    assert until - since == dt.timedelta(minutes=90)
    since, until = listing_window("", "", "")
    assert until - since == dt.timedelta(days=1)
    for args, message in ((("x", "", ""), "--from-utc: expected an RFC 3339 time"),
                          (("", "x", ""), "--to-utc: expected an RFC 3339 time"),
                          (("", "", "soon"), "--last: expected a duration"),
                          (("", "", "-1h"), "--last: expected a positive duration"),
                          (("2024-01-01T00:00:00Z", "", "1h"), "cannot be used together"),
                          (("2024-01-03T00:00:00Z", "2024-01-02T00:00:00Z", ""), "must be before")):
        with pytest.raises(TeleportError, match=message):
            listing_window(*args)


CAST = (json.dumps({"version": 2, "width": 80, "height": 24}) + "\n"
        + "\n".join(json.dumps(e) for e in ([0.5, "o", "$ ls\r\n"], [1.0, "i", "ignored"], [2.0, "r", "100x40"],
                                             [4.0, "o", "a  b\r\n"], [4.0, "o", "é"])) + "\n").encode()


def test_replay_writes_output_events_with_scaled_pauses() -> None:
    now = [100.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:  # a clock the replay advances by sleeping
        pauses.append(seconds)
        now[0] += seconds

    out = io.BytesIO()
    replay(io.BytesIO(CAST), out, speed=2.0, sleep=sleep, clock=lambda: now[0])
    assert out.getvalue() == "$ ls\r\na  b\r\né".encode()
    assert pauses == [0.25, 1.75]  # each output event at its stamp / speed; none between equal stamps
    untimed = io.BytesIO()
    replay(io.BytesIO(CAST), untimed, timed=False, sleep=sleep, clock=lambda: now[0])
    assert untimed.getvalue() == out.getvalue() and pauses == [0.25, 1.75]


def test_json_format_and_bad_recordings() -> None:
    text = io.StringIO()
    write_json(io.BytesIO(CAST), text)
    doc = json.loads(text.getvalue())
    assert doc["header"]["version"] == 2 and doc["events"][0] == [0.5, "o", "$ ls\r\n"] and len(doc["events"]) == 5
    with pytest.raises(BadRecording, match="first line is not JSON"):
        read_cast(io.BytesIO(b"garbage\n"))
    with pytest.raises(BadRecording, match="version"):
        read_cast(io.BytesIO(b'{"version": 1}\n'))
    _header, events = read_cast(io.BytesIO(b'{"version": 2}\n[1, "o"]\n'))
    with pytest.raises(BadRecording, match="line 2"):
        list(events)
