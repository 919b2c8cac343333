"""Roles (RBAC) like Teleport's: the ``kind: role`` resource, its validation, and evaluation.

A role::

    kind: role
    version: v5                       # v4..v7 accepted (identical for the fields below); v3 refused
    metadata: {name: api-role, description: "...", labels: {team: infra}}
    spec:
      allow:
        logins: ["{{internal.logins}}", ubuntu]    # templates expand from the user's traits
        node_labels: {"*": "*"}                     # or env: prod, region: ["^eu-.*$", "us-*"]
        rules:
          - {resources: [role], verbs: [read, list]}
          - {resources: [session], verbs: [list, read], where: "contains(session.participants, user.metadata.name)"}
      deny: {node_labels: {env: prod}, logins: [root], rules: [...]}
      options: {max_session_ttl: 30h, forward_agent: false, port_forwarding: true}

Semantics (Teleport's):

* Nothing is allowed by default; a deny always wins over an allow.
* SSH: a login on a node is allowed when one role both lists the login and its allow
  ``node_labels`` match the node; it is denied when any role's deny ``logins`` lists the login
  *or* its deny ``node_labels`` match the node.
* ``node_labels``: every key must match (AND); a key's values are alternatives (OR). A value
  written ``^...$`` is a regular expression (matched against the whole value); anything else
  is a glob where ``*`` matches any run of characters. ``'*': '*'`` matches every node, even
  one without labels. An empty selector matches nothing.
* Logins may be templates ``prefix{{internal.<trait>}}suffix`` or ``{{external.<trait>}}``:
  both read the user's traits (local users keep theirs in ``traits``); a missing trait yields
  no login, and expanded values that are not valid logins are dropped.
* Rules: ``resources`` x ``verbs``, ``*`` matching any. Verbs: list, read, create, update, delete.
  A rule with ``where:`` (:mod:`teleport_core.policy.predicate`) applies only where its predicate
  holds for the item asked about: an allow rule allows only those items, a deny rule denies only
  those; deny still wins. A listing the caller filters item by item (``filtered``) is allowed
  by a ``where`` allow rule, and each item is then checked on its own.
* Options: ``max_session_ttl`` is the minimum over the user's roles; ``forward_agent`` and
  ``port_forwarding`` are granted when *any* role enables them (``port_forwarding`` defaults
  to true, ``forward_agent`` to false, as in Teleport).

Role versions v4..v7 differ only in fields this implementation does not support
(Kubernetes, databases ...), so they are accepted and kept; v3 is refused because an empty
``allow.node_labels`` meant ``'*': '*'`` there.

The auth service stores roles in cluster state (``teleport_auth.rolestore``); nodes and
proxies fetch them through the API and evaluate them with :class:`RoleSet`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs
import yaml

from teleport_core.config.reader import show
from teleport_core.config.values import format_duration, parse_duration
from teleport_core.errors import ConfigError
from teleport_core.policy.access import Decision
from teleport_core.policy.moderation import BadPolicy, RequirePolicy
from teleport_core.policy.moderation import parse_policies as parse_require_policies
from teleport_core.policy.predicate import ITEM_KINDS, Predicate, PredicateError, environment
from teleport_core.policy.predicate import parse as parse_predicate
from teleport_core.suggest import did_you_mean

KIND = "role"
DEFAULT_VERSION = "v5"
VERSIONS = ("v4", "v5", "v6", "v7")
DEFAULT_MAX_SESSION_TTL = dt.timedelta(hours=30)

WILDCARD = "*"
VERBS = ("list", "read", "create", "update", "delete")
#: Resource kinds a rule may name (plus ``*``). Extend with :func:`register_resource_kinds`.
KNOWN_RESOURCES: set[str] = {
    "access_request",
    "auth_server",
    "cert_authority",
    "cluster_auth_preference",
    "cluster_name",
    "event",
    "lock",
    "node",
    "proxy",
    "remote_cluster",  # a root's record of a leaf (tctl get rc)
    "trusted_cluster",  # a leaf's trust in a root
    "proxy_token",  # join tokens admitting proxies: only an explicit rule grants it, never "*"
    "role",
    "session",
    "session_tracker",  # live sessions (teleport_core.state.trackers): list and read
    "token",
    "user",
    "user_token",
}

_BAD_NAME = re.compile(r"[\x00-\x20\x7f,/]")
_BAD_LOGIN = re.compile(r"[\x00-\x20\x7f,]")
_TEMPLATE = re.compile(r"^(?P<prefix>[^{}]*)\{\{\s*(?P<ns>[^.{}\s]+)\.(?P<trait>[^{}\s]+)\s*\}\}(?P<suffix>[^{}]*)$")
_TEMPLATE_NAMESPACES = ("internal", "external")
_TRAIT_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]+$")


def register_resource_kinds(*kinds: str) -> None:
    """Let rules name more resource kinds (for API plugins that add resources)."""
    for kind in kinds:
        if not kind or _BAD_NAME.search(kind) or kind == WILDCARD:
            raise ValueError(f"invalid resource kind {kind!r}")
        KNOWN_RESOURCES.add(kind)


class InvalidRole(ConfigError):
    """A role failed validation: ``str()`` is ``[<source>: ]role "<name>": <key path>: <reason>``."""

    def __init__(self, role: str, path: str, message: str, source: str = "") -> None:
        super().__init__(path, message)
        self.role = role
        self.source = source
        where = f'role "{role}"' if role else "role"
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        self.args = (f"{source}: {text}" if source else text,)


# -- label selectors -------------------------------------------------------------------------------


def _value_pattern(value: str) -> re.Pattern[str]:
    """A label value as a regex: ``^...$`` literally, else a glob where ``*`` is ``.*``."""
    if value.startswith("^") and value.endswith("$"):
        return re.compile(value)
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


def _freeze_labels(value: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({str(k): tuple(v) for k, v in value.items()})


def _compile_selector(labels: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]:
    return tuple((key, tuple(_value_pattern(v) for v in values)) for key, values in labels.items())


def labels_match(selector: Sequence[tuple[str, tuple[re.Pattern[str], ...]]], labels: Mapping[str, str]) -> bool:
    """True when every selector key matches the node's labels (see the module docstring)."""
    if not selector:
        return False
    for key, patterns in selector:
        if key == WILDCARD:
            continue  # '*': '*' (validation refuses any other value for the '*' key)
        value = labels.get(key)
        if value is None or not any(p.fullmatch(value) for p in patterns):
            return False
    return True


