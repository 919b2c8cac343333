"""The proxy as a web UI plugin sees it: :class:`ProxyWebUI` implements
:class:`teleport_core.webui.WebProxy` over the proxy's shared state, and is what
:func:`teleport_proxy.web.build_app` hands to the ``teleport_web_routes`` hook.

Web sessions live at auth (``/v1/websessions``): the proxy creates one from the login form,
looks it up on each page (auth checks expiry, idle time, locks and deletion) and deletes it at
logout. Calls for a user go through :meth:`AuthClient.for_user` with the session's certificate,
so auth authorizes the user and never the proxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from teleport_core.api.client import AuthClient
from teleport_core.config.values import parse_duration
from teleport_core.errors import AccessDenied
from teleport_core.net.limits import retry_after
from teleport_core.policy.requests import AccessRequest, review_decision
from teleport_core.state.audit import AuditEvent
from teleport_core.state.nodes import NodeInfo
from teleport_core.webui import TerminalChannel, TooManyAttempts, WebSession
from teleport_proxy.certs import UserCert, user_from_tls_cert

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

CERT_CACHE = 1024
FRESH = 2.0  # seconds a node list is served as it is (the proxy's own node cache)
STALE = 30.0  # seconds an older one is still served while a newer one is fetched
WAIT = 0.15  # seconds a page waits for the newer one before it is served the older one


def session_from(record: dict[str, Any]) -> WebSession:
    """A :class:`WebSession` from auth's record."""
    idle = str(record.get("idle_timeout", "") or "0s")
    return WebSession(
        id=str(record["id"]), user=str(record["user"]), roles=tuple(record.get("roles", ())),
        logins=tuple(record.get("logins", ())), expires=dt.datetime.fromisoformat(record["expires"]),
        idle_timeout=parse_duration(idle), csrf_token=str(record["csrf_token"]), tls_cert=str(record["tls_cert"]),
        ssh_cert=str(record["ssh_cert"]), private_key=str(record["private_key"]),
        active_requests=tuple(record.get("active_requests") or ()))


