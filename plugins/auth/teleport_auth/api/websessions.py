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

A proxy may reissue a live session's certificates (``POST /v1/websessions/<id>/reissue``, the
web UI's *Assume roles* and *Switch back*): the same key, the user's base roles plus the roles of
the user's approved, unexpired access requests (checked as ``/v1/certs/reissue`` checks them),
ending at the earliest access expiry and never after the login's certificates would have.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.access_requests import AccessRequestsAPI
from teleport_auth.api.core import SMALL_BODY, Operation, body, endpoint, query
from teleport_auth.issuer import identity_from_tls_cert
from teleport_core.api.schema import Body, Name, OTPCode, Password, Query, Reply, Text, Word
from teleport_core.config.values import format_duration, parse_duration
from teleport_core.errors import AccessDenied, AuthenticationFailed, CompareFailed, NotFound, TeleportError
from teleport_core.metrics import metrics_for
from teleport_core.pki import keys
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.requests import MAX_ACTIVE_REQUESTS
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
    active_requests: list[str] = []  # the access requests whose roles the session holds (reissue below)
    login_expires: str = ""  # when the login's certificates ended: a reissue never goes past it


def _key(sid: str) -> bytes:
    return WEB_SESSIONS_PREFIX + sid.encode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _idle(record: dict[str, Any]) -> dt.timedelta:
    """The session's ``web_idle_timeout`` (zero: none)."""
    return parse_duration(record["idle_timeout"]) if record.get("idle_timeout") else dt.timedelta(seconds=0)


class WebSessionQuery(Query):
    """Whose session the cookie says it is (a session ID works only with its own user's name)."""

    user: Name


class WebSessionReissueBody(Body):
    """A web session's certificates again (proxies, for the session's user): base roles plus those
    of ``access_requests`` (each the user's, approved, unexpired: Teleport's assumed roles);
    ``[]``: the base roles (*Switch back*)."""

    user: Name
    access_requests: list[Word] = Field(default=[], max_length=MAX_ACTIVE_REQUESTS)


class WebSessionsAPI(AccessRequestsAPI):
    """Web session routes (proxies only); the login itself is :meth:`UsersAPI.password_login`'s, a
    reissue with access requests :meth:`AccessRequestsAPI._ar_reissue`'s."""

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
            "active_requests": [],
            "login_expires": expires.isoformat(),
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
        item, record, _ = await self._live(request, request.path_params["sid"], query(request, WebSessionQuery).user)
        # restart the idle timer; a write per page view is not needed: only once a tenth of it has passed
        idle = _idle(record)
        now = _now()
        if idle and now - dt.datetime.fromisoformat(record["last_active"]) >= idle / 10:
            record["last_active"] = now.isoformat()
            with contextlib.suppress(CompareFailed, NotFound):  # a reissue or logout wrote first: theirs stands
                await svc.backend.compare_and_swap(item, Item(item.key, json.dumps(record).encode(),
                                                              expires=item.expires))
        return record

    @endpoint("update", "web_session")
    async def reissue_web_session(self, request: Request, identity: Identity | None) -> Any:
        """The session's certificates reissued for its key (which stays here) with the roles of the
        user's approved access requests, or without (``[]``); the record ends with them, and never
        after the login's certificates would have. Refusals (not the user's, not approved,
        expired, locked) are audited with the user's name."""
        await self._proxy_only(request, identity)
        svc = self.service
        wanted = body(request, WebSessionReissueBody)
        item, record, user = await self._live(request, request.path_params["sid"], wanted.user)
        login_expires = dt.datetime.fromisoformat(record.get("login_expires") or record["expires"])
        public_key = keys.public_key_openssh(keys.load_private_key(record["private_key"]))
        ids = list(dict.fromkeys(wanted.access_requests))
        certs = await self._ar_reissue(request, user, public_key, ids, None, not_after=login_expires)
        expires = dt.datetime.fromisoformat(certs["valid_before"])
        record.update(roles=certs["roles"], logins=certs["logins"], expires=expires.isoformat(),
                      tls_cert=certs["tls_cert"], ssh_cert=certs["ssh_cert"], active_requests=ids,
                      login_expires=login_expires.isoformat(), last_active=_now().isoformat())
        try:
            await svc.backend.compare_and_swap(item, Item(item.key, json.dumps(record).encode(), expires=expires))
        except (CompareFailed, NotFound):
            raise AuthenticationFailed("your web session changed meanwhile (logged out or reissued): "
                                       "reload the page") from None
        return record

    async def _live(self, request: Request, sid: str, claimed: str) -> tuple[Item, dict[str, Any], Identity]:
        """The stored session ``sid`` if it is ``claimed``'s and live (not expired or idle, user
        present, certificate valid, no lock): its item, record and the certificate's identity;
        else it is deleted (unless another user's) and the read refused, audited."""
        svc = self.service
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
        idle = _idle(record)
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
        return item, record, user

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
    Operation("/v1/websessions/{sid}/reissue", "POST", "reissue_web_session",
              "A web session's certificates with the roles of the user's approved access requests, or "
              "without (proxies)", body=WebSessionReissueBody, response=WebSessionReply, max_body=SMALL_BODY),
]
