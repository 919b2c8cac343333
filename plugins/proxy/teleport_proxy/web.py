"""The proxy's HTTPS API (starlette), Teleport-like paths under ``/webapi/``.

- ``GET /webapi/ping``, ``GET /webapi/find``, ``GET /v1/webapi/ping``: cluster name, proxy
  addresses, auth settings (second factor)
- ``POST /v1/webapi/ssh/certs``: password (+ OTP) login; signs the client's public key through
  auth and returns SSH and TLS certificates and the host CA for known_hosts
- ``GET /v1/webapi/users/password/token/{token}`` -> ``{"user", "otp_uri"}``;
  ``PUT /v1/webapi/users/password/token`` with ``{"token", "password", "second_factor_token"}``
  (the pages ``/web/invite/{token}`` and ``/web/reset/{token}`` are teleport-web's)
- ``GET /v1/webapi/sites/{cluster}/nodes``: the nodes the caller may see. The caller is
  authenticated by the TLS client certificate ``tsh login`` obtained (mutual TLS on this port,
  optional for the other endpoints). For a trusted leaf ``cluster`` the leaf's proxy answers
  through its reverse tunnel, for the caller's certificate with roles mapped by the leaf.
- ``GET /v1/webapi/sites``: ``tsh clusters``: this cluster and the leaves the caller's roles'
  ``cluster_labels`` allow, with their tunnel's status (:mod:`teleport_proxy.clusters`).
- ``GET /v1/webapi/sites/{cluster}/events/search/sessions?from=&to=&limit=&search=``: ended sessions;
  ``GET /v1/webapi/sites/{cluster}/sessions``: live sessions (``session_tracker`` resources);
  ``GET /v1/webapi/sites/{cluster}/sessions/{sid}/recording``: a recording (asciicast v2). The
  proxy asks auth with its own certificate and forwards the caller's
  (``teleport_core.api.client.FORWARDED_USER_CERT``): auth authorizes the user, not the proxy.
- Access requests (``tsh request``), the same way (auth decides, for the caller):
  ``POST|GET /v1/webapi/sites/{cluster}/accessrequest``, ``GET .../accessrequest/{id}``,
  ``POST .../accessrequest/{id}/review``, ``GET .../access_capabilities`` (what ``tsh login``
  may request and whether it must), and ``POST /v1/webapi/sites/{cluster}/certs/reissue``
  (``tsh login --request-id``, ``tsh request drop``: the caller's certificates with the roles of
  its approved requests).

- ``GET /v1/webapi/openapi.json``: this API as an OpenAPI 3.1 document; bodies, queries and path
  parameters are the models of :mod:`teleport_proxy.webmodels`, validated before a handler acts
  (a 400 naming the field).

Errors are ``{"error": reason}`` with the status auth gave (401, 403, 404 ...). Every response
carries the security headers of :mod:`teleport_proxy.headers` (HSTS, a strict CSP, no framing).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teleport_core import __version__
from teleport_core.api.client import ConnectionProblem
from teleport_core.api.schema import PayloadTooLarge, read_body, validate_body, validate_path, validate_query
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    AuditUnavailable,
    AuthenticationFailed,
    CompareFailed,
    NotFound,
    TeleportError,
)
from teleport_core.net.tlsserver import client_certificate
from teleport_proxy import pages
from teleport_proxy.certs import UserCert, user_from_tls_cert
from teleport_proxy.headers import SecurityHeaders
from teleport_proxy.webmodels import (
    OPENAPI_PATH,
    PATH_PARAMS,
    SMALL_BODY,
    AccessRequestBody,
    AccessRequestsQuery,
    CompleteInviteBody,
    LoginBody,
    RecordingsQuery,
    ReissueBody,
    ReviewBody,
    TrustedClusterValidateBody,
    openapi_document,
)

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

STATUS: list[tuple[type[BaseException], int]] = [
    (AuthenticationFailed, 401), (AccessDenied, 403), (NotFound, 404), (AlreadyExists, 409),
    (CompareFailed, 412), (ConnectionProblem, 502), (AuditUnavailable, 503), (PayloadTooLarge, 413),
    (TeleportError, 400),
]
MAX_BODY = SMALL_BODY
M = TypeVar("M", bound=BaseModel)


def error(exc: BaseException) -> JSONResponse:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            # a message may quote the caller's input: never let it make the answer unencodable
            message = str(exc).encode("utf-8", "replace").decode("utf-8")
            return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": "internal error"}, status_code=500)


async def body_of(request: Request, model: type[M]) -> M:
    """The request body as ``model`` (:mod:`teleport_proxy.webmodels`): a 400 naming the field, a 413 over the limit."""
    return validate_body(model, await read_body(request, MAX_BODY))


class WebAPI:
    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy

    def _ping(self) -> dict[str, Any]:
        p = self.proxy
        return {
            "cluster_name": p.cluster_name,
            "server_version": __version__,
            "auth": {"type": "local", "second_factor": p.second_factor},
            "proxy": {"ssh": {"listen_addr": str(p.settings.listen_addr), "public_addr": p.public_ssh_addr(),
                              "tunnel_listen_addr": ("" if p.settings.proxy_listener_mode == "multiplex"
                                                     else str(p.settings.tunnel_listen_addr)),
                              "ssh_tunnel_public_addr": p.public_tunnel_addr()},
                      "web_public_addr": p.public_web_addr(), "tls_routing_enabled": True},
        }

    async def ping(self, request: Request) -> Response:
        return JSONResponse(self._ping())

    async def login(self, request: Request) -> Response:
        limited = await self.proxy.login_limited(request.client.host if request.client else "")
        if limited is not None:  # 429 + Retry-After: too many attempts from this address
            return limited
        try:
            body = await body_of(request, LoginBody)
            client_ip = request.client.host if request.client else ""
            answer = await self.proxy.auth.login(body.user, body.password, body.otp_token, body.pub_key, body.ttl,
                                                  client_ip)
            self.proxy.login_rate.refund(client_ip)  # only failed attempts count
        except TeleportError as exc:
            return error(exc)
        reply = certs_reply(answer)
        # the leaves' host CAs (their nodes' host certificates), each only for its own cluster's hosts
        reply["trusted_host_signers"] = self.proxy.clusters.known_hosts()
        return JSONResponse(reply)

    async def get_invite(self, request: Request) -> Response:
        try:
            validate_path(PATH_PARAMS, request.path_params)
            found = await self.proxy.auth.get_user_token(request.path_params["token"])
        except TeleportError as exc:
            return error(exc)
        out = {"user": found["user"]}
        if found.get("otp_uri"):
            out["otp_uri"] = found["otp_uri"]
        return JSONResponse(out)

    async def complete_invite(self, request: Request) -> Response:
        try:
            body = await body_of(request, CompleteInviteBody)
            done = await self.proxy.auth.complete_user_token(body.token, body.password, body.second_factor_token)
        except TeleportError as exc:
            return error(exc)
        return JSONResponse({"user": done["user"]})

    async def validate_trusted_cluster(self, request: Request) -> Response:
        """The trusted clusters handshake of a leaf's auth (no certificate: the body carries the root's
        single-use trusted_cluster token): forwarded to auth, which checks and audits it."""
        limited = await self.proxy.login_limited(request.client.host if request.client else "")
        if limited is not None:  # 429 + Retry-After: too many attempts from this address
            return limited
        try:
            body = await body_of(request, TrustedClusterValidateBody)
            answer = await self.proxy.auth.call("POST", "/v1/trustedclusters/validate", body.model_dump())
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(answer)

    def caller(self, request: Request) -> UserCert:
        """The user of the verified client certificate; AccessDenied (audited) while a lock matches it."""
        der = client_certificate(request.scope)
        if der is None:
            reason = "a client certificate from tsh login is required"
            client = request.client  # audited (T3007W), once per source and period
            if self.proxy.web is not None:
                self.proxy.web.refused(f"{client.host}:{client.port}" if client else "",
                                       f"{request.method} {request.url.path}: {reason}")
            raise AuthenticationFailed(reason)
        user = user_from_tls_cert(der)
        locked = self.proxy.lock_reason(user)
        if locked:
            client = request.client
            remote = f"{client.host}:{client.port}" if client else ""
            self.proxy.spawn_audit(user.user, locked, remote, path=request.url.path)
            raise AccessDenied(locked)
        return user

    async def sites(self, request: Request) -> Response:
        """``tsh clusters``: this cluster and the leaf clusters the caller's roles let them see."""
        try:
            user = self.caller(request)
            return JSONResponse(self.proxy.clusters.sites_for(user))
        except TeleportError as exc:
            return error(exc)

    async def nodes(self, request: Request) -> Response:
        try:
            validate_path(PATH_PARAMS, request.path_params)
            user = self.caller(request)
            cluster = request.path_params["cluster"]
            if cluster != self.proxy.cluster_name:  # a leaf cluster: asked through its tunnel
                der = client_certificate(request.scope)
                assert der is not None
                return JSONResponse(await self.proxy.clusters.nodes(user, der, cluster))
            nodes = await self.proxy.visible_nodes(user)
        except TeleportError as exc:
            return error(exc)
        roleset = self.proxy.roleset(user)
        return JSONResponse([
            {"uuid": n.uuid, "nodename": n.nodename, "addr": n.addr, "labels": dict(n.labels), "tunnel": n.tunnel,
             "logins": roleset.logins_for(n.labels), "sub_kind": n.sub_kind}
            for n in sorted(nodes, key=lambda n: (n.nodename, n.uuid))
        ])

    def _user_cert(self, request: Request) -> bytes:
        """The caller's verified client certificate (DER), forwarded to auth to act as the user."""
        self.caller(request)
        der = client_certificate(request.scope)
        assert der is not None
        return der

    def _check_cluster(self, request: Request) -> None:
        validate_path(PATH_PARAMS, request.path_params)
        cluster = request.path_params["cluster"]
        if cluster != self.proxy.cluster_name:
            raise NotFound(f"cluster {json.dumps(cluster)} is not found (this proxy serves {self.proxy.cluster_name})")

    async def recordings(self, request: Request) -> Response:
        """``tsh recordings ls``: ended sessions (``from``, ``to``, ``limit``), authorized at auth for the caller."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            params = validate_query(RecordingsQuery, request.query_params)
            sessions = await self.proxy.auth.list_recordings(
                since=params.since, until=params.until, limit=params.limit, search=params.search, user_cert=der)
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(sessions)

    async def active_sessions(self, request: Request) -> Response:
        """``tsh sessions ls``: the live sessions' trackers the caller may see, authorized at auth for the caller."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            trackers = await self.proxy.auth.for_user(der).list_session_trackers()
        except TeleportError as exc:
            return error(exc)
        return JSONResponse({"sessions": trackers})

    async def recording(self, request: Request) -> Response:
        """``tsh play``: the asciicast v2 recording of a session, authorized at auth for the caller."""
        import shutil
        import tempfile
        from pathlib import Path

        from starlette.background import BackgroundTask
        from starlette.responses import FileResponse

        from teleport_core.state.sessions import check_session_id

        tmp = ""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            sid = check_session_id(request.path_params["sid"])
            tmp = tempfile.mkdtemp(prefix="teleport-play-")
            path = Path(tmp) / f"{sid}.cast"
            await self.proxy.auth.download_recording(sid, path, user_cert=der)
        except TeleportError as exc:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            return error(exc)
        except BaseException:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/x-asciicast",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


    async def recording_stream(self, request: Request) -> Response:
        """``tsh play --follow``, the web player: the recording from an offset, authorized at auth."""
        from teleport_core.state.sessions import check_session_id
        from teleport_proxy.webmodels import StreamQuery

        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            sid = check_session_id(request.path_params["sid"])
            offset = validate_query(StreamQuery, request.query_params).offset
            data, headers = await self.proxy.auth.read_recording_stream(sid, offset, user_cert=der)
        except TeleportError as exc:
            return error(exc)
        passed = {k: v for k, v in headers.items() if k in STREAM_HEADERS}
        return Response(data, media_type="application/x-asciicast", headers=passed)

    # -- access requests (tsh request, tsh login --request-id): auth decides, for the caller -----------------

    async def create_access_request(self, request: Request) -> Response:
        """``tsh request create``: the caller's new request (the user is the certificate's, never the body's)."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            body = await body_of(request, AccessRequestBody)
            created = await self.proxy.auth.for_user(der).call("POST", "/v1/access_requests", body.model_dump())
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(created)

    async def access_requests(self, request: Request) -> Response:
        """``tsh request ls``: the requests auth lets the caller see."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            query = validate_query(AccessRequestsQuery, request.query_params)
            params = {k: v for k, v in query.model_dump().items() if v}
            found = await self.proxy.auth.for_user(der).call("GET", "/v1/access_requests", params=params)
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(found)

    async def access_request(self, request: Request) -> Response:
        """``tsh request show ID``."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            found = await self.proxy.auth.for_user(der).call(
                "GET", f"/v1/access_requests/{request.path_params['request_id']}")
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(found)

    async def review_access_request(self, request: Request) -> Response:
        """``tsh request review --approve|--deny ID``: the caller's review."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            body = await body_of(request, ReviewBody)
            reviewed = await self.proxy.auth.for_user(der).call(
                "POST", f"/v1/access_requests/{request.path_params['request_id']}/reviews", body.model_dump())
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(reviewed)

    async def access_capabilities(self, request: Request) -> Response:
        """``tsh login``: what the caller may request and whether its roles want a request at login."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            found = await self.proxy.auth.for_user(der).call("GET", "/v1/access_capabilities")
        except TeleportError as exc:
            return error(exc)
        return JSONResponse(found)

    async def reissue_certs(self, request: Request) -> Response:
        """``tsh login --request-id``, ``tsh request drop``: the caller's certificates with the roles of
        its approved requests (auth checks each is the caller's, approved and unexpired)."""
        try:
            self._check_cluster(request)
            der = self._user_cert(request)
            body = await body_of(request, ReissueBody)
            answer = await self.proxy.auth.for_user(der).call("POST", "/v1/certs/reissue", body.model_dump())
        except TeleportError as exc:
            return error(exc)
        return JSONResponse({**certs_reply(answer), "active_requests": list(answer.get("active_requests") or [])})


def certs_reply(answer: dict[str, Any]) -> dict[str, Any]:
    """Auth's certificates answer (a login's, a reissue's) as tsh takes it."""
    return {"username": answer["username"], "roles": answer["roles"], "logins": answer["logins"],
            "cert": answer["ssh_cert"], "tls_cert": answer["tls_cert"], "valid_before": answer["valid_before"],
            "cluster_name": answer["cluster_name"], "host_ca_pems": answer["host_ca_pems"],
            "host_signers": answer["known_hosts"]}


#: auth's answers about a recording in progress, passed on (lower case: httpx's)
STREAM_HEADERS = frozenset({"x-teleport-recording", "x-teleport-session", "x-teleport-next-offset"})


async def openapi(request: Request) -> Response:
    """The OpenAPI document of this API (:func:`teleport_proxy.webmodels.openapi_document`)."""
    return JSONResponse(openapi_document())


def build_app(proxy: ProxyState) -> Starlette:
    """The web port's app: the pages of every ``teleport_web_routes`` plugin (the web UI; matched
    first), then this JSON API."""
    from teleport_proxy.webui import ProxyWebUI

    api = WebAPI(proxy)
    pages_routes = [route for found in proxy.ctx.plugins.hook.teleport_web_routes(proxy=ProxyWebUI(proxy))
                    for route in found or ()]
    return Starlette(middleware=[Middleware(SecurityHeaders)], routes=[
        *pages_routes,
        Route("/webapi/ping", api.ping, methods=["GET"]),
        Route("/webapi/find", api.ping, methods=["GET"]),
        Route("/v1/webapi/ping", api.ping, methods=["GET"]),
        Route("/v1/webapi/ssh/certs", api.login, methods=["POST"]),
        Route("/v1/webapi/users/password/token/{token}", api.get_invite, methods=["GET"]),
        Route("/v1/webapi/users/password/token", api.complete_invite, methods=["PUT"]),
        Route("/favicon.ico", pages.favicon, methods=["GET"]),
        Route("/v1/webapi/trustedclusters/validate", api.validate_trusted_cluster, methods=["POST"]),
        Route("/v1/webapi/sites", api.sites, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/nodes", api.nodes, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/events/search/sessions", api.recordings, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/sessions", api.active_sessions, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/sessions/{sid}/recording", api.recording, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/sessions/{sid}/stream", api.recording_stream, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/accessrequest", api.create_access_request, methods=["POST"]),
        Route("/v1/webapi/sites/{cluster}/accessrequest", api.access_requests, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/accessrequest/{request_id}", api.access_request, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/accessrequest/{request_id}/review", api.review_access_request,
              methods=["POST"]),
        Route("/v1/webapi/sites/{cluster}/access_capabilities", api.access_capabilities, methods=["GET"]),
        Route("/v1/webapi/sites/{cluster}/certs/reissue", api.reissue_certs, methods=["POST"]),
        Route(OPENAPI_PATH, openapi, methods=["GET"]),
    ])
