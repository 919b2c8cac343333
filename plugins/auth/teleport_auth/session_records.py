"""Session records: every SSH session a node ran, in cluster state, so listing recordings and
checking uploads work the same on every auth server (none reads its own audit log for it).

Backend keys:

* ``/session_records/<sid>`` -> JSON of :class:`SessionRecord`. Written when auth accepts a
  host's ``session.start`` (the owner is the ``server_id`` auth stamped from the caller's
  certificate), completed by the owner's first ``session.end``, marked uploaded (size, SHA-256)
  when the owner's upload is stored (:mod:`teleport_auth.uploads`).
* ``/session_ends/<inverted end time>/<sid>`` -> the sid: the index of ended sessions, newest
  first in key order, written in the same atomic write as the completion, so a listing reads
  one key range (:meth:`SessionRecords.ended`).

Every write is conditional (``not_exists`` to create, the revision read to change), retried on a
conflict, and idempotent for a redelivered event (same ``uid``), so several auth servers taking
redeliveries of one node's events concurrently agree. Trust: a ``session.start`` naming a session
another host owns, and a ``session.end`` of another host's session, are refused
(:class:`SessionNotOwned`, 403, audited by the caller). A second ``session.end`` of an ended
session with another ``uid`` (a node's ``node_restart`` end after its normal end reached us) is
a duplicate: accepted but not written to the audit log.

Records never expire: the listing must not lose sessions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from teleport_core.errors import AccessDenied, AlreadyExists, CompareFailed, NotFound
from teleport_core.state.audit import AuditEvent, format_time, parse_time
from teleport_core.state.backend import Action, Backend, Condition, Item
from teleport_core.state.sessions import check_session_id

RECORDS_PREFIX = b"/session_records/"
ENDS_PREFIX = b"/session_ends/"
WRITE_ATTEMPTS = 20
FIELD_MAX = 1024
PARTICIPANTS_MAX = 64
#: at most this many ended sessions are read for one filtered listing (:meth:`SessionRecords.ended`)
SCAN_MAX = 10_000
COMMAND_MAX = 4096
END_REASONS = frozenset({"exit", "interrupted", "node_restart"})
_MAX_MICROS = 10**19 - 1  # inverted end times sort newest first (20 digits, zero-padded)

PENDING, UPLOADED, OFF = "pending", "uploaded", "off"


class SessionNotOwned(AccessDenied):
    """A host's event or upload for a session another host owns."""


def record_key(sid: str) -> bytes:
    return RECORDS_PREFIX + sid.encode()


def _micros(when: dt.datetime) -> int:
    delta = when.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _end_bound(when: dt.datetime) -> bytes:
    """The first index key of sessions that ended at ``when`` or earlier."""
    return ENDS_PREFIX + f"{_MAX_MICROS - _micros(when):020d}".encode()


def end_key(when: dt.datetime, sid: str) -> bytes:
    return _end_bound(when) + b"/" + sid.encode()


def _text(value: Any, limit: int = FIELD_MAX) -> str:
    if value is None:
        return ""
    return (value if isinstance(value, str) else json.dumps(value))[:limit]


def _command(fields: Any) -> str:
    value = fields.get("initial_command")
    if isinstance(value, list):
        value = value[0] if value else ""
    return _text(value, COMMAND_MAX)


def _participants(*sources: Any) -> tuple[str, ...]:
    """The user names of ``sources`` (strings or lists of strings), in order, once each, at most
    :data:`PARTICIPANTS_MAX`."""
    out: list[str] = []
    for source in sources:
        values: Iterable[Any] = [source] if isinstance(source, str) else source if isinstance(source, list) else ()
        for value in values:
            if isinstance(value, str) and value and len(value) <= FIELD_MAX and value not in out:
                out.append(value)
    return tuple(out[:PARTICIPANTS_MAX])


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


@attrs.frozen
class RecordingState:
    """Where a session's recording is: ``pending`` (not uploaded yet), ``uploaded`` (stored, with
    its size and SHA-256) or ``off`` (the session was not recorded)."""

    state: str = PENDING
    size: int = 0
    sha256: str = ""
    uploaded_at: dt.datetime | None = None
    #: streamed (sync modes) and completed as far as received: the host was lost mid-session
    partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "size": self.size, "sha256": self.sha256,
                "uploaded_at": format_time(self.uploaded_at) if self.uploaded_at else None,
                **({"partial": True} if self.partial else {})}

    @classmethod
    def from_dict(cls, data: Any) -> RecordingState:
        return cls(str(data.get("state", PENDING)), int(data.get("size", 0)), str(data.get("sha256", "")),
                   _time(data.get("uploaded_at")), bool(data.get("partial", False)))


