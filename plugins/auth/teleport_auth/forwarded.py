"""A user's TLS certificate forwarded by a proxy (:data:`FORWARDED_USER_CERT`): only a host with
the ``Proxy`` system role may forward one, and only a user certificate of the user CA valid now
counts; every refusal is audited (403 or 401). Used by the API endpoints
(:meth:`teleport_auth.api.core.APIBase.forwarded_identity`) and the recording reads."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Protocol

import attrs

from teleport_auth.issuer import identity_from_tls_cert
from teleport_core.errors import AccessDenied, AuthenticationFailed
from teleport_core.policy.access import Identity, IdentityKind

if TYPE_CHECKING:
    from starlette.requests import Request

    from teleport_auth.state import AuthState


class DenialAuditor(Protocol):
    """What this uses of the API object (:class:`teleport_auth.api.core.APIBase`)."""

    service: AuthState

    async def audit_denial(self, request: Request, identity: Identity | None, reason: str) -> None: ...


async def root_user(api: DenialAuditor, request: Request, der: bytes) -> Identity:
    """A user of a root cluster this (leaf) cluster trusts: a certificate of an enabled root's user CA,
    with the roles its ``role_map`` maps theirs to (AccessDenied, audited, when none maps);
    AuthenticationFailed when no enabled trust signed it. ``identity.cluster`` names the root."""
    from teleport_auth.authority import CAType
    from teleport_core.policy.rolemap import map_roles

    for remote in await api.service.trust.remote_cas(CAType.USER):
        if not remote.enabled:
            continue  # a disabled trust: nothing its CA signed is accepted
        try:
            user = identity_from_tls_cert(der, [remote.ca])
        except AuthenticationFailed:
            continue
        mapped = map_roles(remote.role_map, user.roles)
        if not mapped:
            reason = (f"access denied to user {json.dumps(user.name)} of cluster {json.dumps(remote.ca.cluster_name)}: "
                      f"no role of theirs ({', '.join(user.roles) or 'none'}) maps to a role of this cluster")
            await api.audit_denial(request, user, reason)
            raise AccessDenied(reason)
        return attrs.evolve(user, roles=mapped, cluster=remote.ca.cluster_name, active_requests=())
    raise AuthenticationFailed("x509: certificate is not signed by a trusted cluster CA")


def caller_name(caller: Identity) -> str:
    """How refusals name the caller: ``host "<name>"`` or ``user "<name>"``."""
    return f"{caller.kind.value} {json.dumps(caller.name)}"


async def forwarded_user(api: DenialAuditor, request: Request, caller: Identity, header: str) -> Identity:
    """The user of the certificate ``header`` (base64 DER) that ``caller`` forwarded; refusals audited."""
    who = caller_name(caller)
    if caller.kind is not IdentityKind.HOST or "Proxy" not in caller.roles:
        reason = f"access denied to {who}: only a proxy may forward a user's certificate"
        await api.audit_denial(request, caller, reason)
        raise AccessDenied(reason)
    try:
        der = base64.b64decode(header, validate=True)
        try:
            user = identity_from_tls_cert(der, [api.service.user_ca])
        except AuthenticationFailed:
            user = await root_user(api, request, der)  # trusted clusters: a root cluster's user, roles mapped
    except (ValueError, binascii.Error, AuthenticationFailed) as exc:
        reason = f"the user certificate forwarded by {who} is not valid: {exc}"
        await api.audit_denial(request, caller, reason)
        raise AuthenticationFailed(reason) from None
    if user.kind is not IdentityKind.USER:
        reason = f"the certificate forwarded by {who} is not a user certificate"
        await api.audit_denial(request, caller, reason)
        raise AccessDenied(reason)
    return user
