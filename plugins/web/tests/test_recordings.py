"""Session recordings in the web UI against a real cluster (auth, the proxy with teleport-web and
our node in one process; sessions made with ``tsh ssh``): the list with the user's rights (the
preset ``access`` role sees its own sessions, ``auditor`` every one), filters and paging, the
player's segmented index and segments, the download (the bytes ``tsh play --format=cast``
writes), the share link refused for another ``access`` user (403, audited) and refusals of bad
queries; plus :mod:`teleport_web.castsegments` on generated files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from teleport_web import castsegments
from terminal_helpers import recordings, tsh, tsh_login
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium, Page
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e]
NODENAME = "web-auth"  # the in-process node (the process's nodename)


# -- castsegments on generated files ---------------------------------------------------------------------


def write_cast(path: Path, events: list[list[Any]], header: dict[str, Any] | None = None) -> Path:
    with open(path, "w") as out:
        out.write(json.dumps(header or {"version": 2, "width": 100, "height": 30}) + "\n")
        for event in events:
            out.write(json.dumps(event) + "\n")
    return path


def check_player_rules(path: Path, index: castsegments.CastIndex) -> list[list[Any]]:
    """asciinema-player's checks of a segmented recording (its 3.18 source); every event, in order."""
    doc = index.document("seg/{n}.json")
    starts = [s["start"] for s in doc["segments"]]
    assert starts[0] == 0 and starts == sorted(set(starts)) and all(s < doc["duration"] for s in starts[1:])
    out: list[list[Any]] = []
    for n, start in enumerate(starts):
        seg = json.loads(castsegments.segment(path, index, n))
        assert seg["snapshot"]["cols"] == 100 and seg["snapshot"]["rows"] == 30
        events = seg["events"]
        assert events, n
        times = [e[0] for e in events]
        assert times == sorted(times)
        end = starts[n + 1] if n + 1 < len(starts) else None
        assert all(start <= t for t in times) and (end is None or all(t < end for t in times))
        if n:
            assert times[0] == start
        out.extend(events)
    assert out[-1][0] == doc["duration"]
    return out


def test_segments_keep_every_event_and_the_players_rules(tmp_path: Path) -> None:
    events = []
    t = 0.0
    for i in range(30_000):
        if i % 5:  # bursts of events at one time: a cut never splits them
            t += 0.01
        events.append([round(t, 6), "o", f"line {i} {'x' * 60}\r\n"])
    path = write_cast(tmp_path / "long.cast", events)
    index = castsegments.build_index(path, segment_bytes=64 << 10)
    assert len(index.segments) > 20
    played = check_player_rules(path, index)
    assert [e[2] for e in played] == [e[2] for e in events]
    assert index.duration == events[-1][0]
    # a seek into a segment rebuilds the screen from the output before it
    seg = json.loads(castsegments.segment(path, index, 7))
    first = seg["events"][0][2]
    before = events[[e[2] for e in events].index(first) - 1][2]
    assert seg["snapshot"]["init"].endswith(before)
    assert len(seg["snapshot"]["init"]) <= castsegments.SNAPSHOT_BYTES


def test_a_short_recording_is_one_segment(tmp_path: Path) -> None:
    path = write_cast(tmp_path / "short.cast", [[0.5, "o", "$ echo hi\r\n"], [0.6, "o", "hi\r\n"]])
    index = castsegments.build_index(path)
    assert len(index.segments) == 1 and index.duration == 0.6
    assert [e[2] for e in check_player_rules(path, index)] == ["$ echo hi\r\n", "hi\r\n"]


