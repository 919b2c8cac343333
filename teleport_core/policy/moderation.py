"""Moderated sessions: roles' ``allow.require_session_join`` (Teleport's RFD 43).

::

    allow:
      require_session_join:
        - name: auditor oversight
          filter: 'contains(user.roles, "auditor")'
          kinds: [ssh]
          modes: [moderator]
          count: 1
          on_leave: terminate        # or pause

A session of a user holding such a role starts in state ``pending``: the node starts no process
and takes no input until the policies are fulfilled, then it runs. Evaluation (as Teleport's
``FulfilledFor``):

* each of the owner's roles with a policy for the session's kind is a *policy set*; every set
  must be fulfilled, and a set is fulfilled when one of its policies is;
* a policy is fulfilled when at least ``count`` participants other than the owner are in one of
  its ``modes`` and match its ``filter`` (the predicate language of
  :mod:`teleport_core.policy.predicate`, about the participant: ``user.name``, ``user.roles``,
  ``user.traits["..."]``);
* when participants leave and the sets are no longer fulfilled, the session is terminated if
  any applicable policy says ``on_leave: terminate`` (Teleport's default), else paused (input
  and output held, state ``pending``) until enough participants are back.

This module parses the field (:func:`parse_policies`, called by :mod:`teleport_core.policy.roles`,
which it must not import) and evaluates it (:func:`fulfilled`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.policy.predicate import FILTER_FIELDS, Predicate, PredicateError, environment
from teleport_core.policy.predicate import parse as parse_predicate
from teleport_core.suggest import did_you_mean

MODES = ("observer", "peer", "moderator")
KINDS = ("ssh", "k8s")
ON_LEAVE = ("terminate", "pause")
KEYS = ("name", "filter", "kinds", "modes", "count", "on_leave")
MAX_COUNT = 1000


class BadPolicy(ValueError):
    """An invalid ``require_session_join`` entry: ``path`` and ``message`` (roles.py reports both)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _parsed(policy: RequirePolicy) -> Predicate | None:
    return parse_predicate(policy.filter, FILTER_FIELDS) if policy.filter else None


@attrs.frozen
class RequirePolicy:
    """One ``require_session_join`` entry (validated by :func:`parse_policies`)."""

    name: str
    filter: str
    kinds: tuple[str, ...]
    modes: tuple[str, ...]
    count: int = 1
    on_leave: str = "terminate"
    predicate: Predicate | None = attrs.field(
        init=False, repr=False, eq=False, default=attrs.Factory(_parsed, takes_self=True))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "filter": self.filter, "kinds": list(self.kinds), "modes": list(self.modes),
                "count": self.count, "on_leave": self.on_leave}


@attrs.frozen
class Participant:
    """Someone in a session, as the policies see them."""

    user: str
    roles: tuple[str, ...]
    mode: str
    traits: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)


def _strings(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadPolicy(path, f"expected a list of strings, got {json.dumps(value, default=str)}")
    return list(value)


def _choices(value: Any, where: str, valid: Sequence[str], what: str, required: str) -> list[str]:
    """A required, non-empty list whose items are all in ``valid``."""
    items = _strings(value, where)
    if not items:
        raise BadPolicy(where, f"required: {required}")
    for i, item in enumerate(items):
        if item not in valid:
            raise BadPolicy(f"{where}[{i}]", f"unknown {what} {json.dumps(item)}"
                            + did_you_mean(item, list(valid)).replace("valid keys", f"valid {what}s"))
    return items


def _one(raw: Any, where: str) -> RequirePolicy:
    if not isinstance(raw, Mapping) or not raw:
        raise BadPolicy(where, "expected a policy: {name, filter, kinds, modes, count, on_leave}")
    for key in raw:
        if key not in KEYS:
            raise BadPolicy(f"{where}.{key}", "unknown key" + did_you_mean(str(key), list(KEYS)))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadPolicy(f"{where}.name", "required: a name for the policy (shown to the session's participants)")
    text = raw.get("filter", "")
    if not isinstance(text, str):
        raise BadPolicy(f"{where}.filter", f'expected a predicate in a string such as \'contains(user.roles, '
                                           f'"auditor")\', got {json.dumps(text, default=str)}')
    if text:
        try:
            parse_predicate(text, FILTER_FIELDS)
        except PredicateError as exc:
            raise BadPolicy(f"{where}.filter", str(exc)) from None
    kinds = _choices(raw.get("kinds"), f"{where}.kinds", KINDS, "session kind",
                     "the session kinds it applies to (ssh, k8s)")
    modes = _choices(raw.get("modes"), f"{where}.modes", MODES, "mode",
                     "the modes participants must join in (observer, peer, moderator)")
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise BadPolicy(f"{where}.count", f"expected a whole number from 1 to {MAX_COUNT}, "
                                          f"got {json.dumps(count, default=str)}")
    on_leave = raw.get("on_leave") or "terminate"
    if on_leave not in ON_LEAVE:
        raise BadPolicy(f"{where}.on_leave", f"expected terminate or pause, got {json.dumps(on_leave, default=str)}")
    return RequirePolicy(name.strip(), text, tuple(dict.fromkeys(kinds)), tuple(dict.fromkeys(modes)), count,
                         str(on_leave))


def parse_policies(value: Any, path: str) -> tuple[RequirePolicy, ...]:
    """``require_session_join`` (a list of policies; absent: none); :class:`BadPolicy` says what is wrong."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadPolicy(path, "expected a list of policies ({name, filter, kinds, modes, count, on_leave}), "
                              f"got {json.dumps(value, default=str)}")
    return tuple(_one(raw, f"{path}[{i}]") for i, raw in enumerate(value))


def policy_sets(owner_roles: Iterable[Any], kind: str = "ssh") -> list[tuple[str, tuple[RequirePolicy, ...]]]:
    """(role name, its policies for ``kind``) for each of the owner's roles (``Role`` objects) that has some."""
    out = []
    for role in owner_roles:
        policies = tuple(p for p in role.allow.require_session_join if kind in p.kinds)
        if policies:
            out.append((role.name, policies))
    return out


def _matches(policy: RequirePolicy, who: Participant) -> bool:
    if who.mode not in policy.modes:
        return False
    if policy.predicate is None:
        return True
    env = environment(user=who.user, roles=who.roles, traits=who.traits)
    return policy.predicate(env)


@attrs.frozen
class Verdict:
    """Whether the session may run, what to do when it no longer may, and what is missing."""

    fulfilled: bool
    on_leave: str  # "terminate" or "pause"
    missing: tuple[str, ...] = ()  # one line per unfulfilled policy set


def fulfilled(sets: Sequence[tuple[str, tuple[RequirePolicy, ...]]], participants: Iterable[Participant],
              owner: str = "") -> Verdict:
    """May a session whose owner's policy sets are ``sets`` run with ``participants`` (the owner excluded)?"""
    if not sets:
        return Verdict(True, "none")
    others = [p for p in participants if p.user != owner]
    terminate = any(p.on_leave == "terminate" for _, policies in sets for p in policies)
    missing = []
    for role, policies in sets:
        if any(sum(1 for who in others if _matches(policy, who)) >= policy.count for policy in policies):
            continue
        wants = " or ".join(f"{p.count} {'/'.join(p.modes)} matching {p.filter or 'anyone'} (policy {p.name!r})"
                            for p in policies)
        missing.append(f"role {role!r} requires {wants}")
    return Verdict(not missing, "terminate" if terminate else "pause", tuple(missing))
