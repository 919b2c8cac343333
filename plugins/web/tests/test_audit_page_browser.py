"""The audit log page in headless Chromium: a login event and a session.start listed, a filter
typed into the form narrows them, an event's JSON opens, paging forward through the bulk, the
export links, a phone's width and dark mode; no CSP violation or script error. Screenshots
are saved under the test's tmp folder (audit-*.png)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from terminal_helpers import NODENAME, node_uuid, tsh, tsh_login
from test_audit_page import AUDIT, NODES, AuditData, data  # noqa: F401  (the module fixture)
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

ROWS = "Array.from(document.querySelectorAll('#events tbody tr.event')).map(r => r.dataset.event)"
UIDS = "Array.from(document.querySelectorAll('#events tbody tr.event')).map(r => r.dataset.uid)"


def test_audit_page_in_a_browser(cluster: WebCluster, data: AuditData, tmp_path: Path) -> None:  # noqa: F811
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    with Chromium(tmp_path) as browser:
        page = browser.open(f"{cluster.url}{AUDIT}")
        page.wait_for_selector("#user")  # the login page first, then back to the audit log
        page.type("#user", "ada")
        page.type("#password", PASSWORD)
        if page.exists("#otp"):
            page.type("#otp", cluster.fresh_code("ada"))
        page.submit("#login")
        page.wait_for_selector("#events")
        assert page.url.startswith(f"{cluster.url}{AUDIT}")
        types = page.evaluate(ROWS)
        assert "user.login" in types and "session.start" in types, types
        assert page.text("h1") == "Audit log"
        assert page.evaluate("document.querySelector('nav a[aria-current=page]').textContent") == "Audit log"
        page.screenshot(tmp_path / "audit-list.png")
        # every column in view at a laptop's width (no cell pushes the table wider than the page)
        assert page.evaluate("document.querySelector('#events').scrollWidth <= "
                             "document.querySelector('.tablewrap').clientWidth"), \
            page.evaluate("Array.from(document.querySelectorAll('#events td')).map(td => td.scrollWidth + ' ' + "
                          "td.textContent.slice(0, 60)).filter(t => parseInt(t) > 250)")

        # filter in the form: session starts on one node
        page.type("#type", "session.start")
        page.type("#node", NODES[1])
        page.submit("#auditfilter")
        page.wait_for_selector("#events")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
        assert query["type"] == ["session.start"] and query["node"] == [NODES[1]] and query["range"] == ["24h"]
        assert set(page.evaluate(ROWS)) == {"session.start"}
        expected = {e.uid for e in data.recent if e.event == "session.start" and
                    e.fields["server_hostname"] == NODES[1]}
        assert set(page.evaluate(UIDS)) == expected

        # an event's JSON: closed until its summary is clicked
        assert page.evaluate("document.querySelector('details.eventjson').open") is False
        page.click("details.eventjson summary")
        page.wait_for("document.querySelector('details.eventjson').open")
        shown = json.loads(page.text("details.eventjson pre"))
        assert shown["uid"] in expected and shown["event"] == "session.start" and shown["login"] == "root"
        page.screenshot(tmp_path / "audit-filtered-json.png")

        # the user link filters on that user
        page.click("#events td.euser a", navigates=True)
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["user"] == [shown["user"]]

        # "Expand all" (the page's script) opens every event
        page.goto(f"{cluster.url}{AUDIT}?type=session.start")
        page.click("#expand-all")
        page.wait_for("Array.from(document.querySelectorAll('details.eventjson')).every(d => d.open)")
        assert page.text("#expand-all") == "Collapse all"

        # a custom range typed in From/To: the script switches the range to custom; then page forward
        page.goto(f"{cluster.url}{AUDIT}")
        for field, when in (("from", data.bulk_since), ("to", data.bulk_until)):  # as the date picker does
            page.evaluate(f"(e => {{ e.value = {json.dumps(when.strftime('%Y-%m-%dT%H:%M:%S'))}; "
                          f"e.dispatchEvent(new Event('input')); }})(document.getElementById('{field}'))")
        assert page.evaluate("document.getElementById('range').value") == "custom"
        page.type("#user", "bulk")
        page.submit("#auditfilter")
        page.wait_for_selector("#events")
        assert page.evaluate(UIDS) == data.bulk_uids[:50]
        page.click("#next", navigates=True)
        assert page.evaluate(UIDS) == data.bulk_uids[50:100]
        assert "page 2" in page.text("#range-shown")
        assert page.text("#range-shown").startswith(data.bulk_since.strftime("%Y-%m-%d %H:%M:%S"))
        page.screenshot(tmp_path / "audit-page2.png")
        csv_url = page.evaluate("document.getElementById('export-csv').href")
        assert "format=csv" in csv_url and "user=bulk" in csv_url and "cursor" not in csv_url

        # a phone's width, dark mode
        page.set_viewport(390, 844, mobile=True)
        page.color_scheme("dark")
        page.goto(f"{cluster.url}{AUDIT}?type=session.start,user.login")
        page.click("details.eventjson summary")
        page.screenshot(tmp_path / "audit-phone-dark.png")
        assert page.console == [], page.console  # no CSP violation, no script error


def test_a_refused_user_sees_a_clear_403_page(cluster: WebCluster, data: AuditData,  # noqa: F811
                                              tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    with Chromium(tmp_path) as browser:
        page = browser.open(f"{cluster.url}/web/cluster/{CLUSTER}/audit")
        page.wait_for_selector("#user")
        page.type("#user", "bob")
        page.type("#password", PASSWORD)
        if page.exists("#otp"):
            page.type("#otp", cluster.fresh_code("bob"))
        page.submit("#login")
        page.wait_for_selector(".error")
        assert "your roles do not allow reading audit events" in page.text(".error")
        page.screenshot(tmp_path / "audit-refused.png")


@pytest.mark.slow
def test_a_real_sessions_events_in_the_browser(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """A real node and ``tsh ssh``: the audit page lists the session's session.start (and, by its
    session ID, its end) beside the user's login, as auth stored them."""
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    with running_cluster(tmp_path_factory.mktemp("audit-node"), node=True) as real:
        real.signup("alice", ["dev", "auditor"])
        node_uuid(real)
        home = tmp_path / "tsh"
        tsh_login(real, home, "alice")
        ran = tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo audit-$((6*7))")
        assert ran.returncode == 0 and "audit-42" in ran.stdout, ran.stderr
        start = wait_for(lambda: real.events("session.start", user="alice"), what="session.start")[0]
        wait_for(lambda: real.events("session.end", sid=start["sid"]), what="session.end")
        with Chromium(tmp_path) as browser:
            page = browser.open(f"{real.url}{AUDIT}?type=session.start,user.login")
            page.wait_for_selector("#user")
            page.type("#user", "alice")
            page.type("#password", PASSWORD)
            page.submit("#login")
            page.wait_for_selector("#events")
            assert {"session.start", "user.login"} <= set(page.evaluate(ROWS))
            assert start["uid"] in page.evaluate(UIDS)
            page.click(f"tr[data-uid='{start['uid']}'] td.esid a", navigates=True)  # narrows to that session
            assert page.evaluate(ROWS) == ["session.start"]
            page.goto(f"{real.url}{AUDIT}?sid={start['sid']}")  # its every event
            rows = page.evaluate(ROWS)
            assert rows[0] == "session.start" and "session.end" in rows, rows
            assert page.text("#events td.enode") == NODENAME
            page.click("details.eventjson summary")
            assert json.loads(page.text("details.eventjson pre")) == start
            page.screenshot(tmp_path / "audit-real-session.png")
            assert page.evaluate("document.querySelector('#events').scrollWidth <= "
                                 "document.querySelector('.tablewrap').clientWidth")  # the JSON fits the page
            assert page.console == [], page.console
