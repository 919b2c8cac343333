"""The typed proxy web API (issue 12): bodies, queries and path parameters validated by their models
(a 400 naming the field), and ``GET /v1/webapi/openapi.json`` declaring every route of the app."""

from __future__ import annotations

import re
from typing import Any

import pytest
from proxy_helpers import Env
from starlette.routing import Route
from teleport_proxy.web import build_app
from teleport_proxy.webmodels import OPENAPI_PATH, ROUTES, openapi_document

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYLF2X2ytD0Lr2b8rT2g0e0G8mfVf9mqkLr0bTD1Ktb x"


def test_openapi_declares_every_route_of_the_app(env: Env) -> None:
    from teleport_proxy.webui import ProxyWebUI

    doc = openapi_document()
    pytest.importorskip("openapi_spec_validator").validate(doc)  # the test extra installs it
    app = build_app(env.proxy)

    def pairs(found: Any) -> set[tuple[str, str]]:
        return {(route.path, method) for route in found if isinstance(route, Route)
                for method in (route.methods or ()) if method != "HEAD"}

    # the web UI plugin's pages (teleport_web_routes) are not this API
    pages = pairs(r for found in env.proxy.ctx.plugins.hook.teleport_web_routes(proxy=ProxyWebUI(env.proxy))
                  for r in found or ())
    routes = pairs(app.routes) - pages
    assert {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops} == routes
    by_handler = {op.handler: op for op in ROUTES}
    for path, ops in doc["paths"].items():
        for entry in ops.values():
            params = {(p["in"], p["name"]) for p in entry.get("parameters", [])}
            assert {("path", name) for name in re.findall(r"{(\w+)}", path)} <= params, path
            op = by_handler.get(entry["operationId"])
            if op is not None and op.body is not None:
                assert "requestBody" in entry, path
            if op is not None and op.query is not None:
                assert {("query", i.alias or n) for n, i in op.query.model_fields.items()} <= params, path
    login = doc["components"]["schemas"]["LoginBody"]
    assert login["properties"]["password"]["maxLength"] == 128 and "pub_key" in login["required"]


def test_web_api_refuses_bad_input_with_a_400_naming_the_field(env: Env) -> None:
    cases = [
        ("POST", "/v1/webapi/ssh/certs", {"user": "alice", "password": "x"}, "pub_key: required"),
        ("POST", "/v1/webapi/ssh/certs", {"user": ["alice"], "password": "x", "pub_key": KEY},
         "user: expected a string"),
        ("POST", "/v1/webapi/ssh/certs", {"user": "al\x1bice", "password": "x", "pub_key": KEY},
         "user: control characters are not allowed"),
        ("POST", "/v1/webapi/ssh/certs", {"user": "alice", "password": "p" * 129, "pub_key": KEY},
         "password: at most 128 characters"),
        ("PUT", "/v1/webapi/users/password/token", {"token": "t", "password": "p", "second_factor_token": 123456},
         "second_factor_token: expected a string"),
        ("PUT", "/v1/webapi/users/password/token", {"password": "p"}, "token: required"),
        ("GET", "/v1/webapi/users/password/token/" + "t" * 300, None, "token: at most 253 characters"),
        ("GET", "/v1/webapi/sites/bad%07cluster/nodes", None, "cluster: control characters are not allowed"),
    ]
    with env.web_client() as web:
        for method, path, payload, message in cases:
            answer = web.request(method, path, json=payload)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json() == {"error": message}, path
        answer = web.post("/v1/webapi/ssh/certs", content=b'{"user": "a", "pub_key": "' + b"k" * 70_000 + b'"}',
                          headers={"Content-Type": "application/json"})
        assert answer.status_code == 413, answer.text
        doc = web.get(OPENAPI_PATH)
        assert doc.status_code == 200 and doc.json() == openapi_document()
        assert web.get("/v1/webapi/ping").json()["cluster_name"]  # still serving
