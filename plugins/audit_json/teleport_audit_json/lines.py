"""The JSON line an event is stored as, and fast reading of the fields that order and filter it.

Every line is ``AuditEvent.to_dict()`` encoded compactly (``separators=(",", ":")``) with
``ensure_ascii=True``, so a line is pure ASCII, holds no raw newline, and the same event
always encodes to the same bytes. ``to_dict`` puts ``event``, ``code``, ``uid`` and ``time``
first, so :data:`LINE` reads a line's time and uid without decoding the JSON, and a filter on
``user`` or ``sid`` can reject most lines by a substring test (:class:`Prefilter`).

A line's *time code* is its time of day as the decimal number ``HHMMSSmmm``: it sorts like
the time, and converts to and from milliseconds cheaply.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import attrs

from teleport_core.state.audit import AuditError, AuditEvent, AuditQuery

DAY_MS = 86_400_000
RESERVED = ("event", "code", "uid", "time")
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)
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


@attrs.frozen
class Encoded:
    """An event ready to append: its line (newline included), uid, UTC day and time code, and
    the text of the fields searches filter on (``event``, ``user``, ``sid``)."""

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


def encode(event: AuditEvent) -> Encoded:
    """The stored line of ``event``; :class:`AuditError` if it cannot be stored as JSON."""
    clash = [key for key in RESERVED if key in event.fields]
    if clash:
        raise AuditError(f"audit event {event.event} ({event.uid}): field {clash[0]!r} is reserved")
    if not event.uid:
        raise AuditError(f"audit event {event.event} has an empty uid")
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


def decode(line: bytes) -> AuditEvent:
    """The event a stored line holds; ``ValueError`` when it is not a valid event."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        return AuditEvent.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


_NON_STRING_USER = re.compile(rb'"user":[^"]')
_NON_STRING_SID = re.compile(rb'"sid":[^"]')


class Prefilter:
    """Rejects lines that cannot match a query without decoding them.

    Exact for lines this module wrote (its encoding is deterministic); any other line passes
    and is decoded and checked with :meth:`AuditQuery.matches`. A ``user`` or ``sid`` whose
    value is not a string (``"user":5``) compares as ``str()``, so such lines pass too.
    """

    def __init__(self, query: AuditQuery) -> None:
        self.types = tuple(b'{"event":' + encode_json(t) + b"," for t in query.event_types)
        self.user = b'"user":' + encode_json(query.user) if query.user else b""
        self.sid = b'"sid":' + encode_json(query.sid) if query.sid else b""
        self.active = bool(self.types or self.user or self.sid)

    def may_match(self, line: bytes) -> bool:
        if not line.startswith(CANONICAL_START):
            return True
        if self.types and not line.startswith(self.types):
            return False
        if self.user and self.user not in line and not _NON_STRING_USER.search(line):
            return False
        return not self.sid or self.sid in line or _NON_STRING_SID.search(line) is not None
