"""Access requests, the pure parts: role fields (parse, errors with the key path, serialize back),
which roles a role set may request (names, globs, ^regex$; deny wins), who may review, thresholds,
the state machine (a resolved request never changes), access expiry, and the resource form."""

from __future__ import annotations

import datetime as dt

import pytest

from teleport_core.policy.requests import (
    AccessRequest,
    InvalidAccessRequest,
    Review,
    State,
    access_expiry,
    active_requests_json,
    apply_review,
    check_requestable,
    may_see,
    new_request,
    parse_access_request,
    parse_active_requests,
    reason_required,
    request_thresholds,
    request_to_dict,
    resolve,
    review_decision,
    suggested_reviewers,
)
from teleport_core.policy.roles import InvalidRole, RoleSet, Threshold, parse_role, role_to_dict

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def role(name: str, spec: dict) -> object:
    return parse_role({"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec})


DEV = role("dev", {
    "allow": {"request": {"roles": ["dba", "ops-*", "^db-(ro|rw)$"], "suggested_reviewers": ["bob"],
                          "max_duration": "4h", "thresholds": [{"approve": 2, "deny": 1}]}},
    "deny": {"request": {"roles": ["ops-root"]}},
    "options": {"max_session_ttl": "8h", "request_access": "reason", "request_prompt": "ticket?"},
})
REVIEWER = role("reviewer", {"allow": {"review_requests": {"roles": ["dba", "db-*"]}},
                             "deny": {"review_requests": {"roles": ["db-rw"]}}})
DBA = role("dba", {"allow": {"logins": ["dba"]}, "options": {"max_session_ttl": "2h"}})
OPS = role("ops-1", {})


@pytest.mark.parametrize(("wanted", "allowed", "reason"), [
    (["dba"], True, ""),
    (["ops-1"], True, ""),  # glob
    (["db-ro"], True, ""),  # regex
    (["db-rox"], False, 'no role allows requesting role "db-rox"'),  # a regex matches the whole name
    (["ops-root"], False, 'role "dev" denies requesting role "ops-root"'),  # deny wins over the glob
    (["dba", "editor"], False, 'no role allows requesting role "editor"'),
    ([], False, "no roles requested"),
])
def test_requestable_roles(wanted, allowed, reason):
    decision = check_requestable(RoleSet([DEV]), wanted)
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_a_deny_in_another_role_wins():
    no_dba = role("no-dba", {"deny": {"request": {"roles": ["^d.*$"]}}})
    assert not check_requestable(RoleSet([DEV, no_dba]), ["dba"]).allowed
    assert not check_requestable(RoleSet([]), ["dba"]).allowed  # nothing by default


def _pending(roles=("dba",), user="alice", thresholds=()) -> AccessRequest:
    return new_request(user, list(roles), reason="incident", thresholds=thresholds,
                       access_expires=NOW + dt.timedelta(hours=4), now=NOW)


def test_reviewers():
    reviewers = RoleSet([REVIEWER])
    assert review_decision("bob", reviewers, _pending()).allowed
    assert review_decision("bob", reviewers, _pending(["db-ro"])).allowed
    assert "cannot review their own request" in review_decision("alice", reviewers, _pending()).reason
    denied = review_decision("bob", reviewers, _pending(["dba", "db-rw"]))
    assert not denied.allowed and 'denies reviewing requests for role "db-rw"' in denied.reason
    partial = review_decision("bob", reviewers, _pending(["dba", "ops-1"]))
    assert not partial.allowed and 'may not review requests for role "ops-1"' in partial.reason
    assert not review_decision("bob", RoleSet([DEV]), _pending()).allowed
    assert may_see("bob", reviewers, _pending(["dba", "ops-1"]))  # sees it, may not review it all
    assert not may_see("carol", RoleSet([DEV]), _pending())
    assert may_see("alice", RoleSet([]), _pending())


def test_thresholds_reviewers_and_reason_come_from_the_granting_roles():
    assert request_thresholds(RoleSet([DEV]), ["dba"]) == (Threshold("default", 2, 1),)
    assert request_thresholds(RoleSet([OPS]), ["dba"]) == (Threshold(),)
    assert suggested_reviewers(RoleSet([DEV]), ["dba"], ["dave"]) == ("dave", "bob")
    assert "ticket?" in reason_required(RoleSet([DEV]))
    assert reason_required(RoleSet([OPS])) == ""


def test_two_approvals_for_a_threshold_of_two_and_one_denial_denies():
    request = _pending(thresholds=[Threshold("two", 2, 1)])
    once = apply_review(request, Review("bob", State.APPROVED), NOW)
    assert once.state == State.PENDING and once.approvals == 1
    with pytest.raises(InvalidAccessRequest, match="already reviewed"):
        apply_review(once, Review("bob", State.APPROVED), NOW)
    twice = apply_review(once, Review("dave", State.APPROVED, "ok"), NOW)
    assert twice.state == State.APPROVED and twice.resolve_reason == "ok"
    assert twice.active(NOW) and not twice.active(NOW + dt.timedelta(hours=4))
    denied = apply_review(request, Review("bob", State.DENIED, "no"), NOW)
    assert denied.state == State.DENIED and not denied.active(NOW)


def test_a_resolved_request_never_changes_and_an_expired_one_cannot_be_reviewed():
    denied = resolve(_pending(), State.DENIED, "no", now=NOW)
    for change in (lambda: apply_review(denied, Review("bob", State.APPROVED), NOW),
                   lambda: resolve(denied, State.APPROVED, now=NOW)):
        with pytest.raises(InvalidAccessRequest, match="already DENIED"):
            change()
    lapsed = NOW + dt.timedelta(hours=1, seconds=1)  # past the default request TTL
    assert _pending().expired(lapsed)
    with pytest.raises(InvalidAccessRequest, match="expired"):
        apply_review(_pending(), Review("bob", State.APPROVED), lapsed)


def test_admin_approval_of_a_subset():
    request = _pending(["dba", "db-ro"])
    assert resolve(request, State.APPROVED, "ro only", ["db-ro"], NOW).roles == ("db-ro",)
    with pytest.raises(InvalidAccessRequest, match="not requested: editor"):
        resolve(request, State.APPROVED, roles=["editor"], now=NOW)
    with pytest.raises(InvalidAccessRequest, match="approval only"):
        resolve(request, State.DENIED, roles=["dba"], now=NOW)
    with pytest.raises(InvalidAccessRequest, match="expected one of APPROVED, DENIED"):
        resolve(request, "MAYBE", now=NOW)


def test_access_expiry_is_the_earliest_limit():
    requester, requested = RoleSet([DEV]), RoleSet([DBA])
    assert access_expiry(requester, requested, NOW) == NOW + dt.timedelta(hours=2)  # dba's max_session_ttl
    assert access_expiry(requester, RoleSet([OPS]), NOW) == NOW + dt.timedelta(hours=4)  # max_duration
    session = NOW + dt.timedelta(minutes=30)
    assert access_expiry(requester, requested, NOW, session) == session  # the user's session
    long = role("long", {"allow": {"request": {"roles": ["*"], "max_duration": "336h"}},
                         "options": {"max_session_ttl": "1000h"}})
    roomy = role("roomy", {"options": {"max_session_ttl": "1000h"}})
    assert access_expiry(RoleSet([long]), RoleSet([roomy]), NOW) == NOW + dt.timedelta(days=14)


def test_the_resource_round_trips_and_bad_documents_name_the_key():
    request = apply_review(_pending(thresholds=[Threshold("two", 2, 1)]),
                           Review("bob", State.APPROVED, "fine", ("reviewer",), NOW), NOW)
    doc = request_to_dict(request)
    assert doc["kind"] == "access_request" and doc["version"] == "v3"
    assert doc["spec"]["reviews"][0] == {"author": "bob", "roles": ["reviewer"], "proposed_state": "APPROVED",
                                         "reason": "fine", "created": "2026-12-04T12:00:00Z"}
    assert parse_access_request(doc) == request
    for path, value, error in [
        ("state", "MAYBE", "spec.state: expected one of PENDING, APPROVED, DENIED"),
        ("roles", [], "spec.roles: required: at least one role"),
        ("roles", ["a b"], "spec.roles[0]: invalid role name"),
        ("expires", "tomorrow", "spec.expires: expected an RFC 3339 time"),
        ("user", 7, "spec.user: expected a string"),
    ]:
        bad = {**doc, "spec": {**doc["spec"], path: value}}
        with pytest.raises(InvalidAccessRequest, match=error.replace("[", r"\[").replace("]", r"\]")):
            parse_access_request(bad)
    with pytest.raises(InvalidAccessRequest, match="metadata.name: expected a request ID"):
        parse_access_request({**doc, "metadata": {"name": "../x"}})


def test_active_request_ids_in_certificates():
    ids = ("0b6f3c52-7d0a-4a43-9b0e-6d2f2c1e9a10",)
    assert parse_active_requests(active_requests_json(ids)) == ids
    assert parse_active_requests("") == ()
    for bad in ('["../../x"]', "{}", "[1]", "not json"):
        with pytest.raises(ValueError):
            parse_active_requests(bad)


def test_role_fields_serialize_back():
    assert role_to_dict(DEV)["spec"]["allow"]["request"] == {
        "roles": ["dba", "ops-*", "^db-(ro|rw)$"], "thresholds": [{"name": "default", "approve": 2, "deny": 1}],
        "suggested_reviewers": ["bob"], "max_duration": "4h0m0s"}
    assert role_to_dict(DEV)["spec"]["options"]["request_access"] == "reason"
    assert parse_role(role_to_dict(DEV)) == DEV
    assert parse_role(role_to_dict(REVIEWER)) == REVIEWER


@pytest.mark.parametrize(("spec", "error"), [
    ({"allow": {"request": {"roles": ["^(db$"]}}}, "spec.allow.request.roles[0]: invalid regular expression"),
    ({"allow": {"request": {"roles": ["a b"]}}}, "spec.allow.request.roles[0]: invalid role name or glob"),
    ({"allow": {"request": {"rolez": ["dba"]}}}, 'spec.allow.request.rolez: unknown key (did you mean "roles"?)'),
    ({"allow": {"request": {"max_duration": "15d"}}}, 'spec.allow.request.max_duration: expected a duration'),
    ({"allow": {"request": {"max_duration": "400h"}}}, "spec.allow.request.max_duration: at most 336h0m0s"),
    ({"allow": {"request": {"thresholds": [{"approve": "two"}]}}},
     "spec.allow.request.thresholds[0].approve: expected a whole number"),
    ({"allow": {"request": {"thresholds": [{"approve": 1, "filter": "x"}]}}},
     "spec.allow.request.thresholds[0].filter: threshold filters are not supported"),
    ({"deny": {"request": {"thresholds": [{"approve": 1}]}}}, "spec.deny.request.thresholds: read under allow only"),
    ({"allow": {"review_requests": {"roles": "dba", "where": "x"}}}, "spec.allow.review_requests.where: unknown key"),
    ({"options": {"request_access": "alway"}}, 'spec.options.request_access: unknown mode "alway" (did you mean'),
    ({"options": {"request_prompt": 3}}, "spec.options.request_prompt: expected a string"),
])
def test_bad_role_fields_name_the_key(spec, error):
    with pytest.raises(InvalidRole) as caught:
        role("bad", spec)
    assert error in str(caught.value)
