"""The role map of a trust (teleport_core.policy.rolemap): what a leaf grants a root user's roles."""

from __future__ import annotations

import pytest

from teleport_core.policy.rolemap import InvalidRoleMap, map_roles, parse_role_map, role_map_to_list
from teleport_core.policy.roles import InvalidRole, Role, RoleSet, parse_role, role_to_dict


def test_names_globs_and_regex_with_group_expansion() -> None:
    rm = parse_role_map([
        {"remote": "admin", "local": ["access", "editor"]},
        {"remote": "dev-*", "local": ["access"]},
        {"remote": "^team-(.*)-(ro|rw)$", "local": ["$1-$2", "${1}-member"]},
    ])
    assert map_roles(rm, ["admin"]) == ("access", "editor")
    assert map_roles(rm, ["dev-frontend"]) == ("access",)
    assert map_roles(rm, ["team-db-rw"]) == ("db-rw", "db-member")
    assert map_roles(rm, ["admin", "dev-x", "team-a-ro"]) == ("access", "editor", "a-ro", "a-member")


def test_an_unmapped_role_grants_nothing() -> None:
    rm = parse_role_map([{"remote": "admin", "local": ["access"]}])
    assert map_roles(rm, ["auditor"]) == ()
    assert map_roles(rm, ["administrator"]) == ()  # a name matches whole, never a prefix
    assert map_roles(rm, ["xadmin"]) == ()
    assert map_roles((), ["admin"]) == ()  # an empty map grants nothing
    assert map_roles(parse_role_map(None), ["admin"]) == ()


def test_glob_is_anchored_and_escapes_regex_characters() -> None:
    rm = parse_role_map([{"remote": "a.b*", "local": ["x"]}])
    assert map_roles(rm, ["a.bcd"]) == ("x",)
    assert map_roles(rm, ["aXbcd"]) == ()  # '.' is literal in a glob
    star = parse_role_map([{"remote": "*", "local": ["guest"]}])
    assert map_roles(star, ["anything"]) == ("guest",)


def test_empty_expansion_is_dropped() -> None:
    rm = parse_role_map([{"remote": "^x(.*)$", "local": ["$1"]}])
    assert map_roles(rm, ["x"]) == ()
    assert map_roles(rm, ["xy"]) == ("y",)


def test_round_trip() -> None:
    data = [{"remote": "admin", "local": ["access"]}, {"remote": "^a(.)$", "local": ["$1"]}]
    assert role_map_to_list(parse_role_map(data)) == data
    # a single local string is taken as a list of one
    assert role_map_to_list(parse_role_map([{"remote": "a", "local": "b"}])) == [{"remote": "a", "local": ["b"]}]


@pytest.mark.parametrize(("value", "path", "words"), [
    ("admin", "spec.role_map", "expected a list"),
    ([1], "spec.role_map[0]", "expected a mapping"),
    ([{"local": ["a"]}], "spec.role_map[0].remote", "required"),
    ([{"remote": "", "local": ["a"]}], "spec.role_map[0].remote", "required"),
    ([{"remote": 5, "local": ["a"]}], "spec.role_map[0].remote", "required"),
    ([{"remote": "a"}], "spec.role_map[0].local", "required"),
    ([{"remote": "a", "local": []}], "spec.role_map[0].local", "required"),
    ([{"remote": "a", "local": [""]}], "spec.role_map[0].local[0]", "expected a role name"),
    ([{"remote": "a", "local": [3]}], "spec.role_map[0].local[0]", "expected a role name"),
    ([{"remote": "a", "local": ["has space"]}], "spec.role_map[0].local[0]", "invalid role name"),
    ([{"remote": "^(a$", "local": ["x"]}], "spec.role_map[0].remote", "invalid regular expression"),
    ([{"remote": "^a$", "local": ["$1"]}], "spec.role_map[0].local[0]", "$1 refers to a group"),
    ([{"remote": "a*", "local": ["$1"]}], "spec.role_map[0].local[0]", "$1 refers to a group"),
    ([{"remote": "a", "local": ["b"], "extra": 1}], "spec.role_map[0].extra", "unknown key"),
    ([{"remote": "a\nb", "local": ["b"]}], "spec.role_map[0].remote", "printable"),
    ([{"remote": "x" * 600, "local": ["b"]}], "spec.role_map[0].remote", "at most"),
    ([{"remote": "a", "local": ["b"]}] * 300, "spec.role_map", "at most 256"),
])
def test_invalid_maps_name_the_field(value: object, path: str, words: str) -> None:
    with pytest.raises(InvalidRoleMap) as err:
        parse_role_map(value, "spec.role_map")
    assert err.value.path == path
    assert words in str(err.value)


# -- cluster_labels (roles): which leaves a root user sees ---------------------------------------------


def _role(name: str, allow: dict[str, object], deny: dict[str, object] | None = None) -> Role:
    return parse_role({"kind": "role", "version": "v7", "metadata": {"name": name},
                       "spec": {"allow": allow, "deny": deny or {}}})


def test_cluster_labels_parse_serialize_and_filter_visibility() -> None:
    prod = _role("prod", {"cluster_labels": {"env": ["prod", "^stag.*$"]}})
    assert role_to_dict(prod)["spec"]["allow"]["cluster_labels"] == {"env": ["prod", "^stag.*$"]}
    assert parse_role(role_to_dict(prod)) == prod
    rs = RoleSet([prod])
    assert rs.cluster_visible({"env": "prod"})
    assert rs.cluster_visible({"env": "staging"})
    assert not rs.cluster_visible({"env": "dev"})
    assert not rs.cluster_visible({})
    # no cluster_labels: no leaf is visible (deny by default)
    assert not RoleSet([_role("plain", {"logins": ["x"]})]).cluster_visible({"env": "prod"})
    # deny wins
    both = RoleSet([_role("all", {"cluster_labels": {"*": "*"}}),
                    _role("noprod", {}, {"cluster_labels": {"env": "prod"}})])
    assert both.cluster_visible({"env": "dev"})
    assert not both.cluster_visible({"env": "prod"})


@pytest.mark.parametrize(("labels", "path"), [
    ("prod", "spec.allow.cluster_labels"),
    ({"env": []}, "spec.allow.cluster_labels.env"),
    ({"*": "prod"}, "spec.allow.cluster_labels.*"),
    ({"env": "^(x$"}, "spec.allow.cluster_labels.env"),
])
def test_bad_cluster_labels_name_the_field(labels: object, path: str) -> None:
    with pytest.raises(InvalidRole) as err:
        _role("bad", {"cluster_labels": labels})
    assert path in str(err.value)