# -- the model -------------------------------------------------------------------------------------


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _predicate(rule: Rule) -> Predicate | None:
    return parse_predicate(rule.where) if rule.where else None


@attrs.frozen
class Rule:
    """Allows (or denies) ``verbs`` on ``resources``; ``*`` in either matches anything.

    ``where``: a predicate (:mod:`teleport_core.policy.predicate`) the item must satisfy for the
    rule to apply; parsed here (``PredicateError`` when invalid)."""

    resources: tuple[str, ...] = attrs.field(converter=_strings)
    verbs: tuple[str, ...] = attrs.field(converter=_strings)
    where: str = ""
    predicate: Predicate | None = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(_predicate, takes_self=True))

    def matches(self, kind: str, verb: str) -> bool:
        return (WILDCARD in self.resources or kind in self.resources) and (WILDCARD in self.verbs or verb in self.verbs)

    def holds(self, env: Mapping[str, Any]) -> bool:
        """Whether the rule applies to the item described by ``env`` (always, without ``where``)."""
        return self.predicate is None or self.predicate(env)


def _rule_tuple(value: Iterable[Rule]) -> tuple[Rule, ...]:
    return tuple(value)


#: participant modes of a live session (Teleport's RFD 43): view; view and type; view and terminate
SESSION_MODES = ("observer", "peer", "moderator")
#: session kinds a ``join_sessions`` policy may name (Teleport's; this implementation runs ``ssh`` only)
SESSION_KINDS = ("ssh", "k8s")


@attrs.frozen
class JoinPolicy:
    """One ``join_sessions`` entry: sessions of users holding a role matching ``roles`` (globs,
    ``*`` any run of characters), of ``kinds`` (``*``: any), may be joined in ``modes``.
    Evaluated by :mod:`teleport_core.policy.joining`."""

    name: str = ""
    roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    kinds: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    modes: tuple[str, ...] = attrs.field(default=(), converter=_strings)


def _join_tuple(value: Iterable[JoinPolicy]) -> tuple[JoinPolicy, ...]:
    return tuple(value)


def _require_tuple(value: Iterable[RequirePolicy]) -> tuple[RequirePolicy, ...]:
    return tuple(value)


#: request thresholds' and max_duration's limits (Teleport's): access lasts at most 14 days
MAX_ACCESS_DURATION = dt.timedelta(days=14)
#: ``options.request_access`` (Teleport's): optional (default), always (login asks for the roles), reason
REQUEST_ACCESS_MODES = ("optional", "always", "reason")


@attrs.frozen
class Threshold:
    """An access request threshold: ``approve`` approvals approve it, ``deny`` denials deny it."""

    name: str = "default"
    approve: int = 1
    deny: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "approve": self.approve, "deny": self.deny}


def _threshold_tuple(value: Iterable[Threshold]) -> tuple[Threshold, ...]:
    return tuple(value)


@attrs.frozen
class RequestConditions:
    """``allow.request`` / ``deny.request``: the roles a user may request (names, globs, ``^regex$``),
    and under ``allow`` the thresholds, suggested reviewers and longest access of such requests."""

    roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    thresholds: tuple[Threshold, ...] = attrs.field(default=(), converter=_threshold_tuple)
    suggested_reviewers: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    max_duration: dt.timedelta | None = None
    _patterns: tuple[re.Pattern[str], ...] = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(lambda self: _name_patterns(self.roles), True))

    def matches(self, role: str) -> bool:
        """Whether ``role`` matches one of ``roles``."""
        return any(p.fullmatch(role) for p in self._patterns)


@attrs.frozen
class ReviewConditions:
    """``allow.review_requests`` / ``deny.review_requests``: the requested roles (names, globs,
    ``^regex$``) whose requests the holder may review."""

    roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    _patterns: tuple[re.Pattern[str], ...] = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(lambda self: _name_patterns(self.roles), True))

    def matches(self, role: str) -> bool:
        return any(p.fullmatch(role) for p in self._patterns)