class ProxyWebUI:
    """:class:`teleport_core.webui.WebProxy` for one proxy service."""

    def __init__(self, proxy: ProxyState) -> None:
        self._proxy = proxy
        self._certs: dict[str, tuple[bytes, UserCert]] = {}  # PEM -> (DER, what it says)
        self._lists: dict[tuple[Any, ...], tuple[float, list[NodeInfo]]] = {}  # (roles, traits) -> (when, nodes)
        self._refreshing: dict[tuple[Any, ...], asyncio.Task[list[NodeInfo]]] = {}

    @property
    def cluster_name(self) -> str:
        return self._proxy.cluster_name

    @property
    def second_factor(self) -> str:
        return self._proxy.second_factor

    def public_web_addr(self) -> str:
        return self._proxy.public_web_addr()

    async def login(self, user: str, password: str, otp: str, client_ip: str) -> WebSession:
        proxy = self._proxy
        wait, first = proxy.login_rate.take(client_ip)
        if wait:
            after = retry_after(wait)
            reason = f"web login: too many attempts from {client_ip}, retry in {after}s"
            if first:
                await proxy.audit_denial(user, reason, client_ip, kind="web_login", client="web")
            raise TooManyAttempts(reason, after)
        record = await proxy.auth.create_web_session(user, password, otp, client_ip)
        proxy.login_rate.refund(client_ip)  # only failed attempts count
        return session_from(record)

    async def web_session(self, session_id: str, user: str) -> WebSession:
        return session_from(await self._proxy.auth.get_web_session(session_id, user))

    async def logout(self, session: WebSession) -> None:
        await self._proxy.auth.delete_web_session(session.id)

    async def reissue(self, session: WebSession, access_requests: list[str]) -> WebSession:
        return session_from(await self._proxy.auth.reissue_web_session(session.id, session.user, access_requests))

    async def user_token(self, token: str) -> dict[str, object]:
        return await self._proxy.auth.get_user_token(token)

    async def complete_user_token(self, token: str, password: str, otp: str) -> str:
        return str((await self._proxy.auth.complete_user_token(token, password, otp))["user"])

    def _cert(self, session: WebSession) -> tuple[bytes, UserCert]:
        found = self._certs.get(session.tls_cert)
        if found is None:
            der = x509.load_pem_x509_certificate(session.tls_cert.encode()).public_bytes(Encoding.DER)
            found = (der, user_from_tls_cert(der))
            if len(self._certs) >= CERT_CACHE:
                self._certs.clear()
            self._certs[session.tls_cert] = found
        return found

    def user_auth(self, session: WebSession) -> AuthClient:
        return self._proxy.auth.for_user(self._cert(session)[0])

    async def nodes(self, session: WebSession) -> list[NodeInfo]:
        """The user's visible nodes. A list younger than :data:`FRESH` seconds is served as it is;
        an older one is refreshed, and served meanwhile (up to :data:`STALE` seconds old) when the
        refresh takes longer than :data:`WAIT`: a page of a 10,000-node cluster does not wait for
        auth's listing, except the first. Connecting checks the node again (:meth:`ProxyState.route`)."""
        user = self._cert(session)[1]
        locked = self._proxy.lock_reason(user)
        if locked:
            raise AccessDenied(locked)
        key = (user.roles, tuple(sorted(user.traits.items())))
        cached = self._lists.get(key)
        age = time.monotonic() - cached[0] if cached is not None else STALE
        if cached is not None and age < FRESH:
            return cached[1]
        task = self._refreshing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(key, user))
            self._refreshing[key] = task
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        if cached is None or age >= STALE:
            return await asyncio.shield(task)
        try:  # a quick listing is waited for; a slow one (a big cluster) is not
            return await asyncio.wait_for(asyncio.shield(task), WAIT)
        except TimeoutError:
            return cached[1]

    async def _refresh(self, key: tuple[Any, ...], user: UserCert) -> list[NodeInfo]:
        found = await self._proxy.visible_nodes(user)
        if len(self._lists) >= CERT_CACHE:
            self._lists.clear()
        self._lists[key] = (time.monotonic(), found)
        return found

    def logins_for(self, session: WebSession, node: NodeInfo) -> list[str]:
        return self._proxy.roleset(self._cert(session)[1]).logins_for(node.labels)

    def may(self, session: WebSession, verb: str, kind: str) -> bool:
        try:
            roleset = self._proxy.roleset(self._cert(session)[1])
        except AccessDenied:
            return False
        return roleset.check_rule(kind, verb, filtered=True).allowed

    def may_review(self, session: WebSession, request: AccessRequest) -> bool:
        try:
            roleset = self._proxy.roleset(self._cert(session)[1])
        except AccessDenied:
            return False
        return review_decision(session.user, roleset, request).allowed

    async def open_ssh_session(self, session: WebSession, node: str, login: str, cols: int, rows: int,
                               remote: str) -> TerminalChannel:
        from teleport_proxy.webterminal import open_ssh_session

        return await open_ssh_session(self._proxy, session, self._cert(session)[1], node, login, cols, rows, remote)

    async def join_ssh_session(self, session: WebSession, sid: str, mode: str, cols: int, rows: int,
                               remote: str) -> TerminalChannel:
        from teleport_proxy.webterminal import join_ssh_session

        der, user = self._cert(session)
        return await join_ssh_session(self._proxy, session, user, self._proxy.auth.for_user(der), sid, mode, cols,
                                      rows, remote)

    async def emit(self, event: AuditEvent) -> None:
        await self._proxy.audit.emit(event)

    async def audit_denial(self, user: str, reason: str, remote: str, **fields: object) -> None:
        await self._proxy.audit_denial(user, reason, remote, **fields)
