"""The auth API, ``tctl edit``: read a resource with its revision, replace it only at that revision.

``GET /v1/edit/{kind}/{name}`` answers the resource (as ``tctl get`` prints it) and the revision
of its record; ``PUT`` with the edited resource and that revision writes it only if nobody
changed it in between (compare-and-swap on the backend revision), else 412. Roles are replaced
whole; of a user, the roles and traits are what can change.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint
from teleport_core.api.schema import Body, JSONObject, Reply
from teleport_core.errors import CompareFailed, NotFound
from teleport_core.policy.access import Identity

#: what ``tctl edit`` can edit
EDITABLE = ("role", "user")
#: user fields ``tctl edit`` may change (the rest is the server's: who created it, its lock status)
USER_EDITABLE = ("roles", "traits")


class EditBody(Body):
    """The edited resource and the revision it was read at."""

    resource: JSONObject
    revision: str = Field(min_length=1, max_length=256)


class EditReply(Reply):
    resource: dict[str, Any]
    revision: str


def _changed(kind: str, name: str) -> CompareFailed:
    return CompareFailed(f"{kind} {json.dumps(name)} was changed by someone else since it was read")


class EditAPI(APIBase):
    """Read-with-revision and compare-and-swap writes for ``tctl edit``."""

    async def _read(self, kind: str, name: str) -> tuple[dict[str, Any], str]:
        from teleport_auth.rolestore import _decode_role, role_key
        from teleport_core.policy.roles import role_to_dict

        svc = self.service
        if kind == "role":
            try:
                item = await svc.backend.get(role_key(name))
            except NotFound:
                raise NotFound(f"role {json.dumps(name)} not found") from None
            return role_to_dict(_decode_role(item)), item.revision
        user, revision = await svc.users.get_with_revision(name)
        return user.to_dict(), revision

    @endpoint("read", "role", name_param="name")
    async def read_role_for_edit(self, request: Request, identity: Identity | None) -> Any:
        resource, revision = await self._read("role", request.path_params["name"])
        return {"resource": resource, "revision": revision}

    @endpoint("read", "user", name_param="name")
    async def read_user_for_edit(self, request: Request, identity: Identity | None) -> Any:
        resource, revision = await self._read("user", request.path_params["name"])
        return {"resource": resource, "revision": revision}

    @endpoint("update", "role", name_param="name")
    async def write_edited_role(self, request: Request, identity: Identity | None) -> Any:
        return await self._write_edited("role", request, identity)

    @endpoint("update", "user", name_param="name")
    async def write_edited_user(self, request: Request, identity: Identity | None) -> Any:
        return await self._write_edited("user", request, identity)

    async def _write_edited(self, kind: str, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        name = request.path_params["name"]
        wanted = body(request, EditBody)
        doc = wanted.resource
        if doc.get("kind", kind) != kind:
            raise BadRequest(f"kind: expected {kind}, got {json.dumps(doc.get('kind'))}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise BadRequest(f"metadata.name: must stay {json.dumps(name)} (tctl edit does not rename)")
        svc = self.service
        if kind == "role":
            stored = await self._write_role(doc, name, wanted.revision)
        else:
            stored = await self._write_user(doc, name, wanted.revision)
        svc.authorizer.invalidate()
        await svc.emit(self.event(f"{kind}.{'updated' if kind == 'role' else 'update'}", name=name,
                                  user=identity.name))
        return stored

    async def _write_role(self, doc: dict[str, Any], name: str, revision: str) -> dict[str, Any]:
        from teleport_auth.rolestore import _encode_role, role_key
        from teleport_core.policy.roles import parse_role, role_to_dict
        from teleport_core.state.backend import Item

        role = parse_role(doc, "role")
        try:
            item = await self.service.backend.conditional_update(Item(role_key(name), _encode_role(role),
                                                                      revision=revision))
        except (CompareFailed, NotFound):
            raise _changed("role", name) from None
        return {"resource": role_to_dict(role), "revision": item.revision}

    async def _write_user(self, doc: dict[str, Any], name: str, revision: str) -> dict[str, Any]:
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise BadRequest("spec: expected a mapping with roles and traits")
        current, _ = await self.service.users.get_with_revision(name)
        before = current.to_dict()["spec"]
        for key in sorted(set(spec) | set(before)):
            if key not in USER_EDITABLE and spec.get(key) != before.get(key):
                raise BadRequest(f"spec.{key}: cannot be changed by tctl edit (it changes "
                                 f"{' and '.join(USER_EDITABLE)})")
        roles = spec.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise BadRequest("spec.roles: expected a list of role names")
        known = {r.name for r in await self.service.roles.list()}
        missing = [r for r in roles if r not in known]
        if missing:
            raise BadRequest(f"spec.roles: no such role {', '.join(json.dumps(m) for m in missing)}")
        try:
            user = await self.service.users.update_if(name, revision, roles=roles, traits=spec.get("traits") or {})
        except CompareFailed:
            raise _changed("user", name) from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        _, stored = await self.service.users.get_with_revision(name)
        return {"resource": user.to_dict(), "revision": stored}


ROUTES: list[Operation] = [
    Operation(f"/v1/edit/{kind}s/{{name}}", method, f"{verb}_{kind}{suffix}", summary.format(kind=kind),
              body=EditBody if method == "PUT" else None, response=EditReply)
    for kind in EDITABLE
    for method, verb, suffix, summary in (
        ("GET", "read", "_for_edit", "A {kind} and the revision of its record (tctl edit)"),
        ("PUT", "write_edited", "", "Replace a {kind} (of a user: its roles and traits) if still at the revision "
                                    "read, else 412 (tctl edit)"),
    )
]
