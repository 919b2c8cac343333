"""Who may join (and so see) a live session, in which modes: roles' ``join_sessions`` (Teleport's RFD 43).

A joiner may join a session of ``kind`` owned by a user whose roles are ``owner_roles`` in a
mode when one of the joiner's roles has an ``allow.join_sessions`` policy that

* names the kind (or ``*``) in ``kinds``,
* has a glob in ``roles`` (``*`` any run of characters) matching one of the owner's role names,
* lists the mode in ``modes``;

and no ``deny.join_sessions`` policy of the joiner's roles matches the same kind and owner roles
with that mode (deny wins; Teleport reads ``join_sessions`` only under ``allow``). The owner of a
session may always join it, in every mode (as Teleport). Nothing else allows: deny by default
(Teleport lets a user whose roles are all older than v5 join any SSH session as a peer; here a
v4 role grants nothing more than it says).

The node calls :func:`may_join` when someone joins; auth's tracker listing calls
:func:`join_modes` to show a user the sessions they may join.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from teleport_core.policy.access import Decision
from teleport_core.policy.roles import SESSION_MODES, WILDCARD, JoinPolicy, Role, RoleSet


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def policy_matches(policy: JoinPolicy, kind: str, owner_roles: Iterable[str]) -> bool:
    """Whether ``policy`` covers sessions of ``kind`` whose owner holds ``owner_roles``."""
    if kind not in policy.kinds and WILDCARD not in policy.kinds:
        return False
    names = list(owner_roles)
    return any(_glob(pattern).fullmatch(name) for pattern in policy.roles for name in names)


def _roles(joiner: RoleSet | Sequence[Role]) -> Sequence[Role]:
    return joiner.roles if isinstance(joiner, RoleSet) else joiner


def join_modes(joiner: RoleSet | Sequence[Role], kind: str, owner_roles: Iterable[str], *,
               user: str = "", owner: str = "") -> tuple[str, ...]:
    """The modes (in :data:`SESSION_MODES` order) in which ``joiner`` may join the session;
    empty: not at all. ``user`` == ``owner`` (both non-empty): every mode."""
    if user and user == owner:
        return SESSION_MODES
    owners = tuple(owner_roles)
    roles = _roles(joiner)
    allowed = {mode for role in roles for policy in role.allow.join_sessions
               if policy_matches(policy, kind, owners) for mode in policy.modes}
    denied = {mode for role in roles for policy in role.deny.join_sessions
              if policy_matches(policy, kind, owners) for mode in policy.modes}
    return tuple(mode for mode in SESSION_MODES if mode in allowed and mode not in denied)


def may_join(joiner: RoleSet | Sequence[Role], kind: str, owner_roles: Iterable[str], mode: str, *,
             user: str = "", owner: str = "") -> Decision:
    """May ``joiner`` (user ``user``) join a ``kind`` session of ``owner`` (holding ``owner_roles``) in ``mode``?"""
    if mode not in SESSION_MODES:
        return Decision.deny(f"unknown mode {mode!r}: expected one of {', '.join(SESSION_MODES)}")
    if user and user == owner:
        return Decision.allow(f"{user} owns the session")
    owners = tuple(owner_roles)
    roles = _roles(joiner)
    for role in roles:
        for policy in role.deny.join_sessions:
            if mode in policy.modes and policy_matches(policy, kind, owners):
                return Decision.deny(f'role "{role.name}" denies joining this session as {mode}')
    for role in roles:
        for policy in role.allow.join_sessions:
            if mode in policy.modes and policy_matches(policy, kind, owners):
                label = f' (policy "{policy.name}")' if policy.name else ""
                return Decision.allow(f'role "{role.name}" allows joining this session as {mode}{label}')
    names = ", ".join(r.name for r in roles) or "no roles"
    return Decision.deny(f"no role allows joining a {kind} session of a user with roles "
                         f"{', '.join(owners) or '(none)'} as {mode} ({names})")
