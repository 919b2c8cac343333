"""The auth API, web sessions (the browser logins of the web UI, Teleport's ``WebSession``).

A proxy creates one from a password (+ OTP) login (the same checks, lockout and ``user.login``
events as ``tsh login``, with ``client: web``): auth makes a key pair, signs the user's SSH and
TLS certificates for it, and stores the session at ``/web_sessions/<id>`` in cluster state (so
every proxy serves it): a random ID (256 bits), the certificates and key, its CSRF token, when it
was last used. Only proxies (and auth) may create, read or delete one; users never, whatever
their roles.

Reading one (a proxy, on each page) checks that it is the named user's, not expired (the
certificates' end), not idle longer than ``auth_service.web_idle_timeout``, that the user still
exists and no lock matches them; otherwise the session is deleted and the read refused (audited,
T3007W). A good read restarts the idle timer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
from typing import Any

from starlette.requests import Request

from teleport_auth.api.core import SMALL_BODY, Operation, body, endpoint, query
from teleport_auth.api.users import UsersAPI
from teleport_auth.issuer import identity_from_tls_cert
from teleport_core.api.schema import Body, Name, OTPCode, Password, Query, Reply, Text
from teleport_core.config.values import format_duration
from teleport_core.errors import AccessDenied, AuthenticationFailed, NotFound, TeleportError
from teleport_core.metrics import metrics_for
from teleport_core.pki import keys
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.state.backend import Item

WEB_SESSIONS_PREFIX = b"/web_sessions/"
ENDED = "your web session has ended: log in again"


class WebSessionBody(Body):
    """A web login, sent by a proxy: the form's user, password and OTP code, the browser's address."""

    user: Name
    password: Password
    otp: OTPCode = ""
    client_ip: Text = ""


class WebSessionReply(Reply):
    id: str
    user: str
    roles: list[str]
    logins: list[str]
    expires: str
    idle_timeout: str
    csrf_token: str
    tls_cert: str
    ssh_cert: str
    private_key: str
    created: str
    last_active: str


def _key(sid: str) -> bytes:
    return WEB_SESSIONS_PREFIX + sid.encode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WebSessionQuery(Query):
    """Whose session the cookie says it is (a session ID works only with its own user's name)."""

    user: Name


class WebSessionsAPI(UsersAPI):
    """Web session routes (proxies only); the login itself is :meth:`UsersAPI.password_login`'s."""

    async def _proxy_only(self, request: Request, identity: Identity | None) -> None:
        """Web sessions are the proxies' business: a user is refused whatever their roles allow."""
        if identity is None or identity.kind is not IdentityKind.HOST or not (
                {"Proxy", "Auth"} & set(identity.roles)):
            reason = "access denied: only proxies handle web sessions"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)

    @endpoint("create", "web_session")
    async def create_web_session(self, request: Request, identity: Identity | None) -> Any:
        await self._proxy_only(request, identity)
        svc = self.service
        wanted = body(request, WebSessionBody)
        user = await self.password_login(request, wanted.user, wanted.password, wanted.otp, wanted.client_ip,
                                         client="web")
        key = keys.generate_private_key("ed25519")
        certs = await self._certs_for(user, keys.public_key_openssh(key), None, wanted.client_ip)
        now = _now()
        expires = dt.datetime.fromisoformat(certs["valid_before"])
        record = {
            "id": secrets.token_urlsafe(32),
            "user": certs["username"],
            "roles": certs["roles"],
            "logins": certs["logins"],
            "expires": expires.isoformat(),
            "idle_timeout": format_duration(svc.settings.web_idle_timeout),
            "csrf_token": secrets.token_urlsafe(32),
            "tls_cert": certs["tls_cert"],
            "ssh_cert": certs["ssh_cert"],
            "private_key": keys.private_key_pem(key).decode(),
            "created": now.isoformat(),
            "last_active": now.isoformat(),
        }
        await svc.backend.create(Item(_key(record["id"]), json.dumps(record).encode(), expires=expires))
        await svc.emit(self.event("user.login", user=wanted.user, method="local", success=True, client="web",
                                  **{"addr.remote": wanted.client_ip}))
        metrics_for(svc.ctx.metrics).user_login.inc()
        return record

    @endpoint("read", "web_session")
    async def get_web_session(self, request: Request, identity: Identity | None) -> Any:
        """The live session ``sid`` of ``?user=``; refused (audited) and deleted when it has ended."""
        await self._proxy_only(request, identity)
        svc = self.service
        sid = request.path_params["sid"]
        claimed = query(request, WebSessionQuery).user
        try:
            item = await svc.backend.get(_key(sid))
            record = json.loads(item.value)
        except NotFound:
            await self.audit_denial(request, None, f"web session of {json.dumps(claimed)}: no such session")
            raise AuthenticationFailed(ENDED) from None
        if record.get("user") != claimed:  # another user's session ID under this name: refused, kept
            await self.audit_denial(request, None, f"web session of {json.dumps(record.get('user'))} presented "
                                                   f"as {json.dumps(claimed)}'s")
            raise AuthenticationFailed(ENDED)
        now = _now()
        reason = ""
        idle = dt.timedelta(seconds=0)
        if record.get("idle_timeout"):
            from teleport_core.config.values import parse_duration

            idle = parse_duration(record["idle_timeout"])
        if dt.datetime.fromisoformat(record["expires"]) <= now:
            reason = "your web session has expired: log in again"
        elif idle and now - dt.datetime.fromisoformat(record["last_active"]) > idle:
            reason = (f"your web session ended after {format_duration(idle)} without activity "
                      "(web_idle_timeout): log in again")
        else:
            try:
                await svc.users.get(claimed)
            except NotFound:
                reason = f"user {json.dumps(claimed)} no longer exists"
        user: Identity | None = None
        if not reason:
            try:
                user = identity_from_tls_cert(record["tls_cert"], [svc.user_ca])
            except TeleportError as exc:
                reason = f"your web session's certificate is no longer valid ({exc}): log in again"
        if reason or user is None:
            await self._end(sid)
            await self.audit_denial(request, None, f"web session of {json.dumps(claimed)}: {reason}")
            raise AuthenticationFailed(reason)
        try:
            await self.refuse_locked(request, user)  # audited with the lock's message
        except AccessDenied:
            await self._end(sid)
            raise
        # restart the idle timer; a write per page view is not needed: only once a tenth of it has passed
        if idle and now - dt.datetime.fromisoformat(record["last_active"]) >= idle / 10:
            record["last_active"] = now.isoformat()
            await svc.backend.put(Item(item.key, json.dumps(record).encode(), expires=item.expires))
        return record

    @endpoint("delete", "web_session")
    async def delete_web_session(self, request: Request, identity: Identity | None) -> Any:
        """Logout: the session's record goes (every proxy stops serving it)."""
        await self._proxy_only(request, identity)
        await self._end(request.path_params["sid"])
        return {"deleted": True}

    async def _end(self, sid: str) -> None:
        with contextlib.suppress(NotFound):
            await self.service.backend.delete(_key(sid))


class DeletedReply(Reply):
    deleted: bool


ROUTES: list[Operation] = [
    Operation("/v1/websessions", "POST", "create_web_session",
              "A web login (proxies): password and OTP checked as tsh login's; a new web session",
              body=WebSessionBody, response=WebSessionReply, max_body=SMALL_BODY),
    Operation("/v1/websessions/{sid}", "GET", "get_web_session",
              "A live web session of ?user= (proxies); restarts its idle timer", query=WebSessionQuery,
              response=WebSessionReply),
    Operation("/v1/websessions/{sid}", "DELETE", "delete_web_session", "End a web session (proxies)",
              response=DeletedReply),
]