def test_one_huge_event_and_equal_times_at_the_end(tmp_path: Path) -> None:
    big = "y" * (300 << 10)
    path = write_cast(tmp_path / "odd.cast", [[0.0, "o", "a"], [1.0, "o", big], [2.0, "o", "b"], [2.0, "o", "c"],
                                              [2.0, "o", "d"]])
    index = castsegments.build_index(path, segment_bytes=100 << 10)
    assert [e[2] for e in check_player_rules(path, index)] == ["a", big, "b", "c", "d"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"version": 2, "width": 80, "height": 24}\n', "no output"),
    ('{"version": 1}\n[0.1, "o", "x"]\n', "not an asciicast v2"),
    ("not json\n", "not an asciicast v2"),
    ('{"version": 2}\nnot an event\n', "no output"),
])
def test_what_cannot_be_played_says_why(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.cast"
    path.write_text(content)
    with pytest.raises(castsegments.NotPlayable, match=message):
        castsegments.build_index(path)


def test_no_such_segment(tmp_path: Path) -> None:
    path = write_cast(tmp_path / "one.cast", [[0.1, "o", "x"]])
    index = castsegments.build_index(path)
    with pytest.raises(castsegments.NotPlayable, match="segment 1"):
        castsegments.segment(path, index, 1)


# -- the pages against a real cluster -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """alice and mallory have the preset access role, audrey auditor (+ access); alice ran two
    sessions (``echo rec-$((6*7))`` and ``echo second-$((6*7))``), listed as uploaded."""
    with running_cluster(tmp_path_factory.mktemp("rec"), node=True) as c:
        for user, roles in (("alice", ["access"]), ("mallory", ["access"]), ("audrey", ["auditor", "access"])):
            c.signup(user, roles)
        homes = {}
        for user in ("alice", "audrey"):
            homes[user] = tmp_path_factory.mktemp(f"{user}-tsh")
            tsh_login(c, homes[user], user)
        wait_for(lambda: any(n["nodename"] == NODENAME for n in c.call("get_nodes")), what="the node")
        for command in ("echo rec-$((6*7))", "echo second-$((6*7))"):
            done = tsh(homes["alice"], "ssh", f"{LOGIN}@{NODENAME}", command, timeout=120)
            assert done.returncode == 0, done.stderr
        listed = wait_for(lambda: (lambda found: found if len(found) >= 2 else None)(
            [s for s in recordings(homes["alice"]) if s["recorded"]]), what="two uploaded recordings")
        first = next(s for s in listed if "rec-" in s["command"])
        yield {"cluster": c, "homes": homes, "sid": first["sid"], "sessions": listed}


def page_url(sid: str, rest: str = "") -> str:
    return f"/web/cluster/{CLUSTER}/session/{sid}{rest}"


def listed_sids(html: str) -> list[str]:
    return re.findall(r'<tr data-sid="([^"]+)"', html)


def test_the_list_shows_a_user_their_own_sessions_and_an_auditor_every_one(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    sids = {s["sid"] for s in rec["sessions"]}
    with c.logged_in("alice") as web:
        page = web.get(f"/web/cluster/{CLUSTER}/recordings")
        assert page.status_code == 200, page.text
        assert set(listed_sids(page.text)) == sids
        assert "wasm" not in page.headers["content-security-policy"]  # only the player's page runs WebAssembly
        assert "alice" in page.text and NODENAME in page.text and LOGIN in page.text and "uploaded" in page.text
        assert f'href="{page_url(rec["sid"])}"' in page.text and page_url(rec["sid"], "/download") in page.text
    with c.logged_in("mallory") as web:  # access: only the sessions mallory took part in
        page = web.get(f"/web/cluster/{CLUSTER}/recordings")
        assert page.status_code == 200 and listed_sids(page.text) == []
        assert 'id="empty"' in page.text
    with c.logged_in("audrey") as web:
        assert set(listed_sids(web.get(f"/web/cluster/{CLUSTER}/recordings").text)) == sids


def test_filters_and_paging(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    base = f"/web/cluster/{CLUSTER}/recordings"
    sids = [s["sid"] for s in rec["sessions"]]  # newest first
    with c.logged_in("audrey") as web:
        assert listed_sids(web.get(base, params={"user": "mallory"}).text) == []
        assert set(listed_sids(web.get(base, params={"user": "alice", "node": NODENAME}).text)) == set(sids)
        assert listed_sids(web.get(base, params={"node": "elsewhere"}).text) == []
        assert listed_sids(web.get(base, params={"from": "2020-01-01T00:00", "to": "2020-01-02T00:00"}).text) == []
        first = web.get(base, params={"limit": "1"})
        assert listed_sids(first.text) == sids[:1]
        older = re.search(r'<a href="([^"]+)" rel="next" id="older">', first.text)
        assert older, first.text
        second = web.get(older.group(1).replace("&amp;", "&"))
        assert listed_sids(second.text) == sids[1:2]
        assert 'id="older"' not in second.text


@pytest.mark.parametrize(("params", "message"), [
    ({"from": "yesterday"}, "from: expected a time"),
    ({"to": "2026-13-45T99:00"}, "to: expected a time"),
    ({"limit": "0"}, "limit: expected 1 to 200"),
    ({"limit": "lots"}, "limit: expected a number"),
    ({"from": "2026-01-02T00:00", "to": "2026-01-01T00:00"}, "from must be before to"),
    ({"user": "bad\x01name"}, "control characters"),
])
def test_bad_list_queries_are_refused_with_the_reason(rec: dict[str, Any], params: dict[str, str],
                                                      message: str) -> None:
    c: WebCluster = rec["cluster"]
    with c.logged_in("audrey") as web:
        page = web.get(f"/web/cluster/{CLUSTER}/recordings", params=params)
        assert page.status_code == 400
        assert message in page.text


def test_player_index_and_segments_carry_the_session(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    sid = rec["sid"]
    before = len(c.events("session.recording.access", sid=sid, user="alice"))
    with c.logged_in("alice") as web:
        page = web.get(page_url(sid))
        assert page.status_code == 200, page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "unsafe-eval'" not in csp.replace("wasm-unsafe", "")
        assert "x-teleport-wasm" not in page.headers
        assert f'data-index="{page_url(sid, "/index.json")}"' in page.text
        assert f'value="https://{c.web}{page_url(sid)}"' in page.text  # the share link: the page's URL
        index = web.get(page_url(sid, "/index.json"))
        assert index.status_code == 200 and index.headers["cache-control"] == "no-store"
        doc = index.json()
        assert doc["version"] == 1 and doc["segments"][0] == {"start": 0.0, "url": page_url(sid, "/segment/0.json")}
        segment = web.get(doc["segments"][0]["url"])
        assert segment.status_code == 200
        assert "rec-42" in "".join(e[2] for e in segment.json()["events"])
        assert web.get(page_url(sid, "/segment/5.json")).status_code == 404
    # one read at auth per page view (the index and segments come from it), audited as tsh play's
    after = c.events("session.recording.access", sid=sid, user="alice")
    assert len(after) == before + 1 and after[-1]["code"] == "T2012I"


def test_download_is_what_tsh_play_writes(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    sid = rec["sid"]
    played = tsh(rec["homes"]["alice"], "play", sid, "--format=cast", timeout=120)
    assert played.returncode == 0, played.stderr
    with c.logged_in("alice") as web:
        got = web.get(page_url(sid, "/download"))
    assert got.status_code == 200
    assert got.headers["content-disposition"] == f'attachment; filename="{sid}.cast"'
    assert got.headers["content-type"].startswith("application/x-asciicast")
    assert got.content == played.stdout.encode() and b"rec-42" in got.content


def test_the_share_link_opens_for_an_auditor_and_is_refused_for_another_user(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    sid = rec["sid"]
    with c.logged_in("audrey") as web:
        assert web.get(page_url(sid)).status_code == 200
        assert "rec-42" in web.get(page_url(sid, "/segment/0.json")).text
    with c.logged_in("mallory") as web:
        for rest in ("", "/index.json", "/segment/0.json", "/download"):
            refused = web.get(page_url(sid, rest))
            assert refused.status_code == 403, rest
            assert "rec-42" not in refused.text and "access denied" in refused.text.lower()
    denials = [e for e in c.events("auth", user="mallory") if sid in json.dumps(e)]
    assert len(denials) >= 4 and all(e["code"] == "T3007W" for e in denials)
    assert not c.events("session.recording.access", sid=sid, user="mallory")


def test_player_refusals(rec: dict[str, Any]) -> None:
    c: WebCluster = rec["cluster"]
    with c.client() as anonymous:
        gone = anonymous.get(page_url(rec["sid"]))
        assert gone.status_code == 303 and gone.headers["location"].startswith("/web/login?next=")
    with c.logged_in("audrey") as web:
        bad = web.get(page_url("not..valid"))
        assert bad.status_code == 400 and "invalid session ID" in bad.text
        unknown = web.get(page_url("00000000-0000-4000-8000-000000000000"))
        assert unknown.status_code == 404 and "no recording" in unknown.text
        assert web.get(page_url(rec["sid"], "?t=abc")).status_code == 400


# -- in the browser ---------------------------------------------------------------------------------------

PLAYER_TEXT = "document.getElementById('player').innerText"


def _wait_shown(page: Any, text: str) -> None:
    """The player shows ``text``: its terminal paints the last frame a moment after ``ended`` fires."""
    page.wait_for(f"document.getElementById('player').innerText.includes({json.dumps(text)})", timeout=30)
    assert text in page.evaluate(PLAYER_TEXT)


def _chromium() -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")


def _browser(folder: Path) -> Chromium:
    folder.mkdir(parents=True, exist_ok=True)
    return Chromium(folder)


def _login_at(browser: Chromium, c: WebCluster, url: str, user: str) -> Page:
    """Open ``url`` without a session: the login page, then back at ``url`` as ``user``."""
    page = browser.open(c.url + url)
    page.wait_for_selector("#user")
    page.type("#user", user)
    page.type("#password", PASSWORD)
    page.submit("#login")
    return page


def _csp_violations(page: Page) -> list[str]:
    return [line for line in page.console if "Content Security Policy" in line or "violates" in line]


@pytest.mark.slow
def test_list_player_and_share_link_in_the_browser(rec: dict[str, Any], tmp_path: Path) -> None:
    _chromium()
    c: WebCluster = rec["cluster"]
    sid = rec["sid"]
    with _browser(tmp_path / "alice") as browser:
        page = _login_at(browser, c, f"/web/cluster/{CLUSTER}/recordings", "alice")
        page.wait_for_selector("table.recordings")
        assert "rec-" in page.text("table.recordings")
        page.screenshot(tmp_path / "recordings-list.png")
        page.click(f'tr[data-sid="{sid}"] a.play', navigates=True)
        page.wait_for("window.recordingPlayer && window.recordingPlayer.ended", timeout=60)
        _wait_shown(page, "rec-42")
        assert page.evaluate("document.getElementById('share').value") == f"https://{c.web}{page_url(sid)}"
        page.screenshot(tmp_path / "player-alice.png")
        # another speed restarts the player where it was; seeking back to 0 and playing again shows it
        page.evaluate("(() => { const s = document.getElementById('speed'); s.value = '4';"
                      " s.dispatchEvent(new Event('change')); })()")
        page.wait_for("document.querySelector('#player .ap-player') !== null")
        assert _csp_violations(page) == []
        page.set_viewport(390, 844, mobile=True)  # a phone, in dark mode: nothing wider than the screen
        page.color_scheme("dark")
        page.goto(c.url + page_url(sid))
        page.wait_for("window.recordingPlayer && window.recordingPlayer.ended", timeout=60)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(tmp_path / "player-phone-dark.png")
        page.goto(c.url + f"/web/cluster/{CLUSTER}/recordings")
        page.screenshot(tmp_path / "recordings-phone-dark.png")
    with _browser(tmp_path / "audrey") as browser:  # the share link, opened by an auditor
        page = _login_at(browser, c, page_url(sid), "audrey")
        page.wait_for("window.recordingPlayer && window.recordingPlayer.ended", timeout=60)
        _wait_shown(page, "rec-42")
        page.screenshot(tmp_path / "player-auditor.png")
    with _browser(tmp_path / "mallory") as browser:  # the share link, opened by another access user
        page = _login_at(browser, c, page_url(sid), "mallory")
        page.wait_for_selector("main")
        text = page.text("main")
        assert "access denied" in text.lower() and "rec-42" not in text
        assert not page.exists("#player")
        page.screenshot(tmp_path / "player-refused.png")


def _generate_hour(path: Path, target: int) -> tuple[int, float]:
    """An hour-long asciicast of about ``target`` bytes (numbered coloured lines); (events, duration)."""
    line = "\x1b[32m{n:>8}\x1b[0m " + "abcdefghij" * 8 + "\r\n"
    size = len(json.dumps([3600.0, "o", line.format(n=0)])) + 1
    count = target // size
    step = 3600.0 / count
    with open(path, "w") as out:
        out.write(json.dumps({"version": 2, "width": 120, "height": 30, "timestamp": 1_700_000_000}) + "\n")
        out.writelines(json.dumps([round(n * step, 6), "o", line.format(n=n)]) + "\n" for n in range(count))
    return count, round((count - 1) * step, 6)


@pytest.mark.slow
def test_a_100_mb_recording_starts_playing_and_seeks_without_loading_it_whole(rec: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    """Teleport issue 50459: a 100 MB recording froze the tab. A generated hour of output (100 MB)
    is put in the session storage beside a real one; an auditor opens it: it plays from the first
    segment, a seek to minute 59 loads one more, and the tab's heap stays small."""
    _chromium()
    c: WebCluster = rec["cluster"]
    stored = next(c.root.rglob(f"{rec['sid']}.cast"))
    sid = "0b5e55ed-0000-4000-8000-00000000100a"
    count, duration = _generate_hour(stored.parent / f"{sid}.cast", 100 << 20)
    assert (stored.parent / f"{sid}.cast").stat().st_size > 100_000_000
    with _browser(tmp_path / "audrey") as browser:
        page = _login_at(browser, c, f"/web/cluster/{CLUSTER}/recordings", "audrey")
        page.goto(c.url + page_url(sid))
        page.wait_for("window.recordingPlayer && window.recordingPlayer.firstFrameMs !== null", timeout=120)
        page.wait_for(f"{PLAYER_TEXT}.includes('abcdefghij')", timeout=60)
        first_frame = page.evaluate("window.recordingPlayer.firstFrameMs")
        loaded = page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd")
        page.screenshot(tmp_path / "player-100mb.png")
        target = 59 * 60
        page.evaluate(f"window.recordingPlayer.player.seek({target})")
        expected = int(target / (duration / (count - 1)))
        page.wait_for(f"/{expected - 40}|{expected - 5}|{expected}/.test({PLAYER_TEXT})", timeout=60)
        page.screenshot(tmp_path / "player-100mb-seek.png")
        segments = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)"
                                 ".filter(n => n.includes('/segment/'))")
        page.call("Performance.enable")
        metrics = {m["name"]: m["value"] for m in page.call("Performance.getMetrics")["metrics"]}
        assert _csp_violations(page) == []
    heap_mb = metrics["JSHeapUsedSize"] / 1e6
    print(f"\n100 MB recording ({count} events, {duration:.0f} s): page loaded in {loaded:.0f} ms, first frame "
          f"at {first_frame:.0f} ms, {len(segments)} segments fetched after a seek to 59:00, "
          f"JS heap {heap_mb:.1f} MB")
    assert 2 <= len(segments) <= 4, segments
    assert heap_mb < 100
