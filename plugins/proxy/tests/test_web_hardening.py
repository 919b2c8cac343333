"""Security headers on the proxy's web port (the strict CSP, no framing, no cookie from the JSON
API). The invite page under that CSP in a real Chromium moved with the page to teleport-web
(plugins/web/tests/test_invite.py)."""

from __future__ import annotations

import asyncio

import httpx
from proxy_helpers import LOGIN, Env
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from teleport_proxy.headers import CSP, SecurityHeaders, cookie_allowed

EXPECTED = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def test_csp_is_strict() -> None:
    for part in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
                 "base-uri 'none'"):
        assert part in CSP
    assert "unsafe" not in CSP and "http" not in CSP  # no inline script, no external origin


def test_every_web_response_has_the_security_headers(env: Env) -> None:
    token = env.call("create_user", "hdr-user", ["dev"], {"logins": [LOGIN]})["invite"]["token"]
    with env.web_client() as web:
        answers = [web.get("/webapi/ping"), web.get(f"/v1/webapi/users/password/token/{token}"),
                   web.get("/v1/webapi/users/password/token/" + "0" * 32), web.get("/no/such/path"),
                   web.post("/v1/webapi/ssh/certs", content=b"{"), web.delete("/webapi/ping"),
                   web.get("/v1/webapi/sites/example.com/nodes")]  # 401 without a client certificate
    assert [a.status_code for a in answers] == [200, 200, 403, 404, 400, 405, 401]
    for answer in answers:
        for name, value in EXPECTED.items():
            assert answer.headers.get(name) == value, (answer.request.url, name)
        assert "set-cookie" not in answer.headers  # the web API sets no cookie
    # (the invite and reset pages, their CSRF cookie and script are teleport-web's: plugins/web/tests/test_invite.py)


def test_cookies_must_be_host_secure_httponly_strict() -> None:
    good = "__Host-session=abc; Path=/; Secure; HttpOnly; SameSite=Strict"
    assert cookie_allowed(good)
    for bad in ("session=abc; Path=/; Secure; HttpOnly; SameSite=Strict",
                "__Host-s=abc; Path=/; HttpOnly; SameSite=Strict",
                "__Host-s=abc; Path=/; Secure; SameSite=Strict",
                "__Host-s=abc; Path=/; Secure; HttpOnly; SameSite=Lax",
                "__Host-s=abc; Secure; HttpOnly; SameSite=Strict",
                "__Host-s=abc; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Strict"):
        assert not cookie_allowed(bad), bad

    async def endpoint(request: object) -> Response:
        response = Response("x", headers={"X-Frame-Options": "SAMEORIGIN"})
        response.set_cookie("__Host-ok", "1", path="/", secure=True, httponly=True, samesite="strict")
        response.set_cookie("loose", "1")
        return response

    async def get() -> httpx.Response:
        app = SecurityHeaders(Starlette(routes=[Route("/", endpoint)]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="https://testserver") as client:
            return await client.get("/")

    answer = asyncio.run(get())
    assert answer.headers.get_list("set-cookie") == ["__Host-ok=1; HttpOnly; Path=/; SameSite=strict; Secure"]
    assert answer.headers.get_list("x-frame-options") == ["DENY"]  # ours replaces what the app set
