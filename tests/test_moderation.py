"""allow.require_session_join: parsing (clear errors for bad values) and evaluation (moderation.py)."""

from __future__ import annotations

from typing import Any

import pytest

from teleport_core.policy import moderation
from teleport_core.policy.moderation import Participant, fulfilled, policy_sets
from teleport_core.policy.roles import InvalidRole, parse_role, role_to_dict

GOOD = {"name": "oversight", "filter": 'contains(user.roles, "auditor")', "kinds": ["ssh"],
        "modes": ["moderator"], "count": 1, "on_leave": "terminate"}


def role(policies: Any, side: str = "allow", name: str = "dev") -> Any:
    return parse_role({"kind": "role", "version": "v7", "metadata": {"name": name},
                       "spec": {side: {"require_session_join": policies}}})


def test_parsed_and_written_back() -> None:
    parsed = role([GOOD])
    assert parsed.allow.require_session_join[0].count == 1
    out = role_to_dict(parsed)["spec"]["allow"]["require_session_join"]
    assert out == [GOOD]
    assert parse_role(role_to_dict(parsed)) == parsed


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"count": 0}, "[0].count", "from 1 to"),
    ({"count": "2"}, "[0].count", "whole number"),
    ({"count": True}, "[0].count", "whole number"),
    ({"on_leave": "stop"}, "[0].on_leave", "terminate or pause"),
    ({"modes": ["moderater"]}, "[0].modes[0]", 'did you mean "moderator"'),
    ({"modes": []}, "[0].modes", "required"),
    ({"kinds": ["db"]}, "[0].kinds[0]", "unknown session kind"),
    ({"kinds": None}, "[0].kinds", "required"),
    ({"filter": "contains(user.roles, auditor)"}, "[0].filter", "unknown field"),
    ({"filter": 'contains(user.role, "auditor")'}, "[0].filter", "user.roles"),
    ({"filter": 7}, "[0].filter", "predicate in a string"),
    ({"name": ""}, "[0].name", "required"),
    ({"countt": 1}, "[0].countt", 'did you mean "count"'),
])
def test_bad_values_say_where_and_why(change: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(InvalidRole) as info:
        role([{**GOOD, **change}])
    text = str(info.value)
    assert f"spec.allow.require_session_join{path}" in text
    assert words in text


def test_not_a_list_and_deny_side_refused() -> None:
    with pytest.raises(InvalidRole, match="expected a list of policies"):
        role(GOOD)
    with pytest.raises(InvalidRole, match="under allow only"):
        role([GOOD], side="deny")


def test_fulfilled_needs_count_in_modes_matching_filter() -> None:
    sets = policy_sets([role([{**GOOD, "count": 2}])])
    auditor = Participant("bob", ("auditor",), "moderator")
    assert not fulfilled(sets, []).fulfilled
    assert not fulfilled(sets, [auditor]).fulfilled
    # the wrong mode and a participant without the role do not count
    assert not fulfilled(sets, [auditor, Participant("carol", ("auditor",), "observer")]).fulfilled
    assert not fulfilled(sets, [auditor, Participant("mallory", ("access",), "moderator")]).fulfilled
    # the owner never counts toward their own session's policy
    assert not fulfilled(sets, [auditor, Participant("alice", ("auditor",), "moderator")], owner="alice").fulfilled
    verdict = fulfilled(sets, [auditor, Participant("dave", ("auditor",), "moderator")], owner="alice")
    assert verdict.fulfilled and verdict.on_leave == "terminate"


def test_every_role_set_must_hold_any_policy_in_a_set() -> None:
    one = role([GOOD, {**GOOD, "name": "two peers", "filter": "", "modes": ["peer"], "count": 2,
                       "on_leave": "pause"}], name="a")
    other = role([{**GOOD, "name": "sec", "filter": 'equals(user.name, "sec")', "on_leave": "pause"}], name="b")
    sets = policy_sets([one, other])
    peers = [Participant("p1", (), "peer"), Participant("p2", (), "peer")]
    assert not fulfilled(sets, peers).fulfilled  # set "a" holds through its second policy, "b" does not
    verdict = fulfilled(sets, [*peers, Participant("sec", (), "moderator")])
    assert verdict.fulfilled and verdict.on_leave == "terminate"  # one applicable policy terminates
    assert fulfilled(policy_sets([other]), []).on_leave == "pause"


def test_no_policies_no_moderation() -> None:
    assert fulfilled(policy_sets([parse_role({"kind": "role", "version": "v7", "metadata": {"name": "x"},
                                               "spec": {}})]), []).fulfilled
    assert policy_sets([role([{**GOOD, "kinds": ["k8s"]}])], "ssh") == []
    assert moderation.MODES == ("observer", "peer", "moderator")
