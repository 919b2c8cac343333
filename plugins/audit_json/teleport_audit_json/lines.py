"""The JSON line an event is stored as, and fast reading of the fields that order and filter it.

Every line is ``AuditEvent.to_dict()`` encoded compactly (``separators=(",", ":")``) with
``ensure_ascii=True``, so a line is pure ASCII, holds no raw newline, and the same event
always encodes to the same bytes. ``to_dict`` puts ``event``, ``code``, ``uid`` and ``time``
first, so :data:`LINE` reads a line's time and uid without decoding the JSON.

A line's *time code* is its time of day as the decimal number ``HHMMSSmmm``: it sorts like
the time, and converts to and from milliseconds cheaply.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import attrs
import orjson

from teleport_core.state.audit import AuditError, AuditEvent, event_line

DAY_MS = 86_400_000
RESERVED = ("event", "code", "uid", "time")
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
_SECOND: tuple[int, dt.date, int] = (-1 << 62, dt.date(1970, 1, 1), 0)
_STR = rb'[^"\\\n]*(?:\\.[^"\\\n]*)*'  # the inside of a JSON string, escapes included
# A whole line as this module writes it: groups uid (still JSON-escaped), date, time of day.
LINE = re.compile(
    rb'^\{"event":"' + _STR + rb'","code":"' + _STR + rb'","uid":"(' + _STR + rb')",'
    rb'"time":"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d\.\d{3})Z"(?:,[^\n]*)?\}\n',
    re.MULTILINE,
)
CANONICAL_START = b'{"event":"'


def day_line_pattern(day: dt.date) -> re.Pattern[bytes]:
    """:data:`LINE` for events of ``day`` only, with one group: the time of day."""
    return re.compile(
        rb'^\{"event":"' + _STR + rb'","code":"' + _STR + rb'","uid":"' + _STR + rb'",'
        rb'"time":"' + day.isoformat().encode("ascii") + rb'T(\d\d:\d\d:\d\d\.\d{3})Z"(?:,[^\n]*)?\}\n',
        re.MULTILINE,
    )


@attrs.define
class Encoded:
    """An event ready to append: its line (newline included), uid, UTC day and time code, and
    the text of the fields searches filter on (``event``, ``user``, ``sid``). Not frozen: it
    is made once per event on the append path, where a frozen class's slower ``__init__``
    shows (nothing changes one after it is made)."""

    line: bytes
    uid: str
    day: dt.date
    code: int
    event: str = ""
    user: str = ""
    sid: str = ""


def tc_from_ms(ms: int) -> int:
    """Milliseconds since midnight -> time code ``HHMMSSmmm``."""
    seconds, millis = divmod(ms, 1000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return ((hours * 100 + minute) * 100 + sec) * 1000 + millis


def ms_from_tc(code: int) -> int:
    """Time code ``HHMMSSmmm`` -> milliseconds since midnight."""
    rest, millis = divmod(code, 1000)
    rest, sec = divmod(rest, 100)
    hours, minute = divmod(rest, 100)
    return ((hours * 60 + minute) * 60 + sec) * 1000 + millis


def tc_from_text(time_of_day: bytes) -> int:
    """``b"12:34:56.789"`` -> ``123456789``."""
    return int(time_of_day.translate(None, b":."))


def day_start_ms(day: dt.date) -> int:
    """Milliseconds from the Unix epoch to midnight UTC of ``day``."""
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


def encode(event: AuditEvent, line: bytes | None = None) -> Encoded:
    """The stored line of ``event``; :class:`AuditError` if it cannot be stored as JSON.

    The bytes are :func:`teleport_core.state.audit.event_line`'s (``to_dict`` encoded compactly,
    built without the intermediate dict); ``line``, when given, is what ``event_line(event)``
    returned to the caller (the audit spool's own line), used as it is. The day and time code come
    from the time itself, not from re-reading the line. Anything unusual (a field that is not a
    ``str``, ``fields`` not a ``dict``) takes the general path, checked by :data:`LINE`."""
    fields = event.fields
    if fields and not fields.keys().isdisjoint(RESERVED):
        clash = next(key for key in RESERVED if key in fields)
        raise AuditError(f"audit event {event.event} ({event.uid}): field {clash!r} is reserved")
    if not event.uid:
        raise AuditError(f"audit event {event.event} has an empty uid")
    when = event.time
    if (type(event.event) is not str or type(event.code) is not str or type(event.uid) is not str
            or type(fields) is not dict or not isinstance(when, dt.datetime)):
        return _encode_slowly(event)
    if line is None:
        try:
            line = event_line(event)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit event {event.event} ({event.uid}) is not JSON-serializable: {exc}") from None
    utc = when if when.tzinfo is dt.UTC else when.astimezone(dt.UTC)
    micros = utc.microsecond
    second = round(utc.timestamp() - micros / 1e6)  # exact: the float is within 1e-6 of it
    cached = _SECOND
    if cached[0] != second:
        cached = _second_of(utc, second)
    return Encoded(line, event.uid, cached[1], cached[2] + micros // 1000, event.event, event.user, event.sid)


def _second_of(utc: dt.datetime, second: int) -> tuple[int, dt.date, int]:
    """(Unix second, day, time code) of ``utc``, kept as the last one (events come in bursts)."""
    global _SECOND
    _SECOND = (second, utc.date(), (utc.hour * 100 + utc.minute) * 100000 + utc.second * 1000)
    return _SECOND


def _encode_slowly(event: AuditEvent) -> Encoded:
    """:func:`encode` through ``to_dict`` and the encoder, checked by :data:`LINE`."""
    try:
        text = _ENCODER.encode(event.to_dict())
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit event {event.event} ({event.uid}) is not JSON-serializable: {exc}") from None
    line = text.encode("ascii") + b"\n"
    match = LINE.match(line)
    if match is None:  # the reader could not index it: refuse rather than store it unfindable
        raise AuditError(f"audit event {event.event} ({event.uid}) does not encode to an indexable line")
    day = dt.date.fromisoformat(match.group(2).decode("ascii"))
    return Encoded(line, event.uid, day, tc_from_text(match.group(3)), event.event, event.user, event.sid)


def encode_json(value: Any) -> bytes:
    """``value`` encoded exactly as inside a stored line."""
    return _ENCODER.encode(value).encode("ascii")


def uid_of(line: bytes) -> str | None:
    """The ``uid`` of a stored line (without its newline), or None when it is not an event."""
    match = LINE.match(line + b"\n")
    if match is not None:
        raw = match.group(1)
        if b"\\" not in raw:
            return raw.decode("ascii")
        return str(json.loads(b'"' + raw + b'"'))
    try:
        return decode(line).uid
    except ValueError:
        return None


# 19 digits in a row: a number orjson might not read as Python's json does (it makes a float of an
# integer beyond 64 bits); such a line, and any line orjson refuses, is read by the json module.
# (Found by mapping every digit to "0" and looking for nineteen: ten times faster than a regex.)
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


def decode(line: bytes) -> AuditEvent:
    """The event a stored line holds; ``ValueError`` when it is not a valid event."""
    try:
        return AuditEvent.from_dict(decode_record(line))
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def decode_record(line: bytes) -> dict[str, Any]:
    """The JSON object a stored line holds, as ``json.loads`` reads it; ``ValueError`` when the line
    is not one (whether it is an event is :func:`~teleport_core.state.audit.record_time`'s question).

    orjson reads a line in a third of the json module's time. It is used where it gives what
    ``json.loads`` gives: on a line without a run of 19 digits, and only when it accepts the line
    (it refuses NaN, infinities, lone surrogates and nesting past 1,024, which json reads); any
    other line goes through ``json.loads``, so what a search returns does not depend on which read it.
    """
    try:
        data = _loads(line) if _LONG_DIGITS in line.translate(_DIGITS_TO_ZERO) else orjson.loads(line)
    except orjson.JSONDecodeError:
        data = _loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


# ``time`` as :func:`~teleport_core.state.audit.format_time` writes it (and :data:`LINE` indexes it)
CANONICAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line.decode())  # UTF-8 (stored lines are ASCII): no encoding to detect per line
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


