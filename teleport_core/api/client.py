"""The Python API client of the auth service (mutual TLS), with Teleport's credential loaders.

::

    from teleport_core.api.client import AuthClient, load_identity_file

    async with AuthClient("auth.example.com:3025", [load_identity_file("admin.pem")]) as client:
        role = await client.get_role("access")

Credential loaders are tried in order; the first that yields credentials is used:
``load_identity_file(path)``, ``load_dynamic_identity_file(path)`` (re-read when the file
changes), ``load_key_pair(cert, key, cas)``, ``load_tls(ssl_context)``, and
``load_profile()`` (the profile ``tsh login`` writes). Errors the server sends back become
typed exceptions: ``AccessDenied`` (403), ``NotFound`` (404), ``AlreadyExists`` (409),
``CompareFailed`` (412), ``AuthenticationFailed`` (401), ``AuditUnavailable`` (503), ``TeleportError``
otherwise; the message is the server's reason. Connections are pooled and kept alive (a new mutual-TLS
handshake costs milliseconds of server CPU).

Through a proxy: give the proxy's web address (``AuthClient("proxy.example.com:3080", ...)``).
Every connection names ``teleport.cluster.local`` in its SNI (and checks the server's
certificate for that name against the host CA), which the proxy's web port passes through to
auth untouched (TLS routing), so auth sees and authorizes this client's own certificate.

The server must prove it is the auth server: its certificate must carry the system role
``Auth`` (Subject O), checked inside the TLS handshake before any request byte is sent
(:mod:`teleport_core.pki.serverrole`). A node's or proxy's certificate from the same host CA is
refused with :class:`NotAuthServer` (``the server at ADDR presented a Node certificate, not
the auth server's``); the client then tries the next auth address, as for any connection
error. This applies to every credential loader (a context given with :func:`load_tls` is
changed in place to require it).

Several auth servers (``AuthClient(["auth1:3025", "auth2:3025"], ...)``, as with
``teleport.auth_servers``): the client sticks to the one that last answered and fails over to
the next on connection errors only (an HTTP error is the server's answer and is raised as is).
A request that never reached a server (connection refused, connect timeout) is sent to the next
one whatever its method; one that failed after it was sent (the server died mid-request, or
closed the kept-alive connection) is sent again only when idempotent (GET, PUT, DELETE): once
more to the same server on a new connection, then to the next. :class:`ConnectionProblem` is
raised when no address answered.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    AuditUnavailable,
    AuthenticationFailed,
    CompareFailed,
    NotFound,
    TeleportError,
)
from teleport_core.pki.identity import IdentityError, LocalIdentity
from teleport_core.pki.serverrole import AUTH, find_role_error, require_server_role

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

# the auth service's certificate names this, whatever address it is reached at
AUTH_SERVER_NAME = "teleport.cluster.local"
#: A proxy calling auth for a user sends the user's TLS client certificate (base64 DER) here;
#: auth verifies it against the user CA and authorizes the user (only from a Proxy host).
FORWARDED_USER_CERT = "Teleport-Forwarded-User-Cert"
ERRORS: dict[int, type[TeleportError]] = {
    401: AuthenticationFailed,
    403: AccessDenied,
    404: NotFound,
    409: AlreadyExists,
    412: CompareFailed,
    503: AuditUnavailable,
}


class ConnectionProblem(TeleportError):
    """The auth server could not be reached."""


class NotAuthServer(ConnectionProblem):
    """The server at an auth address presented a host certificate of the cluster, but not for the
    system role ``Auth`` (a node or proxy posing as auth): nothing was sent to it."""


@attrs.frozen
class Credentials:
    """What a loader yields: a TLS client context (and the identity it came from, if any)."""

    context: ssl.SSLContext
    identity: LocalIdentity | None = None
    source: str = ""


Loader = Callable[[], Credentials | None]


def load_identity_file(path: str | os.PathLike[str]) -> Loader:
    """Credentials from an identity file (``tctl auth sign --format=file``)."""

    def load() -> Credentials | None:
        file = Path(path)
        if not file.exists():
            return None
        identity = LocalIdentity.read_identity_file(file)
        return Credentials(identity.client_context(), identity, f"identity file {file}")

    return load


def load_dynamic_identity_file(path: str | os.PathLike[str]) -> Loader:
    """Like :func:`load_identity_file`, re-read whenever the file changes (for rotated identities)."""
    state: dict[str, Any] = {}

    def load() -> Credentials | None:
        file = Path(path)
        try:
            stamp = file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if state.get("stamp") != stamp:
            identity = LocalIdentity.read_identity_file(file)
            state.update(stamp=stamp, creds=Credentials(identity.client_context(), identity, f"identity file {file}"))
        creds: Credentials = state["creds"]
        return creds

    load.dynamic = True  # type: ignore[attr-defined]
    return load


def load_identity_dir(directory: str | os.PathLike[str]) -> Loader:
    """Credentials from a server's identity directory (``data_dir/keys/<role>``)."""

    def load() -> Credentials | None:
        folder = Path(directory)
        if not (folder / "key").exists() and not (folder / "identity").exists():
            return None
        identity = LocalIdentity.load(folder)
        return Credentials(identity.client_context(), identity, f"identity {folder}")

    return load


