"""The auth API: JSON over HTTP on mutual TLS (starlette, served by the kernel's TLSServer).

Every call except ``/v1/ping`` and ``/v1/register`` needs a client certificate from the
cluster's user or host CA; the identity in it is authorized on every call through RBAC (the
caller's roles) plus the ``teleport_authorize`` hook of every plugin (deny wins). A denial is
a 403 with the reason and an ``auth`` (T3007W) audit event. ``/v1/openapi.json`` describes it.

One module per resource, each with its routes (``ROUTES``, :class:`~teleport_auth.api.core.Operation`)
and handlers; :mod:`teleport_auth.api.core` holds what they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teleport_auth.api import (
    access_requests,
    agentless,
    changes,
    cluster,
    edit,
    events,
    hostcerts,
    inventory,
    join,
    locks,
    roles,
    sessions,
    streaming,
    tokens,
    trackers,
    trusted,
    users,
    websessions,
)
from teleport_auth.api.core import (
    MAX_BODY,
    PATH_PARAMS,
    READ_METHODS,
    BadRequest,
    Operation,
    endpoint,
    error_response,
)
from teleport_auth.api.hot import HotRoutesApp
from teleport_core import __version__
from teleport_core.api import schema

if TYPE_CHECKING:
    from teleport_auth.state import AuthState

__all__ = ["API", "MAX_BODY", "OPENAPI_PATH", "ROUTES", "BadRequest", "Operation", "build_app", "endpoint",
           "error_response", "openapi_document"]


class API(cluster.ClusterAPI, join.JoinAPI, roles.RolesAPI, websessions.WebSessionsAPI,
          access_requests.AccessRequestsAPI, users.UsersAPI,
          tokens.TokensAPI,
          inventory.InventoryAPI, events.EventsAPI, sessions.SessionsAPI, locks.LocksAPI, changes.ChangesAPI,
          hostcerts.HostCertsAPI, edit.EditAPI, trackers.TrackersAPI, agentless.AgentlessAPI,
          streaming.StreamingAPI, trusted.TrustedClustersAPI):
    """The auth API: every resource's routes on one object (the app's handlers are its methods)."""

    operations = {op.handler: op for op in [
        *cluster.ROUTES, *join.ROUTES, *roles.ROUTES, *users.ROUTES, *tokens.ROUTES, *inventory.ROUTES,
        *events.ROUTES, *changes.ROUTES, *locks.ROUTES, *sessions.ROUTES, *hostcerts.ROUTES, *edit.ROUTES,
        *websessions.ROUTES, *trackers.ROUTES, *agentless.ROUTES, *streaming.ROUTES, *access_requests.ROUTES,
        *trusted.ROUTES]}

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


ROUTES: list[Operation] = list(API.operations.values())
#: where the OpenAPI document is served (no certificate needed)
OPENAPI_PATH = "/v1/openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the auth API, generated from the routes' models."""
    # a call that may change state is refused with a 503 while the audit log cannot record (api.core)
    changing = [attrs.evolve(op, errors=(*op.errors, "503")) if op.method not in READ_METHODS else op for op in ROUTES]
    ops = [*changing, Operation(OPENAPI_PATH, "GET", "openapi", "This document (OpenAPI 3.1)", response=dict[str, Any],
                              anonymous=True, errors=())]
    return schema.openapi_document(
        "teleport-py auth API", __version__, ops, PATH_PARAMS,
        description="JSON over mutual TLS. Errors are {\"error\": reason}; a 400 names the field.")


def build_app(service: AuthState) -> Starlette:
    api = API(service)
    routes = [Route(op.path, getattr(api, op.handler), methods=[op.method]) for op in ROUTES]
    routes.append(Route(OPENAPI_PATH, api.openapi, methods=["GET"]))
    # the hosts' keepalives and user certificates skip Starlette's middleware and route matching, not
    # the endpoint's checks
    hot_handlers = inventory.HOT_HANDLERS | users.HOT_HANDLERS
    hot = [(op.method, op.path, getattr(api, op.handler)) for op in ROUTES if op.handler in hot_handlers]
    return HotRoutesApp(routes=routes, hot=hot)
