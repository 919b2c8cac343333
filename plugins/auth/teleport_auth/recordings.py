"""Reading session recordings through the auth API (``tsh recordings ls``, ``tsh play``).

* ``GET /v1/sessions``: the sessions that ended in a time window, from the audit log
  (``session.start``, ``session.end`` and ``session.upload`` events joined by session ID),
  newest first. Needs ``list`` on ``session`` (the preset ``auditor`` role has it).
* ``GET /v1/sessions/{sid}/recording``: the asciicast v2 recording, streamed from the session
  storage. Needs ``read`` on ``session``; every read is audited (``session.recording.access``).

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

import base64
import binascii
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from teleport_core.access import Identity, IdentityKind
from teleport_core.audit import AuditEvent, AuditQuery, format_time, parse_time
from teleport_core.client import FORWARDED_USER_CERT
from teleport_core.errors import AccessDenied, AuthenticationFailed, TeleportError

if TYPE_CHECKING:
    from starlette.requests import Request

    from teleport_auth.api.core import APIBase

SESSION_EVENTS = ("session.start", "session.end", "session.upload")
DEFAULT_WINDOW = dt.timedelta(days=1)
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_SCAN = 50_000  # audit events read for one listing at most
PAGE = 5000


async def acting_identity(api: APIBase, request: Request, identity: Identity) -> Identity:
    """The identity a call acts as: the caller's, or the user's whose certificate a proxy forwarded."""
    header = request.headers.get(FORWARDED_USER_CERT, "")
    who = f"{identity.kind.value} {json.dumps(identity.name)}"
    if not header:
        if identity.kind is IdentityKind.HOST and "Proxy" in identity.roles:
            reason = f"access denied to {who}: a proxy reads recordings only for a user whose certificate it forwards"
            await api.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        return identity
    if identity.kind is not IdentityKind.HOST or "Proxy" not in identity.roles:
        reason = f"access denied to {who}: only a proxy may forward a user's certificate"
        await api.audit_denial(request, identity, reason)
        raise AccessDenied(reason)
    from teleport_auth.issuer import identity_from_tls_cert

    try:
        der = base64.b64decode(header, validate=True)
        user = identity_from_tls_cert(der, [api.service.user_ca])
    except (ValueError, binascii.Error, AuthenticationFailed) as exc:
        reason = f"the user certificate forwarded by {who} is not valid: {exc}"
        await api.audit_denial(request, identity, reason)
        raise AuthenticationFailed(reason) from None
    if user.kind is not IdentityKind.USER:
        reason = f"the certificate forwarded by {who} is not a user certificate"
        await api.audit_denial(request, identity, reason)
        raise AccessDenied(reason)
    return user


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


async def list_sessions(api: APIBase, since: dt.datetime, until: dt.datetime, limit: int) -> list[dict[str, Any]]:
    """Sessions that ended in ``[since, until)``, newest first, at most ``limit``."""
    audit = api.service.audit
    # a session that ended in the window may have started (and been uploaded) around it
    query = AuditQuery(since=since - dt.timedelta(days=1), until=until + dt.timedelta(hours=1),
                       event_types=SESSION_EVENTS, limit=PAGE)
    found: dict[str, list[AuditEvent]] = {}
    seen = 0
    while True:
        page = await audit.search(query)
        for event in page.events:
            sid = event.sid
            if not sid:
                continue
            found.setdefault(sid, []).append(event)
        seen += len(page.events)
        if not page.next_cursor or seen >= MAX_SCAN:
            break
        query = AuditQuery(since=query.since, until=query.until, event_types=SESSION_EVENTS, limit=PAGE,
                           cursor=page.next_cursor)
    out = [entry for events in found.values() if (entry := session_entry(events, since, until)) is not None]
    out.sort(key=lambda s: (s["end"], s["sid"]), reverse=True)
    return out[:limit]


def session_entry(events: list[AuditEvent], since: dt.datetime, until: dt.datetime) -> dict[str, Any] | None:
    """The listing entry of one session from its ``session.start``, ``session.end`` and
    ``session.upload`` events (oldest first), or None when it did not end in ``[since, until)``.

    A session belongs to the host that emitted its first ``session.start`` (auth stamps
    ``server_id`` on every host event from the caller's certificate): end and upload events from
    another host are ignored, so one node cannot end, rename, hide or mark as recorded a session
    another node ran.
    """

    def first(kind: str, server: str | None) -> AuditEvent | None:
        for event in events:
            if event.event == kind and (server is None or str(event.fields.get("server_id", "")) == server):
                return event
        return None

    start = first("session.start", None)
    owner = str(start.fields.get("server_id", "")) if start is not None else None
    end = first("session.end", owner)
    if end is None or not since <= end.time < until or end.fields.get("session_recording") == "off":
        return None
    upload = first("session.upload", str(end.fields.get("server_id", "")))
    began = start.time if start is not None else end.time
    fields = end.fields
    command = fields.get("initial_command") or [""]
    return {
        "sid": end.sid,
        "proto": str(fields.get("proto", "ssh")),
        "user": end.user,
        "participants": [end.user] if end.user else [],
        "login": str(fields.get("login", "")),
        "server_id": str(fields.get("server_id", "")),
        "server_hostname": str(fields.get("server_hostname", "")),
        "interactive": bool(fields.get("interactive", False)),
        "command": str(command[0] if isinstance(command, list) and command else command),
        "session_recording": str(fields.get("session_recording", "")),
        "start": format_time(began),
        "end": format_time(end.time),
        "duration_seconds": round((end.time - began).total_seconds(), 3),
        "recorded": upload is not None,
        "size": int(upload.fields.get("size", 0)) if upload is not None else 0,
    }
