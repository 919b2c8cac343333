"""The auth API's core: the ``endpoint`` wrapper (authenticate, refuse locked identities, authorize,
map errors to statuses), body reading, and the state every resource module shares (:class:`APIBase`)."""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from cryptography import x509
from pydantic import BaseModel, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from teleport_auth.forwarded import forwarded_user
from teleport_auth.issuer import (
    identity_from_tls_cert,
)
from teleport_auth.presence import PROXIES_PREFIX as PROXIES_PREFIX  # re-exported (api/inventory.py)
from teleport_core.api.client import FORWARDED_USER_CERT
from teleport_core.api.schema import (
    NAME_MAX,
    NO_CONTROL,
    InvalidRequest,
    Name,
    PayloadTooLarge,
    read_body,
    validate_body,
    validate_path,
    validate_query,
)
from teleport_core.api.schema import (
    Operation as Operation,  # re-exported: the resource modules build their route tables from it
)
from teleport_core.config.values import parse_duration
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    AuditUnavailable,
    AuthenticationFailed,
    CertificateVetoed,
    CompareFailed,
    ConfigError,
    NotFound,
    TeleportError,
)
from teleport_core.net.tlsserver import client_certificate
from teleport_core.policy.access import AccessRequest, Decision, Identity, IdentityKind, check_access
from teleport_core.policy.locks import Lock, lock_message
from teleport_core.state.audit import AuditEvent, new_event
from teleport_core.state.backend import range_end

if TYPE_CHECKING:
    from teleport_auth.state import AuthState
    from teleport_auth.uploads import UploadGate


STATUS: list[tuple[type[BaseException], int]] = [
    (AuthenticationFailed, 401),
    (AccessDenied, 403),
    (CertificateVetoed, 403),
    (PayloadTooLarge, 413),
    (NotFound, 404),
    (AlreadyExists, 409),
    (CompareFailed, 412),
    (AuditUnavailable, 503),
    (ConfigError, 400),
    (TeleportError, 400),
]
MAX_BODY = 1 << 20
#: calls that change nothing; every other call is refused while the audit log cannot record (503)
READ_METHODS = frozenset({"GET", "HEAD"})
PROXIES_END = range_end(PROXIES_PREFIX)  # PROXIES_PREFIX: teleport_auth.presence (the proxies' heartbeats)
PROXY_TTL = dt.timedelta(minutes=10)
PROXY_TOKEN_KIND = "proxy_token"  # noqa: S105 - a resource kind, not a secret


#: the access requests whose roles the caller of the call being handled holds: its events carry them
CALLER_REQUESTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("caller_requests", default=())


class BadRequest(InvalidRequest):
    """A request body that is not what the endpoint takes."""


def error_response(exc: BaseException) -> JSONResponse:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            # a message may quote the caller's input: never let it make the answer unencodable
            message = str(exc).encode("utf-8", "replace").decode("utf-8")
            return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": "internal error"}, status_code=500)


async def drain_body(request: Request) -> None:
    """Read what is left of the request body (up to MAX_BODY), so the keep-alive connection can
    carry the next request; a refused request's body is otherwise never read."""
    read = 0
    with contextlib.suppress(Exception):
        async for chunk in request.stream():
            read += len(chunk)
            if read > MAX_BODY:
                break


def duration(text: str, name: str = "ttl") -> dt.timedelta | None:
    """A duration field's value ("" is None: the default); a 400 naming the field when it is not one."""
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise BadRequest(f'{name}: expected a duration like "30m" or "1h0m0s", got {json.dumps(text)}') from None


Handler = Callable[[Any, Request, Identity | None], Awaitable[Any]]
M = TypeVar("M", bound=BaseModel)

#: the type of each path parameter, checked before authorization (a name is used in the decision)
PATH_PARAMS: dict[str, Any] = {
    "name": Name,
    "uuid": Name,
    "sid": Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NO_CONTROL)],
    "ca_type": Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[a-z_]+$")],
}


def body(request: Request, model: type[M]) -> M:
    """The request body, validated as ``model`` by :func:`endpoint` before the handler runs."""
    value = request.state.body
    assert isinstance(value, model)
    return value


def query(request: Request, model: type[M]) -> M:
    """The query string, validated as ``model`` by :func:`endpoint`."""
    value = request.state.query
    assert isinstance(value, model)
    return value


