"""The auth API, audit events: hosts emit (checked and stamped), callers search."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint, query
from teleport_core.api.schema import MAP_MAX, Body, Name, OptionalName, Query, Reply, Text, Timestamp, Word
from teleport_core.errors import (
    AccessDenied,
    NotFound,
)
from teleport_core.policy.access import Identity
from teleport_core.state.audit import AuditEvent, AuditQuery, parse_time
from teleport_core.state.nodes import OPENSSH, NodeInfo


class EventBody(Body):
    """An audit event a host emits: ``event``, ``code``, ``uid``, ``time`` and its fields (at most
    128), checked and stamped by :mod:`teleport_auth.events_policy`."""

    model_config = ConfigDict(extra="allow")

    event: Name
    code: Word
    uid: Name
    time: Timestamp

    @model_validator(mode="after")
    def _few_fields(self) -> EventBody:
        if len(self.model_extra or {}) > MAP_MAX:
            raise ValueError(f"an event has at most {MAP_MAX} fields")
        return self


class EventsQuery(Query):
    since: Timestamp = Field("", description="RFC 3339; default a day ago; no zone means UTC")
    until: Timestamp = Field("", description="RFC 3339; default now")
    type: Annotated[list[Word], Field(max_length=64, description="event types (repeat the parameter)")] = []
    user: OptionalName = ""
    sid: OptionalName = ""
    node: OptionalName = Field("", description="only events of this node: its server_hostname or server_id")
    limit: int = Field(500, description="events per page, 1..5000 (clamped)")
    cursor: Text = Field("", description="next_cursor of the previous page")


class StoredReply(Reply):
    stored: str


class EventsReply(Reply):
    events: list[dict[str, Any]]
    next_cursor: str


class EventsAPI(APIBase):
    """Audit event routes."""

    # -- audit ---------------------------------------------------------------------------------------------

    @endpoint("create", "event")
    async def emit_event(self, request: Request, identity: Identity | None) -> Any:
        """Store a host's audit event, checked and stamped by :mod:`teleport_auth.events_policy`."""
        from teleport_auth import events_policy
        from teleport_auth.authz import host_uuid

        sent = body(request, EventBody)
        try:
            event = AuditEvent.from_dict(sent.model_dump())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert identity is not None
        # only hosts emit, each only its system role's event types, stamped by us: teleport_auth.events_policy
        node = await self._agentless_subject(identity, event)  # a proxy's event for an agentless node
        reason = events_policy.refusal(identity, event, node.uuid if node else "")
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        roles = events_policy.system_roles(identity)
        if "Auth" not in roles:
            hostname = await self._host_names.get(roles[0], host_uuid(identity))
            event = events_policy.stamp(event, identity, hostname, self.service.cluster_name, node)
            if not await self._session_record(request, identity, event):
                return {"stored": event.uid}  # a second end of an ended session: answered, not logged
        await self.service.emit(event)  # durable (auth's audit spool) before we answer: the emitter drops its copy
        return {"stored": event.uid}

    async def _agentless_subject(self, identity: Identity, event: AuditEvent) -> NodeInfo | None:
        """The registered openssh node a proxy's session event names as ``server_id``, else None."""
        from teleport_auth import events_policy

        uuid = events_policy.speaks_for(identity, event)
        if not uuid:
            return None
        try:
            held = await self.service.presence.get_node(uuid)
        except NotFound:
            return None
        return held.info() if held.sub_kind == OPENSSH else None

    async def _session_record(self, request: Request, identity: Identity, event: AuditEvent) -> bool:
        """Write a host's session event into the session records (:mod:`teleport_auth.session_records`)
        before it is logged, on every delivery; False for a duplicate ``session.end``. A session event for
        another host's session, or with a malformed ``sid``, is refused (403, audited: the emitter drops it)."""
        from teleport_auth.session_records import SessionNotOwned, records_of
        from teleport_core.state.sessions import InvalidSessionID

        try:
            return await records_of(self.service).accept(event)
        except SessionNotOwned as exc:
            reason = f"access denied to host {json.dumps(identity.name)}: {exc}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason) from None
        except InvalidSessionID as exc:  # refused for good (403): the emitter's spool drops it, not retries it
            reason = f"access denied to host {json.dumps(identity.name)}: event {json.dumps(event.event)}: {exc}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason) from None

    @endpoint(None, None)
    async def search_events(self, request: Request, identity: Identity | None) -> Any:
        """A page of audit events: ``list`` on ``event``; with a ``where:`` rule, only the events it
        allows (each checked with its ``event.type``, ``event.code``, ``event.user``), so a page may
        hold fewer than ``limit`` events: follow ``next_cursor``. ``node`` (ours: Teleport's search has
        no node filter) keeps the events whose ``server_hostname`` or ``server_id`` is that node, after
        the search, the same way."""
        assert identity is not None
        await self.authorize(request, identity, "list", "event", filtered=True)
        params = query(request, EventsQuery)
        now = dt.datetime.now(dt.UTC)
        try:
            since = parse_time(params.since) if params.since else now - dt.timedelta(days=1)
            until = parse_time(params.until) if params.until else now
        except ValueError as exc:
            raise BadRequest(f"bad query: {exc}") from None
        wanted = AuditQuery(since=since, until=until, event_types=tuple(params.type), user=params.user, sid=params.sid,
                            limit=min(max(params.limit, 1), 5000), cursor=params.cursor)
        # the events as the sink stores them (JSON objects), filtered by their records: no event is
        # built, converted back to a dict and encoded again for the answer
        page = await self.service.audit.search_lines(wanted)
        node, allowed = params.node, self.item_decider(identity, "list", "event")
        kept = [line for line, record in zip(page.lines, page.records, strict=True)
                if (not node or of_node(record, node)) and allowed(record["uid"], event_attributes(record))]
        return Response(b'{"events":[%s],"next_cursor":%s}' % (b",".join(kept), json.dumps(page.next_cursor).encode()),
                        media_type="application/json")


def of_node(record: Mapping[str, Any], node: str) -> bool:
    """Whether the event ``record`` (:meth:`AuditEvent.to_dict`) happened on ``node`` (its
    ``server_hostname`` or ``server_id``)."""
    return node in (record.get("server_hostname"), record.get("server_id"))


def event_attributes(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What role ``where:`` predicates read of an audit event's record (:meth:`AuditEvent.to_dict`)."""
    return {"event": {"type": record["event"], "code": record["code"], "user": str(record.get("user", ""))}}


ROUTES: list[Operation] = [
    Operation("/v1/events", "POST", "emit_event", "Store an audit event (durable when answered)", body=EventBody,
              response=StoredReply),
    Operation("/v1/events", "GET", "search_events",
              "Search audit events (since, until, type, user, sid, node, limit, cursor)", query=EventsQuery,
              response=EventsReply),
]

