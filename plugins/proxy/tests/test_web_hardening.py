"""Security headers on the proxy's web port, and the invite page under its strict CSP in a
real headless Chromium: the page's own script runs and sets the password, an injected inline
script is refused by the browser, and the new user then logs in with tsh."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from teleport_core.testing.browser import CHROMIUM, Chromium
from proxy_helpers import LOGIN, Env
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from teleport_proxy.headers import CSP, SecurityHeaders, cookie_allowed

from teleport_core.testing.prerequisites import missing

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
        answers = [web.get("/webapi/ping"), web.get(f"/web/invite/{token}"), web.get("/web/invite.js"),
                   web.get("/web/invite/no-such-token"), web.get("/no/such/path"),
                   web.post("/v1/webapi/ssh/certs", content=b"{"), web.delete("/webapi/ping"),
                   web.get("/v1/webapi/sites/example.com/nodes")]  # 401 without a client certificate
    assert [a.status_code for a in answers] == [200, 200, 200, 403, 404, 400, 405, 401]
    for answer in answers:
        for name, value in EXPECTED.items():
            assert answer.headers.get(name) == value, (answer.request.url, name)
        assert "set-cookie" not in answer.headers  # the web API sets no cookie
    page = answers[1].text
    assert answers[1].headers["cache-control"] == "no-store"
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/web/invite.js" defer>']  # no inline script
    assert " on" not in re.sub(r"<(p|code)>[^<]*</\1>", "", page).lower().replace("one-time-code", "")
    assert answers[2].headers["content-type"].startswith("text/javascript")


def test_invite_token_is_escaped_in_the_page(env: Env) -> None:
    with env.web_client() as web:
        answer = web.get('/web/invite/"><img src=x onerror=alert(1)>')
    assert answer.status_code == 403  # an unknown token
    assert "<img" not in answer.text and answer.headers["content-security-policy"] == CSP


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


def test_invite_page_works_in_chromium_under_the_csp(env: Env, tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    user, password = "browser-user", "correct horse battery staple"
    token = env.call("create_user", user, ["dev"], {"logins": [LOGIN]})["invite"]["token"]
    with env.web_client() as web:
        otp_uri = web.get(f"/v1/webapi/users/password/token/{token}").json()["otp_uri"]
    env.totps[user] = pyotp.parse_uri(otp_uri)
    with Chromium(tmp_path) as browser:
        page = browser.open(f"https://{env.web}/web/invite/{token}")
        assert page.evaluate("document.querySelector('h1').textContent") == f"Welcome, {user}"
        page.evaluate(f"document.getElementById('pw').value = {password!r}")
        page.evaluate(f"document.getElementById('otp').value = {env.fresh_code(user)!r}")
        page.evaluate("document.querySelector('button').click()")
        done = page.wait_for("document.getElementById('out').textContent")
        shot = page.screenshot(tmp_path / "invite.png")
        assert done == f"Done: log in with tsh login --user={user}", done
        assert page.console == [], page.console  # no CSP violation, no script error
        # the policy is enforced: an inline script injected now does not run, and is reported
        page.evaluate("const s = document.createElement('script'); s.textContent = 'window.inlineRan = 1';"
                      "document.body.appendChild(s); 0")
        assert page.evaluate("window.inlineRan === undefined") is True
        deadline = time.monotonic() + 10  # the browser reports the violation to the console
        while not any("Content Security Policy" in line for line in page.console) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("Content Security Policy" in line for line in page.console), page.console
    assert shot.stat().st_size > 1000
    if os.environ.get("TELEPORT_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["TELEPORT_SCREENSHOTS"]) / "invite.png")
    env.passwords[user] = password
    assert env.login(tmp_path / "home", user).returncode == 0  # the password the page set works
    with env.web_client() as web:  # and the token is spent
        assert web.get(f"/v1/webapi/users/password/token/{token}").status_code == 403


@pytest.mark.parametrize("path", ["/web/invite.js"])
def test_invite_script_reads_the_token_from_the_page(env: Env, path: str) -> None:
    with env.web_client() as web:
        script = web.get(path).text
    assert "form.dataset.token" in script and "/v1/webapi/users/password/token" in script
