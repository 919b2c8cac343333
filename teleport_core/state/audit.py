"""Audit events, the audit-sink interface, and the fan-out log that writes to every sink.

Events are flat JSON objects with Teleport's field names and codes (``user.login`` /
``T1000I``); build them with :func:`new_event` so ``uid``, ``time`` and ``code`` are right.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from teleport_core.errors import TeleportError

log = logging.getLogger("teleport.audit")

# event type -> code, for the outcomes Teleport defines (see docs/audit-events.md)
USER_LOGIN = "user.login"
CODES: Mapping[tuple[str, str], str] = {
    ("user.login", "ok"): "T1000I",
    ("user.login", "failure"): "T1000W",
    ("user.create", "ok"): "T1002I",
    ("user.update", "ok"): "T1003I",
    ("user.delete", "ok"): "T1004I",
    ("user.password_change", "ok"): "T1005I",
    # ours (Teleport audits no failed invite or reset): a refused completion of one
    ("user.password_change", "failure"): "T1005W",
    ("session.start", "ok"): "T2000I",
    ("session.join", "ok"): "T2001I",
    ("session.join", "failure"): "T2001W",  # ours: a refused join (Teleport audits none)
    ("resize", "ok"): "T2002I",
    ("session.leave", "ok"): "T2003I",
    ("session.end", "ok"): "T2004I",
    ("session.upload", "ok"): "T2005I",
    ("session.data", "ok"): "T2006I",
    ("session.recording.access", "ok"): "T2012I",
    ("exec", "ok"): "T3002I",
    ("exec", "failure"): "T3002E",
    ("port", "ok"): "T3003I",
    ("port", "failure"): "T3003E",
    ("scp", "download"): "T3004I",
    ("scp", "download_failure"): "T3004E",
    ("scp", "upload"): "T3005I",
    ("scp", "upload_failure"): "T3005E",
    ("client.disconnect", "ok"): "T3006I",
    ("auth", "failure"): "T3007W",
    ("access_request.create", "ok"): "T5000I",
    ("access_request.update", "ok"): "T5001I",
    ("access_request.review", "ok"): "T5002I",
    ("access_request.delete", "ok"): "T5003I",
    ("cert.create", "ok"): "TC000I",
    ("cert_authority.rotate", "ok"): "TCA01I",
    ("role.created", "ok"): "T9000I",
    ("role.deleted", "ok"): "T9001I",
    ("role.updated", "ok"): "T9002I",
    ("join_token.create", "ok"): "TJT00I",
    ("trusted_cluster.create", "ok"): "T7000I",
    ("trusted_cluster.delete", "ok"): "T7001I",
    ("trusted_cluster_token.create", "ok"): "T7002I",
    # ours (Teleport audits no refused handshake): a trust refused, on either side
    ("trusted_cluster.create", "failure"): "T7000W",
    # ours: another cluster's CA keys replaced through the trust (CA rotation across it), or refused
    ("trusted_cluster.ca_update", "ok"): "T7003I",
    ("trusted_cluster.ca_update", "failure"): "T7003W",
    ("lock.created", "ok"): "TLK00I",
    ("lock.deleted", "ok"): "TLK01I",
    ("instance.join", "ok"): "TJ002I",
    ("instance.join", "failure"): "TJ002E",
    # ours (Teleport does not audit reverse tunnels): a node's tunnel to a proxy opened and closed
    ("reverse_tunnel.connect", "ok"): "TRT00I",
    ("reverse_tunnel.disconnect", "ok"): "TRT01I",
}


def code_for(event: str, outcome: str = "ok") -> str:
    """The Teleport code of ``event`` with ``outcome``; ``KeyError`` for an unknown pair."""
    return CODES[(event, outcome)]


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as Teleport writes ``time``."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 / ISO 8601 time in UTC; one without a zone is taken as UTC. ``ValueError`` if malformed."""
    when = dt.datetime.fromisoformat(text)  # Python 3.11 reads a "Z" suffix itself
    if when.tzinfo is dt.UTC:  # what format_time writes: "Z" and "+00:00" both give the UTC singleton
        return when
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


_FIXED = ("event", "code", "uid", "time")  # the fields of every event, outside ``fields``