def load_key_pair(cert: str | os.PathLike[str], key: str | os.PathLike[str], cas: str | os.PathLike[str]) -> Loader:
    """Credentials from a certificate, its key and the CA certificates, as PEM files."""

    def load() -> Credentials | None:
        if not all(Path(p).exists() for p in (cert, key, cas)):
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=cas)
        return Credentials(context, None, f"key pair {cert}")

    return load


def load_tls(context: ssl.SSLContext) -> Loader:
    """Credentials from a ready TLS client context."""
    return lambda: Credentials(context, None, "TLS context")


def load_profile(home: str | os.PathLike[str] | None = None) -> Loader:
    """Credentials of the current ``tsh login`` profile (``$TELEPORT_HOME`` or ``~/.tsh``)."""

    def load() -> Credentials | None:
        root = Path(home or os.environ.get("TELEPORT_HOME") or Path.home() / ".tsh")
        current = root / "current-profile"
        if not current.exists():
            return None
        folder = root / "profiles" / current.read_text().strip()
        if not (folder / "key").exists():
            return None
        identity = LocalIdentity.load(folder)
        return Credentials(identity.client_context(), identity, f"tsh profile {folder}")

    return load


def first_credentials(loaders: Sequence[Loader]) -> Credentials:
    """Try ``loaders`` in order; the first credentials found, or an error naming what was tried."""
    problems = []
    for loader in loaders:
        try:
            found = loader()
        except (IdentityError, OSError, ssl.SSLError) as exc:
            problems.append(str(exc))
            continue
        if found is not None:
            return found
    detail = f": {'; '.join(problems)}" if problems else ""
    raise AuthenticationFailed(f"no credentials found (run tsh login, or pass an identity file){detail}")


def _base_url(addr: str) -> str:
    if addr.startswith(("https://", "http://")):
        return addr.rstrip("/")
    return f"https://{addr}"


IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# seconds an idle pooled connection is kept: below the auth server's 60 s keep-alive timeout, so
# the client never picks a connection the server is closing at the same moment
KEEPALIVE = 50.0


