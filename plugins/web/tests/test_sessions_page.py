"""The active sessions page and ``tsh sessions ls`` against a real cluster with our node: a session
``tsh ssh`` runs (its ``session_tracker``) shows up (user, node, login, start) for its user, for an
auditor and for a user whose ``join_sessions`` covers it, not for a user who may not see it, and
leaves once it ended."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web_helpers import CLUSTER, LOGIN, PASSWORD, WebCluster, running_cluster

from teleport_core.testing.browser import CHROMIUM, Chromium
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

SESSIONS = f"/web/cluster/{CLUSTER}/sessions"
NODENAME = "web-auth"


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    """Auth, proxy and node; alice (dev: runs the session), aud (auditor: lists every session),
    wally (may join dev's sessions as an observer), bob (no rule on sessions, not in alice's)."""
    with running_cluster(tmp_path_factory.mktemp("sessions"), node=True) as c:
        c.call("upsert_role", {"kind": "role", "version": "v6", "metadata": {"name": "watcher"}, "spec": {"allow": {
            "join_sessions": [{"name": "dev-sessions", "roles": ["dev"], "kinds": ["ssh"], "modes": ["observer"]}]}}})
        for user, roles in (("alice", ["dev"]), ("aud", ["auditor"]), ("bob", ["nothing"]), ("wally", ["watcher"])):
            c.signup(user, roles)
        wait_for(lambda: any(n["nodename"] == NODENAME for n in c.call("get_nodes")), what="the node's heartbeat")
        yield c


def tsh(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "teleport_core.cli.tsh", *args]


def tsh_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    return env


def listed(web: httpx.Client) -> str:
    answer = web.get(SESSIONS)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_running_session_is_listed_then_dropped(node_cluster: WebCluster, tmp_path: Path) -> None:
    if not CHROMIUM:
        missing("chromium is not installed (apt-get install chromium)")
    home = tmp_path / "tsh"
    env = tsh_env(home)
    login = subprocess.run(tsh(home, "login", f"--proxy={node_cluster.web}", "--user=alice", "--insecure"),
                           input=f"{PASSWORD}\n", capture_output=True, text=True, env=env, timeout=60, check=False)
    assert login.returncode == 0, login.stderr
    stop = tmp_path / "stop"
    with node_cluster.logged_in("alice") as alice, node_cluster.logged_in("aud") as aud, \
            node_cluster.logged_in("bob") as bob:
        assert "No active sessions." in listed(alice)
        empty = listed(alice)
        assert 'id="join-note"' in empty and "tsh join" in empty
        assert "<button" not in empty.split("<main", 1)[1]  # no (fake) join button
        proc = subprocess.Popen(
            tsh(home, "ssh", f"{LOGIN}@{NODENAME}", f"while [ ! -e {stop} ]; do sleep 0.2; done; echo done"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            page = wait_for(lambda: next((t for t in [listed(alice)] if "data-sid=" in t), ""),
                            what="the running session")
            assert "<td>alice</td>" in page and f"<td>{NODENAME}</td>" in page and f"<td>{LOGIN}</td>" in page
            assert "data-sid=" in listed(aud)  # the auditor may list every session
            assert "No active sessions." in listed(bob)  # bob may not, and it is not his
            with Chromium(tmp_path) as browser:
                tab = browser.open(f"{node_cluster.url}{SESSIONS}")
                tab.wait_for_selector("#user")
                tab.type("#user", "alice")
                tab.type("#password", PASSWORD)
                tab.submit("#login")
                tab.wait_for_selector("table.sessions")
                assert tab.text("table.sessions tbody td") == "alice"
                tab.screenshot(tmp_path / "sessions.png")
                assert tab.console == [], tab.console
                stop.touch()
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0 and "done" in out, err
                wait_for(lambda: "No active sessions." in listed(alice), what="the ended session to leave the page")
                tab.goto(f"{node_cluster.url}{SESSIONS}")
                tab.wait_for_selector("#no-sessions")
                tab.screenshot(tmp_path / "sessions-empty.png")
        finally:
            stop.touch()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def login(cluster: WebCluster, home: Path, user: str) -> dict[str, str]:
    env = tsh_env(home)
    done = subprocess.run(tsh(home, "login", f"--proxy={cluster.web}", f"--user={user}", "--insecure"),
                          input=f"{PASSWORD}\n", capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return env


def sessions_ls(home: Path, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tsh(home, "sessions", "ls", *flags), capture_output=True, text=True, env=env, timeout=60,
                          check=False)


@pytest.mark.slow
def test_tsh_sessions_ls(node_cluster: WebCluster, tmp_path: Path) -> None:
    """``tsh sessions ls`` (text and json) while ``tsh ssh`` runs: its owner and a user who may join it
    see it, a user without permission does not; it is gone once the session ended."""
    import json

    envs = {user: (tmp_path / user, login(node_cluster, tmp_path / user, user)) for user in ("alice", "wally", "bob")}
    stop = tmp_path / "stop"
    home, env = envs["alice"]
    proc = subprocess.Popen(
        tsh(home, "ssh", f"{LOGIN}@{NODENAME}", f"while [ ! -e {stop} ]; do sleep 0.2; done; echo done"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def running(user: str) -> list[dict[str, object]]:
            out = sessions_ls(*envs[user], "--format=json")
            assert out.returncode == 0, out.stderr
            return [t for t in json.loads(out.stdout) if t["spec"]["state"] == "running"]

        [tracker] = wait_for(lambda: running("alice"), what="alice's session tracker")
        spec = tracker["spec"]
        assert tracker["kind"] == "session_tracker"
        assert (spec["host_user"], spec["login"], spec["hostname"], spec["kind"]) == ("alice", LOGIN, NODENAME, "ssh")
        assert [p["user"] for p in spec["participants"]] == ["alice"]
        assert spec["participants"][0]["mode"] == "peer" and spec["host_roles"] == ["dev"]
        assert [t["spec"]["session_id"] for t in running("wally")] == [spec["session_id"]]  # join_sessions
        assert running("bob") == []  # may not see it
        text = sessions_ls(*envs["wally"])
        assert text.returncode == 0 and spec["session_id"] in text.stdout and "alice" in text.stdout, text
        assert text.stdout.splitlines()[0].split()[:3] == ["ID", "Kind", "Created"]
        assert spec["session_id"] not in sessions_ls(*envs["bob"]).stdout
        bad = sessions_ls(*envs["alice"], "--kind=rdp")
        assert bad.returncode != 0 and "--kind" in bad.stderr and "ssh" in bad.stderr
        assert sessions_ls(*envs["alice"], "--kind=k8s", "--format=json").stdout.strip() == "[]"
        stop.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "done" in out, err
        wait_for(lambda: not running("alice"), what="the ended session's tracker to go")
    finally:
        stop.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
