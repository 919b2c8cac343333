"""The auth API: JSON over HTTP on mutual TLS (starlette, served by the kernel's TLSServer).

Every call except ``/v1/ping`` and ``/v1/register`` needs a client certificate from the
cluster's user or host CA; the identity in it is authorized on every call through RBAC (the
caller's roles) plus the ``teleport_authorize`` hook of every plugin (deny wins). A denial is
a 403 with the reason and an ``auth`` (T3007W) audit event. ``/v1/openapi.json`` describes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teleport_auth.authority import ca_pin, ca_pins, export_known_hosts
from teleport_auth.issuer import (
    identity_from_tls_cert,
    issue_ssh_user_cert,
    issue_tls_user_cert,
)
from teleport_auth.presence import NodeHeartbeat
from teleport_auth.rotation import RotateRequest, rotation_status
from teleport_auth.tokens import MAX_USER_TOKEN_TTL, system_role
from teleport_auth.users import new_totp_secret, otp_uri
from teleport_core import __version__, keys
from teleport_core.access import AccessRequest, Decision, Identity, IdentityKind, LoginRequest, decide
from teleport_core.audit import AuditEvent, AuditQuery, new_event, parse_time
from teleport_core.backend import Item, range_end
from teleport_core.config.values import format_duration, parse_duration
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    CompareFailed,
    ConfigError,
    NotFound,
    TeleportError,
)
from teleport_core.locks import Lock, LockTarget, lock_message, lock_to_dict, new_lock, parse_lock
from teleport_core.nodes import NodeInfo
from teleport_core.roles import parse_role, role_to_dict
from teleport_core.secret import Secret
from teleport_core.tlsserver import client_certificate

if TYPE_CHECKING:
    from teleport_auth.service import AuthService

STATUS: list[tuple[type[BaseException], int]] = [
    (AuthenticationFailed, 401),
    (AccessDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (CompareFailed, 412),
    (ConfigError, 400),
    (TeleportError, 400),
]
MAX_BODY = 1 << 20
PROXIES_PREFIX = b"/proxies/"
PROXIES_END = range_end(PROXIES_PREFIX)
PROXY_TTL = dt.timedelta(minutes=10)
PROXY_TOKEN_KIND = "proxy_token"  # noqa: S105 - a resource kind, not a secret


class BadRequest(TeleportError):
    """A request body that is not what the endpoint takes."""


def error_response(exc: BaseException) -> JSONResponse:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return JSONResponse({"error": str(exc)}, status_code=status)
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


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body over {MAX_BODY} bytes")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def field(body: dict[str, Any], name: str, kind: type = str, *, required: bool = True, default: Any = None) -> Any:
    """``body[name]`` checked against ``kind``; a 400 naming the field otherwise."""
    if name not in body or body[name] is None:
        if required:
            raise BadRequest(f"{name}: required")
        return default
    value = body[name]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{name}: expected a list of strings")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"{name}: expected an object")
        return value
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise BadRequest(f"{name}: expected {kind.__name__}")
    return value


def ttl_field(body: dict[str, Any], name: str = "ttl") -> dt.timedelta | None:
    text = field(body, name, required=False, default="")
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise BadRequest(f'{name}: expected a duration like "30m" or "1h0m0s", got {json.dumps(text)}') from None


Handler = Callable[["API", Request, Identity | None], Awaitable[Any]]


def endpoint(verb: str | None, kind: str | None, *, anonymous: bool = False, name_param: str = "") -> Callable[
        [Handler], Callable[[API, Request], Awaitable[Response]]]:
    """Authenticate the caller and authorize ``verb`` on ``kind`` before the handler runs."""

    def wrap(handler: Handler) -> Callable[[API, Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def run(self: API, request: Request) -> Response:
            try:
                identity = self.identify(request)
                if identity is None and not anonymous:
                    raise AuthenticationFailed("this call needs a client certificate from the cluster")
                if identity is not None:
                    await self.refuse_locked(request, identity, exempt=handler.__name__ in LOCKED_HOST_CALLS)
                if verb is not None and kind is not None and identity is not None:
                    name = request.path_params.get(name_param, "") if name_param else ""
                    await self.authorize(request, identity, verb, kind, name)
                result = await handler(self, request, identity)
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


IDENTITY_CACHE_SIZE = 4096
#: what a locked host may still do: follow locks (so a locked node learns of its lock and ends its
#: sessions) and report events (its refusals are audited); everything else is refused
LOCKED_HOST_CALLS = frozenset({"list_locks", "changes", "emit_event"})
#: how long the lock a user's deletion creates lasts: the longest a user certificate lives
DELETED_USER_LOCK_TTL = dt.timedelta(hours=30)


class API:
    def __init__(self, service: AuthService) -> None:
        self.service = service
        # verified client certificates: der -> (identity, not_after, the CA objects it was checked against)
        self._identities: OrderedDict[bytes, tuple[Identity, dt.datetime, tuple[object, object]]] = OrderedDict()
        from teleport_auth.uploads import UploadGate

        self._upload_gate = UploadGate()
        from teleport_auth.events_policy import HostNameCache

        self._host_names = HostNameCache(self._host_name)

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
        cached = self._identities.get(der)
        now = dt.datetime.now(dt.UTC)
        if cached is not None and cached[2][0] is cas[0] and cached[2][1] is cas[1] and cached[1] > now:
            self._identities.move_to_end(der)
            return cached[0]
        identity = identity_from_tls_cert(der, list(cas))
        not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
        self._identities[der] = (identity, not_after, cas)
        if len(self._identities) > IDENTITY_CACHE_SIZE:
            self._identities.popitem(last=False)
        return identity

    async def decision(self, identity: Identity, verb: str, kind: str, name: str = "", labels: Any = None,
                       login: str = "") -> Decision:
        request = AccessRequest(identity, verb, kind, name, labels or {}, login)
        svc = self.service
        if identity.kind is IdentityKind.USER:
            await svc.authorizer.load(identity)
        decisions: list[Decision | None] = [svc.authorizer.decide(request)]
        try:
            decisions.extend(svc.ctx.plugins.hook.teleport_authorize(request=request))
        except Exception as exc:
            decisions.append(Decision.deny(f"authorization plugin failed: {type(exc).__name__}: {exc}"))
        return decide(request, decisions)

    async def authorize(self, request: Request, identity: Identity, verb: str, kind: str, name: str = "") -> None:
        result = await self.decision(identity, verb, kind, name)
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
            "method": request.method,
            "path": request.url.path,
            "cluster_name": self.service.cluster_name,
            "addr.remote": f"{client.host}:{client.port}" if client else "",
        }
        await self.service.emit(new_event("auth", "failure", **fields))

    def event(self, event: str, outcome: str = "ok", **fields: Any) -> AuditEvent:
        return new_event(event, outcome, cluster_name=self.service.cluster_name, **fields)

    # -- cluster -----------------------------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def ping(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        return {
            "cluster_name": svc.cluster_name,
            "server_version": __version__,
            "host_ca_pems": svc.host_ca_pems(),
            "auth": {"type": "local", "second_factor": svc.settings.second_factor},
            "session_recording": svc.settings.session_recording,
            "proxy_public_addr": self.proxy_addr(),
        }

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

    @endpoint("read", "cluster_name")
    async def status(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        await svc.reload_cas()
        return {
            "cluster_name": svc.cluster_name,
            "version": __version__,
            "ca_pin": ca_pin(svc.host_ca),
            "ca_pins": ca_pins(svc.host_ca),  # every trusted host CA: two during a rotation
            "cas": {ca.kind.value: rotation_status(ca.rotation) for ca in (svc.user_ca, svc.host_ca)},
        }

    @endpoint("read", "cert_authority")
    async def get_ca(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        kind = request.path_params["ca_type"]
        if kind not in ("user", "host"):
            raise NotFound(f'unknown certificate authority type "{kind}": expected user or host')
        ca = svc.user_ca if kind == "user" else svc.host_ca
        return {
            "type": kind,
            "cluster_name": svc.cluster_name,
            "ssh_public_keys": [k.ssh_public_key_line for k in ca.trusted],
            "tls_certs": [k.tls_cert_pem.decode() for k in ca.trusted],
            "known_hosts": export_known_hosts(ca) if kind == "host" else "",
            "rotation": rotation_status(ca.rotation),
        }

    @endpoint("update", "cert_authority")
    async def rotate_ca(self, request: Request, identity: Identity | None) -> Any:
        """``tctl auth rotate``: move the user, host or both (``all``) CAs to a rotation phase."""
        assert identity is not None
        svc = self.service
        body = await read_json(request)
        rotate = RotateRequest.parse(
            request.path_params["ca_type"],
            phase=field(body, "phase", required=False, default=""),
            mode=field(body, "mode", required=False, default=""),
            grace_period=field(body, "grace_period", required=False, default=""),
        )
        changes = await svc.rotation.rotate(rotate, actor=identity.name)
        return {"rotated": [change.to_dict() for change in changes], "ca_pin": ca_pin(svc.host_ca)}

    # -- joining ------------------------------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def register(self, request: Request, identity: Identity | None) -> Any:
        """Join: auth decides the host's identity (see :mod:`teleport_auth.hosts`). A new host
        presents a token and gets a new host UUID; a registered host adds a role by presenting
        its certificate of another role (no token). Every refusal is audited (``instance.join``
        failure, TJ002E)."""
        body = await read_json(request)
        nodename = field(body, "nodename")
        role = field(body, "role")
        remote = request.client.host if request.client else ""
        try:
            return await self._join(body, identity, nodename, role, remote)
        except TeleportError as exc:
            await self.service.emit(self.event("instance.join", "failure", node_name=nodename, role=role,
                                               error=str(exc), **{"addr.remote": remote}))
            raise

    async def _join(self, body: dict[str, Any], identity: Identity | None, nodename: str, role: str,
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
        if field(body, "host_uuid", required=False, default=""):
            raise BadRequest("host_uuid: a joining host does not choose its UUID; auth assigns it (leave it out)")
        public_key = field(body, "public_key")
        names = check_request(nodename, field(body, "additional_principals", list, required=False, default=[]),
                              field(body, "dns_names", list, required=False, default=[]),
                              field(body, "ip_addresses", list, required=False, default=[]), svc.cluster_name)
        try:
            keys.load_public_key(public_key)  # a bad key is refused before the token is used up
            if identity is not None:  # a registered host adds a role with its certificate
                if identity.kind is not IdentityKind.HOST or "Auth" in identity.roles:
                    raise AccessDenied(f"{identity.kind.value} {json.dumps(identity.name)} cannot join as a host")
                answer = await svc.register_host(nodename, system, public_key, names, uuid=host_uuid(identity))
                method = "certificate"
            else:
                await svc.hosts.conflict("", nodename, names, system)  # before the token is used up
                token = await svc.tokens.consume(Secret(field(body, "token")), system, nodename)
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
        body = await read_json(request)
        public_key = field(body, "public_key")  # names in the body are ignored: auth recorded them at join
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

    # -- roles ----------------------------------------------------------------------------------------------

    @endpoint("list", "role")
    async def list_roles(self, request: Request, identity: Identity | None) -> Any:
        return [role_to_dict(r) for r in await self.service.roles.list()]

    @endpoint("read", "role", name_param="name")
    async def get_role(self, request: Request, identity: Identity | None) -> Any:
        return role_to_dict(await self.service.roles.get(request.path_params["name"]))

    @endpoint("create", "role")
    async def create_role(self, request: Request, identity: Identity | None) -> Any:
        role = parse_role(await read_json(request), "request")
        created = await self.service.roles.create(role)
        await self.service.emit(self.event("role.created", name=role.name, user=identity.name if identity else ""))
        return role_to_dict(created)

    @endpoint(None, None, name_param="name")
    async def upsert_role(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        role = parse_role(await read_json(request), "request")
        if role.name != request.path_params["name"]:
            raise BadRequest(f"metadata.name {json.dumps(role.name)} does not match the URL")
        svc = self.service
        try:
            await svc.roles.get(role.name)
            exists = True
        except NotFound:
            exists = False
        await self.authorize(request, identity, "update" if exists else "create", "role", role.name)
        await svc.roles.upsert(role)
        await svc.emit(self.event("role.updated" if exists else "role.created", name=role.name, user=identity.name))
        return role_to_dict(role)

    @endpoint("delete", "role", name_param="name")
    async def delete_role(self, request: Request, identity: Identity | None) -> Any:
        name = request.path_params["name"]
        users = [u.name for u in await self.service.users.list() if name in u.roles]
        if users:
            raise BadRequest(f'role "{name}" is assigned to users {", ".join(users)}; remove it from them first')
        await self.service.roles.delete(name)
        await self.service.emit(self.event("role.deleted", name=name, user=identity.name if identity else ""))
        return {"deleted": name}

    @endpoint(None, None)
    async def create_resources(self, request: Request, identity: Identity | None) -> Any:
        """``tctl create [-f]``: every document is validated first; then all are written, or none."""
        assert identity is not None
        from teleport_auth.rolestore import _encode_role, role_key
        from teleport_core.backend import Action, Condition, Item

        body = await read_json(request)
        force = field(body, "force", bool, required=False, default=False)
        docs = body.get("resources")
        if not isinstance(docs, list) or not docs:
            raise BadRequest("resources: expected a non-empty list of resources")
        roles = []
        for index, doc in enumerate(docs):
            if not isinstance(doc, dict) or doc.get("kind") != "role":
                kind = doc.get("kind") if isinstance(doc, dict) else None
                raise BadRequest(f"resources[{index}]: unsupported kind {json.dumps(kind)} (supported: role)")
            roles.append(parse_role(doc, f"resources[{index}]"))
        names = [r.name for r in roles]
        if len(set(names)) != len(names):
            raise BadRequest("the same role appears twice")
        svc = self.service
        existing = {r.name for r in await svc.roles.list()}
        for role in roles:
            if role.name in existing and not force:
                raise AlreadyExists(f'role "{role.name}" already exists; use -f to overwrite it')
            await self.authorize(request, identity, "update" if role.name in existing else "create", "role", role.name)
        conditions = [] if force else [Condition.not_exists(role_key(r.name)) for r in roles]
        await svc.backend.atomic_write(conditions, [Action.put(Item(role_key(r.name), _encode_role(r))) for r in roles])
        svc.authorizer.invalidate()
        for role in roles:
            event = "role.updated" if role.name in existing else "role.created"
            await svc.emit(self.event(event, name=role.name, user=identity.name))
        return [{"kind": "role", "name": r.name, "created": r.name not in existing} for r in roles]

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
        body = await read_json(request)
        name = field(body, "name")
        roles = field(body, "roles", list)
        traits = field(body, "traits", dict, required=False, default={})
        ttl = ttl_field(body)
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
        body = await read_json(request)
        roles = field(body, "roles", list, required=False)
        if roles is not None:
            await self.check_roles_exist(roles)
        traits = field(body, "traits", dict, required=False)
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
        body = await read_json(request)
        return await self._invite(name, ttl_field(body), "reset")

    @endpoint("read", "user_token")
    async def lookup_user_token(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        body = await read_json(request)
        token = await svc.user_tokens.get(Secret(field(body, "token")))
        out: dict[str, Any] = {"user": token.user, "kind": token.kind, "expires": token.expires.isoformat()}
        if token.otp_secret is not None:
            out["otp_uri"] = otp_uri(svc.cluster_name, token.user, token.otp_secret)
        return out

    @endpoint("update", "user_token")
    async def complete_user_token(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        body = await read_json(request)
        token = Secret(field(body, "token"))
        password = Secret(field(body, "password"))
        code = field(body, "second_factor_token", required=False, default="")
        info = await svc.user_tokens.get(token)
        if info.otp_secret is not None and not code:
            raise BadRequest("second_factor_token: required (the code from the authenticator app)")
        from teleport_auth.users import check_password_policy

        try:
            check_password_policy(password)
        except TeleportError as exc:
            raise BadRequest(f"password: {exc}") from None
        info = await svc.user_tokens.consume(token)  # once only, even when two requests race
        await svc.users.set_password(info.user, password)
        if info.otp_secret is not None:
            await svc.users.set_totp(info.user, info.otp_secret, Secret(code))
        await svc.emit(self.event("user.update", name=info.user, user=info.user, reason=f"{info.kind} completed"))
        return {"user": info.user}

    # -- login and certificates ----------------------------------------------------------------------------------

    async def _certs_for(self, identity: Identity, public_key: str, ttl: dt.timedelta | None,
                         client_ip: str = "") -> dict[str, Any]:
        svc = self.service
        roleset = await svc.authorizer.roleset_for(identity)
        user = Identity(identity.name, IdentityKind.USER, roleset.names, identity.traits, tuple(roleset.all_logins),
                        svc.cluster_name)
        hook = svc.ctx.plugins.hook
        try:
            ssh = issue_ssh_user_cert(
                svc.user_ca, hook, public_key=public_key, identity=user, ttl=ttl,
                max_session_ttl=roleset.max_session_ttl, permit_agent_forwarding=roleset.forward_agent,
                permit_port_forwarding=roleset.port_forwarding, client_ip=client_ip or None,
            )
            tls = issue_tls_user_cert(svc.user_ca, hook, public_key=public_key, identity=user, ttl=ttl,
                                      max_session_ttl=roleset.max_session_ttl)
        except keys.UnsupportedKey as exc:
            raise BadRequest(f"public_key: {exc}") from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        valid_before = ssh.request.valid_before
        await svc.emit(self.event("cert.create", user=user.name, cert_type="user",
                                  identity={"user": user.name, "roles": list(user.roles), "logins": list(user.logins),
                                            "expires": valid_before.isoformat()}))
        return {
            "username": user.name,
            "roles": list(user.roles),
            "logins": list(user.logins),
            "ssh_cert": ssh.data.decode().strip(),
            "tls_cert": tls.data.decode(),
            "host_ca_pems": svc.host_ca_pems(),
            "known_hosts": export_known_hosts(svc.host_ca).splitlines(),
            "valid_before": valid_before.isoformat(),
            "cluster_name": svc.cluster_name,
        }

    @endpoint("create", "login")
    async def login(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        body = await read_json(request)
        username = field(body, "user")
        password = Secret(field(body, "password"))
        otp_text = field(body, "otp", required=False, default="")
        otp = Secret(otp_text) if otp_text else None
        public_key = field(body, "public_key")
        ttl = ttl_field(body)
        client_ip = field(body, "client_ip", required=False, default="")
        remote = {"addr.remote": client_ip}
        try:
            found = await asyncio.to_thread(
                svc.ctx.plugins.hook.teleport_authenticate,
                request=LoginRequest(username, password, otp, client_ip),
            )
            user = found if found is not None else await svc.users.authenticate(
                username, password, otp, svc.settings.second_factor)
        except AuthenticationFailed as exc:
            await svc.emit(self.event("user.login", "failure", user=username, method="local", success=False,
                                      error=str(exc), **remote))
            raise
        await self.refuse_locked(request, user, issued=dt.datetime.now(dt.UTC))  # no certificates while locked
        result = await self._certs_for(user, public_key, ttl, client_ip)
        await svc.emit(self.event("user.login", user=username, method="local", success=True, **remote))
        return result

    @endpoint("create", "user_cert")
    async def sign_user(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        body = await read_json(request)
        user = await svc.users.get(field(body, "user"))
        target = user.identity(svc.cluster_name)
        await self.refuse_locked(request, target, issued=dt.datetime.now(dt.UTC))  # no certificates while locked
        return await self._certs_for(target, field(body, "public_key"), ttl_field(body))

    # -- join tokens ---------------------------------------------------------------------------------------------

    async def proxy_token_refusal(self, identity: Identity) -> str:
        """Why ``identity`` may not create (or see) join tokens admitting proxies, "" if it may:
        this auth server's own identity (``tctl`` on the auth host) may; a user needs ``create``
        on ``proxy_token`` from a rule that names that kind (``*`` does not grant it) and no
        deny rule or plugin refusing it. A proxy token makes a host that terminates users' TLS."""
        who = f"access denied to {identity.kind.value} {json.dumps(identity.name)}"
        if identity.kind is IdentityKind.HOST:
            return "" if "Auth" in identity.roles else f"{who}: only auth creates tokens for proxies"
        decision = await self.decision(identity, "create", PROXY_TOKEN_KIND)
        if not decision.allowed:
            return f"{who}: tokens admitting proxies need create on {PROXY_TOKEN_KIND} ({decision.reason})"
        roleset = await self.service.authorizer.roleset_for(identity)
        if not any(PROXY_TOKEN_KIND in rule.resources and rule.matches(PROXY_TOKEN_KIND, "create")
                   for role in roleset.roles for rule in role.allow.rules):
            return (f"{who}: tokens admitting proxies need a role rule that names {PROXY_TOKEN_KIND} "
                    f"explicitly (resources: [{PROXY_TOKEN_KIND}], verbs: [create]); * does not grant it")
        return ""

    @endpoint("list", "token")
    async def list_tokens(self, request: Request, identity: Identity | None) -> Any:
        """Join tokens; static ones masked (their values never leave auth), and the values of
        tokens admitting proxies only for callers allowed to create them."""
        from teleport_auth.tokens import MASKED

        assert identity is not None
        found = await self.service.tokens.list()
        proxy_ok = not any("Proxy" in t.roles for t in found if not t.static) or not await self.proxy_token_refusal(
            identity)
        return [
            {"token": t.token.reveal() if not t.static and (proxy_ok or "Proxy" not in t.roles) else MASKED,
             "roles": list(t.roles), "expires": t.expires.isoformat() if t.expires else None, "static": t.static}
            for t in found
        ]

    @endpoint("create", "token")
    async def create_token(self, request: Request, identity: Identity | None) -> Any:
        from teleport_auth.tokens import NO_AUTH_TOKENS, system_roles

        assert identity is not None
        svc = self.service
        body = await read_json(request)
        roles = field(body, "roles", list, required=False, default=["node"])
        try:
            wanted = system_roles(roles)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        reason = ""
        if "Auth" in wanted:
            reason = f"access denied to {identity.kind.value} {json.dumps(identity.name)}: {NO_AUTH_TOKENS}"
        elif "Proxy" in wanted:
            reason = await self.proxy_token_refusal(identity)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        try:
            token = await svc.tokens.create(wanted, ttl_field(body))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert token.expires is not None
        await svc.emit(self.event("join_token.create", roles=list(token.roles), user=identity.name,
                                  expires=token.expires.isoformat()))
        return {"token": token.token.reveal(), "roles": list(token.roles), "expires": token.expires.isoformat(),
                "ca_pin": ca_pin(svc.host_ca), "ca_pins": ca_pins(svc.host_ca)}

    @endpoint("delete", "token")
    async def delete_token(self, request: Request, identity: Identity | None) -> Any:
        body = await read_json(request)
        await self.service.tokens.remove(Secret(field(body, "token")))
        return {"deleted": True}

    # -- nodes ------------------------------------------------------------------------------------------------

    @endpoint("list", "node")
    async def list_nodes(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        nodes = await self.service.presence.list_nodes()
        if identity.kind is IdentityKind.USER:
            roleset = await self.service.authorizer.roleset_for(identity)
            nodes = [n for n in nodes if roleset.node_visible(n.labels)]
        return [node_dict(n) for n in nodes]

    @endpoint("update", "node", name_param="uuid")
    async def upsert_node(self, request: Request, identity: Identity | None) -> Any:
        body = await read_json(request)
        uuid = request.path_params["uuid"]
        heartbeat = NodeHeartbeat(
            uuid=uuid,
            nodename=field(body, "nodename"),
            addr=field(body, "addr", required=False, default=""),
            labels=field(body, "labels", dict, required=False, default={}),
            cmd_labels=field(body, "cmd_labels", dict, required=False, default={}),
            tunnel=field(body, "tunnel", bool, required=False, default=False),
        )
        assert identity is not None
        await self.check_heartbeat(request, identity, "Node", uuid, heartbeat.nodename)
        try:
            stored = await self.service.presence.upsert_node(heartbeat)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return node_dict(stored.info())

    async def check_heartbeat(self, request: Request, identity: Identity, role: str, uuid: str, nodename: str) -> None:
        """A heartbeat comes from a host and names a registered host with ``role`` and its
        recorded nodename (auth servers, which record every host, are trusted; users, whatever
        their roles, do not heartbeat); a refusal is audited (T3007W)."""
        from teleport_auth.hosts import UnknownHost

        if identity.kind is IdentityKind.HOST and "Auth" in identity.roles:
            return
        problem = ""
        try:
            if identity.kind is not IdentityKind.HOST:
                raise UnknownHost(f"only hosts send heartbeats, and only their own {role.lower()} entry")
            record = await self.service.hosts.get(uuid)
            if role not in record.roles:
                problem = f"host {uuid} is not registered with role {role}"
            elif nodename != record.nodename:
                problem = (f"host {uuid} is registered as {json.dumps(record.nodename)}, "
                           f"not {json.dumps(nodename)}: a host heartbeats under its own nodename")
        except UnknownHost as exc:
            problem = str(exc)
        if problem:
            reason = f"access denied to {identity.kind.value} {json.dumps(identity.name)}: {problem}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)

    @endpoint("delete", "node", name_param="uuid")
    async def delete_node(self, request: Request, identity: Identity | None) -> Any:
        """``tctl rm node/<uuid>``: the node's inventory entry and its host record go, which
        frees its nodename; the host must join again with a token (see teleport_auth.hosts)."""
        svc = self.service
        uuid = request.path_params["uuid"]
        removed = await svc.hosts.remove(uuid)
        try:
            await svc.presence.delete_node(uuid)
        except NotFound:
            if removed is None:
                raise
        return {"deleted": uuid, "nodename": removed.nodename if removed else ""}

    # -- proxies ------------------------------------------------------------------------------------------

    @endpoint("update", "proxy", name_param="uuid")
    async def upsert_proxy(self, request: Request, identity: Identity | None) -> Any:
        """A proxy's heartbeat: the addresses clients use (invite URLs name the proxy)."""
        body = await read_json(request)
        uuid = request.path_params["uuid"]
        entry = {"uuid": uuid, "nodename": field(body, "nodename"), "public_addr": field(body, "public_addr"),
                 "ssh_public_addr": field(body, "ssh_public_addr", required=False, default="")}
        assert identity is not None
        await self.check_heartbeat(request, identity, "Proxy", uuid, entry["nodename"])
        expires = dt.datetime.now(dt.UTC) + PROXY_TTL
        await self.service.backend.put(Item(PROXIES_PREFIX + uuid.encode(), json.dumps(entry).encode(), expires))
        self._proxy_public = entry["public_addr"]
        return entry

    @endpoint("list", "proxy")
    async def list_proxies(self, request: Request, identity: Identity | None) -> Any:
        return [json.loads(item.value) for item in await self.service.backend.get_range(PROXIES_PREFIX, PROXIES_END)]

    # -- audit ---------------------------------------------------------------------------------------------

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

    @endpoint("create", "event")
    async def emit_event(self, request: Request, identity: Identity | None) -> Any:
        """Store a host's audit event, checked and stamped by :mod:`teleport_auth.events_policy`."""
        from teleport_auth import events_policy
        from teleport_auth.authz import host_uuid

        body = await read_json(request)
        try:
            event = AuditEvent.from_dict(body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        assert identity is not None
        # only hosts emit, each only its system role's event types, stamped by us: teleport_auth.events_policy
        reason = events_policy.refusal(identity, event)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        roles = events_policy.system_roles(identity)
        if "Auth" not in roles:
            hostname = await self._host_names.get(roles[0], host_uuid(identity))
            event = events_policy.stamp(event, identity, hostname, self.service.cluster_name)
        await self.service.audit.emit(event)  # durable before we answer: the emitter may drop its copy
        return {"stored": event.uid}

    @endpoint("list", "event")
    async def search_events(self, request: Request, identity: Identity | None) -> Any:
        params = request.query_params
        now = dt.datetime.now(dt.UTC)
        try:
            since_text, until_text = params.get("since", ""), params.get("until", "")
            since = parse_time(since_text) if since_text else now - dt.timedelta(days=1)
            until = parse_time(until_text) if until_text else now
            limit = int(params.get("limit", "500"))
        except ValueError as exc:
            raise BadRequest(f"bad query: {exc}") from None
        query = AuditQuery(since=since, until=until, event_types=tuple(params.getlist("type")),
                           user=params.get("user", ""), sid=params.get("sid", ""), limit=min(max(limit, 1), 5000),
                           cursor=params.get("cursor", ""))
        page = await self.service.audit.search(query)
        return {"events": [e.to_dict() for e in page.events], "next_cursor": page.next_cursor}

    # -- session recordings ------------------------------------------------------------------------

    @endpoint("create", "session")
    async def upload_recording(self, request: Request, identity: Identity | None) -> Any:
        """A node streams a finished recording (asciicast v2); stored through the session storage.

        Only the host that emitted the session's ``session.start`` may upload it, once (an
        identical re-upload is a no-op): see :mod:`teleport_auth.uploads`."""
        import tempfile
        from pathlib import Path

        from teleport_auth.authz import host_uuid
        from teleport_auth.uploads import HEADER_MAX, header_start, session_hosts, upload_refusal
        from teleport_core.sessions import check_session_id

        assert identity is not None
        sid = check_session_id(request.path_params["sid"])
        uploader = host_uuid(identity) if identity.kind is IdentityKind.HOST else ""
        stream = request.stream()
        head = b""
        async for chunk in stream:  # the header line first: its timestamp narrows the audit search
            head += chunk
            if b"\n" in head or len(head) >= HEADER_MAX:
                break
        hosts = await session_hosts(self.service.audit, sid, header_start(head))
        reason = upload_refusal(hosts, uploader, sid)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        storage = await self.service.ctx.resources.session_storage()
        size = len(head)
        with tempfile.TemporaryDirectory(prefix="teleport-upload-") as tmp:
            path = Path(tmp) / f"{sid}.cast"
            with open(path, "wb") as out:
                out.write(head)
                async for chunk in stream:
                    size += len(chunk)
                    out.write(chunk)
            try:
                stored = await self._upload_gate.store(storage, sid, path)
            except AlreadyExists as exc:
                await self.audit_denial(request, identity, str(exc))
                raise
        return {"stored": sid, "size": size, "unchanged": not stored}

    @endpoint(None, None)
    async def list_recordings(self, request: Request, identity: Identity | None) -> Any:
        """Sessions that ended in a window (``since``, ``until``, ``limit``): ``list`` on ``session``
        for the caller, or for the user whose certificate a proxy forwarded (teleport_auth.recordings)."""
        from teleport_auth import recordings

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        await self.authorize(request, acting, "list", "session")
        since, until, limit = recordings.window(request.query_params)
        return {"sessions": await recordings.list_sessions(self, since, until, limit)}

    @endpoint(None, None)
    async def read_recording(self, request: Request, identity: Identity | None) -> Any:
        """The asciicast v2 recording of a session: ``read`` on ``session`` (audited as
        ``session.recording.access``), for the caller or the user a proxy forwarded."""
        import shutil
        import tempfile
        from pathlib import Path

        from starlette.background import BackgroundTask
        from starlette.responses import FileResponse

        from teleport_auth import recordings
        from teleport_core.sessions import check_session_id

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        sid = check_session_id(request.path_params["sid"])
        await self.authorize(request, acting, "read", "session", sid)
        storage = await self.service.ctx.resources.session_storage()
        tmp = tempfile.mkdtemp(prefix="teleport-recording-")
        path = Path(tmp) / f"{sid}.cast"
        try:
            await storage.download(sid, path)
        except NotFound:
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotFound(f"no recording of session {sid} (unknown, still running or not uploaded yet)") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        await self.service.emit(self.event("session.recording.access", sid=sid, user=acting.name))
        return FileResponse(path, media_type="application/x-asciicast", filename=f"{sid}.cast",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))

    # -- locks -----------------------------------------------------------------------------------------

    @endpoint("list", "lock")
    async def list_locks(self, request: Request, identity: Identity | None) -> Any:
        return [lock_to_dict(lock) for lock in await self.service.locks.list()]

    @endpoint(None, None, name_param="name")
    async def upsert_lock(self, request: Request, identity: Identity | None) -> Any:
        """``tctl lock``: create (or replace) a lock; ``created_at``/``created_by`` are set here."""
        assert identity is not None
        name = request.path_params["name"]
        lock = parse_lock(await read_json(request), "request")
        if lock.name != name:
            raise BadRequest(f"metadata.name {json.dumps(lock.name)} does not match the URL")
        now = dt.datetime.now(dt.UTC)
        if lock.expires is not None and lock.expires <= now:
            raise BadRequest(f"metadata.expires: {lock.expires.isoformat()} is in the past")
        svc = self.service
        try:
            await svc.locks.get(name)
            exists = True
        except NotFound:
            exists = False
        await self.authorize(request, identity, "update" if exists else "create", "lock", name)
        stored = Lock(name, lock.target, lock.message, lock.expires, now, identity.name)
        await svc.locks.upsert(stored)
        await svc.emit(self.lock_event("lock.created", stored, identity.name))
        return lock_to_dict(stored)

    @endpoint("delete", "lock", name_param="name")
    async def delete_lock(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        name = request.path_params["name"]
        lock = await svc.locks.get(name)
        await svc.locks.delete(name)
        await svc.emit(self.lock_event("lock.deleted", lock, identity.name if identity else ""))
        return {"deleted": name}

    def lock_event(self, event: str, lock: Lock, actor: str) -> AuditEvent:
        fields: dict[str, Any] = {"name": lock.name, "user": actor, "target": lock.target.to_dict()}
        if lock.message:
            fields["message"] = lock.message
        if lock.expires is not None:
            fields["expires"] = lock.expires.isoformat()
        return self.event(event, **fields)

    # -- change notification (long poll) ------------------------------------------------------------

    @endpoint(None, None)
    async def changes(self, request: Request, identity: Identity | None) -> Any:
        """Long poll: the version of a kind's state; waits (up to ``timeout`` s) while it equals ``version``.

        Servers cache roles and CA keys and call this in a loop, so a change takes effect within
        a round trip, without re-login and without polling the data itself.
        """
        assert identity is not None
        kind = request.query_params.get("kind", "")
        if kind not in CHANGE_PREFIXES:
            raise BadRequest(f"kind: expected one of {', '.join(sorted(CHANGE_PREFIXES))}")
        await self.authorize(request, identity, "read", kind)
        try:
            timeout = min(max(float(request.query_params.get("timeout", "30")), 0.0), 60.0)
        except ValueError:
            raise BadRequest("timeout: expected seconds") from None
        seen = request.query_params.get("version", "")
        prefix = CHANGE_PREFIXES[kind]
        backend = self.service.backend
        async with backend.watch([prefix]) as watcher:
            await anext(watcher)  # INIT: every change from here on is seen
            current = await state_version(backend, prefix)
            if current == seen:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(anext(watcher), timeout)
                current = await state_version(backend, prefix)
        return {"kind": kind, "version": current}

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


CHANGE_PREFIXES = {"role": b"/roles/", "cert_authority": b"/authorities/", "lock": b"/locks/"}


async def state_version(backend: Any, prefix: bytes) -> str:
    """A token that changes whenever any item under ``prefix`` is written or deleted."""
    from teleport_core.backend import range_end

    items = await backend.get_range(prefix, range_end(prefix))
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.key + b"\0" + item.revision.encode() + b"\n")
    return digest.hexdigest()[:32]


def node_dict(node: NodeInfo) -> dict[str, Any]:
    return {"uuid": node.uuid, "nodename": node.nodename, "addr": node.addr, "labels": dict(node.labels),
            "tunnel": node.tunnel}


ROUTES: list[tuple[str, str, str, str]] = [
    # path, method, handler, summary
    ("/v1/ping", "GET", "ping", "Cluster name, version, host CA certificates, auth settings (no certificate needed)"),
    ("/v1/status", "GET", "status", "Cluster status: CA pin and the rotation state of each CA"),
    ("/v1/cas/{ca_type}", "GET", "get_ca", "Public keys and certificates of the user or host CA"),
    ("/v1/cas/{ca_type}/rotate", "POST", "rotate_ca",
     "Rotate the user, host or all CAs: phase, mode (manual or auto), grace_period (tctl auth rotate)"),
    ("/v1/register", "POST", "register",
     "Join with a token (or another role's host certificate): auth assigns the host UUID and records its names"),
    ("/v1/certs/host", "POST", "renew_host_certs",
     "A host renews its own certificates, with the names auth recorded (e.g. during a CA rotation)"),
    ("/v1/roles", "GET", "list_roles", "List roles"),
    ("/v1/roles", "POST", "create_role", "Create a role"),
    ("/v1/roles/{name}", "GET", "get_role", "Read a role"),
    ("/v1/roles/{name}", "PUT", "upsert_role", "Create or replace a role"),
    ("/v1/roles/{name}", "DELETE", "delete_role", "Delete a role"),
    ("/v1/resources", "POST", "create_resources", "Create several resources, all or nothing (tctl create)"),
    ("/v1/users", "GET", "list_users", "List users"),
    ("/v1/users", "POST", "create_user", "Create a user and its signup invite"),
    ("/v1/users/{name}", "GET", "get_user", "Read a user"),
    ("/v1/users/{name}", "PUT", "update_user", "Change a user's roles or traits"),
    ("/v1/users/{name}", "DELETE", "delete_user", "Delete a user"),
    ("/v1/users/{name}/reset", "POST", "reset_user", "A password reset link for a user"),
    ("/v1/usertokens/lookup", "POST", "lookup_user_token", "The user and OTP enrollment URI of an invite"),
    ("/v1/usertokens", "PUT", "complete_user_token", "Complete a signup or reset: password and OTP code"),
    ("/v1/login", "POST", "login", "Check a password login and sign the user's key (proxies)"),
    ("/v1/certs/user", "POST", "sign_user", "Certificates for a user without a login (tctl auth sign)"),
    ("/v1/tokens", "GET", "list_tokens", "List join tokens"),
    ("/v1/tokens", "POST", "create_token", "Create a join token"),
    ("/v1/tokens/delete", "POST", "delete_token", "Delete a join token"),
    ("/v1/nodes", "GET", "list_nodes", "Registered nodes the caller may see"),
    ("/v1/nodes/{uuid}", "PUT", "upsert_node", "Heartbeat of a node (its own entry only, its recorded nodename)"),
    ("/v1/nodes/{uuid}", "DELETE", "delete_node", "Remove a node and its host record, freeing its nodename"),
    ("/v1/proxies", "GET", "list_proxies", "Proxies that sent a heartbeat recently, with their public addresses"),
    ("/v1/proxies/{uuid}", "PUT", "upsert_proxy", "Heartbeat of a proxy (its own entry only)"),
    ("/v1/events", "POST", "emit_event", "Store an audit event (durable when answered)"),
    ("/v1/events", "GET", "search_events", "Search audit events (since, until, type, user, sid, limit, cursor)"),
    ("/v1/changes", "GET", "changes", "Long poll until roles, CAs or locks change (kind, version, timeout)"),
    ("/v1/locks", "GET", "list_locks", "Locks in force (list on lock)"),
    ("/v1/locks/{name}", "PUT", "upsert_lock",
     "Create or replace a lock (a lock resource: target user, role, login or node; message; expires)"),
    ("/v1/locks/{name}", "DELETE", "delete_lock", "Delete a lock: the identity it targeted is allowed again"),
    ("/v1/sessions/{sid}/recording", "PUT", "upload_recording",
     "Upload a finished session recording (asciicast v2 body; only the node that started the session, once)"),
    ("/v1/sessions", "GET", "list_recordings",
     "Sessions that ended in a window (since, until, limit), newest first (list on session)"),
    ("/v1/sessions/{sid}/recording", "GET", "read_recording",
     "Download a session recording, asciicast v2 (read on session; audited)"),
]


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method, handler, summary in ROUTES:
        paths.setdefault(path, {})[method.lower()] = {
            "operationId": handler,
            "summary": summary,
            "responses": {"200": {"description": "OK (JSON)"},
                          "400": {"description": "bad request: {\"error\": reason}"},
                          "401": {"description": "no or bad credentials"},
                          "403": {"description": "access denied: {\"error\": reason}"},
                          "404": {"description": "not found"}},
        }
    return {"openapi": "3.0.3", "info": {"title": "teleport-py auth API", "version": __version__}, "paths": paths}


def build_app(service: AuthService) -> Starlette:
    api = API(service)
    routes = [Route(path, getattr(api, handler), methods=[method]) for path, method, handler, _ in ROUTES]
    routes.append(Route("/v1/openapi.json", api.openapi, methods=["GET"]))
    return Starlette(routes=routes)
