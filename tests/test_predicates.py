"""Role ``where:`` predicates: the parser (good forms, each bad form with its message, random
input never crashes and stays bounded), their evaluation, and rules with ``where`` in roles
(allow only where true, deny only where true, deny wins, filtered listings)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teleport_core.policy.predicate import (
    FIELDS,
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_TOKENS,
    PredicateError,
    environment,
    parse,
    tokenize,
)
from teleport_core.policy.roles import (
    OWN_SESSIONS,
    InvalidRole,
    RoleSet,
    builtin_roles,
    parse_role,
    role_to_dict,
    superseded_presets,
)


def env(who: str = "alice", **item: Any) -> dict[str, Any]:
    return environment(user=who, roles=("access", "dev"), traits={"teams": ["ops", "db"]},
                       name="res-1", labels={"env": "dev"}, item={"session": item} if item else None)


ALICE_SESSION: dict[str, Any] = {"participants": ["alice", "carol"], "user": "alice", "login": "ubuntu", "server_id": "n1"}

GOOD = [
    ("contains(session.participants, user.metadata.name)", True),
    ("contains(session.participants, \"carol\")", True),
    ("contains(session.participants, \"bob\")", False),
    ("equals(session.login, \"ubuntu\")", True),
    ("equals(\"ubuntu\", session.login)", True),
    ("!equals(session.login, \"root\")", True),
    ("!!equals(session.login, \"root\")", False),
    ("equals(session.user, user.metadata.name) && equals(session.server_id, \"n1\")", True),
    ("equals(session.login, \"root\") || contains(user.spec.roles, \"dev\")", True),
    ("equals(session.login, \"root\") || equals(session.login, \"admin\")", False),
    ("contains(user.spec.traits[\"teams\"], \"ops\") && !contains(user.spec.traits[\"teams\"], \"hr\")", True),
    ("contains(user.spec.traits[\"missing\"], \"ops\")", False),
    ("equals(resource.metadata.labels[\"env\"], \"dev\") && equals(resource.metadata.name, \"res-1\")", True),
    ("equals(resource.metadata.labels[\"nope\"], \"\")", True),  # a missing label is empty
    ("(equals(session.login, \"root\") || equals(session.login, \"ubuntu\")) && contains(session.participants, "
     "\"alice\")", True),
    ("  contains( session . participants , \"alice\" )  ", True),  # spaces between tokens
    ("equals(session.login, \"a\\\"b\\\\c\\n\")", False),  # escapes in strings
    ("!(equals(session.login, \"root\") && equals(session.user, \"alice\"))", True),
    ("equals(event.type, \"\")", True),  # event fields are empty for a session
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_expressions_parse_and_evaluate(text: str, expected: bool) -> None:
    predicate = parse(text)
    assert predicate(env(**ALICE_SESSION)) is expected
    assert predicate.text == text


def test_and_binds_tighter_than_or() -> None:
    # true || (false && false): true; (true || false) && false would be false
    text = 'equals(session.login, "ubuntu") || equals(session.login, "x") && equals(session.login, "y")'
    assert parse(text)(env(**ALICE_SESSION))


def test_missing_item_fields_are_empty() -> None:
    own = parse(OWN_SESSIONS)
    assert own(env(**ALICE_SESSION)) and not own(env("bob", **ALICE_SESSION))
    assert not own(env())  # no session at all: no participants
    assert parse('!equals(session.login, "root")')(env())  # negation of a false condition on empty fields
    # values of the wrong shape from a caller are treated as empty, never raise
    assert not own({"user.metadata.name": "alice", "session.participants": 5})
    assert own({"user.metadata.name": "alice", "session.participants": "alice"})  # one string: a list of one


BAD = [
    ("", "empty expression: write a condition such as contains(session.participants, user.metadata.name), "
         "or remove where"),
    ("   ", "empty expression"),
    ("contains(", "expected a field or a string, got the end of the expression at character 10"),
    ("contains(session.participants user.metadata.name)",
     'expected "," between the two arguments of contains, got "user" at character 31'),
    ("contains(session.participants, user.metadata.name",
     'expected ")" after the two arguments of contains, got the end of the expression at character 50'),
    ("contains(session.participant, user.metadata.name)",
     'unknown field "session.participant" (did you mean "session.participants"?) at character 10'),
    ("equals(foo, \"x\")", 'unknown field "foo"; known fields: event.code, event.type'),
    ("equals(session.participants, \"a\")",
     "equals compares strings, got session.participants, a list (use contains for a list) at character 8"),
    ("contains(session.login, \"root\")",
     "contains needs a list as its first argument (such as session.participants), got session.login, a string "
     "at character 10"),
    ("contains(\"alice\", session.participants)", "contains needs a list as its first argument"),
    ("contains(session.participants, user.spec.roles)",
     "contains needs a string as its second argument, got user.spec.roles, a list at character 32"),
    ("foo(session.login, \"x\")", 'unknown function "foo": expected contains or equals at character 1'),
    ("session.login", 'expected a condition such as contains(...) or equals(...), got "session" (fields are the '
                      "arguments of contains and equals) at character 1"),
    ("\"alice\"", 'expected a condition such as contains(...) or equals(...), got the string "alice" at character 1'),
    ("equals(session.login, 'root')", "strings are written in double quotes at character 23"),
    ("equals(session.login, \"root)", "unterminated string at character 23"),
    ("equals(session.login, \"a\\qb\")", "invalid escape \\q in a string (use \\\" \\\\ \\n \\t) at character 25"),
    ("equals(session.login, \"a\tb\")", "control character in a string at character 25"),
    ("equals(session.login, \"a\") & equals(session.user, \"b\")",
     'unexpected "&" (and is "&&", or is "||") at character 28'),
    ("equals(session.login, \"a\") equals(session.user, \"b\")",
     'unexpected "equals" after a complete condition (join conditions with "&&" or "||") at character 28'),
    ("equals(session.login, \"a\") &&", "expected a condition such as contains(...) or equals(...), got the end"),
    ("(equals(session.login, \"a\")", 'expected ")", got the end of the expression at character 28'),
    ("equals(session.login, \"a\"))", 'unexpected ")" after a complete condition'),
    ("contains(user.spec.traits, \"ops\")",
     '"user.spec.traits" is a map of lists: pick one with user.spec.traits["key"] at character 10'),
    ("equals(user.metadata.name[\"x\"], \"a\")",
     '"user.metadata.name" is a string, not a map: it takes no ["..."] at character 26'),
    ("contains(user.spec.traits[teams], \"ops\")", 'expected a string key in ["..."], got "teams" at character 27'),
    ("equals(session.login, \"a\") ; rm -rf /", 'unexpected character ";" at character 28'),
    ("equals(session.login, 1)", 'unexpected character "1" at character 23'),
    ("equals(session., \"a\")", 'expected a field name after ".", got "," at character 16'),
    ("!" * (MAX_DEPTH + 1) + "equals(session.login, \"a\")", f"nested too deeply (at most {MAX_DEPTH} levels)"),
    ("(" * (MAX_DEPTH + 1) + "equals(session.login, \"a\")" + ")" * (MAX_DEPTH + 1), "nested too deeply"),
    ("equals(session.login, \"" + "a" * MAX_LENGTH + "\")", f"expression too long: {MAX_LENGTH + 25} characters, "
                                                         f"at most {MAX_LENGTH}"),
    ("||".join(['equals(event.type,"")'] * 40), f"expression too long: at most {MAX_TOKENS} tokens"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_expressions_are_refused_with_the_reason_and_position(text: str, message: str) -> None:
    with pytest.raises(PredicateError) as info:
        parse(text)
    assert str(info.value).startswith(message), str(info.value)


def test_a_deep_expression_within_the_limits_parses() -> None:
    depth = MAX_DEPTH - 1
    text = "(" * depth + 'equals(session.login, "ubuntu")' + ")" * depth
    assert parse(text)(env(**ALICE_SESSION))
    assert parse("!" * (MAX_DEPTH - 1) + 'equals(session.login, "x")')(env()) is True  # 15 negations of false


ALPHABET = st.sampled_from([*'()!&|,."[]\\ \t\'abcdefghijklmnopqrstuvwxyz_0123456789',
                            "contains", "equals", "session.participants", "user.metadata.name", "&&", "||",
                            '"alice"', "user.spec.traits", '["teams"]', "\x00", "é", "\n"])


@settings(max_examples=600, deadline=None)
@given(st.lists(ALPHABET, max_size=80).map("".join) | st.text(max_size=300))
def test_random_input_never_crashes(text: str) -> None:
    """Any string either parses to a predicate that evaluates to a bool, or raises PredicateError."""
    try:
        predicate = parse(text)
    except PredicateError as exc:
        assert str(exc)
        return
    assert isinstance(predicate(env(**ALICE_SESSION)), bool) and isinstance(predicate({}), bool)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=MAX_LENGTH + 1, max_value=200_000), st.sampled_from(["(", "!", "a", '"', " "]))
def test_huge_input_is_refused_before_tokenizing(size: int, char: str) -> None:
    with pytest.raises(PredicateError, match="expression too long"):
        parse(char * size)


def test_tokens_are_bounded() -> None:
    with pytest.raises(PredicateError, match=f"at most {MAX_TOKENS} tokens"):
        tokenize("a " * (MAX_TOKENS + 1))
    assert len(tokenize("a " * MAX_TOKENS)) == MAX_TOKENS + 1  # plus the end token


def test_every_field_is_usable() -> None:
    for name, kind in FIELDS.items():
        ref = f'{name}["k"]' if "map" in kind.value else name
        if kind.value in ("a list", "a map of lists"):
            parse(f'contains({ref}, "x")')
        else:
            parse(f'equals({ref}, "x")')


# -- rules with where, in roles --------------------------------------------------------------------


def role(name: str, allow: Any = None, deny: Any = None) -> Any:
    return parse_role({"kind": "role", "version": "v5", "metadata": {"name": name},
                       "spec": {"allow": allow or {}, "deny": deny or {}}})


def rule(where: str | None = None, resources: Any = ("session",), verbs: Any = ("list", "read")) -> dict[str, Any]:
    out: dict[str, Any] = {"resources": list(resources), "verbs": list(verbs)}
    if where is not None:
        out["where"] = where
    return out


def test_an_allow_rule_with_where_allows_only_where_true() -> None:
    rs = RoleSet([role("own", allow={"rules": [rule(OWN_SESSIONS)]})])
    mine, theirs = env(**ALICE_SESSION), env("bob", **ALICE_SESSION)
    assert rs.check_rule("session", "read", mine).reason == (
        f'role "own" allows read on session where {OWN_SESSIONS}')
    refused = rs.check_rule("session", "read", theirs)
    assert not refused.allowed
    assert refused.reason == f'no role allows read on session (own): role "own" only where {OWN_SESSIONS}'
    assert not rs.check_rule("session", "read").allowed  # no item: no participants
    assert not rs.check_rule("session", "delete", mine).allowed  # other verbs: not named
    # a listing the caller filters: allowed, the items are checked one by one
    assert rs.check_rule("session", "list", env(), filtered=True).reason == (
        f'role "own" allows list on session where {OWN_SESSIONS} (each item is checked)')
    assert not rs.check_rule("event", "list", env(), filtered=True).allowed


def test_a_deny_rule_with_where_denies_only_where_true_and_wins() -> None:
    everything = role("all", allow={"rules": [rule(resources=["*"], verbs=["*"])]})
    no_root = role("no-root", deny={"rules": [rule('equals(session.login, "root")')]})
    rs = RoleSet([everything, no_root])
    as_root = env(**{**ALICE_SESSION, "login": "root"})
    assert rs.check_rule("session", "read", as_root).reason == (
        'role "no-root" denies read on session where equals(session.login, "root")')
    assert rs.check_rule("session", "read", env(**ALICE_SESSION)).allowed
    assert rs.check_rule("role", "read", as_root).allowed  # the deny names sessions only
    # a filtered listing is allowed; each item is then checked (the root session is refused)
    assert rs.check_rule("session", "list", env(), filtered=True).allowed
    assert not rs.check_rule("session", "list", as_root).allowed
    # a deny rule without where still refuses the whole call, filtered or not
    blocked = RoleSet([everything, role("none", deny={"rules": [rule()]})])
    assert blocked.check_rule("session", "list", env(), filtered=True).reason == 'role "none" denies list on session'
    # deny with where wins over an unconditional allow of the same item
    own_and_all = RoleSet([everything, role("not-mine", deny={"rules": [rule("!" + OWN_SESSIONS)]})])
    assert own_and_all.check_rule("session", "read", env(**ALICE_SESSION)).allowed
    assert not own_and_all.check_rule("session", "read", env("bob", **ALICE_SESSION)).allowed


def test_an_unconditional_rule_in_any_role_still_allows() -> None:
    rs = RoleSet([role("own", allow={"rules": [rule(OWN_SESSIONS)]}), role("aud", allow={"rules": [rule()]})])
    assert rs.check_rule("session", "read", env("bob", **ALICE_SESSION)).reason == 'role "aud" allows read on session'


BAD_ROLES = [
    (rule("contains(session.participants, user.metadata.nam)"),
     'role "x": spec.allow.rules[0].where: invalid predicate "contains(session.participants, user.metadata.nam)": '
     'unknown field "user.metadata.nam" (did you mean "user.metadata.name"?) at character 32'),
    (rule(""), 'role "x": spec.allow.rules[0].where: invalid predicate "": empty expression'),
    ({**rule(), "where": ["contains(session.participants, user.metadata.name)"]},
     'role "x": spec.allow.rules[0].where: expected a string, got a list'),
    ({**rule(), "where": 5}, 'role "x": spec.allow.rules[0].where: expected a string, got 5'),
    (rule(OWN_SESSIONS, resources=["session", "node"]),
     'role "x": spec.allow.rules[0].where: session.* fields describe session items, but this rule also names node: '
     "put those in a rule of their own"),
    (rule('equals(event.type, "user.login")', resources=["session"]),
     'role "x": spec.allow.rules[0].where: event.* fields describe event items, but this rule also names session'),
]


@pytest.mark.parametrize(("raw", "message"), BAD_ROLES)
def test_a_role_with_a_bad_where_is_refused_with_its_path(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRole) as info:
        role("x", allow={"rules": [raw]})
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(InvalidRole, match=r"spec\.deny\.rules\[0\]\.where"):
        role("x", deny={"rules": [raw]})


def test_where_round_trips_and_fits_any_resource_with_a_wildcard() -> None:
    parsed = role("r", allow={"rules": [rule(OWN_SESSIONS)], "logins": ["x"]},
                  deny={"rules": [rule('equals(resource.metadata.name, "n")', resources=["*"])]})
    data = role_to_dict(parsed)
    assert data["spec"]["allow"]["rules"] == [{"resources": ["session"], "verbs": ["list", "read"],
                                               "where": OWN_SESSIONS}]
    assert parse_role(data) == parsed
    assert "where" not in role_to_dict(builtin_roles()[1])["spec"]["allow"]["rules"][0]


def test_the_preset_access_role_lists_and_plays_own_sessions() -> None:
    access = builtin_roles()[0]
    rs = RoleSet([access], {"logins": ["ubuntu"]})
    for verb in ("list", "read"):
        assert rs.check_rule("session", verb, env(**ALICE_SESSION)).allowed
        assert not rs.check_rule("session", verb, env("bob", **ALICE_SESSION)).allowed
    assert not rs.check_rule("session", "delete", env(**ALICE_SESSION)).allowed
    assert not rs.check_rule("event", "list", env(), filtered=True).allowed
    earlier = superseded_presets()["access"]
    assert earlier != access and [r.where for r in earlier.allow.rules] == [""]
    assert not RoleSet([earlier]).check_rule("session", "read", env(**ALICE_SESSION)).allowed
