"""The login flow and the resources page in a real headless Chromium: redirected to the login
page, log in, see and search the servers, the cookie's flags, a phone's width and dark mode, no
CSP violation; log out, and the back button brings no page back. Screenshots in ``tmp_path``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from web_helpers import CLUSTER, PASSWORD, WebCluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.webui import SESSION_COOKIE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")]
RESOURCES = f"/web/cluster/{CLUSTER}/resources"


def test_login_resources_logout_back(cluster: WebCluster, tmp_path: Path) -> None:
    cluster.signup("grace", ["dev"])
    for name, labels in (("web-api-1", {"env": "dev", "team": "web"}), ("web-db-1", {"env": "dev", "team": "db"}),
                         ("web-test-1", {"env": "test", "team": "web"})):
        cluster.add_node(name, labels)
    with Chromium(tmp_path) as browser:
        page = browser.open(cluster.url + RESOURCES)
        assert page.url.startswith(cluster.url + "/web/login?next=")  # no session: to the login page
        assert page.text("h1") == f"Log in to {CLUSTER}"
        page.screenshot(tmp_path / "login.png")

        page.type("#user", "grace")
        page.type("#password", "not-her-password")
        page.click("#submit", navigates=True)
        assert "invalid" in page.text("#message").lower()
        page.screenshot(tmp_path / "login-failed.png")

        page.type("#password", PASSWORD)
        page.click("#submit", navigates=True)
        page.wait_for_selector("table.resources")
        assert page.url == cluster.url + RESOURCES  # back where it was going
        assert page.text("h1") == "Resources"
        hosts = "[...document.querySelectorAll('td.host')].map(e => e.textContent)"
        mine = cluster.url + RESOURCES + "?search=web-"  # other tests' nodes may be listed too
        for _ in range(50):  # the proxy may serve a list of a few seconds ago while it fetches the new one
            page.goto(mine)
            if page.evaluate(hosts) == ["web-api-1", "web-db-1", "web-test-1"]:
                break
            time.sleep(0.2)
        assert page.evaluate(hosts) == ["web-api-1", "web-db-1", "web-test-1"]
        page.screenshot(tmp_path / "resources.png")

        cookie = next(c for c in page.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert page.evaluate("document.cookie") == ""  # scripts cannot read the session

        page.type("#search", "team=web env=dev")
        page.press("Enter")
        # the page was opened with ?search=web-: wait for the new query's page, not the old one's
        page.wait_for("location.search.includes('team%3Dweb') || location.search.includes('team=web')")
        page.wait_for("[...document.querySelectorAll('td.host')].map(e => e.textContent).join() === 'web-api-1'")
        assert page.evaluate("[...document.querySelectorAll('td.host')].map(e => e.textContent)") == ["web-api-1"]
        page.click("details.connect summary")
        assert page.evaluate("document.querySelector('details.connect a').getAttribute('href')").startswith(
            f"/web/cluster/{CLUSTER}/console/node/")
        page.screenshot(tmp_path / "resources-search.png")

        page.set_viewport(390, 844, mobile=True)
        page.color_scheme("dark")
        page.goto(mine)
        # phone width: no horizontal scrolling of the page itself
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 21)"  # dark
        page.screenshot(tmp_path / "resources-phone-dark.png")
        page.set_viewport(900, 700)
        page.color_scheme("light")

        # no CSP violation, no script error (the failed login's 401 is the only entry)
        assert page.console == ["error network: Failed to load resource: the server responded with a status of 401 ()"], \
            page.console

        page.goto(cluster.url + RESOURCES)
        page.click("details.usermenu summary")
        page.click("details.usermenu button", navigates=True)
        assert page.url == cluster.url + "/web/login"
        assert page.text("#message") == "you have logged out"
        page.screenshot(tmp_path / "logged-out.png")
        assert SESSION_COOKIE not in {c["name"] for c in page.cookies()}

        page.back()  # the resources page again? It was no-store: fetched anew, and refused
        assert page.url.startswith(cluster.url + "/web/login")
        assert not page.exists("table.resources")
        page.screenshot(tmp_path / "after-back.png")
