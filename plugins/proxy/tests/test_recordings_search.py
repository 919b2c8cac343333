"""Recordings searchable by the text they show (docs/sessions.md, "Searching recordings by their
text"): real sessions through tsh and our node, indexed by auth when uploaded, searched with
``tsh recordings ls --search`` through the proxy. One teleport process runs auth (SQLite, so
FTS5), the proxy and the node; tsh and tctl run as subprocesses."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from proxy_helpers import LOGIN, Env, one_process_config

from teleport_core.errors import TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "search-host"
TOKEN = secrets.token_hex(4)
NEEDLE = f"needle-{TOKEN}-42"  # only the output shows it: the command typed is needle-...-$((6*7))
OTHER = f"other-{TOKEN}-42"
#: may list every session but read none: must not find anything by its text
LIST_ONLY = {"kind": "role", "version": "v7", "metadata": {"name": "list-only"},
             "spec": {"allow": {"rules": [{"resources": ["session"], "verbs": ["list"]}]}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("recordings-search")
    config = one_process_config(root, NODENAME)
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        (root / "teleport.yaml").write_text(yaml.safe_dump(config))
        e.call("upsert_role", LIST_ONLY)
        e.signup("audrey", ["access", "auditor"], [LOGIN], PASSWORD)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        e.signup("lister", ["access", "list-only"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), what="the node's heartbeat")
        yield e


@pytest.fixture(scope="module")
def homes(env: Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {user: env.logged_in(tmp_path_factory, user) for user in ("audrey", "alice", "lister")}


def run_session(env: Env, home: Path, word: str) -> None:
    result = env.tsh(home, "ssh", "-t", f"{LOGIN}@{NODENAME}", stdin=f"echo {word}-{TOKEN}-$((6*7))\nexit\n",
                     timeout=120)
    assert result.returncode == 0, result.stderr


def search(env: Env, home: Path, text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.tsh(home, "recordings", "ls", f"--search={text}", *extra)


def found(env: Env, home: Path, text: str) -> list[dict[str, Any]]:
    result = search(env, home, text, "--format=json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def sessions(env: Env, homes: dict[str, Path]) -> dict[str, str]:
    """audrey's session shows NEEDLE, alice's OTHER; both uploaded and indexed."""
    run_session(env, homes["audrey"], "needle")
    run_session(env, homes["alice"], "other")
    sids = {
        "audrey": wait_for(lambda: [s["sid"] for s in found(env, homes["audrey"], NEEDLE)], what="the indexed needle",
                           interval=0.3)[0],
        "alice": wait_for(lambda: [s["sid"] for s in found(env, homes["alice"], OTHER)], what="the indexed other",
                          interval=0.3)[0],
    }
    return sids


def test_search_finds_the_session_that_showed_the_text(env: Env, homes: dict[str, Path],
                                                       sessions: dict[str, str]) -> None:
    hits = found(env, homes["audrey"], NEEDLE)
    assert [h["sid"] for h in hits] == [sessions["audrey"]]
    hit = hits[0]
    assert NEEDLE in hit["snippet"] and hit["recording"] == "uploaded"
    assert [hit["snippet"][a:b] for a, b in hit["highlights"]] == [NEEDLE]
    # the auditor lists both, finds each only by its own text, case-insensitively
    listed = {s["sid"] for s in json.loads(env.tsh(homes["audrey"], "recordings", "ls", "--format=json").stdout)}
    assert set(sessions.values()) <= listed
    assert [h["sid"] for h in found(env, homes["audrey"], OTHER.upper())] == [sessions["alice"]]
    assert found(env, homes["audrey"], f"needle-{TOKEN}-43") == []
    text = search(env, homes["audrey"], NEEDLE)
    assert text.returncode == 0, text.stderr
    assert "Match" in text.stdout.splitlines()[0] and sessions["audrey"] in text.stdout and NEEDLE in text.stdout


def test_search_never_shows_what_the_caller_may_not_read(env: Env, homes: dict[str, Path],
                                                         sessions: dict[str, str]) -> None:
    # alice (access: her own sessions) does not find audrey's session by its text, but finds her own
    assert found(env, homes["alice"], NEEDLE) == []
    assert [h["sid"] for h in found(env, homes["alice"], OTHER)] == [sessions["alice"]]
    # lister may list every session (so sees audrey's) but read none but hers: text search finds only hers
    listed = {s["sid"] for s in json.loads(env.tsh(homes["lister"], "recordings", "ls", "--format=json").stdout)}
    assert sessions["audrey"] in listed
    assert found(env, homes["lister"], NEEDLE) == []


def test_search_text_is_text_never_query_syntax(env: Env, homes: dict[str, Path], sessions: dict[str, str]) -> None:
    for text in (f"{NEEDLE} OR x", f'"{NEEDLE}', f"{NEEDLE}*", f"NEAR({NEEDLE})", "needle AND other", "sid:*"):
        assert found(env, homes["audrey"], text) == [], text
    assert [h["sid"] for h in found(env, homes["audrey"], f"  {NEEDLE}  ")] == [sessions["audrey"]]


@pytest.mark.parametrize(("text", "message"), [
    ("x" * 257, "--search: at most 256 characters, got 257"),
    ("ab", "--search: at least 3 characters"),
])
def test_tsh_refuses_bad_search_text(env: Env, homes: dict[str, Path], text: str, message: str) -> None:
    result = search(env, homes["audrey"], text)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("x" * 300, "search: at most 256 characters, got 300"),
    ("x" * 2000, "search"),
    ("nee\x00dle", "search: the text contains a NUL character"),
    (" a ", "search: at least 3 characters"),
])
def test_the_api_refuses_bad_search_text(env: Env, homes: dict[str, Path], text: str, message: str) -> None:
    """Straight to auth (as its admin) and through the proxy's web API (as audrey): a clear 400."""
    import asyncio
    from urllib.parse import urlencode

    from teleport_core.tsh.profile import Profile
    from teleport_core.tsh.web import call

    async def admin() -> None:
        async with env.admin() as client:
            await client.list_recordings(search=text)

    with pytest.raises(TeleportError, match=message):
        asyncio.run(admin())
    profile = Profile.load(homes["audrey"])
    query = urlencode({"search": text})
    with pytest.raises(TeleportError, match=message) as caught:
        call(profile.web_addr, "GET", f"/v1/webapi/sites/{profile.cluster}/events/search/sessions?{query}",
             insecure=True, profile=profile)
    assert "internal error" not in str(caught.value)


