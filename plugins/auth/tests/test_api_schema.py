"""The typed auth API (issue 12): every route's body, query and path parameters are validated by
their models before a handler runs, and the OpenAPI document generated from those models declares
every route of the app with its parameters, bodies and error responses.

The hostile-input tests play a caller sending each model family wrong (wrong type, too long,
control characters, missing field, too deep, too many items) to a real running auth server and
check the 400 and its ``"<field>: <reason>"`` message, and that the server still serves."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route
from teleport_auth.api import ROUTES, build_app, openapi_document

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

# -- the document ----------------------------------------------------------------------------------


def app_routes() -> set[tuple[str, str]]:
    app = build_app(None)  # type: ignore[arg-type]  # the routes do not touch the service until called
    return {(route.path, method) for route in app.routes if isinstance(route, Route)
            for method in (route.methods or ()) if method != "HEAD"}


def test_openapi_declares_every_route_with_its_parameters_and_bodies() -> None:
    doc = openapi_document()
    pytest.importorskip("openapi_spec_validator").validate(doc)  # a valid OpenAPI 3.1 document
    declared = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert declared == app_routes()
    by_handler = {op.handler: op for op in ROUTES}
    for path, ops in doc["paths"].items():
        for method, entry in ops.items():
            params = {(p["in"], p["name"]) for p in entry.get("parameters", [])}
            assert {("path", name) for name in re.findall(r"{(\w+)}", path)} <= params, (path, method)
            op = by_handler.get(entry["operationId"])
            if op is None:
                continue  # the document itself
            if op.query is not None:
                wanted = {("query", info.alias or name) for name, info in op.query.model_fields.items()}
                assert wanted <= params, (path, method)
            if op.body is not None:
                schema = entry["requestBody"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{op.body.__name__}"}
            for status in ("400", "413"):
                assert status in entry["responses"], (path, method)
            assert "200" in entry["responses"]
            assert ("security" in entry) is not op.anonymous
    schemas = doc["components"]["schemas"]
    login = schemas["LoginBody"]
    assert login["properties"]["password"]["maxLength"] == 128
    assert login["properties"]["public_key"]["maxLength"] == 16 * 1024
    assert set(login["required"]) == {"user", "password", "public_key"}
    assert schemas["CreateUserBody"]["properties"]["name"]["maxLength"] == 253
    search = next(p for p in doc["paths"]["/v1/events"]["get"]["parameters"] if p["name"] == "type")
    assert search["schema"]["type"] == "array" and search["schema"]["maxItems"] == 64


def test_every_route_has_a_body_limit_and_the_small_ones_are_small() -> None:
    limits = {op.handler: op.max_body for op in ROUTES}
    for handler in ("login", "register", "complete_user_token", "lookup_user_token"):
        assert limits[handler] <= 64 * 1024
    assert limits["upload_recording"] > limits["create_role"]


# -- hostile input against a running auth server --------------------------------------------------------


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("schema")
    config = {"version": "v3", "teleport": {"data_dir": str(root / "data"), "nodename": "auth-1"},
              "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield handle.process.services["auth_service"].address, root / "data"


def admin(auth: Any) -> AuthClient:
    addr, data_dir = auth
    return AuthClient(addr, [load_identity_dir(Path(data_dir) / "keys" / "auth")])


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


ROLE = {"kind": "role", "version": "v7", "metadata": {"name": "ok"}, "spec": {}}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYLF2X2ytD0Lr2b8rT2g0e0G8mfVf9mqkLr0bTD1Ktb x"

#: (method, path, json body or query params, expected message); each must be a 400 with that message
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # roles (path parameter, metadata, spec)
    ("PUT", "/v1/roles/bad%01name", ROLE, "name: control characters are not allowed"),
    ("GET", "/v1/roles/" + "r" * 300, {}, "name: at most 253 characters"),
    ("POST", "/v1/roles", {**ROLE, "metadata": {"name": "a\x07b"}}, "metadata.name: control characters are not allowed"),
    ("POST", "/v1/roles", {**ROLE, "metadata": {"name": "n" * 254}}, "metadata.name: at most 253 characters"),
    ("POST", "/v1/roles", {**ROLE, "metadata": {}}, "metadata.name: required"),
    ("POST", "/v1/roles", {**ROLE, "metadata": {"name": 7}}, "metadata.name: expected a string"),
    ("POST", "/v1/roles", {**ROLE, "spec": []}, "spec: expected an object"),
    ("POST", "/v1/roles", {**ROLE, "spec": nested(40)}, "request body is nested too deeply"),
    ("POST", "/v1/resources", {"resources": []}, "resources: at least 1 items"),
    ("POST", "/v1/resources", {"resources": [ROLE], "force": "yes"}, "force: expected true or false"),
    # users
    ("POST", "/v1/users", {"name": "x"}, "roles: required"),
    ("POST", "/v1/users", {"name": 5, "roles": []}, "name: expected a string"),
    ("POST", "/v1/users", {"name": "x", "roles": ["r"] * 300}, "roles: at most 256 items"),
    ("POST", "/v1/users", {"name": "x", "roles": ["a\nb"]}, "roles[0]: control characters are not allowed"),
    ("POST", "/v1/users", {"name": "x", "roles": [], "traits": {f"t{i}": [] for i in range(200)}},
     "traits: at most 128 items"),
    ("POST", "/v1/users", {"name": "x", "roles": [], "traits": {"logins": "root"}}, "traits.logins: expected a list"),
    ("PUT", "/v1/users/x", {"roles": "access"}, "roles: expected a list"),
    # user tokens, logins, certificates
    ("POST", "/v1/usertokens/lookup", {}, "token: required"),
    ("PUT", "/v1/usertokens", {"token": "t", "password": "p" * 129}, "password: at most 128 characters"),
    ("POST", "/v1/login", {"user": "joe", "password": "secret", "public_key": "k" * (16 * 1024 + 1)},
     "public_key: at most 16384 characters"),
    ("POST", "/v1/login", {"user": "joe", "password": "secret"}, "public_key: required"),
    ("POST", "/v1/login", {"user": "joe", "password": "", "public_key": KEY}, "password: must not be empty"),
    ("POST", "/v1/certs/user", {"user": ["joe"], "public_key": KEY}, "user: expected a string"),
    # join tokens
    ("POST", "/v1/tokens", {"roles": "node"}, "roles: expected a list"),
    ("POST", "/v1/tokens/delete", {"token": 5}, "token: expected a string"),
    # CAs
    ("POST", "/v1/cas/host/rotate", {"phase": 1}, "phase: expected a string"),
    ("GET", "/v1/cas/HOST", {}, "ca_type: must match ^[a-z_]+$"),
    # nodes and proxies
    ("PUT", "/v1/nodes/n1", {"nodename": "n1", "labels": {"env": 5}}, "labels.env: expected a string"),
    ("PUT", "/v1/nodes/n1", {"nodename": "n1", "tunnel": "true"}, "tunnel: expected true or false"),
    ("PUT", "/v1/proxies/p1", {"nodename": "p1"}, "public_addr: required"),
    # events (body and query)
    ("POST", "/v1/events", {"event": "x", "code": "T0", "uid": "u"}, "time: required"),
    ("GET", "/v1/events", {"limit": "many"}, "limit: expected an integer"),
    ("GET", "/v1/events", {"type": ["t"] * 65}, "type: at most 64 items"),
    # recordings and changes (query)
    ("GET", "/v1/sessions", {"limit": "0"}, "limit: at least 1"),
    ("GET", "/v1/changes", {"kind": "role", "timeout": "soon"}, "timeout: expected a number"),
    ("GET", "/v1/changes", {"kind": "role", "timeout": "nan"}, "timeout: expected a finite number"),
    # locks
    ("PUT", "/v1/locks/l1", {"kind": "lock", "metadata": {"name": "l1"}, "spec": {"target": {"user": "a\x1bb"}}},
     "spec.target.user: control characters are not allowed"),
    ("PUT", "/v1/locks/l1", {"kind": "lock", "metadata": {"name": "l1"}, "spec": {}}, "spec.target: required"),
]


def test_each_model_family_refuses_bad_input_with_a_400_naming_the_field(auth: Any) -> None:
    async def body() -> list[str]:
        problems = []
        async with admin(auth) as client:
            for method, path, payload, message in CASES:
                if method in ("GET", "DELETE"):
                    answer = await client._request(method, path, params=payload)
                else:
                    answer = await client._request(method, path, json=payload)
                if answer.status_code != 400 or answer.json() != {"error": message}:
                    problems.append(f"{method} {path}: {answer.status_code} {answer.text} (wanted {message!r})")
            assert [r["metadata"]["name"] for r in await client.get_roles()]  # still serving
        return problems

    assert asyncio.run(body()) == []


def test_bodies_that_are_not_json_objects_and_oversized_bodies(auth: Any) -> None:
    async def body() -> None:
        async with admin(auth) as client:
            for content, message in [(b"[1, 2]", "request body must be a JSON object"),
                                     (b"{nope", "request body is not JSON"),
                                     (b"[" * 50_000, "request body is nested too deeply"),
                                     (b'{"metadata": {"name": "ok"}, "spec": {"\\ud800": 1}}',
                                      "request body is not valid Unicode")]:
                answer = await client._request("POST", "/v1/roles", content=content,
                                               headers={"Content-Type": "application/json"})
                assert answer.status_code == 400 and answer.json()["error"].startswith(message), answer.text
            # a login body over its 64 KiB limit: 413 before it is parsed
            big = b'{"user": "joe", "password": "p", "public_key": "' + b"k" * (70 * 1024) + b'"}'
            answer = await client._request("POST", "/v1/login", content=big,
                                           headers={"Content-Type": "application/json"})
            assert answer.status_code == 413, answer.text
            assert "over" in answer.json()["error"]
            assert (await client.ping())["cluster_name"] == "example.com"  # still serving

    asyncio.run(body())


def test_anonymous_register_is_validated_too(auth: Any) -> None:
    """The join route takes no certificate: its body is the most exposed one."""
    import httpx

    addr = auth[0]
    with httpx.Client(verify=False, timeout=30) as web:
        for payload, message in [
            ({"role": "node", "public_key": KEY}, "nodename: required"),
            ({"nodename": "n\x00", "role": "node", "public_key": KEY}, "nodename: control characters are not allowed"),
            ({"nodename": "n", "role": "node", "public_key": KEY, "dns_names": ["d"] * 300},
             "dns_names: at most 256 items"),
            ({"nodename": "n", "role": "node", "public_key": KEY, "token": {"t": 1}}, "token: expected a string"),
        ]:
            answer = web.post(f"https://{addr}/v1/register", json=payload)
            assert answer.status_code == 400 and answer.json() == {"error": message}, answer.text
        assert web.get(f"https://{addr}/v1/ping").status_code == 200
        doc = web.get(f"https://{addr}/v1/openapi.json")
        assert doc.status_code == 200 and doc.json() == openapi_document()


def test_answers_match_their_response_models(auth: Any) -> None:
    """What the server sends is what the document says (the fuzzer checks this too, for every route)."""
    from pydantic import TypeAdapter

    by_route = {(op.method, op.path): op for op in ROUTES}
    calls = [("GET", "/v1/ping", "/v1/ping"), ("GET", "/v1/status", "/v1/status"),
             ("GET", "/v1/cas/{ca_type}", "/v1/cas/host"), ("GET", "/v1/cas/{ca_type}", "/v1/cas/user"),
             ("GET", "/v1/roles", "/v1/roles"), ("GET", "/v1/roles/{name}", "/v1/roles/access"),
             ("GET", "/v1/users", "/v1/users"), ("GET", "/v1/tokens", "/v1/tokens"),
             ("POST", "/v1/tokens", "/v1/tokens"), ("GET", "/v1/nodes", "/v1/nodes"),
             ("GET", "/v1/proxies", "/v1/proxies"), ("GET", "/v1/events", "/v1/events"),
             ("GET", "/v1/locks", "/v1/locks"), ("GET", "/v1/sessions", "/v1/sessions"),
             ("GET", "/v1/changes", "/v1/changes?kind=lock&timeout=0")]

    async def body() -> None:
        async with admin(auth) as client:
            for method, template, path in calls:
                answer = await client._request(method, path, json={} if method == "POST" else None)
                assert answer.status_code == 200, (path, answer.text)
                TypeAdapter(by_route[(method, template)].response).validate_python(answer.json())

    asyncio.run(body())
