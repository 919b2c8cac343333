"""What a web UI plugin sees of the proxy: :class:`WebProxy` (the proxy service implements it)
and :class:`WebSession` (a logged-in browser).

The proxy calls the ``teleport_web_routes(proxy)`` hook (:mod:`teleport_core.hookspecs`) with
itself as a :class:`WebProxy` while it builds its HTTPS app; the routes a plugin returns are
served on the proxy's web port beside its JSON API. docs/web.md is the page author's guide.

A web session is Teleport's: a record auth keeps in cluster state (``/web_sessions/<id>``,
readable by proxies only, so every proxy of the cluster serves it), with a random ID, the
user's short-lived certificates and their private key (which never leave the proxies for the
browser), ending with the certificates, after ``auth_service.web_idle_timeout`` without a
request, at logout, or as soon as the user is locked or deleted.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Protocol

import attrs

from teleport_core.errors import TeleportError

if TYPE_CHECKING:
    from teleport_core.api.client import AuthClient
    from teleport_core.policy.requests import AccessRequest
    from teleport_core.state.audit import AuditEvent
    from teleport_core.state.nodes import NodeInfo

#: the browser's cookie: ``__Host-`` (Secure, Path=/, no Domain), HttpOnly, SameSite=Strict
SESSION_COOKIE = "__Host-session"
#: a page answering with this header (a random nonce, 16 to 64 URL-safe characters) gets
#: ``style-src 'self' 'nonce-<value>'`` in its Content-Security-Policy; the proxy removes the
#: header. For libraries that create ``<style>`` elements (xterm.js): a script stamps the nonce
#: on them (``static/style-nonce.js``), markup still cannot style itself.
STYLE_NONCE_HEADER = "X-Teleport-Style-Nonce"
#: a page answering with this header (any value) gets ``script-src 'self' 'wasm-unsafe-eval'`` in
#: its Content-Security-Policy (WebAssembly only: JavaScript ``eval`` stays forbidden); the proxy
#: removes the header. For the recording player, whose terminal emulator is WebAssembly.
WASM_HEADER = "X-Teleport-Wasm"


class TooManyAttempts(TeleportError):
    """Too many login attempts from one address (``connection_limits.rates``); retry later."""

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, as the Retry-After header says it


class TerminalChannel(Protocol):
    """An interactive SSH session the proxy opened to a node for a web user
    (:meth:`WebProxy.open_ssh_session`): a shell on a PTY, recorded and audited by the node."""

    node: NodeInfo  # the node it reached

    async def recv(self) -> bytes:
        """The next output of the session (stdout and stderr, as a PTY merges them); ``b""`` once it ended."""

    async def send(self, data: bytes) -> None:
        """Input for the session (keystrokes, paste)."""

    async def resize(self, cols: int, rows: int) -> None:
        """The terminal's new size (an SSH ``window-change``)."""

    async def close(self) -> None:
        """End the session (the node ends and records it); safe to call twice."""

    def end_reason(self) -> str:
        """Why it ended, for the user (``exit status 0``, the connection lost ...); "" while it runs."""


@attrs.frozen(repr=False)
class WebSession:
    """A logged-in browser: who, until when, and its CSRF token.

    ``tls_cert`` (PEM), ``ssh_cert`` and ``private_key`` (PEM) are the user's certificates and
    their key, for the proxy to act as the user; a page never sends them to the browser.
    """

    id: str
    user: str
    roles: tuple[str, ...]
    logins: tuple[str, ...]
    expires: dt.datetime  # when the certificates expire (the session with them)
    idle_timeout: dt.timedelta  # auth_service.web_idle_timeout
    csrf_token: str  # compared in constant time with each state-changing request's
    tls_cert: str
    ssh_cert: str
    private_key: str
    active_requests: tuple[str, ...] = ()  # the access requests whose roles it holds (assumed roles)

    def __repr__(self) -> str:  # the ID and the key are secrets
        return f"WebSession(user={self.user!r}, expires={self.expires.isoformat()})"


