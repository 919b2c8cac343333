"""The auth API, users: CRUD, invites and resets (user tokens), password login, user certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from starlette.requests import Request

from teleport_auth.api.core import (
    DELETED_USER_LOCK_TTL,
    SMALL_BODY,
    APIBase,
    BadRequest,
    Operation,
    body,
    duration,
    endpoint,
)
from teleport_auth.authority import export_known_hosts
from teleport_auth.issuer import (
    issue_ssh_user_cert,
    issue_tls_user_cert,
)
from teleport_auth.tokens import MAX_USER_TOKEN_TTL
from teleport_auth.users import new_totp_secret, otp_uri
from teleport_core.api.schema import (
    Body,
    Duration,
    Name,
    NameList,
    OTPCode,
    Password,
    PublicKey,
    Reply,
    Text,
    TokenText,
    Traits,
)
from teleport_core.config.values import format_duration
from teleport_core.errors import (
    AuthenticationFailed,
    TeleportError,
)
from teleport_core.metrics import metrics_for
from teleport_core.pki import keys
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind, LoginRequest
from teleport_core.policy.locks import LockTarget, new_lock


class CreateUserBody(Body):
    """A new user (its roles must exist) and the TTL of its signup invite (default 1h, at most 48h)."""

    name: Name
    roles: NameList
    traits: Traits = {}
    ttl: Duration = ""


class UpdateUserBody(Body):
    """New roles and/or traits of a user (absent: unchanged)."""

    roles: NameList | None = None
    traits: Traits | None = None


class ResetBody(Body):
    ttl: Duration = ""


class TokenBody(Body):
    token: TokenText


class CompleteTokenBody(Body):
    """Completing a signup or reset: the invite token, the new password, the OTP code when enrolling."""

    token: TokenText
    password: Password
    second_factor_token: OTPCode = ""


class LoginBody(Body):
    """A password (+ OTP) login; the user's public key is signed. Sent by proxies."""

    user: Name
    password: Password
    otp: OTPCode = ""
    public_key: PublicKey
    ttl: Duration = ""
    client_ip: Text = ""


class SignBody(Body):
    """``tctl auth sign``: certificates for ``user``'s public key."""

    user: Name
    public_key: PublicKey
    ttl: Duration = ""


class UserReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class InviteReply(Reply):
    token: str
    expires: str
    ttl: str
    url: str


class CreatedUserReply(Reply):
    user: UserReply
    invite: InviteReply


class DeletedUserReply(Reply):
    deleted: str
    lock: str


class TokenInfoReply(Reply):
    user: str
    kind: str
    expires: str
    otp_uri: str | None = None


class UserNameReply(Reply):
    user: str


class CertsReply(Reply):
    username: str
    roles: list[str]
    logins: list[str]
    ssh_cert: str
    tls_cert: str
    host_ca_pems: list[str]
    known_hosts: list[str]
    valid_before: str
    cluster_name: str