@attrs.frozen
class SessionRecord:
    """One session: who ran what where, when it started and ended, and its recording's state.

    ``participants``: the users who took part (the session's ``user`` first; the ``participants``
    of its ``session.start`` and ``session.end`` events), what role ``where:`` predicates read."""

    sid: str
    server_id: str
    server_hostname: str = ""
    user: str = ""
    participants: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    login: str = ""
    proto: str = "ssh"
    interactive: bool = False
    command: str = ""
    session_recording: str = ""
    start: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.UTC))
    end: dt.datetime | None = None
    end_reason: str = ""
    recorded_bytes: int = 0
    start_uid: str = ""
    end_uid: str = ""
    recording: RecordingState = attrs.field(factory=RecordingState)
    revision: str = attrs.field(default="", eq=False)
    #: the proxy that ran the session for an agentless node (``server_id``): the record's owner then
    forwarded_by: str = ""

    @property
    def owner(self) -> str:
        """The host that ran the session and owns its record and recording."""
        return self.forwarded_by or self.server_id

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self, recurse=False)
        out.pop("revision")
        out["start"] = format_time(self.start)
        out["end"] = format_time(self.end) if self.end else None
        out["recording"] = self.recording.to_dict()
        out["participants"] = list(self.participants)
        return out

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @classmethod
    def decode(cls, item: Item) -> SessionRecord:
        data = json.loads(item.value)
        start = _time(data.get("start")) or dt.datetime.fromtimestamp(0, dt.UTC)
        user = str(data.get("user", ""))
        return cls(sid=str(data["sid"]), server_id=str(data["server_id"]),
                   server_hostname=str(data.get("server_hostname", "")), user=user,
                   participants=_participants(user, data.get("participants") or []),
                   login=str(data.get("login", "")), proto=str(data.get("proto", "ssh")),
                   interactive=bool(data.get("interactive", False)), command=str(data.get("command", "")),
                   session_recording=str(data.get("session_recording", "")), start=start,
                   end=_time(data.get("end")), end_reason=str(data.get("end_reason", "")),
                   recorded_bytes=int(data.get("recorded_bytes", 0)), start_uid=str(data.get("start_uid", "")),
                   end_uid=str(data.get("end_uid", "")),
                   recording=RecordingState.from_dict(data.get("recording") or {}), revision=item.revision,
                   forwarded_by=str(data.get("forwarded_by", "")))


def _from_start(event: AuditEvent, sid: str) -> SessionRecord:
    fields = event.fields
    recording = str(fields.get("session_recording", ""))
    user = _text(fields.get("user"))
    return SessionRecord(
        sid=sid, server_id=_text(fields.get("server_id")), server_hostname=_text(fields.get("server_hostname")),
        user=user, participants=_participants(user, fields.get("participants")),
        login=_text(fields.get("login")), proto=_text(fields.get("proto")) or "ssh",
        interactive=bool(fields.get("interactive", False)), command=_command(fields),
        session_recording=_text(recording), start=event.time, start_uid=event.uid,
        recording=RecordingState(OFF if recording == "off" else PENDING),
        forwarded_by=_text(fields.get("forwarded_by")))


def _ended(record: SessionRecord, event: AuditEvent) -> SessionRecord:
    """``record`` completed by its ``session.end`` (the end's account fills what the start lacked)."""
    fields = event.fields
    reason = str(fields.get("end_reason", "exit"))
    recording = str(fields.get("session_recording", record.session_recording))
    state = record.recording
    if recording == "off" and state.state == PENDING:
        state = attrs.evolve(state, state=OFF)
    user = record.user or _text(fields.get("user"))
    return attrs.evolve(
        record, end=event.time, end_reason=reason if reason in END_REASONS else "exit",
        recorded_bytes=_count(fields.get("recorded_bytes")), end_uid=event.uid,
        interactive=bool(fields.get("interactive", record.interactive)),
        user=user, participants=_participants(user, list(record.participants), fields.get("participants")),
        login=record.login or _text(fields.get("login")),
        command=record.command or _command(fields), session_recording=_text(recording),
        server_hostname=record.server_hostname or _text(fields.get("server_hostname")), recording=state)


def event_owner(event: AuditEvent) -> str:
    """The host that emitted a stamped session event: the proxy that ``forwarded_by`` names for an
    agentless node's session, else ``server_id``."""
    return str(event.fields.get("forwarded_by") or event.fields.get("server_id", ""))


def event_sid(event: AuditEvent) -> str:
    """The session ID of a host's session event (``InvalidSessionID`` when it is not one)."""
    return check_session_id(event.sid)


def records_of(service: Any) -> SessionRecords:
    """The session records of an auth service's backend (one store per service, made on first use)."""
    store: SessionRecords | None = getattr(service, "_session_records", None)
    if store is None or store.backend is not service.backend:
        store = SessionRecords(service.backend)
        service._session_records = store
    return store


