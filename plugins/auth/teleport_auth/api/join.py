"""The auth API, joining: a host registers (token or certificate) and renews its host certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from starlette.requests import Request

from teleport_auth.api.core import SMALL_BODY, APIBase, BadRequest, Operation, body, endpoint
from teleport_auth.rotation import rotation_status
from teleport_auth.tokens import system_role
from teleport_core.api.schema import NO_CONTROL, Body, Name, NameList, OptionalName, PublicKey, Reply, Word
from teleport_core.errors import (
    AccessDenied,
    TeleportError,
)
from teleport_core.net.limits import rate_limited
from teleport_core.pki import keys
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind

IPList = Annotated[list[Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)]], Field(max_length=64)]


class RegisterBody(Body):
    """A host joining: its name, system role, public key, extra names; a join token unless it
    presents its certificate of another role. Auth assigns the host UUID."""

    nodename: Name
    role: Word = Field(description="node or proxy (auth servers do not join)")
    public_key: PublicKey
    token: Annotated[str, StringConstraints(max_length=253, pattern=NO_CONTROL)] = ""
    host_uuid: OptionalName = Field("", description="must be absent: auth assigns it")
    additional_principals: NameList = []
    dns_names: NameList = []
    ip_addresses: IPList = []


class RenewBody(Body):
    """A joined host renewing its certificates: only its new public key (its names are recorded)."""

    public_key: PublicKey


class HostIdentityReply(Reply):
    host_uuid: str
    ssh_cert: str
    tls_cert: str
    host_ca_pems: list[str]
    user_ca_pems: list[str]
    known_hosts: list[str]
    user_ca_ssh_keys: list[str]
    cluster_name: str


class RenewReply(HostIdentityReply):
    rotation: dict[str, Any]


class JoinAPI(APIBase):
    """Join routes."""

    # -- joining ------------------------------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def register(self, request: Request, identity: Identity | None) -> Any:
        """Join: auth decides the host's identity (see :mod:`teleport_auth.hosts`). A new host
        presents a token and gets a new host UUID; a registered host adds a role by presenting
        its certificate of another role (no token). Every refusal is audited (``instance.join``
        failure, TJ002E)."""
        wanted = body(request, RegisterBody)
        nodename, role = wanted.nodename, wanted.role
        remote = request.client.host if request.client else ""
        limited = await rate_limited(self.service.register_rate, remote, "join",
                                     lambda reason: self.audit_denial(request, None, reason))
        if limited is not None:  # 429 + Retry-After: too many failed joins from this address
            return limited
        try:
            answer = await self._join(wanted, identity, nodename, role, remote)
            self.service.register_rate.refund(remote)  # only failed attempts count
            return answer
        except TeleportError as exc:
            await self.service.emit(self.event("instance.join", "failure", node_name=nodename, role=role,
                                               error=str(exc), **{"addr.remote": remote}))
            raise

    async def _invalid_register(self, request: Request, fields: dict[str, str], reason: str) -> None:
        """A join body the model refused is a refused join too (TJ002E)."""
        remote = request.client.host if request.client else ""
        await self.service.emit(self.event("instance.join", "failure", node_name=fields.get("nodename", ""),
                                           role=fields.get("role", ""), error=reason, **{"addr.remote": remote}))

    async def _join(self, wanted: RegisterBody, identity: Identity | None, nodename: str, role: str,
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
        if wanted.host_uuid:
            raise BadRequest("host_uuid: a joining host does not choose its UUID; auth assigns it (leave it out)")
        public_key = wanted.public_key
        names = check_request(nodename, wanted.additional_principals, wanted.dns_names, wanted.ip_addresses,
                              svc.cluster_name)
        try:
            keys.load_public_key(public_key)  # a bad key is refused before the token is used up
            if identity is not None:  # a registered host adds a role with its certificate
                if identity.kind is not IdentityKind.HOST or "Auth" in identity.roles:
                    raise AccessDenied(f"{identity.kind.value} {json.dumps(identity.name)} cannot join as a host")
                answer = await svc.register_host(nodename, system, public_key, names, uuid=host_uuid(identity))
                method = "certificate"
            else:
                await svc.hosts.conflict("", nodename, names, system)  # before the token is used up
                if not wanted.token:
                    raise BadRequest("token: required")
                token = await svc.tokens.consume(Secret(wanted.token), system, nodename)
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
        public_key = body(request, RenewBody).public_key  # names in the body are ignored: auth recorded them at join
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
              "Join with a token (or another role's host certificate): auth assigns the host UUID and records its "
              "names", body=RegisterBody, response=HostIdentityReply, max_body=SMALL_BODY, anonymous=True,
              errors=("401", "403", "404", "409", "412", "429")),
    Operation("/v1/certs/host", "POST", "renew_host_certs",
              "A host renews its own certificates, with the names auth recorded (e.g. during a CA rotation)",
              body=RenewBody, response=RenewReply, max_body=SMALL_BODY),
]