def endpoint(verb: str | None, kind: str | None, *, anonymous: bool = False, name_param: str = "") -> Callable[
        [Handler], Callable[[Any, Request], Awaitable[Response]]]:
    """Authenticate the caller and authorize ``verb`` on ``kind`` before the handler runs."""

    def wrap(handler: Handler) -> Callable[[Any, Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def run(self: APIBase, request: Request) -> Response:
            try:
                if request.method not in READ_METHODS:  # no action auth could not audit: refused up front
                    await self.service.check_audit()
                await self.service.fresh_cas()  # auth workers: another process's rotation applied first
                identity = self.identify(request)
                if identity is None and not anonymous:
                    reason = "this call needs a client certificate from the cluster"
                    client = request.client  # audited (T3007W), once per source and period
                    self.service.refused(f"{client.host}:{client.port}" if client else "",
                                         f"{request.method} {request.url.path}: {reason}")
                    raise AuthenticationFailed(reason)
                if identity is not None and request.headers.get(FORWARDED_USER_CERT):
                    identity = await self.forwarded_identity(request, identity)  # the user a proxy acts for
                CALLER_REQUESTS.set(identity.active_requests if identity is not None else ())
                if identity is not None:
                    await self.refuse_locked(request, identity, exempt=handler.__name__ in LOCKED_HOST_CALLS)
                op = self.operations.get(handler.__name__)
                validate_path(PATH_PARAMS, request.path_params)
                if op is not None and op.query is not None:
                    request.state.query = validate_query(op.query, request.query_params)
                if verb is not None and kind is not None and identity is not None:
                    name = request.path_params.get(name_param, "") if name_param else ""
                    await self.authorize(request, identity, verb, kind, name)
                if op is not None and op.body is not None:  # after the authorization above (if any), within the limit
                    raw = await read_body(request, op.max_body)
                    try:
                        request.state.body = validate_body(op.body, raw)
                    except InvalidRequest as exc:
                        await self.audit_invalid(handler.__name__, request, raw, str(exc))
                        raise
                result = await handler(self, request, identity)
            except CertificateVetoed as exc:  # a plugin refused: audited under the certificate's subject
                subject = exc.identity if isinstance(exc.identity, Identity) else self.identify(request)
                await self.audit_denial(request, subject, str(exc))
                await drain_body(request)
                return error_response(exc)
            except Exception as exc:
                if not isinstance(exc, TeleportError):
                    self.service.log.error("API call failed", path=request.url.path, error=repr(exc))
                await drain_body(request)  # answered before reading it: keep the connection usable
                return error_response(exc)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return run

    return wrap


#: verified client certificates kept (by SHA-256 of the DER): every host of a 50,000-node cluster
#: keeps its identity cached, so a keepalive does not verify its certificate again (0.8 ms with an
#: ECDSA host CA, more than the rest of the keepalive); about 0.6 KiB each (tracemalloc), 36 MiB full
IDENTITY_CACHE_SIZE = 65536
#: what a locked host may still do: follow locks (so a locked node learns of its lock and ends its
#: sessions) and report events (its refusals are audited); everything else is refused
LOCKED_HOST_CALLS = frozenset({"list_locks", "changes", "emit_event"})
#: how long the lock a user's deletion creates lasts: the longest a user certificate lives
DELETED_USER_LOCK_TTL = dt.timedelta(hours=30)


#: the limit of routes that take a few small fields before or instead of authentication (login, join, invites)
SMALL_BODY = 64 * 1024
#: a session recording upload (streamed to a temporary file, then to the session storage)
RECORDING_MAX_BODY = 1 << 30


class APIBase:
    """What every resource's routes share: the service, caller identification, authorization, auditing."""

    #: the routes by handler name (set by the app): their models are validated before a handler runs
    operations: dict[str, Operation] = {}

    def __init__(self, service: AuthState) -> None:
        self.service = service
        # verified client certificates: sha256(der) -> (identity, not_after, the CA objects it was checked against)
        self._identities: OrderedDict[bytes, tuple[Identity, dt.datetime, tuple[object, object]]] = OrderedDict()
        self._upload_gate_made: UploadGate | None = None
        from teleport_auth.events_policy import HostNameCache

        self._host_names = HostNameCache(self._host_name)

    @property
    def _upload_gate(self) -> UploadGate:
        """Serializes uploads of one session; with auth worker processes across them too (a lock
        file each). Made at the first upload: the routes do not touch the service before a call."""
        if self._upload_gate_made is None:
            from teleport_auth.uploads import UPLOAD_LOCKS_DIR, UploadGate

            svc = self.service
            self._upload_gate_made = UploadGate(svc.ctx.data_dir / "log" / UPLOAD_LOCKS_DIR
                                                if svc.settings.workers > 1 else None)
        return self._upload_gate_made

    # -- who is calling, and may they ----------------------------------------------------------------

    def identify(self, request: Request) -> Identity | None:
        """The identity in the caller's certificate, verified against the current CAs.

        Verifications are cached per certificate (keep-alive connections send many requests),
        but only while the same CA objects are current: after a rotation reloads the CAs, a
        connection opened earlier is checked again and an old-CA certificate is refused.
        """
        der = client_certificate(request.scope)
        if der is None:
            return None
        svc = self.service
        cas = (svc.user_ca, svc.host_ca)
        key = hashlib.sha256(der).digest()
        cached = self._identities.get(key)
        now = dt.datetime.now(dt.UTC)
        if cached is not None and cached[2][0] is cas[0] and cached[2][1] is cas[1] and cached[1] > now:
            self._identities.move_to_end(key)
            return cached[0]
        identity = identity_from_tls_cert(der, list(cas))
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
        self._identities[key] = (identity, not_after, cas)
        if len(self._identities) > IDENTITY_CACHE_SIZE:
            self._identities.popitem(last=False)
        return identity

    async def forwarded_identity(self, request: Request, caller: Identity) -> Identity:
        """The user whose TLS certificate a proxy forwarded (:data:`FORWARDED_USER_CERT`): the call
        is authorized, lock-checked and audited as that user. Only a host with the ``Proxy``
        system role may forward, and only a certificate of the user CA valid now (403/401, audited).
        ``request.state.forwarded_by`` names the proxy."""
        user = await forwarded_user(self, request, caller, request.headers[FORWARDED_USER_CERT])
        request.state.forwarded_by = caller.name
        return user

    async def decision(self, identity: Identity, verb: str, kind: str, name: str = "", labels: Any = None,
                       login: str = "", *, attributes: Any = None, filtered: bool = False) -> Decision:
        request = AccessRequest(identity, verb, kind, name, labels or {}, login, attributes or {}, filtered)
        svc = self.service
        if identity.kind is IdentityKind.USER:
            await svc.authorizer.load(identity)
        return check_access(svc.ctx.plugins.hook, request, svc.authorizer.decide(request))

    def item_decision(self, identity: Identity, verb: str, kind: str, name: str = "",
                      attributes: Any = None) -> Decision:
        """The decision on one item of a ``filtered`` listing (after :meth:`authorize` loaded the roles)."""
        request = AccessRequest(identity, verb, kind, name, {}, "", attributes or {})
        svc = self.service
        return check_access(svc.ctx.plugins.hook, request, svc.authorizer.decide(request))

    def item_decider(self, identity: Identity, verb: str, kind: str) -> Callable[[str, Any], bool]:
        """``allowed(name, attributes)`` for each item of one ``filtered`` listing: what
        :meth:`item_decision` answers, with what the items cannot change decided once. A user's roles
        without a ``where`` rule for ``verb`` on ``kind`` decide every item alike
        (``RoleAuthorizer.decide_alike``); with no ``teleport_authorize`` plugin loaded that is the
        answer for every item, and otherwise each item still goes to the plugins with it."""
        svc = self.service
        hook = svc.ctx.plugins.hook
        alike = svc.authorizer.decide_alike(identity, verb, kind)
        if alike is not None and not hook.teleport_authorize.get_hookimpls():
            answer = alike.allowed
            return lambda name, attributes: answer

        def allowed(name: str, attributes: Any) -> bool:
            request = AccessRequest(identity, verb, kind, name, {}, "", attributes or {})
            own = alike if alike is not None else svc.authorizer.decide(request)
            return check_access(hook, request, own).allowed

        return allowed

    async def authorize(self, request: Request, identity: Identity, verb: str, kind: str, name: str = "", *,
                        attributes: Any = None, filtered: bool = False) -> None:
        """403 (audited) unless ``identity`` may ``verb`` on ``kind``; ``attributes``: the item's fields
        for ``where:`` rules; ``filtered``: the caller checks each item of its listing (:meth:`item_decision`)."""
        result = await self.decision(identity, verb, kind, name, attributes=attributes, filtered=filtered)
        if not result.allowed:
            await self.audit_denial(request, identity, result.reason)
            raise AccessDenied(result.reason)

    async def refuse_locked(self, request: Request, identity: Identity, *, exempt: bool = False,
                            issued: dt.datetime | None = None) -> None:
        """403 (audited, the lock's message as the reason) when a lock in force matches ``identity``.

        A host's own lock does not stop the calls in :data:`LOCKED_HOST_CALLS` (``exempt``).
        ``issued``: for a certificate about to be issued (now), instead of the caller's.
        """
        if exempt and identity.kind is IdentityKind.HOST:
            return
        lock = await self.service.locks.in_force(identity, issued=issued)
        if lock is not None:
            reason = lock_message(lock)
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)

    async def audit_denial(self, request: Request, identity: Identity | None, reason: str) -> None:
        client = request.client
        fields: dict[str, Any] = {
            "user": identity.name if identity else "",
            "error": reason,
            "success": False,
            "method": request.method,
            "path": request.url.path,
            "cluster_name": self.service.cluster_name,
            "addr.remote": f"{client.host}:{client.port}" if client else "",
        }
        if identity is not None and identity.active_requests:
            fields["access_requests"] = list(identity.active_requests)
        await self.service.emit(new_event("auth", "failure", **fields))

    async def audit_invalid(self, handler: str, request: Request, raw: bytes, reason: str) -> None:
        """A body its model refused, for a call whose refusals are audited: the handler's module
        defines ``_invalid_<handler>(request, fields, reason)`` (``fields``: the body's top-level
        string fields, whatever else it holds), e.g. a join or an invite completion."""
        audit = getattr(self, f"_invalid_{handler}", None)
        if audit is None:
            return
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):
            data = {}
        fields = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(data, dict) else {}
        await audit(request, fields, reason)

    def event(self, event: str, outcome: str = "ok", **fields: Any) -> AuditEvent:
        """An audit event of this API call; made with elevated roles, it names their access requests."""
        requests = CALLER_REQUESTS.get()
        if requests and "access_requests" not in fields:
            fields["access_requests"] = list(requests)
        return new_event(event, outcome, cluster_name=self.service.cluster_name, **fields)


    def proxy_addr(self) -> str:
        """``proxy_public_addr`` from the config, else the address a proxy heartbeat announced."""
        settings = self.service.settings
        if settings.proxy_public_addr:
            return str(settings.proxy_public_addr)
        return getattr(self, "_proxy_public", "") or f"{self.service.cluster_name}:3080"

    async def refresh_proxy_addr(self) -> None:
        """Pick up a proxy heartbeat another auth server received."""
        items = await self.service.backend.get_range(PROXIES_PREFIX, PROXIES_END, limit=1)
        if items:
            self._proxy_public = str(json.loads(items[0].value).get("public_addr", ""))

    async def _host_name(self, role: str, uuid: str) -> str:
        """The name auth has for a host: its host registry record, else its last heartbeat; "" when none."""
        from teleport_auth.hosts import UnknownHost

        with contextlib.suppress(UnknownHost):
            return (await self.service.hosts.get(uuid)).nodename
        try:
            if role == "Node":
                return (await self.service.presence.get_node(uuid)).nodename
            if role == "Proxy":
                item = await self.service.backend.get(PROXIES_PREFIX + uuid.encode())
                return str(json.loads(item.value).get("nodename", ""))
        except NotFound:
            pass
        return ""

    def lock_event(self, event: str, lock: Lock, actor: str) -> AuditEvent:
        fields: dict[str, Any] = {"name": lock.name, "user": actor, "target": lock.target.to_dict()}
        if lock.message:
            fields["message"] = lock.message
        if lock.expires is not None:
            fields["expires"] = lock.expires.isoformat()
        return self.event(event, **fields)