def _name_patterns(names: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Role names, globs (``*``) and ``^regex$`` as patterns (as label values are matched)."""
    return tuple(_value_pattern(name) for name in names)


@attrs.frozen
class Conditions:
    """One side (``allow`` or ``deny``) of a role."""

    logins: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    node_labels: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_freeze_labels)
    rules: tuple[Rule, ...] = attrs.field(default=(), converter=_rule_tuple)
    join_sessions: tuple[JoinPolicy, ...] = attrs.field(default=(), converter=_join_tuple)
    # moderated sessions (teleport_core.policy.moderation), read under allow only
    require_session_join: tuple[RequirePolicy, ...] = attrs.field(default=(), converter=_require_tuple)
    # access requests (teleport_core.policy.requests): what may be requested, whose requests reviewed
    request: RequestConditions = attrs.field(factory=RequestConditions)
    review_requests: ReviewConditions = attrs.field(factory=ReviewConditions)
    # trusted clusters: which leaf clusters (their remote_cluster labels) a root user sees
    cluster_labels: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_freeze_labels)
    _selector: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(lambda self: _compile_selector(self.node_labels), True)
    )
    _cluster_selector: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(lambda self: _compile_selector(self.cluster_labels), True)
    )

    def matches_node(self, labels: Mapping[str, str]) -> bool:
        return labels_match(self._selector, labels)

    def matches_cluster(self, labels: Mapping[str, str]) -> bool:
        """Whether ``cluster_labels`` match a leaf's ``remote_cluster`` labels (as node labels match)."""
        return labels_match(self._cluster_selector, labels)

    def rule_for(self, kind: str, verb: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(kind, verb)), None)

    def rules_for(self, kind: str, verb: str) -> list[Rule]:
        """Every rule that names ``verb`` on ``kind`` (with or without ``where``)."""
        return [rule for rule in self.rules if rule.matches(kind, verb)]


@attrs.frozen
class RoleOptions:
    max_session_ttl: dt.timedelta = DEFAULT_MAX_SESSION_TTL
    forward_agent: bool = False
    port_forwarding: bool = True
    request_access: str = "optional"  # optional | always | reason (access requests)
    request_prompt: str = ""


def _frozen_str_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Role:
    """A validated role. Build from YAML/JSON with :func:`parse_role`."""

    name: str
    allow: Conditions = attrs.field(factory=Conditions)
    deny: Conditions = attrs.field(factory=Conditions)
    options: RoleOptions = attrs.field(factory=RoleOptions)
    version: str = DEFAULT_VERSION
    description: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_str_map)


# -- parsing ---------------------------------------------------------------------------------------


