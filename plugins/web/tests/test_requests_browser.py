"""The access request pages in a real headless Chromium (two browsers: alice and bob): alice asks
for ``dba`` with a reason and sees it pending, bob approves it with a reason, alice assumes it and
the resources page lists the ``env=prod`` node, *Switch back* hides it again; a phone's width and
dark mode; no CSP violation or script error. Screenshots in ``tmp_path``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from requests_helpers import PROMPT, REQUESTS, RESOURCES, requests_cluster
from web_helpers import PASSWORD, WebCluster

from teleport_core.testing.browser import CHROMIUM, Chromium, Page

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")]
HOSTS = "[...document.querySelectorAll('td.host')].map(e => e.textContent)"


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    yield from requests_cluster(tmp_path_factory.mktemp("requests-browser"))


def log_in(browser: Chromium, cluster: WebCluster, user: str, path: str) -> Page:
    page = browser.open(cluster.url + path)
    page.type("#user", user)
    page.type("#password", PASSWORD)
    page.click("#submit", navigates=True)
    assert page.url == cluster.url + path, page.url
    return page


def hosts_until(page: Page, url: str, prod: bool) -> list[str]:
    """The resources page's hosts once ``req-prod-1`` is (or is not) among them (the proxy may
    serve a node list a few seconds old)."""
    found: list[str] = []
    for _ in range(50):
        page.goto(url)
        found = page.evaluate(HOSTS)
        if ("req-prod-1" in found) == prod:
            break
        time.sleep(0.2)
    return found


def test_request_approve_assume_switch_back(rc: WebCluster, tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    mine = rc.url + RESOURCES + "?search=req-"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Chromium(tmp_path / "a") as first, Chromium(tmp_path / "b") as second:
        alice = log_in(first, rc, "alice", RESOURCES)
        assert hosts_until(alice, mine, False) == ["req-dev-1"]
        alice.click("nav a[href$='/requests']", navigates=True)
        assert alice.text("h1") == "Access requests"
        alice.screenshot(shots / "01-requests-empty.png")
        alice.click("#new-request", navigates=True)
        assert alice.url == rc.url + REQUESTS + "/new"
        assert alice.text("#prompt") == PROMPT and "bob" in alice.text("#suggested")
        alice.click("#role-dba")
        alice.type("#reason", "fix the orders table (OPS-42)")
        alice.screenshot(shots / "02-new-request.png")
        alice.click("#submit-request", navigates=True)
        assert alice.text("#state") == "PENDING"
        assert alice.text("#reason-text") == "fix the orders table (OPS-42)"
        rid = alice.text(".fullid")
        assert not alice.exists("#approve") and not alice.exists("#assume")  # own and pending
        alice.screenshot(shots / "03-pending.png")

        bob = log_in(second, rc, "bob", REQUESTS)
        row = f"tr.request[data-id='{rid}']"
        assert bob.text(f"{row} .rstate") == "PENDING" and bob.text(f"{row} .ruser") == "alice"
        bob.screenshot(shots / "04-bob-list.png")
        bob.click(f"{row} .rid a", navigates=True)
        bob.type("#review-reason", "ticket OPS-42 checked")
        bob.screenshot(shots / "05-bob-review.png")
        bob.click("#approve", navigates=True)
        assert bob.text("#state") == "APPROVED"
        assert bob.text(".review .author") == "bob" and bob.text(".review .rreason") == "ticket OPS-42 checked"
        assert not bob.exists("#review-form")
        bob.screenshot(shots / "06-approved.png")
        bob.evaluate("document.querySelector('.reviews').scrollIntoView()")
        bob.screenshot(shots / "06-approved-reviews.png")

        alice.goto(rc.url + REQUESTS + "/" + rid)
        assert alice.text("#state") == "APPROVED"
        alice.click("#assume", navigates=True)
        assert alice.url == rc.url + RESOURCES
        assert "requester, dba" in alice.text("#elevated")
        assert hosts_until(alice, mine, True) == ["req-dev-1", "req-prod-1"]
        alice.screenshot(shots / "07-assumed-resources.png")

        alice.goto(rc.url + REQUESTS)
        assert alice.text(f"tr.request[data-id='{rid}'] .ractions") == "assumed"
        alice.screenshot(shots / "08-assumed-list.png")
        alice.set_viewport(390, 844, mobile=True)
        alice.color_scheme("dark")
        for name, path in (("requests", REQUESTS), ("detail", f"{REQUESTS}/{rid}"), ("new", f"{REQUESTS}/new"),
                           ("resources", RESOURCES)):
            alice.goto(rc.url + path)
            assert alice.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
            assert alice.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 21)"
            alice.screenshot(shots / f"09-phone-dark-{name}.png")
        alice.set_viewport(900, 700)
        alice.color_scheme("light")

        alice.goto(mine)
        alice.click("#switch-back", navigates=True)
        assert alice.url == mine  # back where it was
        assert not alice.exists("#elevated")
        assert hosts_until(alice, mine, False) == ["req-dev-1"]
        alice.screenshot(shots / "10-switched-back.png")

        assert alice.console == [], alice.console  # no CSP violation, no script error
        assert bob.console == [], bob.console