class SessionRecords:
    """The session records in cluster state (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def get(self, sid: str) -> SessionRecord | None:
        try:
            return SessionRecord.decode(await self.backend.get(record_key(sid)))
        except NotFound:
            return None

    async def accept(self, event: AuditEvent) -> bool:
        """Record a host's accepted (and stamped) event: ``session.start`` and ``session.end`` change
        the record, other events do nothing. True when the event goes to the audit log, False for a
        duplicate ``session.end``. :class:`SessionNotOwned` when the session is another host's,
        ``InvalidSessionID`` when the event's ``sid`` is not a session ID."""
        if event.event == "session.start":
            await self.started(event)
        elif event.event == "session.end":
            return await self.ended_by(event)
        return True

    async def started(self, event: AuditEvent) -> SessionRecord:
        """Create the record of a ``session.start`` (idempotent; the first start of a session wins)."""
        sid = event_sid(event)
        owner = event_owner(event)
        for _ in range(WRITE_ATTEMPTS):
            record = await self.get(sid)
            if record is not None:
                if record.owner != owner:
                    raise SessionNotOwned(f"session {sid} belongs to host {record.owner}: host {owner} "
                                          "may not start a session with its ID")
                return record
            fresh = _from_start(event, sid)
            try:
                stored = await self.backend.create(Item(record_key(sid), fresh.encode()))
            except AlreadyExists:
                continue
            return attrs.evolve(fresh, revision=stored.revision)
        raise CompareFailed(f"session record {sid} changed concurrently; try again")

    async def ended_by(self, event: AuditEvent) -> bool:
        """Complete the record with a ``session.end`` (see :meth:`accept`). An end whose start never
        reached auth creates the record (its ``session_start`` field, else its time, as the start)."""
        sid = event_sid(event)
        owner = event_owner(event)
        for _ in range(WRITE_ATTEMPTS):
            record = await self.get(sid)
            if record is not None and record.owner != owner:
                raise SessionNotOwned(f"session {sid} belongs to host {record.owner}: host {owner} "
                                      "may not end it")
            if record is not None and record.end is not None:
                return record.end_uid == event.uid  # a redelivery is audited (again); another end is not
            if record is None:
                began = _time(event.fields.get("session_start")) or event.time
                base = _from_start(attrs.evolve(event, time=min(began, event.time), uid=""), sid)
                conditions = [Condition.not_exists(record_key(sid))]
            else:
                base = record
                conditions = [Condition.revision_is(record_key(sid), record.revision)]
            done = _ended(base, event)
            assert done.end is not None
            actions = [Action.put(Item(record_key(sid), done.encode())),
                       Action.put(Item(end_key(done.end, sid), sid.encode()))]
            try:
                await self.backend.atomic_write(conditions, actions)
            except CompareFailed:
                continue
            return True
        raise CompareFailed(f"session record {sid} changed concurrently; try again")

    async def uploaded(self, sid: str, size: int, sha256: str, when: dt.datetime | None = None, *,
                       partial: bool = False) -> SessionRecord:
        """Mark the recording of ``sid`` stored (idempotent for the same SHA-256); :class:`AlreadyExists`
        when a different recording is recorded as uploaded, ``NotFound`` when there is no record."""
        for _ in range(WRITE_ATTEMPTS):
            record = await self.get(sid)
            if record is None:
                raise NotFound(f"no record of session {sid}")
            state = record.recording
            if state.state == UPLOADED:
                if state.sha256 != sha256:
                    raise AlreadyExists(f"a different recording of session {sid} is already stored: "
                                        "recordings are never replaced")
                return record
            done = attrs.evolve(record, recording=RecordingState(UPLOADED, size, sha256,
                                                                 when or dt.datetime.now(dt.UTC), partial))
            try:
                stored = await self.backend.conditional_update(Item(record_key(sid), done.encode(),
                                                                    revision=record.revision))
            except (CompareFailed, NotFound):
                continue
            return attrs.evolve(done, revision=stored.revision)
        raise CompareFailed(f"session record {sid} changed concurrently; try again")

    async def ended(self, since: dt.datetime, until: dt.datetime, limit: int,
                    keep: Callable[[SessionRecord], bool] | None = None) -> list[SessionRecord]:
        """The sessions that ended in ``[since, until)``, newest first, at most ``limit``.

        ``keep``: only the sessions it accepts (a caller's access to each); the index is read page by
        page until ``limit`` are kept or :data:`SCAN_MAX` sessions were read."""
        if since >= until:
            return []
        start = _end_bound(until - dt.timedelta(microseconds=1))
        end = _end_bound(since - dt.timedelta(microseconds=1))
        out: list[SessionRecord] = []
        scanned = 0
        while len(out) < limit and scanned < SCAN_MAX:
            page = limit if keep is None else min(max(limit, 100), SCAN_MAX - scanned)
            items = await self.backend.get_range(start, end, limit=page)
            scanned += len(items)
            found = await asyncio.gather(*(self.get(item.value.decode()) for item in items))
            for record in found:
                if record is not None and record.end is not None and (keep is None or keep(record)):
                    out.append(record)
                    if len(out) == limit:
                        break
            if keep is None or len(items) < page:
                break
            start = items[-1].key + b"\x00"
        return out
