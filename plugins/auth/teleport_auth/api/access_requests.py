"""The auth API, access requests: create, list, read, review, resolve, delete, and certificates
reissued with the roles of approved requests (``/v1/certs/reissue``).

The requester is always the caller (the certificate's user, or the user whose certificate a
proxy forwarded), never a field of the body. Visibility: the caller's own requests, those the
caller may review (``allow.review_requests``), and every request for holders of a rule
allowing ``list``/``read`` on ``access_request``; anything else is a 404, as if absent. Every
refusal is audited (``auth`` T3007W).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

from cryptography import x509
from pydantic import Field
from starlette.requests import Request

from teleport_auth.access_requests import change_of
from teleport_auth.api.core import SMALL_BODY, BadRequest, Operation, body, duration, endpoint, query
from teleport_auth.api.users import CertsReply, UsersAPI
from teleport_core.api.client import FORWARDED_USER_CERT
from teleport_core.api.schema import Body, Duration, Message, NameList, PublicKey, Query, Reply, Word
from teleport_core.errors import AccessDenied, NotFound
from teleport_core.net.tlsserver import client_certificate
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.locks import LockTarget, new_lock
from teleport_core.policy.requests import (
    MAX_ACTIVE_REQUESTS,
    AccessRequest,
    InvalidAccessRequest,
    Review,
    State,
    access_expiry,
    apply_review,
    check_id,
    check_requestable,
    may_see,
    new_request,
    reason_required,
    request_thresholds,
    request_to_dict,
    resolve,
    review_decision,
    suggested_reviewers,
)
from teleport_core.policy.roles import RoleSet

KIND = "access_request"


class CreateRequestBody(Body):
    """A new access request by the caller: the roles wanted, why, whom to ask; ``dry_run``: check
    and answer the request without storing it."""

    roles: NameList = Field(min_length=1)
    reason: Message = ""
    suggested_reviewers: NameList = []
    dry_run: bool = False


class ListRequestsQuery(Query):
    state: Word = Field("", description="PENDING, APPROVED or DENIED (empty: all)")
    user: Word = Field("", description="only this user's requests")


class ReviewBody(Body):
    proposed_state: Word
    reason: Message = ""


class ResolveBody(Body):
    """An admin's decision (``tctl request approve|deny``); ``roles``: approve only these of the requested."""

    state: Word
    reason: Message = ""
    roles: NameList = []


class ReissueBody(Body):
    """New certificates for the caller's key: base roles plus those of ``access_requests`` (each the
    caller's, approved, unexpired); ``[]`` or ``drop_access_requests``: the base roles only."""

    public_key: PublicKey
    access_requests: list[Word] = Field(default=[], max_length=MAX_ACTIVE_REQUESTS)
    drop_access_requests: bool = False
    ttl: Duration = ""


class CapabilitiesReply(Reply):
    requestable_roles: list[str]
    suggested_reviewers: list[str]
    request_access: str
    request_prompt: str


class AccessRequestReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class AccessRequestListReply(Reply):
    items: list[AccessRequestReply]


class DeletedRequestReply(Reply):
    deleted: str


class ReissueReply(CertsReply):
    active_requests: list[str]


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _reason(text: str, field: str = "reason") -> str:
    """A reason as given (newlines allowed); NUL characters are refused (400 naming the field)."""
    if "\x00" in text:
        raise BadRequest(f"{field}: NUL characters are not allowed")
    return text


def _fields(request: AccessRequest) -> dict[str, Any]:
    """What every access request event says about the request (Teleport's field names)."""
    return {"id": request.id, "user": request.user, "roles": list(request.roles), "state": request.state}