class AuthClient:
    """The auth API over mutual TLS. Use as ``async with``; every method is a coroutine.

    ``addr`` is one ``host:port`` or a list of them (several auth servers of one cluster): see
    the module docstring for how the client fails over between them.
    """

    def __init__(self, addr: str | Sequence[str], loaders: Sequence[Loader] = (), *,
                 credentials: Credentials | None = None, timeout: float = 30.0) -> None:
        addrs = [addr] if isinstance(addr, str) else list(addr)
        if not addrs:
            raise ValueError("AuthClient needs at least one auth server address")
        self.addrs: tuple[str, ...] = tuple(addrs)
        self._current = 0  # the address that answered last; calls start there
        self.credentials = credentials or first_credentials(loaders)
        self._loaders = loaders
        self._timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._retired: list[httpx.AsyncClient] = []  # pools of replaced credentials, closed later
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> str:
        """The auth server the next call goes to first (the one that answered last)."""
        return self.addrs[self._current]

    async def _client(self) -> httpx.AsyncClient:
        import httpx

        dynamic = [loader for loader in self._loaders if getattr(loader, "dynamic", False)]
        if dynamic:
            fresh = dynamic[0]()  # re-reads the identity file only when it changed
            if fresh is not None and fresh is not self.credentials:
                self.credentials = fresh
                if self._http is not None:
                    old, self._http = self._http, None
                    await old.aclose()
        if self._http is None:
            # no base_url: one pool serves every address (httpx pools connections per origin); the
            # server must be the auth server itself (system role Auth), checked in the handshake
            self._http = httpx.AsyncClient(
                verify=require_server_role(self.credentials.context, AUTH),
                timeout=self._timeout,
                headers={"Host": AUTH_SERVER_NAME},
                limits=httpx.Limits(max_keepalive_connections=16, keepalive_expiry=KEEPALIVE),
            )
        return self._http

    async def __aenter__(self) -> AuthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for old in self._retired:
            await old.aclose()
        self._retired.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def set_credentials(self, credentials: Credentials, *, linger: float = 90.0) -> None:
        """Use ``credentials`` from the next request on (a host's certificates renewed during a
        CA rotation). Requests already under way (long polls) finish on their connections,
        which are closed ``linger`` seconds later."""
        self.credentials = credentials
        old, self._http = self._http, None
        if old is None:
            return
        self._retired.append(old)

        async def retire() -> None:
            await asyncio.sleep(linger)
            if old in self._retired:
                self._retired.remove(old)
                await old.aclose()

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request to the current auth server, failing over to the others on connection
        errors (see the module docstring); ``content`` may be a zero-argument factory of the body
        so that a retried request gets a fresh stream."""
        content = kwargs.pop("content", None)

        async def send(addr: str) -> httpx.Response:
            body = content() if callable(content) else content
            return await (await self._client()).request(
                method, _base_url(addr) + path, content=body, extensions={"sni_hostname": AUTH_SERVER_NAME}, **kwargs)

        return await self._failover(method, send)

    async def _failover(self, method: str, send: Callable[[str], Awaitable[T]]) -> T:
        """``send(addr)`` to the current auth server, then to the others, by the module
        docstring's rules; remembers the server that answered."""
        import httpx

        idempotent = method.upper() in IDEMPOTENT
        order = [(self._current + step) % len(self.addrs) for step in range(len(self.addrs))]
        problems: list[str] = []
        impostor = False
        again = idempotent  # one more try on the same server, for a kept-alive connection it had closed
        position = 0
        while position < len(order):
            index = order[position]
            addr = self.addrs[index]
            try:
                result = await send(addr)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wrong = find_role_error(exc)
                impostor |= wrong is not None
                problems.append(wrong.at(addr) if wrong else f"cannot reach auth server at {addr}: {_reason(exc)}")
                position += 1
                continue  # never sent: safe to send anywhere else
            except (httpx.TransportError, ssl.SSLError) as exc:  # a TLS alert after the handshake escapes httpx
                problems.append(f"auth server at {addr}: {_reason(exc)}")
                if not idempotent:
                    break  # it may have been applied: the caller decides whether to send it again
                if again and not isinstance(exc, httpx.TimeoutException):
                    again = False  # a dead server refuses the new connection: then the next address
                    continue
                position += 1
                continue
            self._current = index
            return result
        raise (NotAuthServer if impostor else ConnectionProblem)("; ".join(problems))

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON, or raise the typed error the server sent."""
        response = await self._request(method, path, json=body, params=params,
                                       timeout=timeout if timeout is not None else self._timeout)
        raise_for_status(response)
        return response.json() if response.content else None

    # -- cluster ----------------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self.call("GET", "/v1/ping")  # type: ignore[no-any-return]

    async def status(self) -> dict[str, Any]:
        return await self.call("GET", "/v1/status")  # type: ignore[no-any-return]

    async def get_cert_authority(self, ca_type: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/cas/{ca_type}")  # type: ignore[no-any-return]

    async def rotate_cert_authority(self, ca_type: str, *, grace_period: str = "", mode: str = "auto",
                                    phase: str = "") -> dict[str, Any]:
        body = {"grace_period": grace_period, "mode": mode, "phase": phase}
        return await self.call("POST", f"/v1/cas/{ca_type}/rotate", body)  # type: ignore[no-any-return]

    # -- roles ----------------------------------------------------------------------------------------

    async def get_roles(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/roles")  # type: ignore[no-any-return]

    async def get_role(self, name: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/roles/{name}")  # type: ignore[no-any-return]

    async def create_role(self, role: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1/roles", role)  # type: ignore[no-any-return]

    async def upsert_role(self, role: dict[str, Any]) -> dict[str, Any]:
        name = role.get("metadata", {}).get("name", "")
        return await self.call("PUT", f"/v1/roles/{name}", role)  # type: ignore[no-any-return]

    async def delete_role(self, name: str) -> None:
        await self.call("DELETE", f"/v1/roles/{name}")

    async def create_resources(self, resources: list[dict[str, Any]], *, force: bool = False) -> list[dict[str, Any]]:
        """Create (or with ``force`` replace) several resources, all or nothing."""
        body = {"resources": resources, "force": force}
        return await self.call("POST", "/v1/resources", body)  # type: ignore[no-any-return]

    # -- users ----------------------------------------------------------------------------------------

    async def get_users(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/users")  # type: ignore[no-any-return]

    async def get_user(self, name: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/users/{name}")  # type: ignore[no-any-return]

    async def create_user(self, name: str, roles: Sequence[str], traits: dict[str, list[str]] | None = None,
                          ttl: str = "") -> dict[str, Any]:
        """Create a user; the answer holds the invite (token, expiry, URL)."""
        body = {"name": name, "roles": list(roles), "traits": traits or {}, "ttl": ttl}
        return await self.call("POST", "/v1/users", body)  # type: ignore[no-any-return]

    async def update_user(self, name: str, *, roles: Sequence[str] | None = None,
                          traits: dict[str, list[str]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if roles is not None:
            body["roles"] = list(roles)
        if traits is not None:
            body["traits"] = traits
        return await self.call("PUT", f"/v1/users/{name}", body)  # type: ignore[no-any-return]

    async def delete_user(self, name: str) -> None:
        await self.call("DELETE", f"/v1/users/{name}")

    async def reset_user(self, name: str, ttl: str = "") -> dict[str, Any]:
        return await self.call("POST", f"/v1/users/{name}/reset", {"ttl": ttl})  # type: ignore[no-any-return]

    async def get_user_token(self, token: str) -> dict[str, Any]:
        return await self.call("POST", "/v1/usertokens/lookup", {"token": token})  # type: ignore[no-any-return]

    async def complete_user_token(self, token: str, password: str, second_factor_token: str = "") -> dict[str, Any]:
        body = {"token": token, "password": password, "second_factor_token": second_factor_token}
        return await self.call("PUT", "/v1/usertokens", body)  # type: ignore[no-any-return]

    async def login(self, user: str, password: str, otp: str, public_key: str, ttl: str = "",
                    client_ip: str = "") -> dict[str, Any]:
        """Check credentials and sign ``public_key`` (proxies forward logins with their own identity)."""
        body = {"user": user, "password": password, "otp": otp, "public_key": public_key, "ttl": ttl,
                "client_ip": client_ip}
        return await self.call("POST", "/v1/login", body)  # type: ignore[no-any-return]

    async def create_web_session(self, user: str, password: str, otp: str, client_ip: str = "") -> dict[str, Any]:
        """A web UI login (proxies): checked as :meth:`login`; auth keeps the key and certificates
        in a new web session record, returned (``id``, ``csrf_token``, ``expires`` ...)."""
        body = {"user": user, "password": password, "otp": otp, "client_ip": client_ip}
        return await self.call("POST", "/v1/websessions", body)  # type: ignore[no-any-return]

    async def get_web_session(self, session_id: str, user: str) -> dict[str, Any]:
        """The live web session ``session_id`` of ``user`` (proxies); its idle timer restarts."""
        return await self.call("GET", f"/v1/websessions/{session_id}",  # type: ignore[no-any-return]
                               params={"user": user})

    async def delete_web_session(self, session_id: str) -> None:
        """Log a web session out (proxies)."""
        await self.call("DELETE", f"/v1/websessions/{session_id}")

    async def reissue_web_session(self, session_id: str, user: str, access_requests: list[str]) -> dict[str, Any]:
        """A web session's certificates again (proxies): ``user``'s base roles plus the roles of
        ``access_requests`` (``[]``: base roles only); the updated record."""
        body = {"user": user, "access_requests": access_requests}
        return await self.call("POST", f"/v1/websessions/{session_id}/reissue", body)  # type: ignore[no-any-return]

    def for_user(self, user_cert: bytes) -> AuthClient:
        """A client acting for the user whose TLS certificate (DER) this proxy holds: each call
        forwards it (:data:`FORWARDED_USER_CERT`) and auth authorizes the user, not the proxy.
        Shares this client's connections; closing it closes nothing."""
        return _ForwardingClient(self, user_cert)

    async def sign_user_cert(self, user: str, public_key: str, ttl: str = "") -> dict[str, Any]:
        """Certificates for ``user`` without a login (``tctl auth sign``; admins only)."""
        body = {"user": user, "public_key": public_key, "ttl": ttl}
        return await self.call("POST", "/v1/certs/user", body)  # type: ignore[no-any-return]

    async def renew_host_certs(self, public_key: str, nodename: str, *, dns_names: Sequence[str] = (),
                               ip_addresses: Sequence[str] = (),
                               additional_principals: Sequence[str] = ()) -> dict[str, Any]:
        """New certificates for the calling host (its host UUID and system role) and the current
        trust bundle and CA rotation state; call it when a host CA rotation changes phase."""
        body = {"public_key": public_key, "nodename": nodename, "dns_names": list(dns_names),
                "ip_addresses": list(ip_addresses), "additional_principals": list(additional_principals)}
        return await self.call("POST", "/v1/certs/host", body)  # type: ignore[no-any-return]

    # -- join tokens and nodes -------------------------------------------------------------------------

    async def get_tokens(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/tokens")  # type: ignore[no-any-return]

    async def create_token(self, roles: Sequence[str], ttl: str = "") -> dict[str, Any]:
        return await self.call("POST", "/v1/tokens", {"roles": list(roles), "ttl": ttl})  # type: ignore[no-any-return]

    async def delete_token(self, token: str) -> None:
        await self.call("POST", "/v1/tokens/delete", {"token": token})

    async def get_nodes(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/nodes")  # type: ignore[no-any-return]

    async def delete_node(self, uuid: str) -> None:
        """Remove a node and its host record (frees its nodename; ``tctl rm node/<uuid>``)."""
        await self.call("DELETE", f"/v1/nodes/{uuid}")

    async def upsert_node(self, node: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PUT", f"/v1/nodes/{node.get('uuid', '')}", node)  # type: ignore[no-any-return]

    async def keep_alive_node(self, uuid: str) -> dict[str, Any]:
        """Move this node's entry's expiry (no body; idempotent, so a PUT, sent again on a closed
        kept-alive connection); ``NotFound``: announce with :meth:`upsert_node`."""
        return await self.call("PUT", f"/v1/nodes/{uuid}/keepalive")  # type: ignore[no-any-return]

    async def keep_alive_proxy(self, uuid: str) -> dict[str, Any]:
        """Move this proxy's entry's expiry (no body); ``NotFound``: announce with :meth:`upsert_proxy`."""
        return await self.call("PUT", f"/v1/proxies/{uuid}/keepalive")  # type: ignore[no-any-return]

    async def upsert_proxy(self, proxy: dict[str, Any]) -> dict[str, Any]:
        """A proxy's heartbeat (``uuid``, ``nodename``, ``public_addr``, ``ssh_public_addr``)."""
        return await self.call("PUT", f"/v1/proxies/{proxy.get('uuid', '')}", proxy)  # type: ignore[no-any-return]

    async def get_proxies(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/proxies")  # type: ignore[no-any-return]

    # -- locks (teleport_core.policy.locks) -----------------------------------------------------------------

    async def get_locks(self) -> list[dict[str, Any]]:
        """Every lock that has not expired, as resources (``lock_to_dict``)."""
        return await self.call("GET", "/v1/locks")  # type: ignore[no-any-return]

    async def upsert_lock(self, lock: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a lock (a resource: ``metadata.name``, ``spec.target`` ...); the stored lock."""
        name = str(lock.get("metadata", {}).get("name", ""))
        return await self.call("PUT", f"/v1/locks/{name}", lock)  # type: ignore[no-any-return]

    async def delete_lock(self, name: str) -> None:
        await self.call("DELETE", f"/v1/locks/{name}")

    async def wait_for_change(self, kind: str, version: str = "", timeout: float = 30.0) -> str:
        """The current version of ``kind`` (``role``, ``cert_authority``, ``lock``); blocks up to ``timeout``
        seconds while it is still ``version``. Call in a loop to invalidate caches promptly."""
        answer = await self.call("GET", "/v1/changes", params={"kind": kind, "version": version,
                                                                "timeout": timeout}, timeout=timeout + 15)
        return str(answer["version"])

    # -- session recordings -------------------------------------------------------------------------

    async def upload_recording(self, session_id: str, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Stream a finished recording (an asciicast v2 file) to auth's session storage."""

        async def chunks() -> Any:
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    yield chunk

        response = await self._request("PUT", f"/v1/sessions/{session_id}/recording", content=chunks,
                                       timeout=max(self._timeout, 300.0))
        raise_for_status(response)
        return response.json()  # type: ignore[no-any-return]

    async def list_recordings(self, *, since: str = "", until: str = "", limit: int = 0, user: str = "",
                              node: str = "", search: str = "", user_cert: bytes = b"") -> list[dict[str, Any]]:
        """Sessions that ended in a window, newest first (only ``user``'s, only on ``node``: its
        hostname or UUID, when given; only those whose recording shows ``search``, each with a
        ``snippet``); with ``user_cert`` (DER) a proxy asks on behalf of that user
        (see :data:`FORWARDED_USER_CERT`)."""
        params = {k: v for k, v in (("since", since), ("until", until), ("limit", limit), ("user", user),
                                    ("node", node), ("search", search)) if v}
        response = await self._request("GET", "/v1/sessions", params=params, headers=_forwarded(user_cert))
        raise_for_status(response)
        return list(response.json()["sessions"])

    # -- live sessions' trackers (teleport_core.state.trackers: the resource form; a host writes its own) ----

    async def create_session_tracker(self, tracker: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1/session_trackers", tracker)  # type: ignore[no-any-return]

    async def get_session_tracker(self, sid: str) -> dict[str, Any]:
        return await self.call("GET", f"/v1/session_trackers/{sid}")  # type: ignore[no-any-return]

    async def update_session_tracker(self, tracker: dict[str, Any]) -> dict[str, Any]:
        """Compare-and-swap on ``metadata.revision``: ``CompareFailed`` when it moved (read again)."""
        sid = tracker["spec"]["session_id"]
        return await self.call("PUT", f"/v1/session_trackers/{sid}", tracker)  # type: ignore[no-any-return]

    async def delete_session_tracker(self, sid: str) -> None:
        await self.call("DELETE", f"/v1/session_trackers/{sid}")

    async def list_session_trackers(self, *, kind: str = "", state: str = "") -> list[dict[str, Any]]:
        """The live sessions the caller (or the user a forwarding client acts for) may see."""
        params = {k: v for k, v in (("kind", kind), ("state", state)) if v}
        return list((await self.call("GET", "/v1/session_trackers", params=params))["trackers"])

    async def download_recording(self, session_id: str, dest: str | os.PathLike[str], *,
                                 user_cert: bytes = b"") -> int:
        """Stream the asciicast recording of ``session_id`` into ``dest``; returns its size.

        Fails over like every other call. A download cut off midway starts again from the
        beginning (on the same server once, then the next), since ``dest`` is rewritten whole.
        An HTTP error is an answer and is not retried."""
        path = f"/v1/sessions/{session_id}/recording"

        async def download(addr: str) -> int:
            http = await self._client()
            size = 0
            async with http.stream("GET", _base_url(addr) + path, headers=_forwarded(user_cert),
                                   extensions={"sni_hostname": AUTH_SERVER_NAME},
                                   timeout=max(self._timeout, 300.0)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise_for_status(response)
                with open(dest, "wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        out.write(chunk)
            return size

        return await self._failover("GET", download)

    async def put_recording_chunk(self, session_id: str, index: int, data: bytes) -> dict[str, Any]:
        """Send chunk ``index`` of a recording in progress (sync recording modes; the host running
        the session). A 400 or 413 raises ``RecordingRefused`` (never retried)."""
        response = await self._request("PUT", f"/v1/sessions/{session_id}/recording/chunks",
                                       params={"index": index}, content=data,
                                       headers={"Content-Type": "application/x-asciicast"})
        _raise_refused(response)
        return response.json()  # type: ignore[no-any-return]

    async def complete_recording(self, session_id: str, chunks: int, partial: bool = False) -> dict[str, Any]:
        """Tell auth a streamed recording's session ended (``partial``: its host lost it): auth
        assembles the chunks into the recording."""
        response = await self._request("POST", f"/v1/sessions/{session_id}/recording/complete",
                                       json={"chunks": chunks, "partial": partial})
        _raise_refused(response)
        return response.json()  # type: ignore[no-any-return]

    async def read_recording_stream(self, session_id: str, offset: int = 0, *,
                                    user_cert: bytes = b"") -> tuple[bytes, dict[str, str]]:
        """The recording of ``session_id`` from byte ``offset``, while it runs or after, and auth's
        headers (``X-Teleport-Recording``: streaming/complete, ``X-Teleport-Session``: running/ended)."""
        response = await self._request("GET", f"/v1/sessions/{session_id}/recording/stream",
                                       params={"offset": offset}, headers=_forwarded(user_cert))
        raise_for_status(response)
        return response.content, {k.lower(): v for k, v in response.headers.items()
                                  if k.lower().startswith("x-teleport-")}

    async def follow(self, kind: str, reload: Callable[[], Awaitable[object]], log: Any, *,
                     poll: float = 30.0, retry: float = 2.0) -> None:
        """Call ``reload()`` whenever ``kind`` changes at auth, until cancelled (a cache's invalidation).

        Reloads once at the start (anything may have changed since the caller loaded it); a
        failed call is logged and retried, so an auth server that is briefly away stops nothing.
        """
        version = ""
        while True:
            try:
                if not version:
                    version = await self.wait_for_change(kind, "", timeout=0)
                    await reload()
                new = await self.wait_for_change(kind, version, timeout=poll)
                if new != version:
                    await reload()
                    version = new
            except TeleportError as exc:
                log.warning("cannot follow changes at auth, will retry", kind=kind, error=str(exc))
                await asyncio.sleep(retry)

    # -- audit ------------------------------------------------------------------------------------------

    async def emit_event(self, event: dict[str, Any]) -> None:
        await self.call("POST", "/v1/events", event)

    async def search_events(self, **query: Any) -> dict[str, Any]:
        params = {k: v for k, v in query.items() if v not in (None, "", ())}
        return await self.call("GET", "/v1/events", params=params)  # type: ignore[no-any-return]


class _ForwardingClient(AuthClient):
    """:meth:`AuthClient.for_user`: the parent's connections and failover, every request with the
    user's certificate forwarded."""

    def __init__(self, parent: AuthClient, user_cert: bytes) -> None:
        self._parent = parent
        self._user_cert = user_cert
        self.addrs = parent.addrs
        self._timeout = parent._timeout

    @property
    def credentials(self) -> Credentials:  # type: ignore[override]
        return self._parent.credentials

    @property
    def addr(self) -> str:
        return self._parent.addr

    async def _client(self) -> httpx.AsyncClient:
        return await self._parent._client()

    async def _failover(self, method: str, send: Callable[[str], Awaitable[T]]) -> T:
        return await self._parent._failover(method, send)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**(kwargs.get("headers") or {}), **_forwarded(self._user_cert)}
        return await self._parent._request(method, path, **kwargs)

    async def download_recording(self, session_id: str, dest: str | os.PathLike[str], *,
                                 user_cert: bytes = b"") -> int:
        return await self._parent.download_recording(session_id, dest, user_cert=user_cert or self._user_cert)

    async def list_recordings(self, *, since: str = "", until: str = "", limit: int = 0, user: str = "",
                              node: str = "", search: str = "", user_cert: bytes = b"") -> list[dict[str, Any]]:
        return await self._parent.list_recordings(since=since, until=until, limit=limit, user=user, node=node,
                                                  search=search, user_cert=user_cert or self._user_cert)

    async def close(self) -> None:
        """The connections are the parent's: nothing to close."""


def _forwarded(user_cert: bytes) -> dict[str, str]:
    import base64

    return {FORWARDED_USER_CERT: base64.b64encode(user_cert).decode()} if user_cert else {}


def _raise_refused(response: httpx.Response) -> None:
    """:func:`raise_for_status`, with a 400 or 413 as ``RecordingRefused`` (malformed: never retried)."""
    if response.status_code in (400, 413):
        from teleport_core.recording.stream import RecordingRefused

        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {response.status_code}"
        raise RecordingRefused(message)
    raise_for_status(response)


def raise_for_status(response: httpx.Response) -> None:
    """Raise the typed error an error response carries (its ``{"error": reason}``)."""
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    raise ERRORS.get(response.status_code, TeleportError)(message)


def _reason(exc: BaseException) -> str:
    """The innermost useful message of a transport error (``[Errno 111] Connection refused``)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__


@attrs.frozen
class Joined:
    """What :func:`register` returns: the auth server's answer and whether a pin vouched for it."""

    answer: dict[str, Any]
    host_ca_pems: tuple[str, ...]
    pinned: bool


async def register(addr: str, body: dict[str, Any], ca_pins: Sequence[str], *, timeout: float = 30.0,
                   path: str = "/v1/register") -> Joined:
    """Join the cluster with a token, before having any certificate.

    1. Fetch the host CA certificates from ``/v1/ping`` (nothing secret is sent).
    2. With ``ca_pins``: refuse unless one of those CAs matches a pin (constant time):
       ``cluster pin does not match ...``. Without pins, trust them on first use; the caller
       logs a warning, as Teleport does.
    3. Send the token to ``/v1/register`` over a connection that trusts only those CAs and
       requires the server's certificate to be for system role ``Auth`` (checked in the TLS
       handshake), so neither an impostor at the auth server's address nor another host of
       the same cluster (a node's certificate) ever sees the token: :class:`NotAuthServer`.

    ``path``: ``/v1/agentless/join`` for ``teleport join openssh`` (the same checks).
    """
    import httpx

    from teleport_core.pki.pins import check_ca_pin

    if isinstance(ca_pins, str):
        raise TypeError("ca_pins is a list of pins, not one string")
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to read the CA; trust comes from the pin or step 3
    try:
        async with httpx.AsyncClient(base_url=_base_url(addr), verify=insecure, timeout=timeout) as client:
            ping = await client.get("/v1/ping", extensions={"sni_hostname": AUTH_SERVER_NAME})
    except httpx.TransportError as exc:
        raise ConnectionProblem(f"cannot reach auth server at {addr}: {_reason(exc)}") from None
    try:
        host_cas = tuple(str(pem) for pem in ping.json()["host_ca_pems"])
        ders = [ssl.PEM_cert_to_DER_cert(pem) for pem in host_cas]
    except (ValueError, KeyError, TypeError):
        raise TeleportError(f"{addr} is not a teleport auth server (no host CA in /v1/ping)") from None
    if ca_pins:
        problems = []
        for der in ders:
            try:
                check_ca_pin(ca_pins, der)
                break
            except AccessDenied as exc:
                problems.append(str(exc))
        else:
            raise AccessDenied(problems[0] if problems else "cluster pin does not match: no host CA was presented")
    trusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trusting.minimum_version = ssl.TLSVersion.TLSv1_2
    trusting.load_verify_locations(cadata="".join(host_cas))
    require_server_role(trusting, AUTH)
    async with httpx.AsyncClient(base_url=_base_url(addr), verify=trusting, timeout=timeout,
                                 headers={"Host": AUTH_SERVER_NAME}) as client:
        try:
            response = await client.post(path, json=body, extensions={"sni_hostname": AUTH_SERVER_NAME})
        except httpx.TransportError as exc:
            wrong = find_role_error(exc)
            if wrong is not None:
                raise NotAuthServer(f"cannot join through {addr}: {wrong.at(addr)}; the join token was not sent") \
                    from None
            raise ConnectionProblem(f"cannot join through {addr}: {_reason(exc)}") from None
    raise_for_status(response)
    return Joined(response.json(), host_cas, bool(ca_pins))
