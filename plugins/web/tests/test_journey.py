"""Issue 15's whole browser journey in one headless Chromium, against one real cluster (auth, the
proxy with teleport-web and our node, ``second_factor: otp``): an admin creates a user (the invite
link); the user completes the invite with the secret the page shows, logs in with password and
TOTP, lists the nodes, filters by a label, opens a terminal (types, sees the output, resizes,
exits), finds the recording and plays it, finds ``session.start`` in the audit log, logs out, and
the back button brings no page back. A screenshot of each step is saved under ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest
from terminal_helpers import NODENAME, node_uuid, screen, type_line, wait_screen
from web_helpers import CLUSTER, LOGIN, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium, Page
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")]
BASE = f"/web/cluster/{CLUSTER}"
PASSWORD = "june's long passphrase"
PLAYER_TEXT = "document.getElementById('player').innerText"


def _stty(text: str) -> tuple[int, int] | None:
    """The last ``rows cols`` line ``stty size`` printed."""
    for line in reversed(text.splitlines()):
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    return None


def _no_errors(page: Page) -> None:
    """No CSP violation and no script error on the page so far."""
    bad = [line for line in page.console if "Content Security Policy" in line or line.startswith("exception")]
    assert not bad, bad


def _logout(page: Page) -> None:
    """The user menu's *Log out*, which must open inside the window (a wrapped header once put it off its left edge)."""
    page.click("details.usermenu summary")
    box = page.evaluate("(r => [r.left, r.right, window.innerWidth])"
                        "(document.querySelector('details.usermenu .menu').getBoundingClientRect())")
    assert box[0] >= 0 and box[1] <= box[2], box
    page.click("details.usermenu button", navigates=True)


