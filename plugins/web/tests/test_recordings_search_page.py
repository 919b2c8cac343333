"""The recordings page's text search (docs/web.md, "Session recordings"; docs/sessions.md,
"Searching recordings by their text") against a real cluster: auth (SQLite: FTS5), the proxy with
teleport-web and our node in one process; sessions made with ``tsh ssh``. Over HTTP, and in
Chromium (typing into the search box)."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from terminal_helpers import tsh, tsh_login
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e]
NODENAME = "web-auth"
TOKEN = secrets.token_hex(4)
NEEDLE = f"needle-{TOKEN}-42"  # only the output shows it (the command typed says $((6*7)))
PAGE = f"/web/cluster/{CLUSTER}/recordings"


def listed_sids(html: str) -> list[str]:
    return re.findall(r'<tr data-sid="([^"]+)"', html)


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """alice (access) ran a session showing NEEDLE and one that did not; mallory has access only."""
    with running_cluster(tmp_path_factory.mktemp("search"), node=True) as c:
        for user in ("alice", "mallory"):
            c.signup(user, ["access"])
        home = tmp_path_factory.mktemp("alice-tsh")
        tsh_login(c, home, "alice")
        wait_for(lambda: any(n["nodename"] == NODENAME for n in c.call("get_nodes")), what="the node")
        for command in (f"echo needle-{TOKEN}-$((6*7))", "echo plain-$((6*7))"):
            done = tsh(home, "ssh", f"{LOGIN}@{NODENAME}", command, timeout=120)
            assert done.returncode == 0, done.stderr

        def indexed() -> str:
            result = tsh(home, "recordings", "ls", f"--search={NEEDLE}", "--format=json")
            assert result.returncode == 0, result.stderr
            return str(result.stdout) if TOKEN in result.stdout else ""

        wait_for(indexed, what="the indexed recording", interval=0.3)
        with c.logged_in("alice") as web:
            every = listed_sids(web.get(PAGE).text)
        assert len(every) == 2
        yield {"cluster": c, "all": every}


def test_the_search_box_finds_the_session_and_marks_the_text(found: dict[str, Any]) -> None:
    c: WebCluster = found["cluster"]
    with c.logged_in("alice") as web:
        page = web.get(PAGE, params={"search": NEEDLE.upper()})
        assert page.status_code == 200, page.text
        [sid] = listed_sids(page.text)
        assert sid in found["all"]
        assert f'value="{NEEDLE.upper()}"' in page.text  # the box keeps the text
        assert f"<mark>{NEEDLE}</mark>" in page.text
        none = web.get(PAGE, params={"search": f"needle-{TOKEN}-43"})
        assert none.status_code == 200 and listed_sids(none.text) == [] and 'id="empty"' in none.text
        # markup in the search text is text: escaped in the box, never a tag
        odd = web.get(PAGE, params={"search": '"><script>alert(1)</script>'})
        assert odd.status_code == 200 and "<script>alert(1)" not in odd.text
    with c.logged_in("mallory") as web:  # access: not mallory's session, so not found by its text
        assert listed_sids(web.get(PAGE, params={"search": NEEDLE}).text) == []


@pytest.mark.parametrize(("text", "message"), [
    ("ab", "search: at least 3 characters"),
    ("x" * 300, "search: at most 256 characters"),
    ("nee\x00dle", "NUL character"),
])
def test_bad_search_text_is_said_on_the_page(found: dict[str, Any], text: str, message: str) -> None:
    c: WebCluster = found["cluster"]
    with c.logged_in("alice") as web:
        page = web.get(PAGE, params={"search": text})
    assert page.status_code == 400 and message in page.text and 'id="search-error"' in page.text
    assert 'id="search"' in page.text  # the form is still there to fix it


@pytest.mark.slow
def test_searching_in_the_browser(found: dict[str, Any], tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    c: WebCluster = found["cluster"]
    (tmp_path / "alice").mkdir()
    with Chromium(tmp_path / "alice") as browser:
        page = browser.open(c.url + PAGE)
        page.wait_for_selector("#user")
        page.type("#user", "alice")
        page.type("#password", PASSWORD)
        page.submit("#login")
        page.wait_for_selector("table.recordings")
        assert page.evaluate("document.querySelectorAll('table.recordings tbody tr').length") == 2
        page.type("#search", NEEDLE)
        page.submit("form.recfilters")
        page.wait_for("document.querySelector('table.recordings mark') !== null")
        assert page.evaluate("document.querySelectorAll('table.recordings tbody tr').length") == 1
        assert page.text("table.recordings mark") == NEEDLE
        page.screenshot(tmp_path / "recordings-search.png")
