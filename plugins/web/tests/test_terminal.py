"""The web terminal in headless Chromium against a real cluster (auth, the proxy with teleport-web
and our node in one process): a normal session (typed, Ctrl-C, pasted, resized, exited, recorded, listed by
``tsh recordings ls``, played by ``tsh play``, audited with ``client: web``), the WebSocket's
refusals before the upgrade (no cookie, a foreign Origin, another user's session ID), refusals
after it with tsh's reasons (login, unknown node, bad query: audited), and a lock closing an
open terminal with its message. Screenshots are saved under each test's tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from terminal_helpers import (
    NODENAME,
    WSClient,
    browser_login,
    node_uuid,
    open_console,
    recordings,
    screen,
    session_cookie,
    tsh,
    tsh_login,
    type_line,
    wait_screen,
    ws_handshake,
)
from web_helpers import CLUSTER, LOGIN, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def term_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    """Auth, proxy and node; alice (dev: the node's env=test; access: her own recordings), bob (no node), carol (dev, to be locked)."""
    with running_cluster(tmp_path_factory.mktemp("term"), node=True) as c:
        for user, roles in (("alice", ["dev", "access"]), ("bob", ["nothing"]), ("carol", ["dev"])):
            c.signup(user, roles)
        node_uuid(c)
        yield c


def _chromium() -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")


def _denials(cluster: WebCluster, user: str, needle: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events("auth", user=user) if needle in e.get("error", "")]


@pytest.mark.slow
def test_a_web_terminal_is_a_normal_recorded_session(term_cluster: WebCluster, tmp_path: Path) -> None:
    _chromium()
    node = node_uuid(term_cluster)
    with Chromium(tmp_path) as browser:
        page = browser.open(f"{term_cluster.url}/web/login")
        browser_login(page, "alice")
        page.wait_for_selector("table.resources")
        link = page.evaluate("document.querySelector('details.connect a').getAttribute('href')")
        assert link == f"/web/cluster/{CLUSTER}/console/node/{node}/{LOGIN}"
        page.goto(term_cluster.url + link)
        page.wait_for("document.getElementById('console').dataset.connected === '1'")
        assert page.text(".console-title") == f"{LOGIN}@{NODENAME}"
        type_line(page, "echo web-$((6*7))")
        wait_screen(page, "web-42")
        styles = page.evaluate("[...document.querySelectorAll('style')].map(s => s.sheet !== null)")
        assert styles and all(styles)  # xterm.js's <style> elements applied under the CSP's nonce
        page.screenshot(tmp_path / "terminal.png")

        type_line(page, "sleep 3017")  # Ctrl-C as a key press interrupts it, once it runs
        wait_for(lambda: subprocess.run(["pgrep", "-fx", "sleep 3017"], capture_output=True).returncode == 0,
                 what="sleep on the node")
        page.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "c", "code": "KeyC", "modifiers": 2,
                                             "windowsVirtualKeyCode": 67})
        page.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "c", "code": "KeyC", "modifiers": 2,
                                             "windowsVirtualKeyCode": 67})
        type_line(page, "echo after-$((6*7))")
        assert "^C" in wait_screen(page, "after-42")
        page.evaluate("""(() => { const data = new DataTransfer();
            data.setData("text/plain", "echo pasted-$((6*7)) ünï");
            document.querySelector(".xterm-helper-textarea").dispatchEvent(
                new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
            return true; })()""")
        page.press("Enter")  # bash's bracketed paste inserts a pasted newline without running it
        wait_screen(page, "pasted-42 ünï")
        page.screenshot(tmp_path / "terminal-ctrl-c-paste.png")
        type_line(page, "stty size")
        before = wait_for(lambda: _stty(screen(page)), what="stty size")
        page.set_viewport(700, 420)
        page.wait_for(f"window.teleportTerminal.cols !== {before[1]}")
        type_line(page, "clear; stty size")
        after = wait_for(lambda: (s := _stty(screen(page))) and s != before and s, what="a new stty size")
        assert after == (page.evaluate("window.teleportTerminal.rows"), page.evaluate("window.teleportTerminal.cols"))
        page.screenshot(tmp_path / "terminal-resized.png")
        size = f"{after[1]}:{after[0]}"  # its session_tracker: the web's, resized with it
        [tracker] = wait_for(lambda: [t["spec"] for t in term_cluster.call("list_session_trackers")
                                      if t["spec"]["client"] == "web" and t["spec"]["terminal_size"] == size],
                             what="the web terminal's session tracker, resized")
        assert tracker["host_user"] == "alice" and tracker["interactive"] and tracker["state"] == "running"

        type_line(page, "exit")
        page.wait_for("document.getElementById('console').dataset.ended")
        ended = page.evaluate("document.getElementById('console').dataset.ended")
        assert ended == "session ended: exit status 0", ended
        assert "session ended: exit status 0" in screen(page)
        page.screenshot(tmp_path / "terminal-ended.png")
        assert not [line for line in page.console if "Content Security Policy" in line or "exception" in line], \
            page.console

    start = wait_for(lambda: term_cluster.events("session.start", user="alice", client="web"), what="session.start")
    assert start[0]["login"] == LOGIN and start[0]["server_hostname"] == NODENAME and start[0]["proto"] == "ssh"
    sid = start[0]["sid"]
    assert sid == tracker["session_id"]
    wait_for(lambda: all(t["spec"]["session_id"] != sid for t in term_cluster.call("list_session_trackers")),
             what="the ended session's tracker to go")
    home = tmp_path / "tsh"
    tsh_login(term_cluster, home, "alice")
    listed = wait_for(lambda: [s for s in recordings(home) if s["sid"] == sid and s["recorded"]], what="the upload",
                      interval=0.3)
    assert listed[0]["user"] == "alice" and listed[0]["interactive"]
    played = tsh(home, "play", sid, "--format=json")
    assert played.returncode == 0 and "web-42" in played.stdout, played.stderr


