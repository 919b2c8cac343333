"""The auth API, locks (``tctl lock``)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import ConfigDict
from starlette.requests import Request

from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint
from teleport_core.api.schema import Body, Message, Name, OptionalName, Reply, Text, Timestamp, Word
from teleport_core.errors import (
    NotFound,
)
from teleport_core.policy.access import Identity
from teleport_core.policy.locks import Lock, lock_to_dict, parse_lock


class LockMetadata(Body):
    model_config = ConfigDict(extra="allow")

    name: Name
    expires: Timestamp = ""


class LockTargetBody(Body):
    """Whom the lock stops: one of user, role, login, node (``server_id``), access_request; optionally only
    certificates issued before ``issued_before``."""

    model_config = ConfigDict(extra="allow")

    user: OptionalName = ""
    role: OptionalName = ""
    login: OptionalName = ""
    node: OptionalName = ""
    server_id: OptionalName = ""
    access_request: OptionalName = ""
    issued_before: Timestamp = ""


class LockSpec(Body):
    model_config = ConfigDict(extra="allow")

    target: LockTargetBody
    message: Message = ""
    expires: Timestamp = ""
    created_at: Timestamp = ""
    created_by: Text = ""


class LockDocument(Body):
    """A lock resource (``kind: lock``, ``version: v2``), checked in full by
    :func:`teleport_core.policy.locks.parse_lock`."""

    model_config = ConfigDict(extra="allow")

    kind: Word = "lock"
    version: Word = "v2"
    metadata: LockMetadata
    spec: LockSpec


class LockReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class DeletedLockReply(Reply):
    deleted: str


class LocksAPI(APIBase):
    """Lock routes."""

    # -- locks -----------------------------------------------------------------------------------------

    @endpoint("list", "lock")
    async def list_locks(self, request: Request, identity: Identity | None) -> Any:
        return [lock_to_dict(lock) for lock in await self.service.locks.list()]

    @endpoint(None, None, name_param="name")
    async def upsert_lock(self, request: Request, identity: Identity | None) -> Any:
        """``tctl lock``: create (or replace) a lock; ``created_at``/``created_by`` are set here."""
        assert identity is not None
        name = request.path_params["name"]
        lock = parse_lock(body(request, LockDocument).model_dump(exclude_unset=True), "request")
        if lock.name != name:
            raise BadRequest(f"metadata.name {json.dumps(lock.name)} does not match the URL")
        now = dt.datetime.now(dt.UTC)
        if lock.expires is not None and lock.expires <= now:
            raise BadRequest(f"metadata.expires: {lock.expires.isoformat()} is in the past")
        svc = self.service
        try:
            await svc.locks.get(name)
            exists = True
        except NotFound:
            exists = False
        await self.authorize(request, identity, "update" if exists else "create", "lock", name)
        stored = Lock(name, lock.target, lock.message, lock.expires, now, identity.name)
        await svc.locks.upsert(stored)
        await svc.emit(self.lock_event("lock.created", stored, identity.name))
        return lock_to_dict(stored)

    @endpoint("delete", "lock", name_param="name")
    async def delete_lock(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        name = request.path_params["name"]
        lock = await svc.locks.get(name)
        await svc.locks.delete(name)
        await svc.emit(self.lock_event("lock.deleted", lock, identity.name if identity else ""))
        return {"deleted": name}


ROUTES: list[Operation] = [
    Operation("/v1/locks", "GET", "list_locks", "Locks in force (list on lock)", response=list[LockReply]),
    Operation("/v1/locks/{name}", "PUT", "upsert_lock",
              "Create or replace a lock (a lock resource: target user, role, login or node; message; expires)",
              body=LockDocument, response=LockReply),
    Operation("/v1/locks/{name}", "DELETE", "delete_lock", "Delete a lock: the identity it targeted is allowed again",
              response=DeletedLockReply),
]
