"""End to end: ``tsh play --follow`` of a running session (``session_recording: node-sync``).

One teleport process runs auth (recording node-sync), the proxy and our node; tsh runs as a
subprocess against the proxy."""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import LOGIN, Env, background_tsh, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "follow-node"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("follow")
    config = one_process_config(root, NODENAME)
    config["auth_service"]["session_recording"] = "node-sync"
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        e.signup("bob", ["access"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), "the node in the inventory", timeout=60)
        yield e


def _read_until(proc: object, text: str, timeout: float = 30) -> str:
    """What ``proc`` printed on stdout until ``text`` appeared."""
    stdout = proc.stdout  # type: ignore[attr-defined]
    seen = ""
    selector = selectors.DefaultSelector()
    selector.register(stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} not printed: {seen!r}"
        if selector.select(0.5):
            chunk = os.read(stdout.fileno(), 4096).decode(errors="replace")
            assert chunk, f"ended before {text!r}: {seen!r}"
            seen += chunk
    return seen


def _session_id(session: object) -> str:
    """The session ID the session's command printed (``TELEPORT_SESSION``)."""
    import re

    seen = _read_until(session, "=SID")
    found = re.search(r"SID=([0-9a-f-]{36})=SID", seen)
    assert found, seen
    return found.group(1)


def test_tsh_play_follow_prints_a_running_session_and_ends_with_it(env: Env,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    alice = env.logged_in(tmp_path_factory, "alice")
    bob = env.logged_in(tmp_path_factory, "bob")
    command = 'echo "SID=$TELEPORT_SESSION=SID"; echo follow-$((6*7)); sleep 600'
    with background_tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", command) as session:
        sid = _session_id(session)
        with background_tsh(alice, "play", "--follow", sid) as follower:
            _read_until(follower, "follow-42")
            assert session.poll() is None, "the follower saw the output while the session runs"
            plain = env.tsh(alice, "play", sid)  # no recording yet: says how to follow it
            assert plain.returncode != 0 and f"tsh play --follow {sid}" in plain.stderr, plain.stderr
            refused = env.tsh(bob, "play", "--follow", sid)  # not bob's session: the access role plays one's own
            assert refused.returncode != 0 and "access denied" in refused.stderr.lower(), refused.stderr
            session.terminate()  # the session ends (tsh's connection goes)
            follower.communicate(timeout=60)
            assert follower.returncode == 0, "the follower ends when the session ends"
    bad = env.tsh(alice, "play", "--follow", "--format=json", sid)
    assert bad.returncode != 0 and "--format=text or --format=cast" in bad.stderr
    cast = env.tsh(alice, "play", "--follow", "--format=cast", sid)
    assert cast.returncode == 0 and cast.stdout.startswith('{"version": 2') and "follow-42" in cast.stdout


def test_tsh_play_follow_of_an_unknown_session_says_so(env: Env, tmp_path: Path,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    alice = env.logged_in(tmp_path_factory, "alice")
    result = env.tsh(alice, "play", "--follow", "no-such-session", timeout=120)
    assert result.returncode != 0 and "access denied" in result.stderr, "no record: no participant, deny"
    escape = env.tsh(alice, "play", "--follow", "../etc")
    assert escape.returncode != 0 and "neither a session ID" in escape.stderr


def test_the_listing_marks_a_partial_recording() -> None:
    from teleport_core.tsh.recordings import _recording

    entry = {"recording": "uploaded", "recorded": True, "recording_partial": True}
    assert _recording(entry) == "uploaded (partial)"
    assert _recording({**entry, "recording_partial": False}) == "uploaded"
