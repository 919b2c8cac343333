"""The invite and reset pages (``/web/invite/TOKEN``, ``/web/reset/TOKEN``), served by
teleport-web before any login: over HTTP (what the page shows, the CSRF pair, each refusal and
its audit event) and in headless Chromium (a new user scans nothing but reads the secret the page
shows, computes the TOTP code, sets the password, then logs in; a reset link; mismatched passwords
stopped in the browser)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from web_helpers import CLUSTER, LOGIN, WebCluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

GOOD = "a long enough password 42"


@pytest.fixture
def cluster(otp_cluster: WebCluster) -> WebCluster:
    """These pages enroll an authenticator app: the cluster whose second factor is OTP."""
    return otp_cluster


def invite(cluster: WebCluster, user: str) -> str:
    return str(cluster.call("create_user", user, ["dev"], {"logins": [LOGIN]})["invite"]["token"])


def form_of(page: httpx.Response) -> dict[str, str]:
    found = re.search(r'name="form_csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return {"form_csrf": found.group(1)}


def secret_of(html: str) -> str:
    found = re.search(r'<code id="secret">([A-Z2-7 ]+)</code>', html)
    assert found, html
    return found.group(1).replace(" ", "")


def failures(cluster: WebCluster) -> list[dict[str, object]]:
    return [e for e in cluster.events("user.password_change") if e.get("success") is False]


def test_invite_page_shows_qr_secret_and_policy(cluster: WebCluster) -> None:
    token = invite(cluster, "ida")
    with cluster.client() as web:
        page = web.get(f"/web/invite/{token}")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    text = page.text
    assert "Welcome, ida" in text and "<svg" in text and 'class="segno"' in text
    secret = secret_of(text)
    info = cluster.call("get_user_token", token)
    assert pyotp.parse_uri(info["otp_uri"]).secret == secret  # the secret shown is the one auth enrolls
    assert "Password policy: 12 to 128 characters" in text and 'minlength="12"' in text
    assert re.findall(r"<script[^>]*>", text) == [f'<script src="/web/static/invite.js?v={_version()}" defer>']
    assert "style=" not in text and " onclick" not in text
    cookie = next(v for v in page.headers.get_list("set-cookie") if v.startswith("__Host-invite_csrf="))
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    assert token not in cookie  # the cookie binds the page by a hash, never the token
    assert page.headers["content-security-policy"].startswith("default-src 'self'")


def _version() -> str:
    from teleport_core import __version__

    return __version__


def test_invite_refusals_are_shown_and_audited(cluster: WebCluster) -> None:
    user = "ines"
    token = invite(cluster, user)
    before = len(failures(cluster))
    denials_before = len(cluster.events("auth"))
    with cluster.client() as web:
        page = web.get(f"/web/invite/{token}")
        totp = pyotp.TOTP(secret_of(page.text))
        csrf = form_of(page)
        url = f"/web/invite/{token}"
        # no CSRF token: refused before anything else, audited
        answer = web.post(url, data={"password": GOOD, "password_confirm": GOOD, "otp": totp.now()})
        assert answer.status_code == 403 and "the form has expired" in answer.text
        wait_for(lambda: len(cluster.events("auth")) > denials_before, what="the CSRF refusal audited")
        # the pair from another token page does not fit this one
        other = invite(cluster, "ines-other")
        web.get(f"/web/invite/{other}")
        answer = web.post(url, data={**csrf, "password": GOOD, "password_confirm": GOOD, "otp": totp.now()})
        assert answer.status_code == 403, answer.text
        page = web.get(url)
        cases = [
            ({"password": GOOD, "password_confirm": GOOD + "x"}, 400, "the two passwords do not match"),
            ({"password": "short", "password_confirm": "short", "otp": totp.now()}, 400, "at least 12 characters"),
            ({"password": GOOD, "password_confirm": GOOD, "otp": f"{(int(totp.now()) + 1) % 10**6:06d}"}, 401,
             "invalid OTP code"),
            ({"password": GOOD, "password_confirm": GOOD, "otp": ""}, 400, "second_factor_token: required"),
        ]
        for fields, status, reason in cases:
            answer = web.post(url, data={**form_of(page), **fields})
            assert (answer.status_code, reason in answer.text) == (status, True), (fields, re.findall(r"class=.error[^<]*<", answer.text))
            assert 'id="message"' in answer.text and "<svg" in answer.text  # the form again, with the reason
            page = answer
        def refused_all() -> list[dict[str, Any]]:  # auth's refusals (the proxy's events arrive in batches)
            found = failures(cluster)[before:]
            return found if all(any(reason in str(e.get("error")) for e in found) for _, _, reason in cases[1:]) else []

        audited = wait_for(refused_all, what="auth's three refusals audited")
        wait_for(lambda: cluster.events("auth", user=user, error="the two passwords do not match"),
                 what="the page's own refusal audited")
        assert not any(GOOD in str(e) for e in audited)
        # unknown and garbage tokens: the error page, nothing echoed
        for bad in ("0" * 32, '"><img src=x onerror=alert(1)>'):
            answer = web.get(f"/web/invite/{bad}")
            assert answer.status_code in (400, 403) and "<img" not in answer.text
        # the invite still works once
        answer = web.post(url, data={**form_of(page), "password": GOOD, "password_confirm": GOOD,
                                     "otp": totp.now()})
        assert answer.status_code == 200 and "Your account is ready" in answer.text, answer.text
        assert web.get(url).status_code == 403  # spent


def _browser_complete(cluster: WebCluster, tmp_path: Path, url: str, user: str, password: str, shot: str) -> None:
    """Open ``url`` in Chromium, read the secret, fill the form and submit it."""
    with Chromium(tmp_path) as browser:
        page = browser.open(url)
        page.wait_for_selector("#invite")
        assert page.exists("#qr svg")
        secret = page.text("#secret").replace(" ", "")
        totp = pyotp.TOTP(secret)
        cluster.totps[user] = totp
        page.screenshot(tmp_path / f"{shot}.png")
        # mismatched passwords: the browser refuses to send the form
        page.type("#password", password)
        page.type("#password_confirm", password + "!")
        page.click("#submit")
        assert page.evaluate("document.getElementById('mismatch').hidden") is False
        assert page.evaluate("document.getElementById('password_confirm').validity.valid") is False
        assert page.url.endswith(url.split("/web/", 1)[1])
        page.screenshot(tmp_path / f"{shot}-mismatch.png")
        page.type("#password_confirm", password)
        page.type("#otp", cluster.fresh_code(user))
        page.submit("#invite")
        page.wait_for_selector("#done")
        page.screenshot(tmp_path / f"{shot}-done.png")
        assert page.console == [], page.console  # no CSP violation, no script error
        # the policy is enforced: an inline script injected now does not run, and is reported
        page.evaluate("const s = document.createElement('script'); s.textContent = 'window.inlineRan = 1';"
                      "document.body.appendChild(s); 0")
        assert page.evaluate("window.inlineRan === undefined") is True
        page.wait_for("window.inlineRan === undefined")
        deadline = time.monotonic() + 10  # the browser reports the violation to the console
        while not any("Content Security Policy" in line for line in page.console) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("Content Security Policy" in line for line in page.console), page.console
        # and log in with the password and a fresh code
        page.click("#to-login", navigates=True)
        page.type("#user", user)
        page.type("#password", password)
        page.type("#otp", cluster.fresh_code(user))
        page.submit("#login")
        page.wait_for_selector("table, .empty")
        assert f"/web/cluster/{CLUSTER}/resources" in page.url


def test_invite_in_browser_then_login(cluster: WebCluster, tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    user = "iris"
    token = invite(cluster, user)
    _browser_complete(cluster, tmp_path, f"{cluster.url}/web/invite/{token}", user, GOOD, "invite")
    assert cluster.events("user.update", name=user)


@pytest.mark.slow
def test_reset_link_in_browser(cluster: WebCluster, tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    user = "rosa"
    cluster.signup(user, ["dev"])
    url = cluster.call("reset_user", user)["url"]
    assert "/web/reset/" in url
    path = url.split("/web/reset/", 1)[1]
    with cluster.client() as web:
        assert "Reset the password of rosa" in web.get(f"/web/reset/{path}").text
    _browser_complete(cluster, tmp_path, f"{cluster.url}/web/reset/{path}", user, GOOD + " new", "reset")