def test_tctl_reindexes_the_stored_recordings(env: Env, homes: dict[str, Path], sessions: dict[str, str]) -> None:
    environ = {**os.environ, "NO_COLOR": "1"}

    def tctl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "teleport_core.cli.tctl", *args, "-c", str(env.root / "teleport.yaml"),
                "--auth-server", env.auth_addr]
        return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=120, check=False)

    done = tctl("recordings", "reindex", "--format=json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["indexed"] >= 2 and report["failed"] == []
    one = tctl("recordings", "reindex", sessions["alice"])
    assert one.returncode == 0 and one.stdout.startswith("indexed 1 recording(s)"), one.stderr
    assert [h["sid"] for h in found(env, homes["audrey"], NEEDLE)] == [sessions["audrey"]]
    bad = tctl("recordings", "reindex", "../etc")
    assert bad.returncode != 0 and "invalid session ID" in bad.stderr, bad.stderr
    missing = tctl("recordings", "reindex", "no-such-session")
    assert missing.returncode == 1 and "failed: no-such-session" in missing.stdout, missing.stdout
    # counted at auth: the two uploads, the reindexing, the failure
    from teleport_core.metrics import metrics_for

    counter = metrics_for(env.auth_handle.process.services["auth_service"].ctx.metrics).recordings_indexed
    assert counter.labels(result="ok")._value.get() >= 2 + report["indexed"] + 1
    assert counter.labels(result="failed")._value.get() >= 1


@pytest.mark.parametrize("role", ["node", "proxy"])
def test_hosts_may_not_reindex(env: Env, role: str) -> None:
    """A node may update sessions (its uploads), a proxy forwards users: neither reindexes (403, audited)."""
    import asyncio

    from teleport_core.api.client import AuthClient, load_identity_dir
    from teleport_core.errors import AccessDenied

    async def body() -> None:
        async with AuthClient(env.auth_addr, [load_identity_dir(env.root / "auth" / "keys" / role)]) as host:
            await host.call("POST", "/v1/sessions/reindex", {"all": True})

    reason = "may reindex recordings" if role == "node" else "system role Proxy does not allow update on session"
    with pytest.raises(AccessDenied, match=reason):
        asyncio.run(body())

    async def audited() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            found = (await admin.search_events(limit=5000, type="auth"))["events"]
        return [e for e in found if reason in e.get("error", "") and e.get("path") == "/v1/sessions/reindex"]

    assert asyncio.run(audited())