def _stty(text: str) -> tuple[int, int] | None:
    """The last ``rows cols`` line ``stty size`` printed."""
    for line in reversed(text.splitlines()):
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    return None


@pytest.mark.slow
def test_a_lock_closes_the_open_terminal_with_its_message(term_cluster: WebCluster, tmp_path: Path) -> None:
    _chromium()
    node = node_uuid(term_cluster)
    with Chromium(tmp_path) as browser:
        page = open_console(browser, term_cluster, "carol", node)
        type_line(page, "echo before-$((6*7))")
        wait_screen(page, "before-42")
        term_cluster.call("upsert_lock", {"kind": "lock", "version": "v2", "metadata": {"name": "carol-term"},
                                          "spec": {"target": {"user": "carol"}, "message": "carol is on leave"}})
        try:
            page.wait_for("document.getElementById('console').dataset.ended", timeout=60)
            assert "carol is on leave" in screen(page)
            page.screenshot(tmp_path / "terminal-locked.png")
        finally:
            term_cluster.call("delete_lock", "carol-term")


def test_websocket_without_cookie_is_refused(term_cluster: WebCluster) -> None:
    status, _ = ws_handshake(term_cluster, query={"node": NODENAME, "login": LOGIN})
    assert status == 403


def test_websocket_from_a_foreign_origin_is_refused_and_audited(term_cluster: WebCluster) -> None:
    with term_cluster.logged_in("alice") as web:
        cookie = session_cookie(web)
    for origin in ("https://evil.example.com", ""):
        status, _ = ws_handshake(term_cluster, cookie=cookie, origin=origin, query={"node": NODENAME, "login": LOGIN})
        assert status == 403, origin
    assert wait_for(lambda: [e for e in term_cluster.events("auth")
                             if "WebSocket from a foreign origin 'https://evil.example.com'" in e.get("error", "")],
                    what="the audited refusal")
    status, _ = ws_handshake(term_cluster, cookie=cookie, query={"node": NODENAME, "login": LOGIN}, read=False)
    assert status == 101  # the same cookie from the proxy's own origin


def test_another_users_session_id_is_refused(term_cluster: WebCluster) -> None:
    with term_cluster.logged_in("bob") as web:
        bobs = json.loads(bytes.fromhex(session_cookie(web)))["sid"]
    forged = json.dumps({"user": "alice", "sid": bobs}, separators=(",", ":")).encode().hex()
    status, _ = ws_handshake(term_cluster, cookie=forged, query={"node": NODENAME, "login": LOGIN})
    assert status == 403
    assert wait_for(lambda: [e for e in term_cluster.events("auth")
                             if 'web session of "bob" presented as "alice"\'s' in e.get("error", "")],
                    what="the audited refusal")


