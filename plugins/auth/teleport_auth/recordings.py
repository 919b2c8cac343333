"""Reading session recordings through the auth API (``tsh recordings ls``, ``tsh play``).

* ``GET /v1/sessions``: the sessions that ended in a time window, newest first, from the session
  records in cluster state (:mod:`teleport_auth.session_records`; never the audit log, so every
  auth server lists alike), each with how it ended (``end_reason``) and where its recording is
  (``recording``: ``uploaded``, ``pending``, ``missing`` from the session storage, or ``off``).
  Needs ``list`` on ``session`` (the preset ``auditor`` role has it); a rule with ``where:`` (the
  preset ``access`` role's ``contains(session.participants, user.metadata.name)``) lists only the
  sessions it allows, each checked with its record's fields (:func:`session_attributes`).
* ``GET /v1/sessions/{sid}/recording``: the asciicast v2 recording, streamed from the session
  storage. Needs ``read`` on ``session``, checked with the session's record (so ``where:`` rules
  see its participants); every read is audited (``session.recording.access``).
  A recording the storage lacks is explained from the record (missing, pending, not recorded).

Users reach both through the proxy's web API: the proxy calls auth with its own certificate and
forwards the certificate the user presented to it in :data:`FORWARDED_USER_CERT`. Auth verifies
that certificate against the user CA itself and authorizes the *user* (roles plus the
``teleport_authorize`` hooks), so a proxy can only act for users that really connected to it.
Only a host with the ``Proxy`` system role may forward; anyone else gets a 403 (audited).

Hosts never list or read recordings as themselves (403, audited): a proxy only with a forwarded
user certificate, a node not at all (it uploads its own sessions' recordings:
:mod:`teleport_auth.uploads`). Auth's own identity (``tctl``, other auth servers) may.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from teleport_auth.forwarded import forwarded_user
from teleport_auth.session_records import OFF, UPLOADED, SessionRecord, records_of
from teleport_core.api.client import FORWARDED_USER_CERT
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.state.audit import format_time, parse_time

if TYPE_CHECKING:
    from starlette.requests import Request

    from teleport_auth.state import AuthState

DEFAULT_WINDOW = dt.timedelta(days=1)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MISSING = "missing"
#: the recording statuses of a listing entry
STATUSES = ("uploaded", "pending", MISSING, "off")


class RecordingsAPI(Protocol):
    """What these functions use of the API object that calls them (:class:`teleport_auth.api.core.APIBase`)."""

    service: AuthState

    async def audit_denial(self, request: Request, identity: Identity | None, reason: str) -> None: ...


async def acting_identity(api: RecordingsAPI, request: Request, identity: Identity) -> Identity:
    """The identity a call acts as: the caller's, or the user's whose certificate a proxy forwarded."""
    if getattr(request.state, "forwarded_by", ""):  # the endpoint already verified it (api.core.forwarded_identity)
        return identity
    header = request.headers.get(FORWARDED_USER_CERT, "")
    who = f"{identity.kind.value} {json.dumps(identity.name)}"
    if not header:
        if identity.kind is IdentityKind.HOST and "Proxy" in identity.roles:
            reason = f"access denied to {who}: a proxy reads recordings only for a user whose certificate it forwards"
            await api.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        return identity
    return await forwarded_user(api, request, identity, header)


def _time(params: Any, name: str, default: dt.datetime) -> dt.datetime:
    text = params.get(name, "")
    if not text:
        return default
    try:
        return parse_time(text)
    except ValueError:
        raise TeleportError(f"{name}: expected an RFC 3339 time like 2024-01-02T15:04:05Z, got {text!r}") from None


def window(params: Any) -> tuple[dt.datetime, dt.datetime, int]:
    """``since``, ``until`` (default: the last 24 hours) and ``limit`` of a listing."""
    now = dt.datetime.now(dt.UTC)
    until = _time(params, "until", now)
    since = _time(params, "since", until - DEFAULT_WINDOW)
    if since >= until:
        raise TeleportError("since must be before until")
    try:
        limit = int(params.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise TeleportError("limit: expected a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise TeleportError(f"limit: expected 1 to {MAX_LIMIT}")
    return since, until, limit


def session_attributes(record: SessionRecord | None) -> dict[str, dict[str, Any]]:
    """What role ``where:`` predicates read of a session (none when auth has no record of it)."""
    if record is None:
        return {}
    return {"session": {"participants": list(record.participants), "user": record.user, "login": record.login,
                        "server_id": record.server_id}}


async def list_sessions(api: RecordingsAPI, since: dt.datetime, until: dt.datetime, limit: int,
                        keep: Callable[[SessionRecord], bool] | None = None) -> list[dict[str, Any]]:
    """Sessions that ended in ``[since, until)``, newest first, at most ``limit``, from the session
    records (only those ``keep`` accepts); the recordings the records call uploaded are checked in
    the session storage (this page only), and one it lacks is listed as ``missing``."""
    found = await records_of(api.service).ended(since, until, limit, keep)
    storage = await api.service.ctx.resources.session_storage()

    async def status(record: SessionRecord) -> str:
        if record.recording.state != UPLOADED:
            return record.recording.state
        try:
            return UPLOADED if await storage.stat(record.sid) is not None else MISSING
        except TeleportError as exc:  # storage away: the record's word, and a warning
            api.service.log.warning("cannot check a recording in the session storage", sid=record.sid,
                                    error=str(exc))
            return UPLOADED

    statuses = await asyncio.gather(*(status(record) for record in found))
    return [session_entry(record, state) for record, state in zip(found, statuses, strict=True)]


def session_entry(record: SessionRecord, status: str) -> dict[str, Any]:
    """The listing entry of an ended session (``status``: its recording's, see :data:`STATUSES`)."""
    assert record.end is not None
    return {
        "sid": record.sid,
        "proto": record.proto,
        "user": record.user,
        "participants": list(record.participants),
        "login": record.login,
        "server_id": record.server_id,
        "server_hostname": record.server_hostname,
        "interactive": record.interactive,
        "command": record.command,
        "session_recording": record.session_recording,
        "start": format_time(record.start),
        "end": format_time(record.end),
        "duration_seconds": round(max(0.0, (record.end - record.start).total_seconds()), 3),
        "recorded": status == "uploaded",
        "size": record.recording.size,
        "end_reason": record.end_reason,
        "recording": status,
        "recording_partial": record.recording.partial,
    }


async def not_stored(api: RecordingsAPI, sid: str) -> str:
    """Why the session storage has no recording of ``sid``, from its session record."""
    record = await records_of(api.service).get(sid)
    if record is None:
        return f"no recording of session {sid}: auth has no record of such a session"
    state = record.recording
    if state.state == UPLOADED:
        when = format_time(state.uploaded_at) if state.uploaded_at else "?"
        return (f"the recording of session {sid} is missing from the session storage (it was uploaded at {when}, "
                f"{state.size} bytes, sha256 {state.sha256}; check the storage at audit_sessions_uri)")
    if state.state == OFF:
        return f"no recording of session {sid}: the session was not recorded (session_recording: off)"
    if record.end is None:
        if record.session_recording in ("node-sync", "proxy-sync"):
            return (f"no recording of session {sid} yet: the session is still running and its recording streams "
                    f"to auth (follow it: tsh play --follow {sid})")
        return f"no recording of session {sid}: the session is still running"
    return f"no recording of session {sid} yet: the node has not uploaded it (it retries until auth takes it)"
