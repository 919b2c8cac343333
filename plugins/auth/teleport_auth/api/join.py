"""The auth API, joining: a host registers (token or certificate) and renews its host certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from starlette.requests import Request

from teleport_auth.api.core import SMALL_BODY, APIBase, BadRequest, Operation, endpoint, field, read_json
from teleport_auth.rotation import rotation_status
from teleport_auth.tokens import system_role
from teleport_core import keys
from teleport_core.access import Identity, IdentityKind
from teleport_core.errors import (
    AccessDenied,
    TeleportError,
)
from teleport_core.secret import Secret


class JoinAPI(APIBase):
    """Join routes."""

    # -- joining ------------------------------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def register(self, request: Request, identity: Identity | None) -> Any:
        """Join: auth decides the host's identity (see :mod:`teleport_auth.hosts`). A new host
        presents a token and gets a new host UUID; a registered host adds a role by presenting
        its certificate of another role (no token). Every refusal is audited (``instance.join``
        failure, TJ002E)."""
        body = await read_json(request)
        nodename = field(body, "nodename")
        role = field(body, "role")
        remote = request.client.host if request.client else ""
        try:
            return await self._join(body, identity, nodename, role, remote)
        except TeleportError as exc:
            await self.service.emit(self.event("instance.join", "failure", node_name=nodename, role=role,
                                               error=str(exc), **{"addr.remote": remote}))
            raise

    async def _join(self, body: dict[str, Any], identity: Identity | None, nodename: str, role: str,
                    remote: str) -> Any:
        from teleport_auth.authz import host_uuid
        from teleport_auth.hosts import check_request

        svc = self.service
        try:
            system = system_role(role)
        except ValueError as exc:
            raise BadRequest(f"role: {exc}") from None
        if system == "Auth":
            raise BadRequest("role: auth servers do not join with a token: they share the cluster's backend")
        if field(body, "host_uuid", required=False, default=""):
            raise BadRequest("host_uuid: a joining host does not choose its UUID; auth assigns it (leave it out)")
        public_key = field(body, "public_key")
        names = check_request(nodename, field(body, "additional_principals", list, required=False, default=[]),
                              field(body, "dns_names", list, required=False, default=[]),
                              field(body, "ip_addresses", list, required=False, default=[]), svc.cluster_name)
        try:
            keys.load_public_key(public_key)  # a bad key is refused before the token is used up
            if identity is not None:  # a registered host adds a role with its certificate
                if identity.kind is not IdentityKind.HOST or "Auth" in identity.roles:
                    raise AccessDenied(f"{identity.kind.value} {json.dumps(identity.name)} cannot join as a host")
                answer = await svc.register_host(nodename, system, public_key, names, uuid=host_uuid(identity))
                method = "certificate"
            else:
                await svc.hosts.conflict("", nodename, names, system)  # before the token is used up
                token = await svc.tokens.consume(Secret(field(body, "token")), system, nodename)
                answer = await svc.register_host(nodename, system, public_key, names, token_roles=token.roles)
                method = "token"
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        await svc.emit(self.event("instance.join", node_name=nodename, role=system, host_id=answer["host_uuid"],
                                  method=method, **{"addr.remote": remote}))
        return answer

    @endpoint(None, None)
    async def renew_host_certs(self, request: Request, identity: Identity | None) -> Any:
        """A joined host renews its own certificates (same host UUID and system role, new key),
        e.g. when a host CA rotation reaches ``update_servers`` or ``rollback``. The certificates
        come from the keys servers' certificates come from in the current phase."""
        assert identity is not None
        if identity.kind is not IdentityKind.HOST or len(identity.roles) != 1:
            reason = (f"access denied to {identity.kind.value} {json.dumps(identity.name)}: "
                      "only a host renews its own host certificates")
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        from teleport_auth.authz import host_uuid
        from teleport_auth.hosts import UnknownHost
        from teleport_auth.issuer import DEFAULT_HOST_CERT_TTL

        svc = self.service
        body = await read_json(request)
        public_key = field(body, "public_key")  # names in the body are ignored: auth recorded them at join
        try:
            keys.load_public_key(public_key)
        except ValueError as exc:
            raise BadRequest(f"public_key: {exc}") from None
        try:
            record = await svc.hosts.renewed(host_uuid(identity), identity.roles[0],
                                             dt.datetime.now(dt.UTC) + DEFAULT_HOST_CERT_TTL)
        except UnknownHost as exc:
            reason = f"access denied to host {json.dumps(identity.name)}: {exc}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason) from None
        try:
            answer = await asyncio.to_thread(svc.issue_host_identity, record, identity.roles[0], public_key)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return {**answer,
                "rotation": {ca.kind.value: rotation_status(ca.rotation) for ca in (svc.user_ca, svc.host_ca)}}


ROUTES: list[Operation] = [
    Operation("/v1/register", "POST", "register",
     "Join with a token (or another role's host certificate): auth assigns the host UUID and records its names",
              max_body=SMALL_BODY),
    Operation("/v1/certs/host", "POST", "renew_host_certs",
     "A host renews its own certificates, with the names auth recorded (e.g. during a CA rotation)",
              max_body=SMALL_BODY),
]

