"""The admin views (users, roles, join tokens, nodes, *Create invite*) against a real cluster:
an editor sees them and creates an invite whose link works (completed in Chromium, then the new
user logs in); an access user gets 403 pages with auth's reason, audited, and no admin links."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster

from teleport_core.testing.browser import CHROMIUM, Chromium, Page
from teleport_core.testing.prerequisites import missing

BASE = f"/web/cluster/{CLUSTER}"
ADMIN = ("users", "roles", "tokens")


@pytest.fixture(scope="module")
def admins(cluster: WebCluster) -> WebCluster:
    """``ed`` (editor, access) and ``acc`` (access), a join token and a node to list."""
    cluster.signup("ed", ["editor", "access"])  # (nodes are listed by label: editor alone sees none)
    cluster.signup("acc", ["access"])
    cluster.call("create_token", ["Node"], "10m")
    cluster.add_node("admin-node", {"env": "test", "team": "web"})
    return cluster


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found
    return found.group(1)


def test_editor_sees_every_admin_view(admins: WebCluster) -> None:
    token = next(t["token"] for t in admins.call("get_tokens") if not t["static"])
    with admins.logged_in("ed") as web:
        users = web.get(f"{BASE}/users")
        assert users.status_code == 200 and users.headers["cache-control"] == "no-store"
        assert all(f"<td>{name}</td>" in users.text for name in ("alice", "bob", "ed", "acc"))
        assert 'id="new-user"' in users.text  # may create: the invite form
        for view in ADMIN:
            assert f'href="{BASE}/{view}"' in users.text  # the nav links
        roles = web.get(f"{BASE}/roles").text
        assert 'id="role-editor"' in roles and "kind: role" in roles and "node_labels:" in roles
        tokens = web.get(f"{BASE}/tokens").text
        assert token not in tokens and "••••••" + token[-4:] in tokens and "Node" in tokens
        nodes = web.get(f"{BASE}/nodes").text
        assert "admin-node" in nodes and "team=web" in nodes


def test_access_user_is_refused_and_audited(admins: WebCluster) -> None:
    with admins.logged_in("acc") as web:
        start = web.get(f"{BASE}/resources").text
        for view in ADMIN:
            assert f'href="{BASE}/{view}"' not in start  # no link the roles would refuse
        assert f'href="{BASE}/nodes"' in start  # access may list nodes
        for view in ADMIN:
            answer = web.get(f"{BASE}/{view}")
            assert answer.status_code == 403, (view, answer.status_code)
            assert "access denied" in answer.text and "acc" in answer.text, answer.text
        page = web.get(f"{BASE}/resources")
        created = web.post(f"{BASE}/users/new", data={"csrf_token": csrf_of(page), "name": "sneaky",
                                                      "roles": "editor", "logins": ""})
        assert created.status_code == 403
    refused = [e for e in admins.events("auth", user="acc") if e.get("success") is not True]
    reasons = " ".join(str(e.get("error", "")) for e in refused)
    for kind in ("user", "role", "token"):
        assert f"list on {kind}" in reasons, reasons
    assert not any(u["metadata"]["name"] == "sneaky" for u in admins.call("get_users"))


def test_create_invite_form_refuses_bad_input(admins: WebCluster) -> None:
    with admins.logged_in("ed") as web:
        csrf = csrf_of(web.get(f"{BASE}/users"))
        cases = [({"name": "", "roles": "access"}, "name:"),
                 ({"name": "bad name!", "roles": "access"}, "name:"),
                 ({"name": "nora", "roles": ""}, "roles: give at least one role"),
                 ({"name": "nora", "roles": "no-such-role"}, "no such role"),
                 ({"name": "nora", "roles": "access", "logins": "b@d login;"}, "logins:"),
                 ({"name": "alice", "roles": "access"}, "alice")]  # exists already
        for fields, reason in cases:
            answer = web.post(f"{BASE}/users/new", data={"csrf_token": csrf, "logins": "", **fields})
            assert answer.status_code == 400 and reason in answer.text, (fields, answer.status_code)
            assert 'id="message"' in answer.text
        # no CSRF token: refused (403) before auth is asked
        assert web.post(f"{BASE}/users/new", data={"name": "nora", "roles": "access"}).status_code == 403
    assert not any(u["metadata"]["name"] == "nora" for u in admins.call("get_users"))


def browser_login(page: Page, user: str, password: str = PASSWORD) -> None:
    page.wait_for_selector("#user")
    page.type("#user", user)
    page.type("#password", password)
    page.submit("#login")


def test_admin_views_and_invite_in_browser(admins: WebCluster, tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    with Chromium(tmp_path) as browser:
        page = browser.open(f"{admins.url}{BASE}/users")
        browser_login(page, "ed")
        page.wait_for_selector("table.users")
        page.click("details.invitebox summary")
        page.type("#name", "nina")
        page.type("#roles", "access")
        page.type("#logins", LOGIN)
        page.screenshot(tmp_path / "users-form.png")
        page.submit("#new-user")
        page.wait_for_selector("#invite-url")
        url = page.text("#invite-url")
        page.screenshot(tmp_path / "users-created.png")
        assert url.startswith(f"https://{admins.web}/web/invite/"), url
        for view in ("roles", "tokens", "nodes"):
            page.click(f'nav a[href="{BASE}/{view}"]', navigates=True)
            page.wait_for_selector("h1")
            if view == "roles":
                page.click("#role-access summary")
            page.screenshot(tmp_path / f"{view}.png")
        assert page.console == [], page.console
    # the link works: nina (another browser: no session of ed's) sets her password and logs in
    (tmp_path / "nina").mkdir()
    with Chromium(tmp_path / "nina") as browser:
        invite = browser.open(url)
        invite.wait_for_selector("#invite")
        invite.type("#password", "nina's long password")
        invite.type("#password_confirm", "nina's long password")
        invite.submit("#invite")
        invite.wait_for_selector("#done")
        invite.click("#to-login", navigates=True)
        browser_login(invite, "nina", "nina's long password")
        invite.wait_for_selector("table, .empty")
        assert f"{BASE}/resources" in invite.url
        assert f'{BASE}/users' not in str(invite.evaluate("document.querySelector('nav').innerHTML"))
        # and she, an access user, is refused the users page
        invite.goto(f"{admins.url}{BASE}/users")
        assert "access denied" in invite.text("main")
        invite.screenshot(tmp_path / "users-403.png")