class _Fail(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str, keys: Sequence[str]) -> Mapping[str, Any]:
    """``value`` as a mapping (None -> empty) whose keys are all in ``keys``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Fail(path, f"expected a mapping, got {show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _Fail(path, f"keys must be strings, got {show(key)}")
        if key not in keys:
            raise _Fail(_join(path, key), "unknown key" + did_you_mean(key, list(keys)))
    return value


def _string(value: Any, path: str, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise _Fail(path, "required: expected a string")
        return ""
    if not isinstance(value, str):
        raise _Fail(path, f"expected a string, got {show(value)}")
    return value


def _string_list(value: Any, path: str) -> list[str]:
    """A list of strings; a single string counts as a one-item list (as in Teleport's YAML)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _Fail(path, f"expected a list of strings, got {show(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Fail(f"{path}[{index}]", f"expected a string, got {show(item)}")
    return list(value)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return "; valid: " + ", ".join(choices)


def check_name(what: str, name: str) -> str:
    """A role or user name: non-empty, at most 255 characters, no spaces, commas, slashes or controls."""
    if not name:
        raise ValueError(f"{what} name must not be empty")
    if len(name) > 255 or _BAD_NAME.search(name) or name in (".", ".."):
        raise ValueError(
            f"invalid {what} name {json.dumps(name)}: use at most 255 characters, "
            "without spaces, commas, slashes or control characters"
        )
    return name


def _valid_login(login: str) -> bool:
    return bool(login) and not _BAD_LOGIN.search(login) and len(login) <= 255


def _check_login(value: str, path: str) -> str:
    if "{{" in value or "}}" in value:
        match = _TEMPLATE.match(value)
        if not match:
            raise _Fail(
                path,
                f"invalid template {json.dumps(value)}: expected {{{{internal.<trait>}}}} "
                "or {{external.<trait>}}, optionally with a prefix and suffix",
            )
        if match["ns"] not in _TEMPLATE_NAMESPACES:
            raise _Fail(
                path,
                f'unknown template namespace "{match["ns"]}" in {json.dumps(value)}: expected "internal" or "external"',
            )
        if not _TRAIT_NAME.match(match["trait"]):
            raise _Fail(path, f"invalid trait name in {json.dumps(value)}")
        if _BAD_LOGIN.search(match["prefix"] + match["suffix"]):
            raise _Fail(path, f"invalid login template {json.dumps(value)}: no spaces, commas or control characters")
        return value
    if not _valid_login(value):
        raise _Fail(
            path, f"invalid login {json.dumps(value)}: must be non-empty, without spaces, commas or control characters"
        )
    return value


def _label_values(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, bool) or value is None:
        raise _Fail(path, f"expected a string or a list of strings, got {show(value)}")
    if isinstance(value, str | int | float):
        items: list[Any] = [value]
        paths = [path]
    elif isinstance(value, list):
        if not value:
            raise _Fail(path, "expected at least one value")
        items = value
        paths = [f"{path}[{i}]" for i in range(len(value))]
    else:
        raise _Fail(path, f"expected a string or a list of strings, got {show(value)}")
    out = []
    for item, where in zip(items, paths, strict=True):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _Fail(where, f"expected a string, got {show(item)}")
        text = str(item)
        if not text:
            raise _Fail(where, "label values must not be empty")
        if "{{" in text:
            raise _Fail(where, "templates are not supported in node_labels")
        if text.startswith("^") and text.endswith("$"):
            try:
                re.compile(text)
            except (re.error, OverflowError, RecursionError) as exc:  # a huge repeat count, nested too deeply
                reason = exc if isinstance(exc, re.error | OverflowError) else "nested too deeply"
                raise _Fail(where, f"invalid regular expression {json.dumps(text)}: {reason}") from None
        out.append(text)
    return tuple(out)


def _node_labels(value: Any, path: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Fail(path, f"expected a mapping of label names to values, got {show(value)}")
    out: dict[str, tuple[str, ...]] = {}
    for key, raw in value.items():
        if isinstance(key, bool) or not isinstance(key, str | int | float) or not str(key):
            raise _Fail(path, f"label names must be non-empty strings, got {show(key)}")
        name = str(key)
        values = _label_values(raw, _join(path, name))
        if name == WILDCARD and values != (WILDCARD,):
            raise _Fail(_join(path, name), f"the '*' label only matches with the value '*', got {show(raw)}")
        out[name] = values
    return out


def _rules(value: Any, path: str) -> list[Rule]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Fail(path, f"expected a list of rules, got {show(value)}")
    rules = []
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        data = _mapping(raw, where, ("resources", "verbs", "where"))
        resources = _string_list(data.get("resources"), f"{where}.resources")
        verbs = _string_list(data.get("verbs"), f"{where}.verbs")
        if not resources:
            raise _Fail(f"{where}.resources", "required: expected a list of resource kinds")
        if not verbs:
            raise _Fail(f"{where}.verbs", "required: expected a list of verbs")
        for i, kind in enumerate(resources):
            if kind != WILDCARD and kind not in KNOWN_RESOURCES:
                raise _Fail(
                    f"{where}.resources[{i}]",
                    f"unknown resource {json.dumps(kind)}" + _suggest(kind, sorted(KNOWN_RESOURCES)),
                )
        for i, verb in enumerate(verbs):
            if verb != WILDCARD and verb not in VERBS:
                raise _Fail(f"{where}.verbs[{i}]", f"unknown verb {json.dumps(verb)}" + _suggest(verb, (*VERBS, "*")))
        condition = _string(data.get("where"), f"{where}.where") if "where" in data else ""
        if "where" in data:
            _check_where(condition, resources, f"{where}.where")
        rules.append(Rule(resources, verbs, condition))
    return rules


def _check_where(text: str, resources: Sequence[str], path: str) -> None:
    """Parse a rule's ``where``; its item fields (``session.*``, ``event.*``) must fit every resource named."""
    try:
        predicate = parse_predicate(text)
    except PredicateError as exc:
        raise _Fail(path, f"invalid predicate {json.dumps(text)}: {exc}") from None
    if WILDCARD in resources:
        return
    for namespace in sorted(predicate.namespaces & ITEM_KINDS.keys()):
        others = [kind for kind in resources if kind not in ITEM_KINDS[namespace]]
        if others:
            raise _Fail(path, f"{namespace}.* fields describe {' and '.join(ITEM_KINDS[namespace])} items, "
                              f"but this rule also names {', '.join(others)}: put those in a rule of their own")


def _join_sessions(value: Any, path: str) -> list[JoinPolicy]:
    """``join_sessions``: a list of ``{name, roles, kinds, modes}`` (roles, kinds and modes required)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Fail(path, f"expected a list of join policies ({{name, roles, kinds, modes}}), got {show(value)}")
    out = []
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        data = _mapping(raw, where, ("name", "roles", "kinds", "modes"))
        if not data:
            raise _Fail(where, "expected a join policy: {name, roles, kinds, modes}")
        name = _string(data.get("name"), f"{where}.name")
        roles = _string_list(data.get("roles"), f"{where}.roles")
        kinds = _string_list(data.get("kinds"), f"{where}.kinds")
        modes = _string_list(data.get("modes"), f"{where}.modes")
        if not roles:
            raise _Fail(f"{where}.roles", "required: the roles (names or globs) of the session owners it covers")
        for i, role in enumerate(roles):
            if not role or _BAD_NAME.search(role.replace("*", "a")):
                raise _Fail(f"{where}.roles[{i}]", f"invalid role name or glob {json.dumps(role)}")
        if not kinds:
            raise _Fail(f"{where}.kinds", "required: expected a list of session kinds (ssh, k8s or *)")
        for i, kind in enumerate(kinds):
            if kind != WILDCARD and kind not in SESSION_KINDS:
                raise _Fail(f"{where}.kinds[{i}]", f"unknown session kind {json.dumps(kind)}"
                            + _suggest(kind, (*SESSION_KINDS, WILDCARD)))
        if not modes:
            raise _Fail(f"{where}.modes", "required: expected a list of modes (observer, peer, moderator)")
        for i, mode in enumerate(modes):
            if mode not in SESSION_MODES:
                raise _Fail(f"{where}.modes[{i}]", f"unknown mode {json.dumps(mode)}" + _suggest(mode, SESSION_MODES))
        out.append(JoinPolicy(name, tuple(dict.fromkeys(roles)), tuple(dict.fromkeys(kinds)),
                              tuple(dict.fromkeys(modes))))
    return out


def _role_patterns(value: Any, path: str) -> tuple[str, ...]:
    """Role names, globs or ``^regex$`` (``request.roles``, ``review_requests.roles``)."""
    names = _string_list(value, path)
    for index, name in enumerate(names):
        where = f"{path}[{index}]"
        if name.startswith("^") and name.endswith("$"):
            try:
                re.compile(name)
            except (re.error, OverflowError, RecursionError) as exc:
                reason = exc if isinstance(exc, re.error | OverflowError) else "nested too deeply"
                raise _Fail(where, f"invalid regular expression {json.dumps(name)}: {reason}") from None
        elif not name or _BAD_NAME.search(name):
            raise _Fail(where, f"invalid role name or glob {json.dumps(name)}")
    return tuple(dict.fromkeys(names))


def _count(value: Any, path: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise _Fail(path, f"expected a whole number from 0 to 100, got {show(value)}")
    return value


def _thresholds(value: Any, path: str) -> tuple[Threshold, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Fail(path, f"expected a list of thresholds ({{name, approve, deny}}), got {show(value)}")
    out = []
    for index, raw in enumerate(value):
        where = f"{path}[{index}]"
        data = _mapping(raw, where, ("name", "approve", "deny", "filter"))
        if data.get("filter"):
            raise _Fail(f"{where}.filter", "threshold filters are not supported")
        approve = _count(data.get("approve"), f"{where}.approve", 1)
        deny = _count(data.get("deny"), f"{where}.deny", 1)
        if approve == 0 and deny == 0:
            raise _Fail(where, "a threshold needs approve or deny of at least 1")
        out.append(Threshold(_string(data.get("name"), f"{where}.name") or "default", approve or 1, deny or 1))
    return tuple(out)


def _request(value: Any, path: str, allow: bool) -> RequestConditions:
    data = _mapping(value, path, ("roles", "thresholds", "suggested_reviewers", "max_duration"))
    if not allow:
        for key in ("thresholds", "suggested_reviewers", "max_duration"):
            if key in data:
                raise _Fail(_join(path, key), "read under allow only (as Teleport)")
    reviewers = _string_list(data.get("suggested_reviewers"), _join(path, "suggested_reviewers"))
    for index, reviewer in enumerate(reviewers):
        if not reviewer or _BAD_NAME.search(reviewer):
            raise _Fail(f"{_join(path, 'suggested_reviewers')}[{index}]", f"invalid user name {json.dumps(reviewer)}")
    max_duration = None
    raw = data.get("max_duration")
    if raw is not None:
        where = _join(path, "max_duration")
        try:
            max_duration = parse_duration(raw) if isinstance(raw, str) else None
        except ValueError:
            max_duration = None
        if max_duration is None:
            raise _Fail(where, f'expected a duration like "8h" or "72h0m0s", got {show(raw)}')
        if max_duration <= dt.timedelta(0):
            raise _Fail(where, f"must be positive, got {show(raw)}")
        if max_duration > MAX_ACCESS_DURATION:
            raise _Fail(where, f"at most {format_duration(MAX_ACCESS_DURATION)} (14 days), got {show(raw)}")
    return RequestConditions(
        roles=_role_patterns(data.get("roles"), _join(path, "roles")),
        thresholds=_thresholds(data.get("thresholds"), _join(path, "thresholds")),
        suggested_reviewers=tuple(dict.fromkeys(reviewers)),
        max_duration=max_duration,
    )


def _review(value: Any, path: str) -> ReviewConditions:
    data = _mapping(value, path, ("roles",))
    return ReviewConditions(roles=_role_patterns(data.get("roles"), _join(path, "roles")))


def _conditions(value: Any, path: str) -> Conditions:
    data = _mapping(value, path, ("logins", "node_labels", "cluster_labels", "rules", "join_sessions",
                                  "require_session_join", "request", "review_requests"))
    allow = path.split(".")[-1] != "deny"
    logins_path = _join(path, "logins")
    raw_logins = _string_list(data.get("logins"), logins_path)
    logins = [_check_login(v, f"{logins_path}[{i}]") for i, v in enumerate(raw_logins)]
    return Conditions(
        logins=tuple(dict.fromkeys(logins)),
        node_labels=_node_labels(data.get("node_labels"), _join(path, "node_labels")),
        cluster_labels=_node_labels(data.get("cluster_labels"), _join(path, "cluster_labels")),
        rules=tuple(_rules(data.get("rules"), _join(path, "rules"))),
        join_sessions=tuple(_join_sessions(data.get("join_sessions"), _join(path, "join_sessions"))),
        require_session_join=_require_session_join(data.get("require_session_join"),
                                                   _join(path, "require_session_join")),
        request=_request(data.get("request"), _join(path, "request"), allow),
        review_requests=_review(data.get("review_requests"), _join(path, "review_requests")),
    )


def _require_session_join(value: Any, path: str) -> tuple[RequirePolicy, ...]:
    if value is not None and path.split(".")[-2:-1] == ["deny"]:
        raise _Fail(path, "require_session_join is read under allow only (as Teleport)")
    try:
        return parse_require_policies(value, path)
    except BadPolicy as exc:
        raise _Fail(exc.path, exc.message) from None


def _boolean(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "on", "no", "false", "off"):
        return value.lower() in ("yes", "true", "on")
    raise _Fail(path, f"expected true or false, got {show(value)}")


def _options(value: Any, path: str) -> RoleOptions:
    data = _mapping(value, path, ("max_session_ttl", "forward_agent", "port_forwarding", "request_access",
                                  "request_prompt"))
    mode = _string(data.get("request_access"), _join(path, "request_access")) or "optional"
    if mode not in REQUEST_ACCESS_MODES:
        raise _Fail(_join(path, "request_access"), f"unknown mode {json.dumps(mode)}"
                    + _suggest(mode, REQUEST_ACCESS_MODES))
    ttl = DEFAULT_MAX_SESSION_TTL
    raw = data.get("max_session_ttl")
    if raw is not None:
        where = _join(path, "max_session_ttl")
        if not isinstance(raw, str):
            raise _Fail(where, f'expected a duration like "8h" or "30h0m0s", got {show(raw)}')
        try:
            ttl = parse_duration(raw)
        except ValueError:
            raise _Fail(where, f'expected a duration like "8h" or "30h0m0s", got {show(raw)}') from None
        if ttl <= dt.timedelta(0):
            raise _Fail(where, f"must be positive, got {show(raw)}")
    return RoleOptions(
        max_session_ttl=ttl,
        forward_agent=_boolean(data.get("forward_agent"), _join(path, "forward_agent"), False),
        port_forwarding=_boolean(data.get("port_forwarding"), _join(path, "port_forwarding"), True),
        request_access=mode,
        request_prompt=_string(data.get("request_prompt"), _join(path, "request_prompt")),
    )


def _labels(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Fail(path, f"expected a mapping of strings, got {show(value)}")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise _Fail(path, f"label names must be non-empty strings, got {show(key)}")
        if not isinstance(item, str):
            raise _Fail(_join(path, key), f"expected a string, got {show(item)}")
        out[key] = item
    return out


def parse_role(data: Any, source: str = "") -> Role:
    """Validate one role document; :class:`InvalidRole` names the key path and the reason.

    ``source`` (a file name, ``"document 2 of roles.yaml"`` ...) prefixes the message.
    """
    name = ""
    if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
        candidate = data["metadata"].get("name")
        name = candidate if isinstance(candidate, str) else ""
    try:
        top = _mapping(data, "", ("kind", "version", "metadata", "spec"))
        if data is None:
            raise _Fail("", "expected a role, got an empty document")
        kind = top.get("kind")
        if kind is None:
            raise _Fail("kind", 'required: expected "role"')
        if kind != KIND:
            raise _Fail("kind", f'expected "role", got {show(kind)}')
        version = top.get("version")
        choices = ", ".join(f'"{v}"' for v in VERSIONS)
        if version is None:
            raise _Fail("version", f"required: expected one of {choices}")
        if version not in VERSIONS:
            hint = " (v3 roles allowed every node when node_labels was empty; write v5)" if version == "v3" else ""
            raise _Fail("version", f"unsupported version {show(version)}: expected one of {choices}{hint}")
        meta = _mapping(top.get("metadata"), "metadata", ("name", "description", "labels", "namespace"))
        if "metadata" not in top:
            raise _Fail("metadata", "required: expected a mapping with name")
        name = _string(meta.get("name"), "metadata.name", required=True)
        try:
            check_name("role", name)
        except ValueError as exc:
            raise _Fail("metadata.name", str(exc)) from None
        namespace = meta.get("namespace")
        if namespace is not None and namespace != "default":
            raise _Fail("metadata.namespace", f'only "default" is supported, got {show(namespace)}')
        spec = _mapping(top.get("spec"), "spec", ("allow", "deny", "options"))
        return Role(
            name=name,
            version=version,
            description=_string(meta.get("description"), "metadata.description"),
            labels=_labels(meta.get("labels"), "metadata.labels"),
            allow=_conditions(spec.get("allow"), "spec.allow"),
            deny=_conditions(spec.get("deny"), "spec.deny"),
            options=_options(spec.get("options"), "spec.options"),
        )
    except _Fail as exc:
        raise InvalidRole(name, exc.path, exc.message, source) from None


def parse_roles_yaml(text: str, source: str = "") -> list[Role]:
    """Every role of a multi-document YAML file; any invalid document refuses the whole file.

    Empty documents (``---`` at the end) are skipped; a duplicate role name is an error.
    """
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise InvalidRole("", "", f"invalid YAML: {exc}", source) from None
    except RecursionError:
        raise InvalidRole("", "", "invalid YAML: nested too deeply", source) from None
    roles: list[Role] = []
    seen: set[str] = set()
    present = [doc for doc in documents if doc is not None]
    for index, doc in enumerate(present, start=1):
        where = f"document {index}" if len(present) > 1 else ""
        label = f"{source} ({where})" if source and where else (source or where)
        role = parse_role(doc, label)
        if role.name in seen:
            raise InvalidRole(role.name, "metadata.name", "defined twice in the same file", label)
        seen.add(role.name)
        roles.append(role)
    if not roles:
        raise InvalidRole("", "", "no role in the document", source)
    return roles


def _labels_out(labels: Mapping[str, tuple[str, ...]]) -> dict[str, str | list[str]]:
    return {key: values[0] if len(values) == 1 else list(values) for key, values in labels.items()}


def _rule_out(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"resources": list(rule.resources), "verbs": list(rule.verbs)}
    if rule.where:
        out["where"] = rule.where
    return out


def _conditions_out(cond: Conditions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cond.logins:
        out["logins"] = list(cond.logins)
    if cond.node_labels:
        out["node_labels"] = _labels_out(cond.node_labels)
    if cond.cluster_labels:
        out["cluster_labels"] = _labels_out(cond.cluster_labels)
    if cond.rules:
        out["rules"] = [_rule_out(r) for r in cond.rules]
    if cond.join_sessions:
        out["join_sessions"] = [{**({"name": p.name} if p.name else {}), "roles": list(p.roles),
                                 "kinds": list(p.kinds), "modes": list(p.modes)} for p in cond.join_sessions]
    if cond.require_session_join:
        out["require_session_join"] = [p.to_dict() for p in cond.require_session_join]
    request = cond.request
    if request != RequestConditions():
        req: dict[str, Any] = {}
        if request.roles:
            req["roles"] = list(request.roles)
        if request.thresholds:
            req["thresholds"] = [t.to_dict() for t in request.thresholds]
        if request.suggested_reviewers:
            req["suggested_reviewers"] = list(request.suggested_reviewers)
        if request.max_duration is not None:
            req["max_duration"] = format_duration(request.max_duration)
        out["request"] = req
    if cond.review_requests.roles:
        out["review_requests"] = {"roles": list(cond.review_requests.roles)}
    return out


def role_to_dict(role: Role) -> dict[str, Any]:
    """The resource form (``tctl get``, the backend's JSON); :func:`parse_role` reads it back."""
    metadata: dict[str, Any] = {"name": role.name}
    if role.description:
        metadata["description"] = role.description
    if role.labels:
        metadata["labels"] = dict(role.labels)
    return {
        "kind": KIND,
        "version": role.version,
        "metadata": metadata,
        "spec": {
            "allow": _conditions_out(role.allow),
            "deny": _conditions_out(role.deny),
            "options": {
                "max_session_ttl": format_duration(role.options.max_session_ttl),
                "forward_agent": role.options.forward_agent,
                "port_forwarding": role.options.port_forwarding,
                **({"request_access": role.options.request_access}
                   if role.options.request_access != "optional" else {}),
                **({"request_prompt": role.options.request_prompt} if role.options.request_prompt else {}),
            },
        },
    }


# -- built-in roles --------------------------------------------------------------------------------

EDITOR_RESOURCES = (
    "role",
    "user",
    "token",
    "user_token",
    "node",
    "cert_authority",
    "cluster_name",
    "cluster_auth_preference",
    "auth_server",
    "proxy",
    "lock",
    "access_request",
    "trusted_cluster",
    "remote_cluster",
)


#: the preset ``access`` role's rule on sessions: the user's own (Teleport's)
OWN_SESSIONS = "contains(session.participants, user.metadata.name)"


def builtin_roles() -> list[Role]:
    """Teleport's preset roles, created at first start (:meth:`RoleStore.ensure_builtin`).

    * ``access``: the user's own logins (``{{internal.logins}}``) on every node, listing and
      reading nodes, listing and playing the sessions the user took part in (Teleport's
      ``where: contains(session.participants, user.metadata.name)``), agent and port forwarding.
    * ``editor``: every verb on the cluster's configuration resources (roles, users, tokens,
      nodes, CAs ...), no logins, no audit events or recordings.
    * ``auditor``: list and read audit events and session recordings, list live sessions.
    """
    access = Role(
        name="access",
        description="Access cluster resources",
        allow=Conditions(
            logins=("{{internal.logins}}",),
            node_labels={WILDCARD: (WILDCARD,)},
            rules=(Rule(("node",), ("list", "read")), Rule(("session",), ("list", "read"), OWN_SESSIONS)),
        ),
        options=RoleOptions(forward_agent=True, port_forwarding=True),
    )
    editor = Role(
        name="editor",
        description="Edit cluster configuration",
        allow=Conditions(rules=(Rule(EDITOR_RESOURCES, VERBS),)),
        options=RoleOptions(forward_agent=True, port_forwarding=True),
    )
    auditor = Role(
        name="auditor",
        description="Review cluster events and replay sessions",
        # live sessions too, without joining them (Teleport's RFD 82 preset)
        allow=Conditions(rules=(Rule(("event", "session"), ("list", "read")),
                                Rule(("session_tracker",), ("list", "read")))),
    )
    return [access, editor, auditor]


def superseded_presets() -> dict[str, Role]:
    """Preset roles as earlier releases created them, by name: a cluster still holding one unedited
    gets the current preset at start (:meth:`teleport_auth.rolestore.RoleStore.ensure_builtin`).
    The ``access`` role before it let users list and play their own sessions; the ``auditor`` role
    before it listed live sessions (``session_tracker``)."""
    presets = {role.name: role for role in builtin_roles()}
    access, auditor = presets["access"], presets["auditor"]
    rules = tuple(rule for rule in access.allow.rules if rule.where != OWN_SESSIONS)
    watching = tuple(rule for rule in auditor.allow.rules if "session_tracker" not in rule.resources)
    editor = presets["editor"]
    trustless = tuple(Rule(tuple(k for k in rule.resources if k not in ("trusted_cluster", "remote_cluster")),
                           rule.verbs, rule.where) for rule in editor.allow.rules)
    return {"access": attrs.evolve(access, allow=attrs.evolve(access.allow, rules=rules)),
            "auditor": attrs.evolve(auditor, allow=attrs.evolve(auditor.allow, rules=watching)),
            "editor": attrs.evolve(editor, allow=attrs.evolve(editor.allow, rules=trustless))}


# -- evaluation ------------------------------------------------------------------------------------


def expand_logins(logins: Iterable[str], traits: Mapping[str, Iterable[str]]) -> list[str]:
    """Expand ``{{internal.x}}`` / ``{{external.x}}`` from ``traits``; invalid results are dropped."""
    out: list[str] = []
    for login in logins:
        match = _TEMPLATE.match(login) if "{{" in login else None
        if match is None:
            candidates: Iterable[str] = (login,)
        else:
            candidates = (match["prefix"] + value + match["suffix"] for value in traits.get(match["trait"], ()))
        out.extend(c for c in candidates if _valid_login(c) and c not in out)
    return out


@functools.lru_cache(maxsize=4096)  # role names, in the reason of every decision (one per item of a listing)
def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _names(roles: Sequence[Role]) -> str:
    return ", ".join(r.name for r in roles) if roles else "no roles"


class RoleSet:
    """The roles of one user with their traits: what the user may do. Deny wins; nothing by default."""

    def __init__(self, roles: Iterable[Role], traits: Mapping[str, Iterable[str]] | None = None) -> None:
        self.roles: tuple[Role, ...] = tuple(roles)
        self.traits: Mapping[str, tuple[str, ...]] = MappingProxyType({k: tuple(v) for k, v in (traits or {}).items()})
        self._allow_logins = [expand_logins(r.allow.logins, self.traits) for r in self.roles]
        self._deny_logins = [expand_logins(r.deny.logins, self.traits) for r in self.roles]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles)

    def _denying(self, login: str, node_labels: Mapping[str, str]) -> str | None:
        for role, denied in zip(self.roles, self._deny_logins, strict=True):
            if login in denied:
                return f"role {_quote(role.name)} denies login {_quote(login)}"
            if role.deny.matches_node(node_labels):
                return f"role {_quote(role.name)} denies access to nodes matching its deny node_labels"
        return None

    def check_login(self, login: str, node_labels: Mapping[str, str]) -> Decision:
        """May the user SSH as ``login`` to a node with ``node_labels``?"""
        if not _valid_login(login):
            return Decision.deny(f"invalid login {_quote(login)}")
        denied = self._denying(login, node_labels)
        if denied:
            return Decision.deny(denied)
        for role, allowed in zip(self.roles, self._allow_logins, strict=True):
            if login in allowed and role.allow.matches_node(node_labels):
                return Decision.allow(f"role {_quote(role.name)} allows login {_quote(login)} on this node")
        if not any(login in allowed for allowed in self._allow_logins):
            return Decision.deny(f"no role allows login {_quote(login)} ({_names(self.roles)})")
        return Decision.deny(
            f"no role that allows login {_quote(login)} matches the node's labels ({_names(self.roles)})"
        )

    def node_visible(self, node_labels: Mapping[str, str]) -> bool:
        """Whether the node shows in listings: some role's allow labels match and no deny labels do."""
        if any(role.deny.matches_node(node_labels) for role in self.roles):
            return False
        return any(role.allow.matches_node(node_labels) for role in self.roles)

    def cluster_visible(self, cluster_labels: Mapping[str, str]) -> bool:
        """Whether a leaf cluster (its ``remote_cluster`` labels) shows to the user: some role's allow
        ``cluster_labels`` match and no deny ones do. Visibility only: the leaf's role map grants access."""
        if any(role.deny.matches_cluster(cluster_labels) for role in self.roles):
            return False
        return any(role.allow.matches_cluster(cluster_labels) for role in self.roles)

    def logins_for(self, node_labels: Mapping[str, str]) -> list[str]:
        """The logins the user may use on a node with these labels."""
        if any(role.deny.matches_node(node_labels) for role in self.roles):
            return []
        denied = {login for logins in self._deny_logins for login in logins}
        out: list[str] = []
        for role, allowed in zip(self.roles, self._allow_logins, strict=True):
            if role.allow.matches_node(node_labels):
                out.extend(login for login in allowed if login not in denied and login not in out)
        return out

    @property
    def all_logins(self) -> list[str]:
        """Every allowed login, less the denied ones: the SSH certificate's principals."""
        denied = {login for logins in self._deny_logins for login in logins}
        out: list[str] = []
        for allowed in self._allow_logins:
            out.extend(login for login in allowed if login not in denied and login not in out)
        return out

    def rules_read_items(self, kind: str, verb: str) -> bool:
        """Whether a ``where`` rule of the roles names ``verb`` on ``kind``: only then can
        :meth:`check_rule` answer one item of a listing otherwise than another."""
        return any(rule.predicate is not None for role in self.roles
                   for rule in (*role.deny.rules_for(kind, verb), *role.allow.rules_for(kind, verb)))

    def check_rule(self, kind: str, verb: str, env: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
                   *, filtered: bool = False) -> Decision:
        """May the user ``verb`` resources of ``kind``? Deny rules win.

        ``env`` (:func:`teleport_core.policy.predicate.environment`): the user and the item that
        rules with ``where`` are evaluated against (none: every field empty), or a function that
        builds it, called only if a ``where`` is evaluated (a listing checks every item: most roles
        have no ``where``). ``filtered``: the caller checks each item of a listing afterwards, so
        ``where`` deny rules wait for the items and ``where`` allow rules allow the call."""
        built: list[Mapping[str, Any]] = []

        def fields() -> Mapping[str, Any]:
            if not built:
                built.append(env() if callable(env) else env if env is not None
                             else environment(roles=self.names, traits=self.traits))
            return built[0]

        for role in self.roles:
            for rule in role.deny.rules_for(kind, verb):
                if rule.predicate is None:
                    return Decision.deny(f"role {_quote(role.name)} denies {verb} on {kind}")
                if not filtered and rule.predicate(fields()):
                    return Decision.deny(f"role {_quote(role.name)} denies {verb} on {kind} where {rule.where}")
        conditional: list[tuple[Role, Rule]] = []
        for role in self.roles:
            for rule in role.allow.rules_for(kind, verb):
                if rule.predicate is None:
                    return Decision.allow(f"role {_quote(role.name)} allows {verb} on {kind}")
                if filtered:
                    return Decision.allow(f"role {_quote(role.name)} allows {verb} on {kind} where {rule.where} "
                                          "(each item is checked)")
                if rule.predicate(fields()):
                    return Decision.allow(f"role {_quote(role.name)} allows {verb} on {kind} where {rule.where}")
                conditional.append((role, rule))
        reason = f"no role allows {verb} on {kind} ({_names(self.roles)})"
        if conditional:
            only = "; ".join(f"role {_quote(role.name)} only where {rule.where}" for role, rule in conditional)
            reason += f": {only}"
        return Decision.deny(reason)

    @property
    def max_session_ttl(self) -> dt.timedelta:
        """The smallest ``max_session_ttl`` of the roles (the 30h default with no roles)."""
        return min((r.options.max_session_ttl for r in self.roles), default=DEFAULT_MAX_SESSION_TTL)

    @property
    def forward_agent(self) -> bool:
        return any(r.options.forward_agent for r in self.roles)

    @property
    def port_forwarding(self) -> bool:
        return any(r.options.port_forwarding for r in self.roles)
