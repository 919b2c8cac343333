"""The auth API, roles: CRUD and ``tctl create`` of several resources at once."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import ConfigDict, Field
from starlette.requests import Request

from teleport_auth.api.agentless import check_openssh_nodes, parse_node_doc, write_openssh_nodes
from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint
from teleport_core.api.schema import LIST_MAX, Body, JSONObject, Labels, Message, Name, Reply, Word
from teleport_core.errors import (
    AlreadyExists,
    NotFound,
)
from teleport_core.policy.access import Identity
from teleport_core.policy.roles import parse_role, role_to_dict
from teleport_core.state.backend import Item


class ResourceMetadata(Body):
    """A resource's metadata: its name; other keys are checked by the resource's parser."""

    model_config = ConfigDict(extra="allow")

    name: Name
    description: Message = ""
    labels: Labels = {}


class RoleDocument(Body):
    """A role resource (``kind: role``, ``version`` v4..v7, ``metadata``, ``spec``), checked in
    full by :func:`teleport_core.policy.roles.parse_role`."""

    model_config = ConfigDict(extra="allow")

    kind: Word = "role"
    version: Word = "v7"
    metadata: ResourceMetadata
    spec: JSONObject = {}


def role_data(doc: RoleDocument) -> dict[str, Any]:
    """The document as sent (what was not sent stays absent), for :func:`parse_role`."""
    return doc.model_dump(exclude_unset=True)


class CreateResourcesBody(Body):
    """``tctl create [-f]``: resources (roles) written all or none; ``force`` overwrites."""

    resources: Annotated[list[JSONObject], Field(min_length=1, max_length=LIST_MAX)]
    force: bool = False


class RoleReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class CreatedResource(Reply):
    kind: str
    name: str
    created: bool


class Deleted(Reply):
    deleted: str


class RolesAPI(APIBase):
    """Role routes."""

    # -- roles ----------------------------------------------------------------------------------------------

    @endpoint("list", "role")
    async def list_roles(self, request: Request, identity: Identity | None) -> Any:
        return [role_to_dict(r) for r in await self.service.roles.list()]

    @endpoint("read", "role", name_param="name")
    async def get_role(self, request: Request, identity: Identity | None) -> Any:
        return role_to_dict(await self.service.roles.get(request.path_params["name"]))

    @endpoint("create", "role")
    async def create_role(self, request: Request, identity: Identity | None) -> Any:
        role = parse_role(role_data(body(request, RoleDocument)), "request")
        created = await self.service.roles.create(role)
        await self.service.emit(self.event("role.created", name=role.name, user=identity.name if identity else ""))
        return role_to_dict(created)

    @endpoint(None, None, name_param="name")
    async def upsert_role(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        role = parse_role(role_data(body(request, RoleDocument)), "request")
        if role.name != request.path_params["name"]:
            raise BadRequest(f"metadata.name {json.dumps(role.name)} does not match the URL")
        svc = self.service
        try:
            await svc.roles.get(role.name)
            exists = True
        except NotFound:
            exists = False
        await self.authorize(request, identity, "update" if exists else "create", "role", role.name)
        await svc.roles.upsert(role)
        await svc.emit(self.event("role.updated" if exists else "role.created", name=role.name, user=identity.name))
        return role_to_dict(role)

    @endpoint("delete", "role", name_param="name")
    async def delete_role(self, request: Request, identity: Identity | None) -> Any:
        name = request.path_params["name"]
        users = [u.name for u in await self.service.users.list() if name in u.roles]
        if users:
            raise BadRequest(f'role "{name}" is assigned to users {", ".join(users)}; remove it from them first')
        await self.service.roles.delete(name)
        await self.service.emit(self.event("role.deleted", name=name, user=identity.name if identity else ""))
        return {"deleted": name}

    @endpoint(None, None)
    async def create_resources(self, request: Request, identity: Identity | None) -> Any:
        """``tctl create [-f]``: every document is validated first; then all are written, or none."""
        assert identity is not None
        from teleport_auth.rolestore import _encode_role, role_key
        from teleport_core.state.backend import Action, Condition

        wanted = body(request, CreateResourcesBody)
        force, docs = wanted.force, wanted.resources
        roles = []
        nodes = []
        for index, doc in enumerate(docs):
            if doc.get("kind") == "node":  # an agentless OpenSSH node (teleport_auth.agentless)
                nodes.append(parse_node_doc(doc, f"resources[{index}]"))
                continue
            if doc.get("kind") != "role":
                kind = doc.get("kind")
                raise BadRequest(f"resources[{index}]: unsupported kind {json.dumps(kind)} (supported: role, node)")
            roles.append(parse_role(doc, f"resources[{index}]"))
        planned = await check_openssh_nodes(self, request, identity, nodes, force=force)  # before any write
        if not roles:
            return await write_openssh_nodes(self, identity, planned)
        names = [r.name for r in roles]
        if len(set(names)) != len(names):
            raise BadRequest("the same role appears twice")
        svc = self.service
        existing = {r.name for r in await svc.roles.list()}
        for role in roles:
            if role.name in existing and not force:
                raise AlreadyExists(f'role "{role.name}" already exists; use -f to overwrite it')
            await self.authorize(request, identity, "update" if role.name in existing else "create", "role", role.name)
        conditions = [] if force else [Condition.not_exists(role_key(r.name)) for r in roles]
        await svc.backend.atomic_write(conditions, [Action.put(Item(role_key(r.name), _encode_role(r))) for r in roles])
        svc.authorizer.invalidate()
        for role in roles:
            event = "role.updated" if role.name in existing else "role.created"
            await svc.emit(self.event(event, name=role.name, user=identity.name))
        created_nodes = await write_openssh_nodes(self, identity, planned)
        return [{"kind": "role", "name": r.name, "created": r.name not in existing} for r in roles] + created_nodes


ROUTES: list[Operation] = [
    Operation("/v1/roles", "GET", "list_roles", "List roles", response=list[RoleReply]),
    Operation("/v1/roles", "POST", "create_role", "Create a role", body=RoleDocument, response=RoleReply),
    Operation("/v1/roles/{name}", "GET", "get_role", "Read a role", response=RoleReply),
    Operation("/v1/roles/{name}", "PUT", "upsert_role", "Create or replace a role", body=RoleDocument,
              response=RoleReply),
    Operation("/v1/roles/{name}", "DELETE", "delete_role", "Delete a role", response=Deleted),
    Operation("/v1/resources", "POST", "create_resources", "Create several resources, all or nothing (tctl create)",
              body=CreateResourcesBody, response=list[CreatedResource]),
]

