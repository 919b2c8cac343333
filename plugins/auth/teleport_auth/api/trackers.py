"""The auth API, live sessions' trackers (``/v1/session_trackers``; Teleport's ``session_tracker``).

Writes (create, update by revision, delete) come only from the host that runs the session: a
node for a session whose ``server_id`` is its own UUID, a proxy for an agentless OpenSSH node
(a node resource with ``sub_kind: openssh``: the proxy terminates its sessions), auth itself.
Users never write trackers, whatever their roles say; a host writing another host's tracker is
refused. Every refusal is a 403 audited as an ``auth`` failure (T3007W).

Reads: a user (or the user whose certificate a proxy forwards: the web UI) sees the sessions
they are in, those their ``allow.join_sessions`` lets them join in some mode
(:mod:`teleport_core.policy.joining`), and every session a ``list``/``read`` rule on
``session_tracker`` allows (``where:`` sees ``tracker.*``). A deny rule on ``session_tracker``
that applies hides the session even from its participants (deny wins). A node reads its own
sessions' trackers, a proxy and auth all of them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import ConfigDict, Field
from starlette.requests import Request

from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint, query
from teleport_auth.authz import host_uuid
from teleport_auth.trackers import clamp_expiry, trackers_of
from teleport_core.api.schema import Body, JSONObject, OptionalName, Query, Reply, Word
from teleport_core.errors import AccessDenied, NotFound
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.joining import join_modes
from teleport_core.policy.predicate import environment
from teleport_core.policy.roles import RoleSet
from teleport_core.state.trackers import KIND, SessionTracker

VERBS_WRITE = ("create", "update", "delete")


class TrackerMetadata(Body):
    model_config = ConfigDict(extra="allow")

    name: OptionalName = ""
    revision: OptionalName = Field(default="", description="the revision read: an update applies only if it is current")


class TrackerDocument(Body):
    """A ``session_tracker`` resource (``version: v1``), checked in full by
    :meth:`teleport_core.state.trackers.SessionTracker.from_dict`."""

    kind: Word = KIND
    version: Word = "v1"
    metadata: TrackerMetadata = TrackerMetadata()
    spec: JSONObject


class TrackerReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class TrackersReply(Reply):
    trackers: list[TrackerReply]


class DeletedTrackerReply(Reply):
    deleted: str


class TrackersQuery(Query):
    kind: Word = Field("", description="only sessions of this kind (ssh)")
    state: Word = Field("", description="only sessions in this state (pending, running, terminated)")


def _parse(document: TrackerDocument) -> SessionTracker:
    try:
        return SessionTracker.from_dict(document.model_dump())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class TrackersAPI(APIBase):
    """Session tracker routes."""

    # -- who may write ----------------------------------------------------------------------------

    async def _refuse(self, request: Request, identity: Identity, reason: str) -> None:
        await self.audit_denial(request, identity, reason)
        raise AccessDenied(reason)

    async def _check_writer(self, request: Request, identity: Identity, verb: str, tracker: SessionTracker) -> None:
        """403 (audited) unless ``identity`` is the host running ``tracker``'s session."""
        who = f"{identity.kind.value} {json.dumps(identity.name)}"
        if identity.kind is not IdentityKind.HOST:
            await self._refuse(request, identity, f"access denied to {who}: only the host running a session writes "
                                                  "its tracker (users never do)")
        await self.authorize(request, identity, verb, KIND, tracker.session_id)
        if "Auth" in identity.roles:
            return
        own = host_uuid(identity)
        if "Node" in identity.roles and tracker.server_id == own:
            return
        if "Proxy" in identity.roles:
            try:
                node = await self.service.presence.get_node(tracker.server_id)
            except NotFound:
                node = None
            if node is not None and getattr(node, "sub_kind", "") == "openssh":
                return
            await self._refuse(request, identity, f"access denied to {who}: a proxy writes only the trackers of "
                                                  f"sessions on agentless OpenSSH nodes, not of {tracker.server_id}")
        await self._refuse(request, identity, f"access denied to {who}: a host writes only the trackers of sessions "
                                              f"on itself (server_id {own}), not of {tracker.server_id}")

    # -- who may see --------------------------------------------------------------------------------

    def _visible(self, identity: Identity, roleset: RoleSet | None, tracker: SessionTracker, verb: str) -> bool:
        if identity.kind is IdentityKind.HOST:
            if "Node" in identity.roles and not ({"Proxy", "Auth"} & set(identity.roles)):
                return tracker.server_id == host_uuid(identity)
            return True
        assert roleset is not None
        attributes = tracker.attributes()
        env = environment(user=identity.name, roles=identity.roles, traits=identity.traits,
                          name=tracker.session_id, item=attributes)
        for role in roleset.roles:  # a deny rule that applies hides it, even from its participants
            for rule in role.deny.rules_for(KIND, verb):
                if rule.holds(env):
                    return False
        if self.item_decision(identity, verb, KIND, tracker.session_id, attributes).allowed:
            return True
        if identity.name in tracker.users or identity.name == tracker.owner:
            return True
        return bool(join_modes(roleset, tracker.kind, tracker.owner_roles, user=identity.name, owner=tracker.owner))

    async def _roleset(self, identity: Identity) -> RoleSet | None:
        if identity.kind is IdentityKind.HOST:
            return None
        return await self.service.authorizer.roleset_for(identity)

    # -- routes -------------------------------------------------------------------------------------

    @endpoint(None, None)
    async def create_tracker(self, request: Request, identity: Identity | None) -> Any:
        """A host's session started: store its tracker (409 if the session ID is taken)."""
        assert identity is not None
        tracker = _parse(body(request, TrackerDocument))
        await self._check_writer(request, identity, "create", tracker)
        if tracker.expires <= dt.datetime.now(dt.UTC):
            raise BadRequest(f"spec.expires: {tracker.expires.isoformat()} is in the past")
        stored = await trackers_of(self.service).create(clamp_expiry(tracker))
        return stored.to_dict()

    @endpoint(None, None)
    async def update_tracker(self, request: Request, identity: Identity | None) -> Any:
        """Replace a tracker if ``metadata.revision`` is still its revision (412 when it moved: read again)."""
        assert identity is not None
        sid = request.path_params["sid"]
        tracker = _parse(body(request, TrackerDocument))
        if tracker.session_id != sid:
            raise BadRequest(f"spec.session_id {json.dumps(tracker.session_id)} does not match the URL")
        if not tracker.revision:
            raise BadRequest("metadata.revision: required (the revision read; updates are compare-and-swap)")
        store = trackers_of(self.service)
        try:
            current = await store.get(sid)
        except NotFound:
            current = None
        if current is not None:  # the stored tracker must be the caller's too, and stay on its host
            await self._check_writer(request, identity, "update", current)
            if current.server_id != tracker.server_id:
                await self._refuse(request, identity, f"access denied to {identity.kind.value} "
                                                      f"{json.dumps(identity.name)}: a tracker's server_id never "
                                                      "changes")
        await self._check_writer(request, identity, "update", tracker)
        if current is None:
            raise NotFound(f"session {sid} not found (it ended, or its tracker expired)")
        return (await store.update(clamp_expiry(tracker))).to_dict()

    @endpoint(None, None)
    async def delete_tracker(self, request: Request, identity: Identity | None) -> Any:
        """A host's session ended: remove its tracker."""
        assert identity is not None
        sid = request.path_params["sid"]
        if identity.kind is not IdentityKind.HOST:  # before looking: a user learns nothing from the answer
            await self._refuse(request, identity, f"access denied to {identity.kind.value} "
                                                  f"{json.dumps(identity.name)}: only the host running a session "
                                                  "removes its tracker (users never do)")
        store = trackers_of(self.service)
        current = await store.get(sid)
        await self._check_writer(request, identity, "delete", current)
        await store.delete(sid)
        return {"deleted": sid}

    @endpoint(None, None)
    async def get_tracker(self, request: Request, identity: Identity | None) -> Any:
        """One live session's tracker, if the caller may see it (else 404, audited when it exists)."""
        assert identity is not None
        sid = request.path_params["sid"]
        if identity.kind is IdentityKind.HOST:
            await self.authorize(request, identity, "read", KIND, sid, filtered=True)
        roleset = await self._roleset(identity)
        tracker = await trackers_of(self.service).get(sid)
        if not self._visible(identity, roleset, tracker, "read"):
            await self.audit_denial(request, identity, f"access denied to {identity.kind.value} "
                                                       f"{json.dumps(identity.name)}: session {sid} is not visible "
                                                       "to it (read on session_tracker, join_sessions)")
            raise NotFound(f"session {sid} not found (it ended, or never ran)")
        return tracker.to_dict()

    @endpoint(None, None)
    async def list_trackers(self, request: Request, identity: Identity | None) -> Any:
        """The live sessions the caller may see (``kind``, ``state`` filters), oldest first."""
        assert identity is not None
        if identity.kind is IdentityKind.HOST:
            await self.authorize(request, identity, "list", KIND, filtered=True)
        params = query(request, TrackersQuery)
        roleset = await self._roleset(identity)
        found = [t for t in await trackers_of(self.service).list()
                 if (not params.kind or t.kind == params.kind) and (not params.state or t.state == params.state)
                 and self._visible(identity, roleset, t, "list")]
        return {"trackers": [t.to_dict() for t in found]}


ROUTES: list[Operation] = [
    Operation("/v1/session_trackers", "POST", "create_tracker",
              "Store a live session's tracker (the host running the session only)", body=TrackerDocument,
              response=TrackerReply),
    Operation("/v1/session_trackers", "GET", "list_trackers",
              "Live sessions the caller may see (its own, join_sessions, list on session_tracker)",
              query=TrackersQuery, response=TrackersReply),
    Operation("/v1/session_trackers/{sid}", "GET", "get_tracker",
              "One live session's tracker (404 unless the caller may see it)", response=TrackerReply),
    Operation("/v1/session_trackers/{sid}", "PUT", "update_tracker",
              "Replace a tracker if metadata.revision is current (412 otherwise; the host running the session only)",
              body=TrackerDocument, response=TrackerReply),
    Operation("/v1/session_trackers/{sid}", "DELETE", "delete_tracker",
              "Remove a live session's tracker (the host running the session only)", response=DeletedTrackerReply),
]