class UsersAPI(APIBase):
    """User routes."""

    # -- users ------------------------------------------------------------------------------------------------

    @endpoint("list", "user")
    async def list_users(self, request: Request, identity: Identity | None) -> Any:
        return [u.to_dict() for u in await self.service.users.list()]

    @endpoint("read", "user", name_param="name")
    async def get_user(self, request: Request, identity: Identity | None) -> Any:
        return (await self.service.users.get(request.path_params["name"])).to_dict()

    async def check_roles_exist(self, roles: list[str]) -> None:
        known = {r.name for r in await self.service.roles.list()}
        missing = [r for r in roles if r not in known]
        if missing:
            raise BadRequest(f"roles: no such role {', '.join(json.dumps(m) for m in missing)}")

    async def _invite(self, user: str, ttl: dt.timedelta | None, kind: str) -> dict[str, Any]:
        await self.refresh_proxy_addr()
        svc = self.service
        await svc.user_tokens.delete_for_user(user)
        secret = new_totp_secret() if svc.settings.second_factor == "otp" else None
        token = await svc.user_tokens.create(user, ttl, kind, otp_secret=secret)
        path = "invite" if kind == "invite" else "reset"
        return {
            "token": token.token.reveal(),
            "expires": token.expires.isoformat(),
            "ttl": format_duration(token.expires - token.created),
            "url": f"https://{self.proxy_addr()}/web/{path}/{token.token.reveal()}",
        }

    @endpoint("create", "user")
    async def create_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        wanted = body(request, CreateUserBody)
        name, roles, traits = wanted.name, wanted.roles, wanted.traits
        ttl = duration(wanted.ttl)
        if ttl is not None and not dt.timedelta(0) < ttl <= MAX_USER_TOKEN_TTL:
            # checked before the user exists: a refused invite must not leave a user behind
            raise BadRequest(f"ttl: an invite lasts more than 0s and at most {format_duration(MAX_USER_TOKEN_TTL)}")
        await self.check_roles_exist(roles)
        try:
            user = await svc.users.create(name, roles, traits, created_by=identity.name if identity else "")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        invite = await self._invite(name, ttl, "invite")
        await svc.emit(self.event("user.create", name=name, roles=roles, user=identity.name if identity else ""))
        return {"user": user.to_dict(), "invite": invite}

    @endpoint("update", "user", name_param="name")
    async def update_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        wanted = body(request, UpdateUserBody)
        roles = wanted.roles
        if roles is not None:
            await self.check_roles_exist(roles)
        traits = wanted.traits
        name = request.path_params["name"]
        try:
            user = await svc.users.update(name, roles=roles, traits=traits)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        svc.authorizer.invalidate()
        await svc.emit(self.event("user.update", name=name, user=identity.name if identity else ""))
        return user.to_dict()

    @endpoint("delete", "user", name_param="name")
    async def delete_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        name = request.path_params["name"]
        await svc.users.delete(name)
        await svc.user_tokens.delete_for_user(name)
        actor = identity.name if identity else ""
        await svc.emit(self.event("user.delete", name=name, user=actor))
        # the certificates the user holds stay valid up to 30 h: a lock on them (only those issued
        # until now, so a user re-created under this name later is not locked out) ends them now
        now = dt.datetime.now(dt.UTC)
        lock = new_lock(LockTarget(user=name, issued_before=now), f"user {json.dumps(name)} was deleted",
                        expires=now + DELETED_USER_LOCK_TTL, created_by=actor, now=now)
        await svc.locks.upsert(lock)
        await svc.emit(self.lock_event("lock.created", lock, actor))
        return {"deleted": name, "lock": lock.name}

    @endpoint("update", "user", name_param="name")
    async def reset_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        name = request.path_params["name"]
        await svc.users.get(name)
        return await self._invite(name, duration(body(request, ResetBody).ttl), "reset")

    @endpoint("read", "user_token")
    async def lookup_user_token(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        token = await svc.user_tokens.get(Secret(body(request, TokenBody).token))
        out: dict[str, Any] = {"user": token.user, "kind": token.kind, "expires": token.expires.isoformat()}
        if token.otp_secret is not None:
            out["otp_uri"] = otp_uri(svc.cluster_name, token.user, token.otp_secret)
        return out

    @endpoint("update", "user_token")
    async def complete_user_token(self, request: Request, identity: Identity | None) -> Any:
        wanted = body(request, CompleteTokenBody)
        token = Secret(wanted.token)
        password = Secret(wanted.password)
        code = wanted.second_factor_token
        return await self._complete_user_token(token, password, code)

    async def _invalid_complete_user_token(self, request: Request, fields: dict[str, str], reason: str) -> None:
        """An invite or reset completion the model refused (e.g. a password over 128 characters)
        is a failed completion too (``user.password_change`` T1005W), never with the password."""
        await self.service.emit(self.event("user.password_change", "failure", user="", token_kind="",
                                           success=False, error=reason))

    async def _complete_user_token(self, token: Secret, password: Secret, code: str) -> dict[str, Any]:
        """Set the password (and enroll the OTP app) of an invite or reset. Every check comes
        before the token is spent; a refusal (unknown, expired or used token, a password the
        policy refuses, a missing or wrong code) is audited: ``user.password_change`` T1005W."""
        from teleport_auth.users import check_password_policy

        svc = self.service
        info = None
        try:
            info = await svc.user_tokens.get(token)
            if info.otp_secret is not None and not code:
                raise BadRequest("second_factor_token: required (the code from the authenticator app)")
            try:
                check_password_policy(password)
            except TeleportError as exc:
                raise BadRequest(f"password: {exc}") from None
            if info.otp_secret is not None and not svc.users.totp_code_valid(info.otp_secret, Secret(code)):
                raise AuthenticationFailed("invalid OTP code: check the authenticator app's clock")
            info = await svc.user_tokens.consume(token)  # once only, even when two requests race
        except TeleportError as exc:
            await svc.emit(self.event("user.password_change", "failure", user=info.user if info else "",
                                      token_kind=info.kind if info else "", success=False, error=str(exc)))
            raise
        await svc.users.set_password(info.user, password)
        if info.otp_secret is not None:
            await svc.users.set_totp(info.user, info.otp_secret, Secret(code))
        await svc.emit(self.event("user.update", name=info.user, user=info.user, reason=f"{info.kind} completed"))
        return {"user": info.user}

    # -- login and certificates ----------------------------------------------------------------------------------

    def _answer_parts(self) -> tuple[tuple[str, ...], tuple[str, ...], Any, Any]:
        """What every certificate answer shares: the host CA's PEMs and ``known_hosts`` lines, and the
        issued-certificate counters; kept while the host CA object and the metrics registry are the
        same (a rotation or a reload installs a new CA object, so the next answer has the new CAs)."""
        svc = self.service
        kept = getattr(self, "_kept_answer_parts", None)
        if kept is None or kept[0] is not svc.host_ca or kept[1] is not svc.ctx.metrics:
            issued = metrics_for(svc.ctx.metrics).certificates_issued
            kept = (svc.host_ca, svc.ctx.metrics, (tuple(svc.host_ca_pems()),
                    tuple(export_known_hosts(svc.host_ca).splitlines()),
                    issued.labels(kind="user", format="ssh"), issued.labels(kind="user", format="tls")))
            self._kept_answer_parts = kept
        return kept[2]

    async def _certs_for(self, identity: Identity, public_key: str, ttl: dt.timedelta | None,
                         client_ip: str = "", *, cap: dt.timedelta | None = None) -> dict[str, Any]:
        """Certificates for ``identity`` (its roles, traits and active access requests); ``cap``: the
        longest they may live (an access request's expiry), below the roles' ``max_session_ttl``."""
        svc = self.service
        roleset = await svc.authorizer.roleset_for(identity)
        user = Identity(identity.name, IdentityKind.USER, roleset.names, identity.traits, tuple(roleset.all_logins),
                        svc.cluster_name, active_requests=identity.active_requests)
        max_ttl = roleset.max_session_ttl if cap is None else min(roleset.max_session_ttl, cap)
        hook = svc.ctx.plugins.hook
        try:
            subject = keys.load_public_key(public_key)  # parsed once for both certificates
            ssh = issue_ssh_user_cert(
                svc.user_ca, hook, public_key=subject, identity=user, ttl=ttl,
                max_session_ttl=max_ttl, permit_agent_forwarding=roleset.forward_agent,
                permit_port_forwarding=roleset.port_forwarding, client_ip=client_ip or None,
            )
            tls = issue_tls_user_cert(svc.user_ca, hook, public_key=subject, identity=user, ttl=ttl,
                                      max_session_ttl=max_ttl)
        except keys.UnsupportedKey as exc:
            raise BadRequest(f"public_key: {exc}") from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        valid_before = ssh.request.valid_before
        host_ca_pems, known_hosts, issued_ssh, issued_tls = self._answer_parts()
        issued_ssh.inc()
        issued_tls.inc()
        await svc.emit(self.event("cert.create", user=user.name, cert_type="user",
                                  identity={"user": user.name, "roles": list(user.roles), "logins": list(user.logins),
                                            "expires": valid_before.isoformat(),
                                            **({"access_requests": list(user.active_requests)}
                                               if user.active_requests else {})}))
        return {
            "username": user.name,
            "roles": list(user.roles),
            "logins": list(user.logins),
            "ssh_cert": ssh.data.decode().strip(),
            "tls_cert": tls.data.decode(),
            "host_ca_pems": list(host_ca_pems),
            "known_hosts": list(known_hosts),
            "valid_before": valid_before.isoformat(),
            "cluster_name": svc.cluster_name,
        }

    @endpoint("create", "login")
    async def login(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        wanted = body(request, LoginBody)
        user = await self.password_login(request, wanted.user, wanted.password, wanted.otp, wanted.client_ip)
        result = await self._certs_for(user, wanted.public_key, duration(wanted.ttl), wanted.client_ip)
        await svc.emit(self.event("user.login", user=wanted.user, method="local", success=True,
                                  **{"addr.remote": wanted.client_ip}))
        metrics_for(svc.ctx.metrics).user_login.inc()
        return result

    async def password_login(self, request: Request, username: str, password_text: str, otp_text: str,
                             client_ip: str, client: str = "") -> Identity:
        """Check a password (+ OTP) login (plugins first, then local users; lockout), refusing a
        locked user; a failure is audited (``user.login`` T1000W, with ``client``: ``web`` for the
        web UI). The caller audits the success."""
        svc = self.service
        password = Secret(password_text)
        otp = Secret(otp_text) if otp_text else None
        remote: dict[str, str] = {"addr.remote": client_ip, **({"client": client} if client else {})}
        try:
            found = await asyncio.to_thread(
                svc.ctx.plugins.hook.teleport_authenticate,
                request=LoginRequest(username, password, otp, client_ip),
            )
            user = found if found is not None else await svc.users.authenticate(
                username, password, otp, svc.settings.second_factor)
        except AuthenticationFailed as exc:
            metrics_for(svc.ctx.metrics).failed_login.inc()
            await svc.emit(self.event("user.login", "failure", user=username, method="local", success=False,
                                      error=str(exc), **remote))
            raise
        await self.refuse_locked(request, user, issued=dt.datetime.now(dt.UTC))  # no certificates while locked
        return user

    @endpoint("create", "user_cert")
    async def sign_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        wanted = body(request, SignBody)
        user = await svc.users.get(wanted.user)
        target = user.identity(svc.cluster_name)
        await self.refuse_locked(request, target, issued=dt.datetime.now(dt.UTC))  # no certificates while locked
        return await self._certs_for(target, wanted.public_key, duration(wanted.ttl))


#: the routes :class:`~teleport_auth.api.hot.HotRoutesApp` dispatches before Starlette's routing (a
#: certificate pair per call: ``tctl auth sign``, and what the bench of issue 17 measures)
HOT_HANDLERS = frozenset({"sign_user"})

ROUTES: list[Operation] = [
    Operation("/v1/users", "GET", "list_users", "List users", response=list[UserReply]),
    Operation("/v1/users", "POST", "create_user", "Create a user and its signup invite", body=CreateUserBody,
              response=CreatedUserReply),
    Operation("/v1/users/{name}", "GET", "get_user", "Read a user", response=UserReply),
    Operation("/v1/users/{name}", "PUT", "update_user", "Change a user's roles or traits", body=UpdateUserBody,
              response=UserReply),
    Operation("/v1/users/{name}", "DELETE", "delete_user", "Delete a user", response=DeletedUserReply),
    Operation("/v1/users/{name}/reset", "POST", "reset_user", "A password reset link for a user", body=ResetBody,
              response=InviteReply),
    Operation("/v1/usertokens/lookup", "POST", "lookup_user_token", "The user and OTP enrollment URI of an invite",
              body=TokenBody, response=TokenInfoReply, max_body=SMALL_BODY),
    Operation("/v1/usertokens", "PUT", "complete_user_token", "Complete a signup or reset: password and OTP code",
              body=CompleteTokenBody, response=UserNameReply, max_body=SMALL_BODY),
    Operation("/v1/login", "POST", "login", "Check a password login and sign the user's key (proxies)",
              body=LoginBody, response=CertsReply, max_body=SMALL_BODY),
    Operation("/v1/certs/user", "POST", "sign_user", "Certificates for a user without a login (tctl auth sign)",
              body=SignBody, response=CertsReply, max_body=SMALL_BODY),
]