def test_the_whole_journey(tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    step = iter(range(1, 100))

    def shot(page: Page, name: str) -> None:
        page.screenshot(shots / f"{next(step):02d}-{name}.png")

    with running_cluster(tmp_path / "cluster", second_factor="otp", node=True) as cluster:
        cluster.signup("ada", ["editor", "access"])
        cluster.add_node("db-1", {"env": "dev", "team": "db"})  # june may see it too: the label filter hides it
        node = node_uuid(cluster)
        with Chromium(tmp_path) as browser:
            # the admin logs in (password and TOTP) and creates june's invite
            page = browser.open(f"{cluster.url}/web/login")
            page.wait_for_selector("#user")
            page.type("#user", "ada")
            page.type("#password", "correct-horse-battery")
            page.type("#otp", cluster.fresh_code("ada"))
            page.submit("#login")
            page.wait_for_selector("table.resources, .empty")
            page.click(f'nav a[href="{BASE}/users"]', navigates=True)
            page.wait_for_selector("table.users")
            page.click("details.invitebox summary")
            page.type("#name", "june")
            page.type("#roles", "dev, auditor")
            page.type("#logins", LOGIN)
            shot(page, "admin-invite-form")
            page.submit("#new-user")
            page.wait_for_selector("#invite-url")
            invite_url = page.evaluate("document.getElementById('invite-url').href")
            assert invite_url.startswith(f"https://{cluster.web}/web/invite/"), invite_url
            shot(page, "admin-invite-created")
            _no_errors(page)
            _logout(page)
            assert page.url == cluster.url + "/web/login"

            # june completes the invite with the secret the page shows
            page.goto(invite_url)
            page.wait_for_selector("#invite")
            assert "june" in page.text("main") and page.exists("#qr svg")
            totp = pyotp.TOTP(page.text("#secret").replace(" ", ""))
            cluster.totps["june"] = totp
            shot(page, "invite")
            page.type("#password", PASSWORD)
            page.type("#password_confirm", PASSWORD)
            page.type("#otp", cluster.fresh_code("june"))
            page.submit("#invite")
            page.wait_for_selector("#done")
            assert page.text("#tsh-login") == f"tsh login --proxy={cluster.web} --user=june"
            shot(page, "invite-done")
            _no_errors(page)

            # logs in with the password and a TOTP code: the resources page
            page.click("#to-login", navigates=True)
            page.type("#user", "june")
            page.type("#password", PASSWORD)
            page.type("#otp", cluster.fresh_code("june"))
            page.submit("#login")
            page.wait_for_selector("table.resources")
            assert page.url == f"{cluster.url}{BASE}/resources"
            wait_for(lambda: (page.goto(page.url), {"db-1", NODENAME} <= set(page.evaluate(
                "[...document.querySelectorAll('td.host')].map(e => e.textContent)")))[1], what="both nodes listed")
            shot(page, "resources")

            # filters by a label (clicking it)
            page.click('td.labels a.label[href*="env%3Dtest"], td.labels a.label[href*="env=test"]', navigates=True)
            hosts = page.evaluate("[...document.querySelectorAll('td.host')].map(e => e.textContent)")
            assert hosts == [NODENAME], hosts
            shot(page, "resources-label-filter")

            # opens a terminal from the Connect menu
            page.click("details.connect summary")
            href = page.evaluate("document.querySelector('details.connect a').getAttribute('href')")
            assert href == f"{BASE}/console/node/{node}/{LOGIN}"
            page.click("details.connect a", navigates=True)
            page.wait_for("document.getElementById('console').dataset.connected === '1'")
            type_line(page, "echo web-$((6*7))")
            wait_screen(page, "web-42")
            shot(page, "terminal")
            type_line(page, "stty size")
            before = wait_for(lambda: _stty(screen(page)), what="stty size")
            page.set_viewport(700, 420)
            page.wait_for(f"window.teleportTerminal.cols !== {before[1]}")
            type_line(page, "stty size")  # (no clear: web-42 stays on the screen the recording ends with)
            after = wait_for(lambda: (s := _stty(screen(page))) and s != before and s, what="a new stty size")
            assert after == (page.evaluate("window.teleportTerminal.rows"), page.evaluate("window.teleportTerminal.cols"))
            shot(page, "terminal-resized")
            type_line(page, "exit")
            page.wait_for("document.getElementById('console').dataset.ended")
            assert page.evaluate("document.getElementById('console').dataset.ended") == "session ended: exit status 0"
            shot(page, "terminal-ended")
            _no_errors(page)
            page.set_viewport(1100, 750)

            start = wait_for(lambda: cluster.events("session.start", user="june", client="web"), what="session.start")
            sid = start[0]["sid"]

            # the recording is listed (once uploaded) and plays
            page.goto(f"{cluster.url}{BASE}/recordings")
            page.wait_for_selector("table.recordings, .empty")
            wait_for(lambda: (page.goto(page.url), page.exists(f'tr[data-sid="{sid}"] a.play'))[1],
                     what="the recording listed")
            shot(page, "recordings")
            page.click(f'tr[data-sid="{sid}"] a.play', navigates=True)
            page.wait_for(f"{PLAYER_TEXT}.split('\\n').some(l => l.trim() === 'web-42')", timeout=60)
            shot(page, "player")
            page.wait_for("window.recordingPlayer && window.recordingPlayer.ended", timeout=60)
            last = f"{PLAYER_TEXT}.split('\\n').map(l => l.trim())"  # the session's last screen, once drawn
            page.wait_for(f"{last}.includes('web-42') && {last}.includes('logout')", timeout=10)
            shot(page, "player-ended")
            _no_errors(page)

            # the audit log shows the session's session.start
            page.click(f'nav a[href="{BASE}/audit"]', navigates=True)
            page.wait_for_selector("#auditfilter")
            page.type("#type", "session.start")
            page.type("#sid", sid)
            page.submit("#auditfilter")
            page.wait_for_selector("#events")
            rows = page.evaluate("[...document.querySelectorAll('#events tr.event')].map(r => [r.dataset.event,"
                                 " r.querySelector('td.esid a').title])")
            assert rows == [["session.start", sid]], rows
            shot(page, "audit")
            _no_errors(page)

            # logs out: the back button brings no page back
            _logout(page)
            assert page.url == cluster.url + "/web/login"
            assert page.text("#message") == "you have logged out"
            shot(page, "logged-out")
            for _ in range(2):
                page.back()
                assert page.url.startswith(cluster.url + "/web/login"), page.url
                assert not page.exists("#events") and not page.exists("#player")
            shot(page, "after-back")