class WebProxy(Protocol):
    """The proxy, as a web UI plugin uses it (``teleport_web_routes(proxy)``).

    Every method that acts for a user takes the :class:`WebSession` and acts with the user's
    rights, never the proxy's. Errors are :mod:`teleport_core.errors` types
    (``AuthenticationFailed``, ``AccessDenied``, ``NotFound`` ...) with messages fit to show.
    """

    cluster_name: str
    second_factor: str  # "off" or "otp": what the login form asks for

    def public_web_addr(self) -> str:
        """``host:port`` browsers reach this proxy at (``proxy_service.public_addr``, else the listener)."""

    async def login(self, user: str, password: str, otp: str, client_ip: str) -> WebSession:
        """A password (+ OTP) login, as ``tsh login`` (same checks, lockout, messages, T1000I/W
        events, rate limit: :class:`TooManyAttempts`): a new web session, stored at auth."""

    async def web_session(self, session_id: str, user: str) -> WebSession:
        """The live session ``session_id`` of ``user`` (the cookie names both), its idle timer
        restarted. ``AuthenticationFailed`` when unknown, of another user, expired or idle;
        ``AccessDenied`` (the lock's message) when the user is locked. Refusals are audited."""

    async def logout(self, session: WebSession) -> None:
        """End ``session``: auth deletes its record (every proxy stops serving it)."""

    async def reissue(self, session: WebSession, access_requests: list[str]) -> WebSession:
        """``session`` with its certificates reissued at auth (its key stays there): the user's base
        roles plus the roles of ``access_requests`` (each the user's, approved, unexpired: assumed
        roles), or the base roles only (``[]``: switch back). It then ends at the earliest access
        expiry. Refusals (``AccessDenied`` with auth's reason) are audited at auth."""

    async def user_token(self, token: str) -> dict[str, object]:
        """An invite or reset token (before any login): ``user``, ``kind`` (``invite`` or
        ``reset``), ``expires`` and, when the user enrolls an authenticator app, ``otp_uri``.
        ``AccessDenied`` when the token is unknown, spent or expired."""

    async def complete_user_token(self, token: str, password: str, otp: str) -> str:
        """Set the password (and enroll the OTP app) of an invite or reset: auth checks the
        policy and the code and audits a refusal (``user.password_change`` T1005W). The user's name."""

    def user_auth(self, session: WebSession) -> AuthClient:
        """An auth API client acting for the session's user: auth verifies the forwarded user
        certificate and authorizes every call with the user's roles (403 and audited as for tctl)."""

    async def nodes(self, session: WebSession) -> list[NodeInfo]:
        """The nodes the user's roles let them see (as ``tsh ls``; the proxy's cached inventory)."""

    def logins_for(self, session: WebSession, node: NodeInfo) -> list[str]:
        """The logins the user's roles allow on ``node`` (empty when none; locks are checked at connect)."""

    def may(self, session: WebSession, verb: str, kind: str) -> bool:
        """Whether the user's roles allow ``verb`` on ``kind`` (to show or hide a link; auth decides the call)."""

    def may_review(self, session: WebSession, request: AccessRequest) -> bool:
        """Whether the user's roles let them review ``request`` (to show or hide the review form;
        auth decides the review): :func:`teleport_core.policy.requests.review_decision`."""

    async def open_ssh_session(self, session: WebSession, node: str, login: str, cols: int, rows: int,
                               remote: str) -> TerminalChannel:
        """A shell as ``login`` on ``node`` (its UUID or name) for the session's user, as ``tsh ssh``
        does it: the node looked up among those the user may see, the login checked against the
        user's roles, locks and ``teleport_authorize`` hooks, reached directly or through its reverse
        tunnel, and the SSH connection made with the user's certificate (the node checks it again,
        records and audits the session). Refusals (``NodeNotFound``, ``AccessDenied`` ...) carry
        ``tsh ssh``'s messages and are audited with ``remote`` (the browser's ``ip:port``)."""

    async def join_ssh_session(self, session: WebSession, sid: str, mode: str, cols: int, rows: int,
                               remote: str) -> TerminalChannel:
        """Join the live session ``sid`` in ``mode`` (observer, peer, moderator) for the session's user,
        as ``tsh join`` does: the session looked up among the live sessions the user may see, its
        node reached as for :meth:`open_ssh_session`, the join principal and the user's certificate
        (the node decides with the roles' ``join_sessions`` and audits). Refusals are raised and audited."""

    async def emit(self, event: AuditEvent) -> None:
        """Record an audit event (the proxy's durable spool, delivered to auth)."""

    async def audit_denial(self, user: str, reason: str, remote: str, **fields: object) -> None:
        """Record a refusal (an ``auth`` failure event, T3007W)."""