class AccessRequestsAPI(UsersAPI):
    """Access request routes (a reissue signs as a login does: :meth:`UsersAPI._certs_for`)."""

    # -- helpers ---------------------------------------------------------------------------------------

    async def _ar_caller(self, request: Request, identity: Identity | None, what: str) -> Identity:
        """The calling user (a host is refused, audited)."""
        assert identity is not None
        if identity.kind is not IdentityKind.USER:
            reason = f"access denied to host {_q(identity.name)}: only users {what}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        return identity

    async def _ar_base_identity(self, identity: Identity) -> Identity:
        """The user as stored (their base roles and traits, not an elevated certificate's roles); a user
        no local store knows (a plugin's) keeps the certificate's roles, unless it is elevated (403)."""
        svc = self.service
        try:
            return (await svc.users.get(identity.name)).identity(svc.cluster_name)
        except NotFound:
            if identity.active_requests:
                raise AccessDenied(f"user {_q(identity.name)} is not a local user: drop the access requests "
                                   "by logging in again") from None
            return Identity(identity.name, IdentityKind.USER, roles=identity.roles, traits=identity.traits,
                            cluster=svc.cluster_name)

    async def _ar_roleset(self, identity: Identity) -> RoleSet:
        return await self.service.authorizer.roleset_for(identity)

    async def _ar_sees_all(self, identity: Identity, verb: str, name: str = "") -> bool:
        return (await self.decision(identity, verb, KIND, name)).allowed

    def _ar_session_expires(self, request: Request) -> dt.datetime | None:
        """When the certificate the call came with ends (the forwarded one through a proxy)."""
        forwarded = request.headers.get(FORWARDED_USER_CERT)
        try:
            der = base64.b64decode(forwarded, validate=True) if forwarded else client_certificate(request.scope)
            return x509.load_der_x509_certificate(der).not_valid_after_utc if der else None
        except (ValueError, binascii.Error):
            return None

    async def _ar_visible(self, identity: Identity, access: AccessRequest) -> bool:
        if await self._ar_sees_all(identity, "read", access.id):
            return True
        return may_see(identity.name, await self._ar_roleset(identity), access)

    async def _ar_load(self, identity: Identity, request_id: str) -> AccessRequest:
        """The request if the caller may see it, else 404 (as an absent one: no existence leak)."""
        try:
            check_id(request_id, "id")
            access = await self.service.access_requests.get(request_id)
        except (InvalidAccessRequest, NotFound):
            raise NotFound(f"access request {_q(request_id)} not found") from None
        if not await self._ar_visible(identity, access):
            raise NotFound(f"access request {_q(request_id)} not found")
        return access

    async def _ar_changed(self, before: AccessRequest, after: AccessRequest, actor: str, change: str) -> None:
        """Audit a state change (``access_request.update`` T5001I) and announce it to the plugins."""
        svc = self.service
        if after.state != before.state:
            await svc.emit(self.event("access_request.update", **_fields(after), updated_by=actor,
                                      reason=after.resolve_reason))
        svc.announcer.announce(after, change)

    # -- routes --------------------------------------------------------------------------------------

    @endpoint(None, None)
    async def create_access_request(self, request: Request, identity: Identity | None) -> Any:
        caller = await self._ar_caller(request, identity, "request access")
        wanted = body(request, CreateRequestBody)
        svc = self.service
        roles = list(dict.fromkeys(wanted.roles))
        base = await self._ar_base_identity(caller)
        requester = await self._ar_roleset(base)
        decision = check_requestable(requester, roles)
        if not decision.allowed:
            reason = f"user {_q(caller.name)} may not request roles {', '.join(roles)}: {decision.reason}"
            await self.audit_denial(request, caller, reason)
            raise BadRequest(f"roles: {decision.reason}")
        known = {role.name for role in await svc.roles.list()}
        missing = [name for name in roles if name not in known]
        if missing:
            reason = f"no such role {', '.join(_q(m) for m in missing)}"
            await self.audit_denial(request, caller, f"access request of user {_q(caller.name)}: {reason}")
            raise BadRequest(f"roles: {reason}")
        _reason(wanted.reason)
        needs = reason_required(requester)
        if needs and not wanted.reason.strip():
            await self.audit_denial(request, caller, f"access request without a reason: {needs}")
            raise BadRequest(f"reason: required ({needs})")
        requested = await self._ar_roleset(Identity(caller.name, IdentityKind.USER, roles=roles, traits=base.traits))
        now = dt.datetime.now(dt.UTC)
        expires = access_expiry(requester, requested, now, self._ar_session_expires(request))
        access = new_request(caller.name, roles, reason=wanted.reason, thresholds=request_thresholds(requester, roles),
                             suggested_reviewers=suggested_reviewers(requester, roles, wanted.suggested_reviewers),
                             access_expires=expires, now=now)
        if wanted.dry_run:
            return request_to_dict(access)
        await svc.access_requests.create(access)
        await svc.emit(self.event("access_request.create", **_fields(access), reason=access.request_reason,
                                  expires=access.expires.isoformat()))
        svc.announcer.announce(access, "created")
        return request_to_dict(access)

    @endpoint(None, None)
    async def list_access_requests(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        params = query(request, ListRequestsQuery)
        if params.state and params.state not in State.ALL:
            raise BadRequest(f"state: expected one of {', '.join(State.ALL)}, got {_q(params.state)}")
        every = await self._ar_sees_all(identity, "list")
        roleset = None if every or identity.kind is not IdentityKind.USER else await self._ar_roleset(identity)
        items = []
        for access in await self.service.access_requests.list():
            if (params.state and access.state != params.state) or (params.user and access.user != params.user):
                continue
            if every or (roleset is not None and may_see(identity.name, roleset, access)):
                items.append(request_to_dict(access))
        return {"items": items}

    @endpoint(None, None, name_param="name")
    async def get_access_request(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        return request_to_dict(await self._ar_load(identity, request.path_params["name"]))

    @endpoint(None, None, name_param="name")
    async def review_access_request(self, request: Request, identity: Identity | None) -> Any:
        caller = await self._ar_caller(request, identity, "review access requests")
        wanted = body(request, ReviewBody)
        if wanted.proposed_state not in State.RESOLVED:
            raise BadRequest(f"proposed_state: expected APPROVED or DENIED, got {_q(wanted.proposed_state)}")
        svc = self.service
        request_id = request.path_params["name"]
        try:
            access = await self._ar_load(caller, request_id)
        except NotFound as exc:  # absent, or not for the caller's eyes: refused all the same (audited)
            await self.audit_denial(request, caller, f"review of access request {request_id}: {exc}")
            raise
        decision = review_decision(caller.name, await self._ar_roleset(caller), access)
        if not decision.allowed:
            await self.audit_denial(request, caller, f"review of access request {access.id}: {decision.reason}")
            raise AccessDenied(decision.reason)
        review = Review(caller.name, wanted.proposed_state, _reason(wanted.reason), caller.roles)

        def add(current: AccessRequest) -> AccessRequest:
            return apply_review(current, review)

        try:
            before, after = await svc.access_requests.change(access.id, add)
        except InvalidAccessRequest as exc:
            await self.audit_denial(request, caller, f"review of access request {access.id}: {exc.message}")
            raise BadRequest(exc.message) from None
        await svc.emit(self.event("access_request.review", **_fields(after), reviewer=caller.name,
                                  proposed_state=review.proposed_state, reason=review.reason))
        await self._ar_changed(before, after, caller.name, change_of(after))
        return request_to_dict(after)

    @endpoint("update", KIND, name_param="name")
    async def resolve_access_request(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        wanted = body(request, ResolveBody)
        if wanted.state not in State.RESOLVED:
            raise BadRequest(f"state: expected APPROVED or DENIED, got {_q(wanted.state)}")
        svc = self.service
        request_id = request.path_params["name"]
        await self._ar_load(identity, request_id)

        reason = _reason(wanted.reason)

        def decide(current: AccessRequest) -> AccessRequest:
            return resolve(current, wanted.state, reason, wanted.roles)

        try:
            before, after = await svc.access_requests.change(request_id, decide)
        except InvalidAccessRequest as exc:
            await self.audit_denial(request, identity, f"resolve of access request {request_id}: {exc.message}")
            raise BadRequest(exc.message) from None
        await self._ar_changed(before, after, identity.name, change_of(after))
        return request_to_dict(after)

    @endpoint("delete", KIND, name_param="name")
    async def delete_access_request(self, request: Request, identity: Identity | None) -> Any:
        """Delete a request. An approved one still granting access is locked until its expiry, so the
        certificates already issued with its roles stop working at once (node, proxy, auth)."""
        assert identity is not None
        svc = self.service
        request_id = request.path_params["name"]
        await self._ar_load(identity, request_id)
        access = await svc.access_requests.delete(request_id)
        await svc.emit(self.event("access_request.delete", **_fields(access), updated_by=identity.name))
        if access.active():
            lock = new_lock(LockTarget(access_request=access.id), f"access request {access.id} was deleted",
                            expires=access.expires, created_by=identity.name)
            await svc.locks.upsert(lock)
            await svc.emit(self.lock_event("lock.created", lock, identity.name))
        svc.announcer.announce(access, "deleted")
        return {"deleted": request_id}

    @endpoint(None, None)
    async def access_capabilities(self, request: Request, identity: Identity | None) -> Any:
        """What the caller may request (Teleport's access capabilities): the existing roles their
        base roles let them request, the suggested reviewers, and how ``tsh login`` should ask
        (``request_access``: the strictest of the roles' options, ``always`` > ``reason`` > ``optional``)."""
        caller = await self._ar_caller(request, identity, "request access")
        base = await self._ar_base_identity(caller)
        requester = await self._ar_roleset(base)
        names = [role.name for role in await self.service.roles.list()]
        roles = [name for name in names if name not in base.roles and check_requestable(requester, [name]).allowed]
        modes = [role.options.request_access for role in requester.roles]
        mode = next((m for m in ("always", "reason") if m in modes), "optional")
        prompt = next((role.options.request_prompt for role in requester.roles if role.options.request_prompt), "")
        return {"requestable_roles": roles, "suggested_reviewers": list(suggested_reviewers(requester, roles)),
                "request_access": mode, "request_prompt": prompt}

    @endpoint(None, None)
    async def reissue_certs(self, request: Request, identity: Identity | None) -> Any:
        """The caller's certificates again, with the roles of approved requests added (or dropped)."""
        caller = await self._ar_caller(request, identity, "reissue their certificates")
        wanted = body(request, ReissueBody)
        ids = [] if wanted.drop_access_requests else list(dict.fromkeys(wanted.access_requests))
        # a reissue never outlives the certificate it is asked with: no renewal without a login
        return await self._ar_reissue(request, caller, wanted.public_key, ids, duration(wanted.ttl),
                                      not_after=self._ar_session_expires(request))

    async def _ar_reissue(self, request: Request, caller: Identity, public_key: str, ids: list[str],
                          ttl: dt.timedelta | None, *, not_after: dt.datetime | None = None) -> dict[str, Any]:
        """Certificates for ``public_key``: ``caller``'s base roles plus those of the requests ``ids``
        (each checked by :meth:`_ar_usable`), ending at the earliest access expiry (and ``not_after``:
        a web session's login). Also used for a web session's certificates (api/websessions.py)."""
        base = await self._ar_base_identity(caller)
        now = dt.datetime.now(dt.UTC)
        roles = list(base.roles)
        ends: dt.datetime | None = None
        for request_id in ids:
            access = await self._ar_usable(request, caller, request_id, now)
            roles.extend(r for r in access.roles if r not in roles)
            ends = access.expires if ends is None else min(ends, access.expires)
        elevated = Identity(base.name, IdentityKind.USER, roles=roles, traits=base.traits, cluster=base.cluster,
                            active_requests=tuple(ids))
        await self.refuse_locked(request, elevated, issued=now)  # a lock on a request, role or user: no certificate
        if not_after is not None:
            ends = not_after if ends is None else min(ends, not_after)
        cap = None if ends is None else ends - now
        result = await self._certs_for(elevated, public_key, ttl, cap=cap)
        result["active_requests"] = ids
        return result

    async def _ar_usable(self, request: Request, caller: Identity, request_id: str, now: dt.datetime) -> AccessRequest:
        """One request of a reissue: the caller's, approved, unexpired; else 403 (audited)."""
        reason = ""
        access = None
        try:
            check_id(request_id, "access_requests")
            access = await self.service.access_requests.get(request_id)
        except (InvalidAccessRequest, NotFound):
            pass
        if access is None or access.user != caller.name:
            reason = f"no access request {_q(request_id)} of user {_q(caller.name)}"
        elif access.state != State.APPROVED:
            reason = f"access request {request_id} is {access.state}, not APPROVED"
        elif access.expired(now):
            reason = f"access request {request_id} expired at {access.expires.isoformat()}"
        if reason:
            await self.audit_denial(request, caller, f"certificate reissue refused: {reason}")
            raise AccessDenied(reason)
        assert access is not None
        return access


ROUTES: list[Operation] = [
    Operation("/v1/access_requests", "POST", "create_access_request",
              "Request roles for the caller (roles, reason, suggested_reviewers, dry_run)",
              body=CreateRequestBody, response=AccessRequestReply, max_body=SMALL_BODY),
    Operation("/v1/access_requests", "GET", "list_access_requests",
              "Access requests the caller may see (own, reviewable, or all with the access_request rule)",
              query=ListRequestsQuery, response=AccessRequestListReply),
    Operation("/v1/access_requests/{name}", "GET", "get_access_request", "One access request (404 unless visible)",
              response=AccessRequestReply),
    Operation("/v1/access_requests/{name}/reviews", "POST", "review_access_request",
              "Review an access request (proposed_state APPROVED or DENIED, reason)",
              body=ReviewBody, response=AccessRequestReply, max_body=SMALL_BODY),
    Operation("/v1/access_requests/{name}/state", "PUT", "resolve_access_request",
              "Approve or deny an access request as an admin (update on access_request)",
              body=ResolveBody, response=AccessRequestReply, max_body=SMALL_BODY),
    Operation("/v1/access_requests/{name}", "DELETE", "delete_access_request",
              "Delete an access request; an approved one is locked until its expiry",
              response=DeletedRequestReply),
    Operation("/v1/access_capabilities", "GET", "access_capabilities",
              "The roles the caller may request, suggested reviewers, request_access and request_prompt",
              response=CapabilitiesReply),
    Operation("/v1/certs/reissue", "POST", "reissue_certs",
              "The caller's certificates with the roles of approved access requests (or without: drop)",
              body=ReissueBody, response=ReissueReply, max_body=SMALL_BODY),
]
