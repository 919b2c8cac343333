"""Following a running session in the web UI (``session_recording: node-sync``): the live page
and its stream endpoint against a real cluster (auth, the proxy with teleport-web and our node in
one process; the session made with ``tsh ssh``), refusals, and the page in a real browser."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from terminal_helpers import tsh_login
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e]
NODENAME = "web-auth"
LIVE_BUFFER = """(() => { const b = window.teleportLive.buffer.active; const out = [];
  for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
  return out.join("\\n"); })()"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """alice (access) runs a session that prints its ID and a marker, then waits; mallory (access)
    may not read it."""
    with running_cluster(tmp_path_factory.mktemp("live"), node=True, recording="node-sync") as c:
        for user in ("alice", "mallory"):
            c.signup(user, ["access"])
        home = tmp_path_factory.mktemp("alice-tsh")
        tsh_login(c, home, "alice")
        wait_for(lambda: any(n["nodename"] == NODENAME for n in c.call("get_nodes")), what="the node")
        env = {**os.environ, "TELEPORT_HOME": str(home)}
        env.pop("SSH_AUTH_SOCK", None)
        command = 'echo "SID=$TELEPORT_SESSION=SID"; echo live-$((6*7)); sleep 600'
        session = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", f"{LOGIN}@{NODENAME}",
                                    command], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        try:
            assert session.stdout is not None
            seen = b""
            selector = selectors.DefaultSelector()
            selector.register(session.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 60
            while (found := re.search(rb"SID=([0-9a-f-]{36})=SID", seen)) is None:
                assert time.monotonic() < deadline, seen
                if selector.select(0.5):
                    seen += os.read(session.stdout.fileno(), 4096)
            yield {"cluster": c, "sid": found.group(1).decode(), "session": session}
        finally:
            session.terminate()
            session.communicate(timeout=30)


def url(sid: str, rest: str = "") -> str:
    return f"/web/cluster/{CLUSTER}/session/{sid}{rest}"


def test_the_player_of_a_running_session_sends_to_the_live_page(live: dict[str, Any]) -> None:
    c: WebCluster = live["cluster"]
    sid = live["sid"]
    with c.logged_in("alice") as web:
        player = web.get(url(sid))
        assert player.status_code == 303 and player.headers["location"] == url(sid, "/live")
        page = web.get(url(sid, "/live"))
        assert page.status_code == 200 and f'data-stream="{url(sid, "/stream")}"' in page.text

        def received() -> Any:
            answer = web.get(url(sid, "/stream"), params={"offset": 0})
            return answer if b"live-42" in answer.content else None

        answer = wait_for(received, what="the output at auth")
        assert answer.headers["x-teleport-recording"] == "streaming"
        assert answer.headers["x-teleport-session"] == "running"
        assert answer.content.startswith(b'{"version": 2')
        size = len(answer.content)
        rest = web.get(url(sid, "/stream"), params={"offset": size})
        assert rest.status_code == 200 and int(rest.headers["x-teleport-next-offset"]) == size + len(rest.content)
        assert web.get(url(sid, "/stream"), params={"offset": "-1"}).status_code == 400
        assert web.get(url(sid, "/stream"), params={"offset": "x"}).status_code == 400
    assert c.events("session.recording.access", sid=sid, user="alice"), "the first read is audited"
    with c.logged_in("mallory") as web:  # not her session: refused at auth (audited there)
        refused = web.get(url(sid, "/stream"), params={"offset": 0})
        assert refused.status_code == 403


@pytest.mark.slow
def test_the_live_page_shows_the_output_in_the_browser(live: dict[str, Any], tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    c: WebCluster = live["cluster"]
    (tmp_path / "browser").mkdir()
    with Chromium(tmp_path / "browser") as browser:
        page = browser.open(c.url + url(live["sid"], "/live"))
        page.wait_for_selector("#user")
        page.type("#user", "alice")
        page.type("#password", PASSWORD)
        page.submit("#login")
        page.wait_for("document.getElementById('live') && document.getElementById('live').dataset.state === "
                      "'following'", 60)
        page.wait_for(f"({LIVE_BUFFER}).includes('live-42')", 30)
        assert not [line for line in page.console if "Content Security Policy" in line]
