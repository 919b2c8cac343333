"""The preset ``access`` role's own-sessions rule (``where: contains(session.participants,
user.metadata.name)``) on a real cluster: alice and bob (access only) each run a recorded session
through the proxy; alice lists and plays hers, never bob's (403, audited); an auditor sees both;
a deny rule with ``where`` refuses only the sessions it matches. One teleport process runs auth,
the proxy and our node; tsh runs as a subprocess."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import LOGIN, Env, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a long enough password 123"
NODENAME = "own-host"
NOT_BOBS = {
    "kind": "role", "version": "v7", "metadata": {"name": "not-bobs"},
    "spec": {"deny": {"rules": [{"resources": ["session"], "verbs": ["list", "read"],
                                 "where": 'contains(session.participants, "bob")'}]}},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("own-sessions")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.call("create_role", NOT_BOBS)
        for user, roles in (("alice", ["access"]), ("bob", ["access"]), ("audrey", ["access", "auditor"]),
                            ("dana", ["auditor", "not-bobs"])):
            e.signup(user, roles, [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), what="the node's heartbeat")
        yield e


@pytest.fixture(scope="module")
def homes(env: Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for user in ("alice", "bob", "audrey", "dana"):
        folder = tmp_path_factory.mktemp(f"{user}-tsh")
        result = env.login(folder, user)
        assert result.returncode == 0, result.stderr
        out[user] = folder
    return out


def listing(env: Env, home: Path) -> list[dict[str, Any]]:
    result = env.tsh(home, "recordings", "ls", "--format=json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def sids(env: Env, homes: dict[str, Path]) -> dict[str, str]:
    """alice's and bob's recorded interactive sessions, once both are uploaded (the auditor's view)."""
    for user in ("alice", "bob"):
        result = env.tsh(homes[user], "ssh", "-t", f"{LOGIN}@{NODENAME}", stdin=f"echo {user}-$((6*7))\nexit\n",
                         timeout=120)
        assert result.returncode == 0, result.stderr

    def uploaded() -> dict[str, str]:
        found = {s["user"]: s["sid"] for s in listing(env, homes["audrey"]) if s["interactive"] and s["recorded"]}
        return found if {"alice", "bob"} <= found.keys() else {}

    return wait_for(uploaded, what="both uploaded recordings", interval=0.3)


def refusals(env: Env, user: str, needle: str) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            return list((await admin.search_events(limit=5000, type="auth"))["events"])

    return [e for e in asyncio.run(body()) if e.get("user") == user and needle in e.get("error", "")]


def test_a_user_with_the_access_role_lists_and_plays_only_their_own_sessions(
        env: Env, homes: dict[str, Path], sids: dict[str, str]) -> None:
    mine = listing(env, homes["alice"])
    assert sids["alice"] in {s["sid"] for s in mine} and sids["bob"] not in {s["sid"] for s in mine}
    assert all("alice" in s["participants"] for s in mine) and mine
    assert {s["sid"] for s in listing(env, homes["bob"])} >= {sids["bob"]}
    assert sids["alice"] not in {s["sid"] for s in listing(env, homes["bob"])}

    played = env.tsh(homes["alice"], "play", sids["alice"], "--format=json")
    assert played.returncode == 0 and "alice-42" in played.stdout, played.stderr

    refused = env.tsh(homes["alice"], "play", sids["bob"], "--format=json")
    assert refused.returncode != 0 and "bob-42" not in refused.stdout
    assert "no role allows read on session" in refused.stderr, refused.stderr
    audited = refusals(env, "alice", "no role allows read on session (access): role \"access\" only where "
                                     "contains(session.participants, user.metadata.name)")
    assert f"/v1/sessions/{sids['bob']}/recording" in {e["path"] for e in audited}
    assert all(e["code"] == "T3007W" and e["event"] == "auth" for e in audited)


def test_an_auditor_sees_every_session(env: Env, homes: dict[str, Path], sids: dict[str, str]) -> None:
    assert {sids["alice"], sids["bob"]} <= {s["sid"] for s in listing(env, homes["audrey"])}
    played = env.tsh(homes["audrey"], "play", sids["bob"], "--format=json")
    assert played.returncode == 0 and "bob-42" in played.stdout, played.stderr


def test_a_deny_rule_with_where_refuses_only_the_sessions_it_matches(
        env: Env, homes: dict[str, Path], sids: dict[str, str]) -> None:
    seen = {s["sid"] for s in listing(env, homes["dana"])}  # auditor, but not bob's sessions
    assert sids["alice"] in seen and sids["bob"] not in seen
    played = env.tsh(homes["dana"], "play", sids["alice"], "--format=json")
    assert played.returncode == 0 and "alice-42" in played.stdout, played.stderr
    refused = env.tsh(homes["dana"], "play", sids["bob"], "--format=json")
    reason = 'role "not-bobs" denies read on session where contains(session.participants, "bob")'
    assert refused.returncode != 0 and reason in refused.stderr, refused.stderr
    assert f"/v1/sessions/{sids['bob']}/recording" in {e["path"] for e in refusals(env, "dana", reason)}
