"""Roles: validation (every error path, exact messages), YAML files, evaluation, built-ins, storage."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import attrs
import pytest
from teleport_auth.rolestore import RoleStore

from teleport_core.errors import AlreadyExists, ConfigError, NotFound
from teleport_core.policy.roles import (
    Conditions,
    InvalidRole,
    Role,
    RoleOptions,
    RoleSet,
    Rule,
    builtin_roles,
    expand_logins,
    parse_role,
    parse_roles_yaml,
    role_to_dict,
    superseded_presets,
)

BASE: dict[str, Any] = {
    "kind": "role",
    "version": "v5",
    "metadata": {"name": "x"},
    "spec": {"allow": {"logins": ["root"]}},
}

# The api-role example of the seeds' "API Architecture" page, as tctl create -f reads it.
API_ROLE_YAML = """\
kind: role
metadata:
  name: api-role
spec:
  allow:
    rules:
      - resources: ['role']
        verbs: ['read']
  deny:
    node_labels:
      '*': '*'
version: v5
"""


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-path changes; a value of ``...`` removes the key."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is ...:
            target.pop(last)
        else:
            target[last] = value
    return data


def rules(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return list(items)


INVALID = [
    ([], "role: expected a mapping, got a list"),
    (None, "role: expected a role, got an empty document"),
    (doc(specs={}), 'role "x": specs: unknown key (did you mean "spec"?)'),
    (doc(kind=...), 'role "x": kind: required: expected "role"'),
    (doc(kind="user"), 'role "x": kind: expected "role", got "user"'),
    (doc(version=...), 'role "x": version: required: expected one of "v4", "v5", "v6", "v7"'),
    (
        doc(version="v3"),
        'role "x": version: unsupported version "v3": expected one of "v4", "v5", "v6", "v7" '
        "(v3 roles allowed every node when node_labels was empty; write v5)",
    ),
    (doc(version="v8"), 'role "x": version: unsupported version "v8": expected one of "v4", "v5", "v6", "v7"'),
    (doc(version=5), 'role "x": version: unsupported version 5: expected one of "v4", "v5", "v6", "v7"'),
    (doc(metadata=...), "role: metadata: required: expected a mapping with name"),
    (doc(metadata__name=...), "role: metadata.name: required: expected a string"),
    (doc(metadata__name=5), "role: metadata.name: expected a string, got 5"),
    (
        doc(metadata__name="a b"),
        'role "a b": metadata.name: invalid role name "a b": use at most 255 characters, '
        "without spaces, commas, slashes or control characters",
    ),
    (
        doc(metadata__name="a/b"),
        'role "a/b": metadata.name: invalid role name "a/b": use at most 255 characters, '
        "without spaces, commas, slashes or control characters",
    ),
    (doc(metadata__lables={}), 'role "x": metadata.lables: unknown key (did you mean "labels"?)'),
    (doc(metadata__namespace="prod"), 'role "x": metadata.namespace: only "default" is supported, got "prod"'),
    (doc(metadata__description=["x"]), 'role "x": metadata.description: expected a string, got a list'),
    (doc(metadata__labels={"a": 1}), 'role "x": metadata.labels.a: expected a string, got 1'),
    (doc(spec=[]), 'role "x": spec: expected a mapping, got a list'),
    (doc(spec__alow={}), 'role "x": spec.alow: unknown key (did you mean "allow"?)'),
    (doc(spec__allow__login=[]), 'role "x": spec.allow.login: unknown key (did you mean "logins"?)'),
    (doc(spec__allow__logins=5), 'role "x": spec.allow.logins: expected a list of strings, got 5'),
    (doc(spec__allow__logins=["root", 5]), 'role "x": spec.allow.logins[1]: expected a string, got 5'),
    (
        doc(spec__allow__logins=["a b"]),
        'role "x": spec.allow.logins[0]: invalid login "a b": must be non-empty, without spaces, commas '
        "or control characters",
    ),
    (
        doc(spec__allow__logins=[""]),
        'role "x": spec.allow.logins[0]: invalid login "": must be non-empty, without spaces, commas '
        "or control characters",
    ),
    (
        doc(spec__allow__logins=["{{internal.logins"]),
        'role "x": spec.allow.logins[0]: invalid template "{{internal.logins": expected {{internal.<trait>}} '
        "or {{external.<trait>}}, optionally with a prefix and suffix",
    ),
    (
        doc(spec__allow__logins=["{{foo.logins}}"]),
        'role "x": spec.allow.logins[0]: unknown template namespace "foo" in "{{foo.logins}}": '
        'expected "internal" or "external"',
    ),
    (
        doc(spec__allow__node_labels=["env"]),
        'role "x": spec.allow.node_labels: expected a mapping of label names to values, got a list',
    ),
    (
        doc(spec__allow__node_labels={"env": True}),
        'role "x": spec.allow.node_labels.env: expected a string or a list of strings, got true',
    ),
    (doc(spec__allow__node_labels={"env": []}), 'role "x": spec.allow.node_labels.env: expected at least one value'),
    (
        doc(spec__allow__node_labels={"env": ["prod", None]}),
        'role "x": spec.allow.node_labels.env[1]: expected a string, got null',
    ),
    (
        doc(spec__allow__node_labels={"env": "^(prod$"}),
        'role "x": spec.allow.node_labels.env: invalid regular expression "^(prod$": '
        "missing ), unterminated subpattern at position 1",
    ),
    (
        doc(spec__allow__node_labels={"*": "prod"}),
        "role \"x\": spec.allow.node_labels.*: the '*' label only matches with the value '*', got \"prod\"",
    ),
    (
        doc(spec__allow__node_labels={"env": "{{internal.env}}"}),
        'role "x": spec.allow.node_labels.env: templates are not supported in node_labels',
    ),
    (doc(spec__allow__node_labels={"env": ""}), 'role "x": spec.allow.node_labels.env: label values must not be empty'),
    (
        doc(spec__allow__rules={"resources": ["role"]}),
        'role "x": spec.allow.rules: expected a list of rules, got a dict',
    ),
    (doc(spec__allow__rules=["role"]), 'role "x": spec.allow.rules[0]: expected a mapping, got "role"'),
    (
        doc(spec__allow__rules=rules({"resources": ["role"], "verbs": ["read"], "wher": "x"})),
        'role "x": spec.allow.rules[0].wher: unknown key (did you mean "where"?)',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["session"], "verbs": ["read"], "where": "x"})),
        'role "x": spec.allow.rules[0].where: invalid predicate "x": expected a condition such as contains(...) '
        'or equals(...), got "x" (fields are the arguments of contains and equals) at character 1',
    ),
    (
        doc(spec__allow__rules=rules({"verbs": ["read"]})),
        'role "x": spec.allow.rules[0].resources: required: expected a list of resource kinds',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["role"]})),
        'role "x": spec.allow.rules[0].verbs: required: expected a list of verbs',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["role"], "verbs": ["read", "wrte"]})),
        'role "x": spec.allow.rules[0].verbs[1]: unknown verb "wrte"; valid: list, read, create, update, delete, *',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["role"], "verbs": ["reed"]})),
        'role "x": spec.allow.rules[0].verbs[0]: unknown verb "reed" (did you mean "read"?)',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["role"], "verbs": [5]})),
        'role "x": spec.allow.rules[0].verbs[0]: expected a string, got 5',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["rol"], "verbs": ["read"]})),
        'role "x": spec.allow.rules[0].resources[0]: unknown resource "rol" (did you mean "role"?)',
    ),
    (
        doc(spec__allow__rules=rules({"resources": ["zzz"], "verbs": ["read"]})),
        'role "x": spec.allow.rules[0].resources[0]: unknown resource "zzz"; valid: access_request, auth_server, '
        "cert_authority, cluster_auth_preference, cluster_name, event, lock, node, proxy, proxy_token, remote_cluster, role, "
        "session, session_tracker, token, trusted_cluster, user, user_token",
    ),
    (
        doc(spec__options={"max_session_tll": "1h"}),
        'role "x": spec.options.max_session_tll: unknown key (did you mean "max_session_ttl"?)',
    ),
    (
        doc(spec__options={"max_session_ttl": "30 hours"}),
        'role "x": spec.options.max_session_ttl: expected a duration like "8h" or "30h0m0s", got "30 hours"',
    ),
    (
        doc(spec__options={"max_session_ttl": 5}),
        'role "x": spec.options.max_session_ttl: expected a duration like "8h" or "30h0m0s", got 5',
    ),
    (
        doc(spec__options={"max_session_ttl": "0s"}),
        'role "x": spec.options.max_session_ttl: must be positive, got "0s"',
    ),
    (
        doc(spec__options={"max_session_ttl": "-1h"}),
        'role "x": spec.options.max_session_ttl: must be positive, got "-1h"',
    ),
    (
        doc(spec__options={"forward_agent": "maybe"}),
        'role "x": spec.options.forward_agent: expected true or false, got "maybe"',
    ),
    (
        doc(spec__options={"port_forwarding": 1}),
        'role "x": spec.options.port_forwarding: expected true or false, got 1',
    ),
    (
        doc(spec__deny={"node_labels": {"env": 1.5, "x": {}}}),
        'role "x": spec.deny.node_labels.x: expected a string or a list of strings, got a dict',
    ),
    (
        doc(spec__deny={"logins": ["ok", "b,c"]}),
        'role "x": spec.deny.logins[1]: invalid login "b,c": must be '
        "non-empty, without spaces, commas or control characters",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_roles_are_refused_with_path_and_reason(data: Any, message: str) -> None:
    with pytest.raises(InvalidRole) as info:
        parse_role(data)
    assert str(info.value) == message


def test_invalid_role_is_a_config_error_and_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_role(doc(spec__allow__rules=rules({"resources": ["role"], "verbs": ["reed"]})), "api-role.yaml")
    assert (
        str(info.value)
        == 'api-role.yaml: role "x": spec.allow.rules[0].verbs[0]: unknown verb "reed" (did you mean "read"?)'
    )
    assert isinstance(info.value, InvalidRole)
    assert info.value.role == "x" and info.value.path == "spec.allow.rules[0].verbs[0]"


def test_valid_role_fields_and_defaults() -> None:
    role = parse_role(
        {
            "kind": "role",
            "version": "v7",
            "metadata": {"name": "dev", "description": "developers", "labels": {"team": "a"}, "namespace": "default"},
            "spec": {
                "allow": {
                    "logins": "ubuntu",
                    "node_labels": {"env": ["dev", "^stage-[0-9]+$"], "port": 22},
                    "rules": [{"resources": "node", "verbs": ["list", "read"]}],
                },
                "options": {"max_session_ttl": "8h", "forward_agent": "yes"},
            },
        }
    )
    assert role.name == "dev" and role.version == "v7" and role.description == "developers"
    assert dict(role.labels) == {"team": "a"}
    assert role.allow.logins == ("ubuntu",)
    assert dict(role.allow.node_labels) == {"env": ("dev", "^stage-[0-9]+$"), "port": ("22",)}
    assert role.allow.rules == (Rule(("node",), ("list", "read")),)
    assert role.deny == Conditions()
    assert role.options == RoleOptions(max_session_ttl=dt.timedelta(hours=8), forward_agent=True, port_forwarding=True)
    bare = parse_role({"kind": "role", "version": "v5", "metadata": {"name": "bare"}})
    assert bare.options == RoleOptions(dt.timedelta(hours=30), False, True)
    assert bare.allow == Conditions() and bare.deny == Conditions()


@pytest.mark.parametrize("version", ["v4", "v5", "v6", "v7"])
def test_versions_v4_to_v7_are_accepted_and_kept(version: str) -> None:
    role = parse_role(doc(version=version))
    assert role.version == version and role_to_dict(role)["version"] == version


def test_role_to_dict_round_trips() -> None:
    for role in [
        *builtin_roles(),
        parse_roles_yaml(API_ROLE_YAML)[0],
        parse_role(
            doc(
                spec__allow__node_labels={"env": ["a", "b"], "tier": "db"},
                spec__deny={"logins": ["root"], "rules": [{"resources": ["*"], "verbs": ["delete"]}]},
                spec__options={"max_session_ttl": "1h30m", "port_forwarding": False},
                metadata__labels={"k": "v"},
            )
        ),
    ]:
        data = role_to_dict(role)
        assert parse_role(data) == role
    data = role_to_dict(parse_role(doc(spec__allow__node_labels={"env": ["a", "b"], "tier": "db"})))
    assert data["spec"]["allow"]["node_labels"] == {"env": ["a", "b"], "tier": "db"}
    assert data["spec"]["options"] == {"max_session_ttl": "30h0m0s", "forward_agent": False, "port_forwarding": True}


# -- multi-document YAML ---------------------------------------------------------------------------


def test_multi_document_yaml() -> None:
    text = (
        API_ROLE_YAML
        + "---\n"
        + "kind: role\nversion: v5\nmetadata: {name: dev}\nspec: {allow: {logins: [dev]}}\n---\n"
    )
    roles = parse_roles_yaml(text)
    assert [r.name for r in roles] == ["api-role", "dev"]


def test_one_bad_document_refuses_the_whole_file() -> None:
    good = "kind: role\nversion: v5\nmetadata: {name: good}\n"
    bad = (
        "kind: role\nversion: v5\nmetadata: {name: bad}\nspec: {allow: {rules: [{resources: [role], verbs: [wrte]}]}}\n"
    )
    with pytest.raises(InvalidRole) as info:
        parse_roles_yaml(good + "---\n" + bad + "---\n" + good.replace("good", "third"), "roles.yaml")
    assert str(info.value) == (
        'roles.yaml (document 2): role "bad": spec.allow.rules[0].verbs[0]: unknown verb "wrte"; '
        "valid: list, read, create, update, delete, *"
    )


def test_yaml_file_errors() -> None:
    with pytest.raises(InvalidRole, match=r"^role: no role in the document$"):
        parse_roles_yaml("\n---\n")
    with pytest.raises(InvalidRole, match=r"^x.yaml: role: invalid YAML: "):
        parse_roles_yaml("kind: [role", "x.yaml")
    twice = "kind: role\nversion: v5\nmetadata: {name: a}\n"
    with pytest.raises(InvalidRole) as info:
        parse_roles_yaml(twice + "---\n" + twice)
    assert str(info.value) == 'document 2: role "a": metadata.name: defined twice in the same file'


# -- evaluation ------------------------------------------------------------------------------------


def role(name: str, **spec: Any) -> Role:
    return parse_role({"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec})


def test_internal_logins_template_expands_from_traits() -> None:
    r = role(
        "t",
        allow={
            "logins": ["{{internal.logins}}", "dev-{{external.team}}-x", "{{ internal.missing }}", "fixed"],
            "node_labels": {"*": "*"},
        },
    )
    rs = RoleSet([r], {"logins": ["root", "ubuntu", "bad login", ""], "team": ["blue"]})
    assert rs.all_logins == ["root", "ubuntu", "dev-blue-x", "fixed"]
    assert rs.check_login("ubuntu", {}).allowed
    assert not rs.check_login("bad login", {}).allowed
    assert not rs.check_login("{{internal.logins}}", {}).allowed
    assert RoleSet([r]).all_logins == ["fixed"]  # no traits: templates yield nothing
    assert expand_logins(["{{internal.logins}}", "root"], {"logins": ["root"]}) == ["root"]


def test_glob_and_regex_node_labels() -> None:
    r = role("l", allow={"logins": ["u"], "node_labels": {"env": "^prod-[0-9]+$", "region": ["us-*", "eu-west-1"]}})
    rs = RoleSet([r])
    assert rs.check_login("u", {"env": "prod-12", "region": "us-east-1"}).allowed
    assert rs.check_login("u", {"env": "prod-12", "region": "eu-west-1", "other": "x"}).allowed
    assert not rs.check_login("u", {"env": "prod-x", "region": "us-east-1"}).allowed  # regex
    assert not rs.check_login("u", {"env": "xprod-1", "region": "us-east-1"}).allowed  # anchored
    assert not rs.check_login("u", {"env": "prod-1\n", "region": "us-east-1"}).allowed  # whole value
    assert not rs.check_login("u", {"env": "prod-1", "region": "eu-west-2"}).allowed  # glob/list
    assert not rs.check_login("u", {"env": "prod-1", "region": "xus-east"}).allowed  # glob is anchored
    assert not rs.check_login("u", {"env": "prod-1"}).allowed  # every key must match
    dots = RoleSet([role("d", allow={"logins": ["u"], "node_labels": {"host": "a.b*"}})])
    assert dots.check_login("u", {"host": "a.b.c"}).allowed
    assert not dots.check_login("u", {"host": "aXb"}).allowed  # '.' is literal in globs


def test_wildcard_labels_match_every_node_and_empty_selector_none() -> None:
    everywhere = RoleSet([role("w", allow={"logins": ["u"], "node_labels": {"*": "*"}})])
    assert everywhere.check_login("u", {}).allowed and everywhere.check_login("u", {"a": "b"}).allowed
    nowhere = RoleSet([role("n", allow={"logins": ["u"]})])
    decision = nowhere.check_login("u", {"a": "b"})
    assert not decision.allowed
    assert decision.reason == 'no role that allows login "u" matches the node\'s labels (n)'
    assert not nowhere.node_visible({"a": "b"}) and everywhere.node_visible({})


def test_nothing_is_allowed_by_default() -> None:
    empty = RoleSet([])
    assert empty.check_login("root", {}).reason == 'no role allows login "root" (no roles)'
    assert empty.check_rule("role", "read").reason == "no role allows read on role (no roles)"
    assert empty.all_logins == [] and empty.logins_for({}) == []
    assert not empty.forward_agent and not empty.port_forwarding
    assert empty.max_session_ttl == dt.timedelta(hours=30)
    nothing = RoleSet([role("nothing")])
    assert not nothing.check_rule("node", "list").allowed
    assert not nothing.check_login("root", {}).allowed


def test_deny_wins() -> None:
    allow_all = role(
        "all",
        allow={"logins": ["root", "u"], "node_labels": {"*": "*"}, "rules": [{"resources": ["*"], "verbs": ["*"]}]},
    )
    no_root = role("no-root", deny={"logins": ["root"]})
    no_prod = role("no-prod", deny={"node_labels": {"env": ["prod", "^prod-.*$"]}})
    no_delete = role("no-delete", deny={"rules": [{"resources": ["role"], "verbs": ["delete"]}]})
    rs = RoleSet([allow_all, no_root, no_prod, no_delete])
    assert rs.check_login("root", {"env": "dev"}).reason == 'role "no-root" denies login "root"'
    assert rs.check_login("u", {"env": "dev"}).reason == 'role "all" allows login "u" on this node'
    decision = rs.check_login("u", {"env": "prod-eu"})
    assert not decision.allowed
    assert decision.reason == 'role "no-prod" denies access to nodes matching its deny node_labels'
    assert rs.check_rule("role", "delete").reason == 'role "no-delete" denies delete on role'
    assert rs.check_rule("role", "update").allowed
    assert rs.check_rule("user", "delete").reason == 'role "all" allows delete on user'
    assert rs.all_logins == ["u"]
    assert rs.logins_for({"env": "dev"}) == ["u"] and rs.logins_for({"env": "prod"}) == []
    assert not rs.node_visible({"env": "prod"}) and rs.node_visible({"env": "dev"})


def test_deny_logins_use_templates_too() -> None:
    r = role(
        "r", allow={"logins": ["root", "alice"], "node_labels": {"*": "*"}}, deny={"logins": ["{{internal.banned}}"]}
    )
    rs = RoleSet([r], {"banned": ["root"]})
    assert not rs.check_login("root", {}).allowed and rs.check_login("alice", {}).allowed


def test_options_combine_like_teleport() -> None:
    a = role("a", options={"max_session_ttl": "8h", "forward_agent": True, "port_forwarding": False})
    b = role("b", options={"max_session_ttl": "2h", "port_forwarding": False})
    c = role("c")
    assert RoleSet([a, b]).max_session_ttl == dt.timedelta(hours=2)
    assert RoleSet([a, b]).forward_agent and not RoleSet([b, c]).forward_agent
    assert not RoleSet([a, b]).port_forwarding and RoleSet([a, c]).port_forwarding  # default true


def test_rule_wildcards() -> None:
    rs = RoleSet(
        [
            role(
                "w",
                allow={"rules": [{"resources": ["*"], "verbs": ["read"]}, {"resources": ["token"], "verbs": ["*"]}]},
            )
        ]
    )
    assert rs.check_rule("session", "read").allowed and rs.check_rule("token", "delete").allowed
    assert not rs.check_rule("session", "delete").allowed


def test_builtin_roles_behave() -> None:
    access, editor, auditor = builtin_roles()
    user = RoleSet([access], {"logins": ["root", "ubuntu"]})
    assert user.all_logins == ["root", "ubuntu"] and user.forward_agent and user.port_forwarding
    assert user.check_login("root", {"env": "prod"}).allowed
    assert user.check_rule("node", "list").allowed
    assert not user.check_rule("role", "read").allowed
    assert not user.check_rule("event", "list").allowed
    # sessions: only those the user took part in (Teleport's preset rule)
    assert user.check_rule("session", "list", filtered=True).allowed
    assert not user.check_rule("session", "read").allowed and not user.check_rule("session", "delete").allowed
    ed = RoleSet([editor], {"logins": ["root"]})
    assert ed.all_logins == [] and not ed.check_login("root", {}).allowed
    for kind in ("role", "user", "token", "node", "cert_authority"):
        for verb in ("list", "read", "create", "update", "delete"):
            assert ed.check_rule(kind, verb).allowed, (kind, verb)
    assert not ed.check_rule("event", "read").allowed and not ed.check_rule("session", "read").allowed
    aud = RoleSet([auditor])
    assert aud.check_rule("event", "list").allowed and aud.check_rule("session", "read").allowed
    assert not aud.check_rule("session", "delete").allowed and not aud.check_rule("role", "create").allowed
    assert aud.all_logins == []


def test_api_role_example_from_the_seeds() -> None:
    (api,) = parse_roles_yaml(API_ROLE_YAML)
    rs = RoleSet([api], {"logins": ["root"]})
    assert rs.check_rule("role", "read").allowed
    assert rs.check_rule("role", "create").reason == "no role allows create on role (api-role)"
    assert not rs.check_rule("user", "read").allowed
    # deny node_labels '*': '*' refuses every login, even combined with a role that allows them
    access = builtin_roles()[0]
    both = RoleSet([access, api], {"logins": ["root"]})
    for labels in ({}, {"env": "prod"}, {"a": "b", "c": "d"}):
        decision = both.check_login("root", labels)
        assert not decision.allowed
        assert decision.reason == 'role "api-role" denies access to nodes matching its deny node_labels'
        assert both.logins_for(labels) == []


# -- storage ---------------------------------------------------------------------------------------


def test_role_store_crud(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        changes: list[int] = []
        store.add_listener(lambda: changes.append(1))
        assert await store.ensure_builtin() == ["access", "editor", "auditor"]
        assert await store.ensure_builtin() == []
        (api,) = parse_roles_yaml(API_ROLE_YAML)
        await store.create(api)
        with pytest.raises(AlreadyExists, match='^role "api-role" already exists$'):
            await store.create(api)
        assert await store.get("api-role") == api
        assert [r.name for r in await store.list()] == ["access", "api-role", "auditor", "editor"]
        # built-ins are editable and never overwritten afterwards
        narrowed = role("access", allow={"logins": ["guest"]})
        assert await store.upsert(narrowed) is True
        assert await store.ensure_builtin() == []
        assert (await store.get("access")).allow.logins == ("guest",)
        assert await store.upsert(role("new")) is False
        await store.delete("api-role")
        with pytest.raises(NotFound, match='^role "api-role" not found$'):
            await store.get("api-role")
        with pytest.raises(NotFound, match='^role "api-role" not found$'):
            await store.delete("api-role")
        assert len(changes) >= 5
        raw = await backend.get(b"/roles/editor")
        assert parse_role(json.loads(raw.value)) == builtin_roles()[1]

    with_backend(body)


def test_an_unedited_preset_of_an_earlier_release_is_brought_up_to_date(with_backend: Any) -> None:
    """A cluster created before the access role's own-sessions rule gets it at the next start; an
    edited access role is left alone."""

    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.upsert(superseded_presets()["access"])
        assert await store.ensure_builtin() == ["access", "editor", "auditor"]
        assert await store.get("access") == builtin_roles()[0]
        assert await store.ensure_builtin() == []
        edited = attrs.evolve(superseded_presets()["access"], description="ours")
        await store.upsert(edited)
        assert await store.ensure_builtin() == []
        assert await store.get("access") == edited

    with_backend(body)
