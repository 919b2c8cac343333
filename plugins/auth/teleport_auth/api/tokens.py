"""The auth API, join tokens."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import (
    PROXY_TOKEN_KIND,
    SMALL_BODY,
    APIBase,
    BadRequest,
    Operation,
    body,
    duration,
    endpoint,
)
from teleport_auth.authority import ca_pin, ca_pins
from teleport_core.api.schema import Body, Duration, Labels, Reply, TokenText, Word
from teleport_core.errors import (
    AccessDenied,
)
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind


class CreateTokenBody(Body):
    """A join token for these system roles (default ``node``; ``proxy`` needs create on proxy_token)."""

    roles: Annotated[list[Word], Field(min_length=1, max_length=8)] = ["node"]
    ttl: Duration = ""
    #: a ``trusted_cluster`` token only: the labels of the remote_cluster the leaf joining with it gets
    labels: Labels = {}


class DeleteTokenBody(Body):
    token: TokenText


class TokenReply(Reply):
    token: str
    roles: list[str]
    expires: str | None
    static: bool


class CreatedTokenReply(Reply):
    token: str
    roles: list[str]
    expires: str
    ca_pin: str
    ca_pins: list[str]


class DeletedTokenReply(Reply):
    deleted: bool


class TokensAPI(APIBase):
    """Join token routes."""

    # -- join tokens ---------------------------------------------------------------------------------------------

    async def proxy_token_refusal(self, identity: Identity) -> str:
        """Why ``identity`` may not create (or see) join tokens admitting proxies, "" if it may:
        this auth server's own identity (``tctl`` on the auth host) may; a user needs ``create``
        on ``proxy_token`` from a rule that names that kind (``*`` does not grant it) and no
        deny rule or plugin refusing it. A proxy token makes a host that terminates users' TLS."""
        who = f"access denied to {identity.kind.value} {json.dumps(identity.name)}"
        if identity.kind is IdentityKind.HOST:
            return "" if "Auth" in identity.roles else f"{who}: only auth creates tokens for proxies"
        decision = await self.decision(identity, "create", PROXY_TOKEN_KIND)
        if not decision.allowed:
            return f"{who}: tokens admitting proxies need create on {PROXY_TOKEN_KIND} ({decision.reason})"
        roleset = await self.service.authorizer.roleset_for(identity)
        if not any(PROXY_TOKEN_KIND in rule.resources and rule.matches(PROXY_TOKEN_KIND, "create")
                   for role in roleset.roles for rule in role.allow.rules):
            return (f"{who}: tokens admitting proxies need a role rule that names {PROXY_TOKEN_KIND} "
                    f"explicitly (resources: [{PROXY_TOKEN_KIND}], verbs: [create]); * does not grant it")
        return ""

    @endpoint("list", "token")
    async def list_tokens(self, request: Request, identity: Identity | None) -> Any:
        """Join tokens; static ones masked (their values never leave auth), and the values of
        tokens admitting proxies only for callers allowed to create them."""
        from teleport_auth.tokens import MASKED

        assert identity is not None
        found = await self.service.tokens.list()
        proxy_ok = not any("Proxy" in t.roles for t in found if not t.static) or not await self.proxy_token_refusal(
            identity)
        return [
            {"token": t.token.reveal() if not t.static and (proxy_ok or "Proxy" not in t.roles) else MASKED,
             "roles": list(t.roles), "expires": t.expires.isoformat() if t.expires else None, "static": t.static,
             **({"labels": dict(t.labels)} if t.labels else {})}
            for t in found
        ]

    @endpoint("create", "token")
    async def create_token(self, request: Request, identity: Identity | None) -> Any:
        from teleport_auth.tokens import NO_AUTH_TOKENS, system_roles

        assert identity is not None
        svc = self.service
        asked = body(request, CreateTokenBody)
        roles = asked.roles
        if any(role.lower() == "trusted_cluster" for role in roles):
            return await self._create_trusted_token(identity, asked)
        if asked.labels:
            raise BadRequest("labels: only a trusted_cluster token takes labels")
        try:
            wanted = system_roles(roles)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        reason = ""
        if "Auth" in wanted:
            reason = f"access denied to {identity.kind.value} {json.dumps(identity.name)}: {NO_AUTH_TOKENS}"
        elif "Proxy" in wanted:
            reason = await self.proxy_token_refusal(identity)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        try:
            token = await svc.tokens.create(wanted, duration(asked.ttl))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert token.expires is not None
        await svc.emit(self.event("join_token.create", roles=list(token.roles), user=identity.name,
                                  expires=token.expires.isoformat()))
        return {"token": token.token.reveal(), "roles": list(token.roles), "expires": token.expires.isoformat(),
                "ca_pin": ca_pin(svc.host_ca), "ca_pins": ca_pins(svc.host_ca)}

    async def _create_trusted_token(self, identity: Identity, asked: CreateTokenBody) -> Any:
        """``tctl tokens add --type=trusted_cluster [--labels=k=v]``: a leaf joins this cluster with it once."""
        from teleport_core.policy.trust import InvalidTrust, check_labels

        if len(asked.roles) != 1:
            raise BadRequest("roles: a trusted_cluster token admits nothing else")
        try:
            labels = check_labels(asked.labels, "labels")
        except InvalidTrust as exc:
            raise BadRequest(str(exc)) from None
        svc = self.service
        try:
            token = await svc.tokens.create_trusted(labels, duration(asked.ttl))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert token.expires is not None
        await svc.emit(self.event("trusted_cluster_token.create", roles=list(token.roles), user=identity.name,
                                  labels=labels, expires=token.expires.isoformat()))
        return {"token": token.token.reveal(), "roles": list(token.roles), "expires": token.expires.isoformat(),
                "labels": labels, "ca_pin": ca_pin(svc.host_ca), "ca_pins": ca_pins(svc.host_ca)}

    @endpoint("delete", "token")
    async def delete_token(self, request: Request, identity: Identity | None) -> Any:
        await self.service.tokens.remove(Secret(body(request, DeleteTokenBody).token))
        return {"deleted": True}


ROUTES: list[Operation] = [
    Operation("/v1/tokens", "GET", "list_tokens", "List join tokens", response=list[TokenReply]),
    Operation("/v1/tokens", "POST", "create_token", "Create a join token", body=CreateTokenBody,
              response=CreatedTokenReply, max_body=SMALL_BODY),
    Operation("/v1/tokens/delete", "POST", "delete_token", "Delete a join token", body=DeleteTokenBody,
              response=DeletedTokenReply, max_body=SMALL_BODY),
]
