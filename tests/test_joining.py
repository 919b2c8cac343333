"""``allow.join_sessions`` (parsing, round trip) and who may join a live session in which mode."""

from __future__ import annotations

import datetime as dt

import pytest

from teleport_core.policy.joining import join_modes, may_join
from teleport_core.policy.roles import InvalidRole, RoleSet, parse_role, role_to_dict
from teleport_core.state.trackers import Participant, SessionTracker


def role(name: str, allow: dict | None = None, deny: dict | None = None) -> dict:
    return {"kind": "role", "version": "v6", "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}}}


AUDITOR = role("watcher", {"join_sessions": [
    {"name": "watch-dev", "roles": ["dev*"], "kinds": ["ssh"], "modes": ["observer", "moderator"]}]})


def test_join_sessions_parse_and_round_trip() -> None:
    parsed = parse_role(AUDITOR)
    policy = parsed.allow.join_sessions[0]
    assert (policy.name, policy.roles, policy.kinds, policy.modes) == (
        "watch-dev", ("dev*",), ("ssh",), ("observer", "moderator"))
    assert parse_role(role_to_dict(parsed)) == parsed
    assert role_to_dict(parsed)["spec"]["allow"]["join_sessions"] == AUDITOR["spec"]["allow"]["join_sessions"]


@pytest.mark.parametrize(("value", "message"), [
    ("nope", "spec.allow.join_sessions: expected a list of join policies"),
    (["x"], "spec.allow.join_sessions[0]: expected a mapping"),
    ([{}], "spec.allow.join_sessions[0]: expected a join policy"),
    ([{"roles": ["a"], "kinds": ["ssh"], "modes": ["peer"], "count": 1}], "join_sessions[0].count: unknown key"),
    ([{"kinds": ["ssh"], "modes": ["peer"]}], "join_sessions[0].roles: required"),
    ([{"roles": ["a b"], "kinds": ["ssh"], "modes": ["peer"]}], "join_sessions[0].roles[0]: invalid role name"),
    ([{"roles": ["a"], "modes": ["peer"]}], "join_sessions[0].kinds: required"),
    ([{"roles": ["a"], "kinds": ["shh"], "modes": ["peer"]}], 'unknown session kind \"shh\"; valid: ssh, k8s, *'),
    ([{"roles": ["a"], "kinds": ["ssh"]}], "join_sessions[0].modes: required"),
    ([{"roles": ["a"], "kinds": ["ssh"], "modes": ["observe"]}], 'unknown mode "observe" (did you mean "observer"?)'),
    ([{"roles": ["a"], "kinds": ["ssh"], "modes": [3]}], "join_sessions[0].modes[0]: expected a string"),
    ([{"name": 5, "roles": ["a"], "kinds": ["ssh"], "modes": ["peer"]}], "join_sessions[0].name: expected a string"),
])
def test_join_sessions_bad_values(value: object, message: str) -> None:
    with pytest.raises(InvalidRole) as err:
        parse_role(role("r", {"join_sessions": value}))
    assert message in str(err.value)


def test_who_may_join_in_which_mode() -> None:
    watcher = RoleSet([parse_role(AUDITOR)])
    nobody = RoleSet([parse_role(role("access", {"logins": ["x"]}))])
    assert join_modes(watcher, "ssh", ["developer"]) == ("observer", "moderator")
    assert join_modes(watcher, "ssh", ["ops"]) == ()  # the glob does not match the owner's roles
    assert join_modes(watcher, "k8s", ["developer"]) == ()  # nor the kind
    assert join_modes(nobody, "ssh", ["developer"]) == ()  # deny by default
    assert may_join(watcher, "ssh", ["developer"], "observer").allowed
    refused = may_join(watcher, "ssh", ["developer"], "peer")
    assert not refused.allowed and "as peer" in refused.reason
    assert not may_join(watcher, "ssh", ["developer"], "boss").allowed
    # the owner may join their own session in every mode, whatever the roles
    assert join_modes(nobody, "ssh", ["developer"], user="alice", owner="alice") == ("observer", "peer", "moderator")
    assert may_join(nobody, "ssh", [], "peer", user="alice", owner="alice").allowed


def test_deny_join_sessions_wins() -> None:
    star = role("all", {"join_sessions": [{"roles": ["*"], "kinds": ["*"], "modes": ["observer", "peer"]}]})
    no_peer = role("no-peer", deny={"join_sessions": [{"roles": ["prod-*"], "kinds": ["ssh"], "modes": ["peer"]}]})
    joiner = RoleSet([parse_role(star), parse_role(no_peer)])
    assert join_modes(joiner, "ssh", ["prod-admin"]) == ("observer",)
    assert join_modes(joiner, "ssh", ["dev"]) == ("observer", "peer")
    refused = may_join(joiner, "ssh", ["prod-admin"], "peer")
    assert not refused.allowed and 'role "no-peer" denies' in refused.reason


def test_tracker_round_trip_and_bad_fields() -> None:
    now = dt.datetime(2026, 12, 4, 1, 0, tzinfo=dt.UTC)
    tracker = SessionTracker("0b3c1f0e-1d2e-4b8a-9c1d-2e3f4a5b6c7d", "node-uuid", "alice", "root", created=now,
                             expires=now + dt.timedelta(hours=1), hostname="h", owner_roles=("dev",),
                             participants=[Participant("p1", "alice", "peer", now)], terminal_size="80:24",
                             host_policies=[{"name": "mod", "count": 1}])
    assert SessionTracker.from_dict(tracker.to_dict()) == tracker
    assert tracker.attributes()["tracker"]["participants"] == ["alice"]
    for field, value, message in [
        ("state", "paused", "spec.state: expected one of pending, running, terminated"),
        ("kind", "rdp", "spec.kind: expected one of ssh"),
        ("server_id", "", "spec.server_id: required"),
        ("session_id", "../x", "spec.session_id"),
        ("participants", [{"id": "p", "user": "bob", "mode": "boss"}], "spec.participants[0].mode"),
        ("created", "yesterday", "spec.created: expected an RFC 3339 time"),
        ("hostname", "a\nb", "spec.hostname: at most"),
        ("interactive", "yes", "spec.interactive: expected true or false"),
    ]:
        doc = tracker.to_dict()
        doc["spec"][field] = value
        with pytest.raises(ValueError) as err:
            SessionTracker.from_dict(doc)
        assert message in str(err.value), (field, str(err.value))


def test_auditor_preset_lists_live_sessions_and_an_unedited_one_is_upgraded() -> None:
    from teleport_core.policy.roles import builtin_roles, superseded_presets

    auditor = {r.name: r for r in builtin_roles()}["auditor"]
    assert RoleSet([auditor]).check_rule("session_tracker", "list").allowed
    earlier = superseded_presets()["auditor"]
    assert not RoleSet([earlier]).check_rule("session_tracker", "list").allowed
    assert RoleSet([earlier]).check_rule("session", "read").allowed