@pytest.mark.parametrize(("user", "query", "reason"), [
    ("alice", {"node": NODENAME, "login": "nobody"}, "access denied to alice connecting to web-auth"),
    ("alice", {"node": "no-such-node", "login": LOGIN}, "target host no-such-node is offline or does not exist"),
    ("bob", {"node": NODENAME, "login": LOGIN}, "target host web-auth is offline or does not exist"),
])
def test_refusals_carry_tsh_reasons_and_are_audited(term_cluster: WebCluster, user: str, query: dict[str, str],
                                                    reason: str) -> None:
    with term_cluster.logged_in(user) as web:
        status, messages = ws_handshake(term_cluster, cookie=session_cookie(web), query=query)
    assert status == 101
    ends = [m for m in messages if isinstance(m, dict) and m.get("type") == "end"]
    assert ends and reason in ends[0]["reason"], messages
    assert messages[-1][:2] == ("close", 1008)
    audited = wait_for(lambda: _denials(term_cluster, user, reason), what="the audited refusal")
    assert audited[0]["client"] == "web" and audited[0]["target"] == query["node"]


@pytest.mark.parametrize(("query", "reason"), [
    ({"login": LOGIN}, "node is missing"),
    ({"node": NODENAME}, "login is missing"),
    ({"node": NODENAME, "login": LOGIN, "cols": "0"}, "cols: expected a number from 1 to 1000, got '0'"),
    ({"node": NODENAME, "login": LOGIN, "rows": "many"}, "rows: expected a number from 1 to 1000, got 'many'"),
    ({"node": "a\x01b", "login": LOGIN}, "node: not a valid name"),
])
def test_a_bad_query_gets_a_clear_error(term_cluster: WebCluster, query: dict[str, str], reason: str) -> None:
    with term_cluster.logged_in("alice") as web:
        status, messages = ws_handshake(term_cluster, cookie=session_cookie(web), query=query)
    assert status == 101
    assert messages[0] == {"type": "end", "reason": reason} and messages[-1][:2] == ("close", 1008), messages


def test_pings_keep_an_idle_terminal_and_a_silent_browser_is_dropped(
        term_cluster: WebCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from teleport_web.pages import console

    monkeypatch.setattr(console, "PING_INTERVAL", 1.0)
    with term_cluster.logged_in("alice") as web:
        cookie = session_cookie(web)
    query = {"node": NODENAME, "login": LOGIN, "cols": "100", "rows": "30"}
    answering = WSClient(term_cluster, cookie, query)
    silent = WSClient(term_cluster, cookie, query)
    try:
        assert answering.next()["type"] == "session"
        pings = 0
        deadline = time.monotonic() + 12  # past the web port's 10 s request-head deadline
        while time.monotonic() < deadline:
            message = answering.next()
            if isinstance(message, dict) and message.get("type") == "ping":
                pings += 1
                answering.send_json({"type": "pong"})
        assert pings >= 5
        answering.send_json({"type": "resize", "cols": 90, "rows": 20})
        answering.send_bytes("stty size; echo idle-$((6*7)) héllo-ü\r".encode())
        seen = answering.output_until("idle-42 héllo-ü\r\n".encode())
        assert b"20 90" in seen  # the resize reached the PTY; UTF-8 both ways
        ends = []
        while not ends:
            message = silent.next()
            if isinstance(message, dict) and message.get("type") == "end":
                ends.append(message)
        assert ends[0]["reason"] == "session ended: the browser stopped answering pings"
    finally:
        answering.close()
        silent.close()


def test_the_console_page_allows_only_its_own_style_nonce(term_cluster: WebCluster) -> None:
    node = node_uuid(term_cluster)
    with term_cluster.logged_in("alice") as web:
        answer = web.get(f"/web/cluster/{CLUSTER}/console/node/{node}/{LOGIN}")
        other = web.get(f"/web/cluster/{CLUSTER}/resources")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    csp = answer.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert csp.endswith(f"; style-src 'self' 'nonce-{nonce}'") and "script-src 'self';" in csp
    assert f'nonce="{nonce}"' in answer.text and "x-teleport-style-nonce" not in answer.headers
    assert f'data-node="{node}"' in answer.text and f"{LOGIN}@{NODENAME}" in answer.text
    assert "nonce" not in other.headers["content-security-policy"]  # other pages keep the strict CSP


def test_a_malformed_style_nonce_keeps_the_strict_csp() -> None:
    from teleport_proxy.headers import HEADERS, with_style_nonce

    assert with_style_nonce("x'; script-src *") == HEADERS
    assert with_style_nonce("short") == HEADERS


def test_the_bench_refuses_a_bad_key_count() -> None:
    bench = Path(__file__).resolve().parents[3] / "bench" / "web_terminal.py"
    for value in ("0", "many"):
        result = subprocess.run([sys.executable, str(bench), "--keys", value], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert ("--keys must be at least 1" if value == "0" else "invalid int value: 'many'") in result.stderr
