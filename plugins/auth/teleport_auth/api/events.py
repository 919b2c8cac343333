"""The auth API, audit events: hosts emit (checked and stamped), callers search."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request

from teleport_auth.api.core import APIBase, BadRequest, Operation, endpoint, read_json
from teleport_core.access import Identity
from teleport_core.audit import AuditEvent, AuditQuery, parse_time
from teleport_core.errors import (
    AccessDenied,
)


class EventsAPI(APIBase):
    """Audit event routes."""

    # -- audit ---------------------------------------------------------------------------------------------

    @endpoint("create", "event")
    async def emit_event(self, request: Request, identity: Identity | None) -> Any:
        """Store a host's audit event, checked and stamped by :mod:`teleport_auth.events_policy`."""
        from teleport_auth import events_policy
        from teleport_auth.authz import host_uuid

        body = await read_json(request)
        try:
            event = AuditEvent.from_dict(body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert identity is not None
        # only hosts emit, each only its system role's event types, stamped by us: teleport_auth.events_policy
        reason = events_policy.refusal(identity, event)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        roles = events_policy.system_roles(identity)
        if "Auth" not in roles:
            hostname = await self._host_names.get(roles[0], host_uuid(identity))
            event = events_policy.stamp(event, identity, hostname, self.service.cluster_name)
        await self.service.audit.emit(event)  # durable before we answer: the emitter may drop its copy
        return {"stored": event.uid}

    @endpoint("list", "event")
    async def search_events(self, request: Request, identity: Identity | None) -> Any:
        params = request.query_params
        now = dt.datetime.now(dt.UTC)
        try:
            since_text, until_text = params.get("since", ""), params.get("until", "")
            since = parse_time(since_text) if since_text else now - dt.timedelta(days=1)
            until = parse_time(until_text) if until_text else now
            limit = int(params.get("limit", "500"))
        except ValueError as exc:
            raise BadRequest(f"bad query: {exc}") from None
        query = AuditQuery(since=since, until=until, event_types=tuple(params.getlist("type")),
                           user=params.get("user", ""), sid=params.get("sid", ""), limit=min(max(limit, 1), 5000),
                           cursor=params.get("cursor", ""))
        page = await self.service.audit.search(query)
        return {"events": [e.to_dict() for e in page.events], "next_cursor": page.next_cursor}


ROUTES: list[Operation] = [
    Operation("/v1/events", "POST", "emit_event", "Store an audit event (durable when answered)"),
    Operation("/v1/events", "GET", "search_events",
              "Search audit events (since, until, type, user, sid, limit, cursor)"),
]