def record_time(record: Mapping[str, Any]) -> dt.datetime:
    """The time of an event's record (its JSON object, :meth:`AuditEvent.to_dict`); ``ValueError``
    when the record is not an event, as :meth:`AuditEvent.from_dict` refuses it."""
    time = record.get("time")
    if (type(time) is not str or type(record.get("event")) is not str or type(record.get("code")) is not str
            or type(record.get("uid")) is not str):
        missing = [k for k in _FIXED if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"audit event lacks {', '.join(missing)}")
    return parse_time(str(time))


@attrs.frozen
class AuditEvent:
    """One audit event: ``event``, ``code``, ``uid``, ``time`` plus Teleport's other fields
    (``user``, ``login``, ``sid``, ``server_id``, ``addr.remote`` ...) in ``fields``."""

    event: str
    code: str
    uid: str
    time: dt.datetime
    fields: Mapping[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object written to logs and returned by searches."""
        out: dict[str, Any] = {"event": self.event, "code": self.code, "uid": self.uid}
        out["time"] = format_time(self.time)
        out.update(self.fields)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], time: dt.datetime | None = None) -> AuditEvent:
        """Inverse of :meth:`to_dict`; ``ValueError`` when a required field is missing.
        ``time``: what :func:`record_time` already read of ``data`` (not parsed again)."""
        rest = dict(data)  # the other fields, in their order (one copy: this runs for every event a search reads)
        event, code, uid = rest.pop("event", None), rest.pop("code", None), rest.pop("uid", None)
        rest.pop("time", None)
        if time is None or type(event) is not str or type(code) is not str or type(uid) is not str:
            time = record_time(data)
        return cls(str(event), str(code), str(uid), time, rest)

    @property
    def user(self) -> str:
        return str(self.fields.get("user", ""))

    @property
    def sid(self) -> str:
        return str(self.fields.get("sid", ""))


_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


_RECORD_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def record_line(record: Mapping[str, Any]) -> bytes:
    """An event's record (:meth:`AuditEvent.to_dict`) as one JSON object, without a newline: compact,
    ASCII. A NaN or infinity (which no writer of ours stores, see :func:`event_line`, but another
    writer's line may hold) is written as the json module reads it back."""
    return _RECORD_ENCODER.encode(record).encode("ascii")


_QUOTE = json.encoder.encode_basestring_ascii  # a str as a JSON string, as _LINE_ENCODER writes it


def _not_serializable(value: object) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


# _LINE_ENCODER's C encoder, made once rather than per call (as ``JSONEncoder.encode`` does): no
# circular-reference markers (shared by threads), so a cycle ends as a RecursionError instead.
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_FIELDS: Any = (
    _C_ENCODER(None, _not_serializable, _QUOTE, None, ":", ",", False, False, False)
    if _C_ENCODER is not None
    else (lambda value, _level: (_LINE_ENCODER.encode(value),))
)
_SECOND: tuple[int, str] = (-1 << 62, "")


def event_line(event: AuditEvent) -> bytes:
    """``event`` as one JSON line (newline included): :meth:`AuditEvent.to_dict` encoded compactly,
    ASCII only, no NaN. What the audit spool holds and :meth:`AuditSink.emit_lines` takes (the
    JSON audit log stores exactly these bytes). ``TypeError``/``ValueError`` if not JSON.

    Built without the intermediate dict: the four leading strings are escaped directly, ``fields``
    goes through a C encoder made once, and the time's text is kept per second (events come in
    bursts). An unusual event (a fixed field that is not a ``str``, ``fields`` not a ``dict`` or
    holding a fixed field's name) takes :func:`event_line_slowly`, whose bytes these are."""
    fields = event.fields
    when = event.time
    if (type(event.event) is not str or type(event.code) is not str or type(event.uid) is not str
            or type(fields) is not dict or not isinstance(when, dt.datetime)
            or (fields and not fields.keys().isdisjoint(_FIXED))):
        return event_line_slowly(event)
    utc = when if when.tzinfo is dt.UTC else when.astimezone(dt.UTC)
    micros = utc.microsecond
    second = round(utc.timestamp() - micros / 1e6)  # exact: the float is within 1e-6 of it
    cached = _SECOND
    if cached[0] != second:
        cached = _second_of(utc, second)
    head = (f'{{"event":{_QUOTE(event.event)},"code":{_QUOTE(event.code)},"uid":{_QUOTE(event.uid)},'
            f'"time":"{cached[1]}.{micros // 1000:03d}Z"')
    if not fields:
        return (head + "}\n").encode("ascii")
    try:
        rest = "".join(_FIELDS(fields, 0))
    except RecursionError:
        raise ValueError("Circular reference detected (or fields nested too deeply)") from None
    return f"{head},{rest[1:]}\n".encode("ascii")


def _second_of(utc: dt.datetime, second: int) -> tuple[int, str]:
    """(Unix second, its ``YYYY-MM-DDTHH:MM:SS``) of ``utc``, kept as the last one."""
    global _SECOND
    _SECOND = (second, utc.isoformat(timespec="seconds")[:19])
    return _SECOND


def event_line_slowly(event: AuditEvent) -> bytes:
    """:func:`event_line` through :meth:`AuditEvent.to_dict` and the JSON encoder (any event)."""
    return _LINE_ENCODER.encode(event.to_dict()).encode("ascii") + b"\n"


_UIDS: list[str] = []  # fresh uids, taken with ``pop`` (atomic: no lock); emptied in a forked child
_UID_BATCH = 256
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122: the top bits 10


def new_uid() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())``, the same 122 bits from
    ``os.urandom``, made 256 at a time (one ``os.urandom`` call instead of one per uid, and no
    ``UUID`` object: a fifth of the cost). A forked child starts with none of the parent's."""
    try:
        return _UIDS.pop()
    except IndexError:
        pass
    h = os.urandom(16 * _UID_BATCH).hex()
    variant = _VARIANT
    fresh = [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{variant[h[i + 16]]}{h[i + 17:i + 20]}-"
             f"{h[i + 20:i + 32]}" for i in range(32, 32 * _UID_BATCH, 32)]
    _UIDS.extend(fresh)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"


os.register_at_fork(after_in_child=_UIDS.clear)


def new_event(event: str, outcome: str = "ok", *, when: dt.datetime | None = None, **fields: Any) -> AuditEvent:
    """Build an event with a fresh ``uid`` (:func:`new_uid`) and the code for ``(event, outcome)``.

    Field names with dots (``addr.remote``) are passed as ``**{"addr.remote": ...}``.
    """
    return AuditEvent(event, CODES[(event, outcome)], new_uid(), when or dt.datetime.now(dt.UTC), fields)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class AuditQuery:
    """A search: events with ``since <= time < until`` matching every given filter, oldest first.

    ``cursor`` is the opaque ``next_cursor`` of the previous page; ``limit`` caps a page.
    """

    since: dt.datetime
    until: dt.datetime
    event_types: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    user: str = ""
    sid: str = ""
    limit: int = 500
    cursor: str = ""

    def matches(self, event: AuditEvent) -> bool:
        return (
            self.since <= event.time < self.until
            and (not self.event_types or event.event in self.event_types)
            and (not self.user or event.user == self.user)
            and (not self.sid or event.sid == self.sid)
        )

    def matches_record(self, record: Mapping[str, Any], time: dt.datetime) -> bool:
        """:meth:`matches` for an event's record (its JSON object) and its :func:`record_time`."""
        return (
            self.since <= time < self.until
            and (not self.event_types or record["event"] in self.event_types)
            and (not self.user or str(record.get("user", "")) == self.user)
            and (not self.sid or str(record.get("sid", "")) == self.sid)
        )


@attrs.frozen
class AuditPage:
    """One page of results; ``next_cursor`` is empty when there are no more."""

    events: tuple[AuditEvent, ...]
    next_cursor: str = ""


@attrs.frozen
class AuditLines:
    """One page of results as JSON (:meth:`AuditSink.search_lines`), for callers that pass events on as JSON.

    ``lines[i]`` is the i-th event as one JSON object (UTF-8, no newline) and ``records[i]`` what
    ``json.loads`` reads from it: the event's :meth:`~AuditEvent.to_dict`, its ``time`` as
    :func:`format_time` writes it. ``next_cursor`` is :meth:`AuditSink.search`'s for the same query.
    """

    lines: tuple[bytes, ...]
    records: tuple[dict[str, Any], ...]
    next_cursor: str = ""


class AuditSink(abc.ABC):
    """Where audit events go. Run :mod:`teleport_core.testing.audit_suite` against yours.

    ``searchable`` (a class attribute) says whether :meth:`search` works. A write-only sink (a
    webhook, syslog or SIEM forwarder) sets it False and raises :class:`AuditError` from
    ``search``; the audit log then searches the first searchable sink.
    """

    searchable: ClassVar[bool] = True

    @abc.abstractmethod
    async def emit(self, event: AuditEvent) -> None:
        """Store ``event``; durable when this returns. An event whose ``uid`` was already
        stored is not stored twice (a write-only sink: not twice in one process's life; its
        receiver de-duplicates by ``uid`` across restarts)."""

    async def emit_lines(self, lines: Sequence[bytes]) -> None:
        """Store events given as JSON lines (:func:`event_line`, what the audit spool holds), in
        order; durable when this returns. A line that is not an event is skipped with a warning.
        This default decodes each and calls :meth:`emit`; a sink that stores such lines
        overrides it to skip that."""
        for line in lines:
            try:
                data = json.loads(line)
                event = AuditEvent.from_dict(data if isinstance(data, dict) else {})
            except ValueError as exc:
                log.warning("skipping an audit line that is not an event: %s", exc)
                continue
            await self.emit(event)

    #: Whether :meth:`emit_lines_now` works: storing is thread-safe blocking I/O (the JSON log's).
    lines_now: ClassVar[bool] = False

    def emit_lines_now(self, lines: Sequence[bytes], events: Sequence[AuditEvent] | None = None) -> None:
        """:meth:`emit_lines` done in the calling thread, blocking (never call it on an event loop):
        the audit spool's writer thread calls it right after fsyncing a batch, so the batch reaches
        the sink without another hand-off between threads. ``events``, when given, are the events
        the lines are (``lines[i] == event_line(events[i])``: the spool built them), so the sink
        need not read them back from the lines. Durable when it returns; raises when the events
        were not stored. Only where :attr:`lines_now` is True."""
        raise NotImplementedError(f"{type(self).__name__} stores no lines outside its event loop")

    @abc.abstractmethod
    async def search(self, query: AuditQuery) -> AuditPage:
        """Events matching ``query``, oldest first, at most ``query.limit``; pages never skip
        or repeat an event."""

    async def search_lines(self, query: AuditQuery) -> AuditLines:
        """:meth:`search`'s page as JSON objects (:class:`AuditLines`), what auth's ``GET /v1/events``
        answers with. This default encodes each event :meth:`search` returns; a sink that stores
        events as JSON overrides it to return them as stored, without building events."""
        page = await self.search(query)
        records = tuple(event.to_dict() for event in page.events)
        return AuditLines(tuple(map(record_line, records)), records, page.next_cursor)

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release resources."""


class AuditError(TeleportError):
    """An audit sink failed to store an event."""


class AuditLog:
    """Fans each event out to every configured sink; searches the first searchable one (Teleport
    searches the first)."""

    def __init__(self, sinks: Sequence[AuditSink], names: Sequence[str] = ()) -> None:
        """``names``: how each sink is named in logs and spools (its URI; default: its class)."""
        if not sinks:
            raise ValueError("an audit log needs at least one sink")
        self.sinks = tuple(sinks)
        self.names = tuple(names) if names else tuple(f"{type(s).__name__}[{i}]" for i, s in enumerate(sinks))
        if len(self.names) != len(self.sinks):
            raise ValueError("an audit log needs one name per sink")

    async def emit(self, event: AuditEvent) -> None:
        """Write ``event`` to every sink; raise :class:`AuditError` if any failed (after trying all)."""
        failures: list[str] = []
        for sink in self.sinks:
            try:
                await sink.emit(event)
            except Exception as exc:  # one broken sink must not stop the others
                failures.append(f"{type(sink).__name__}: {exc}")
        if failures:
            raise AuditError(f"audit event {event.event} ({event.uid}) not stored: " + "; ".join(failures))

    async def search(self, query: AuditQuery) -> AuditPage:
        return await self._searched().search(query)

    async def search_lines(self, query: AuditQuery) -> AuditLines:
        """:meth:`search` as JSON objects (:meth:`AuditSink.search_lines`)."""
        return await self._searched().search_lines(query)

    def _searched(self) -> AuditSink:
        for sink in self.sinks:
            if sink.searchable:
                return sink
        raise AuditError("no sink of teleport.storage.audit_events_uri can be searched: add a file:// URI "
                         f"(configured: {', '.join(type(s).__name__ for s in self.sinks)})")

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
