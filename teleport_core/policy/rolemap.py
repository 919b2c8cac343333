"""Role mapping across a trust: a root cluster's roles, as a leaf cluster grants them.

A leaf's ``trusted_cluster`` resource carries ``role_map``, a list of ``{remote, local}`` entries::

    role_map:
      - {remote: admin, local: [access, editor]}     # a role name
      - {remote: "dev-*", local: [access]}           # a glob ('*' is any text)
      - {remote: "^team-(.*)$", local: ["$1-access"]} # a regular expression; $1.. its groups

A root user's roles are mapped through every entry whose ``remote`` matches one of them (the
whole role name); the result is the union of the ``local`` roles. A role no entry matches grants
nothing: an empty ``role_map`` maps every user to no role (Teleport's behaviour). A ``local``
value that expands to an empty string is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.errors import ConfigError

#: the longest remote pattern or local role name taken (a role name's limit is the resource name limit)
MAX_ENTRY = 512
#: the most entries one role map may have
MAX_ENTRIES = 256
_GROUP_REF = re.compile(r"\$(\d+)|\$\{(\d+)\}")
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9_.@:$*{}-]+$")


class InvalidRoleMap(ConfigError):
    """A role map that cannot be used; ``path`` names the field (``spec.role_map[0].remote``)."""


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _pattern(remote: str) -> re.Pattern[str]:
    """``^...$`` as a regular expression, else a glob where ``*`` is any text (anchored)."""
    if remote.startswith("^") and remote.endswith("$"):
        return re.compile(remote)
    return re.compile(".*".join(re.escape(part) for part in remote.split("*")), re.DOTALL)


@attrs.frozen
class RoleMapping:
    """One entry: the root roles ``remote`` matches become the ``local`` roles."""

    remote: str
    local: tuple[str, ...]
    _compiled: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False,
                                             default=attrs.Factory(lambda self: _pattern(self.remote), True))

    def map(self, role: str) -> list[str]:
        """The local roles ``role`` maps to through this entry (none when it does not match)."""
        match = self._compiled.fullmatch(role)
        if match is None:
            return []
        out = []
        for local in self.local:
            try:
                value = _GROUP_REF.sub(lambda m: match.group(int(m.group(1) or m.group(2))) or "", local)
            except IndexError:  # a group the pattern does not have (validation refuses it)
                continue
            if value:
                out.append(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"remote": self.remote, "local": list(self.local)}


RoleMap = tuple[RoleMapping, ...]


def parse_role_map(value: Any, path: str = "role_map") -> RoleMap:
    """A role map from its resource form (a list of ``{remote, local}``); :class:`InvalidRoleMap` naming
    the field otherwise. ``None`` is an empty map."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRoleMap(path, f"expected a list of {{remote, local}} entries, got {_show(value)}")
    if len(value) > MAX_ENTRIES:
        raise InvalidRoleMap(path, f"at most {MAX_ENTRIES} entries, got {len(value)}")
    return tuple(_entry(item, f"{path}[{index}]") for index, item in enumerate(value))


def _entry(value: Any, path: str) -> RoleMapping:
    if not isinstance(value, Mapping):
        raise InvalidRoleMap(path, f"expected a mapping with remote and local, got {_show(value)}")
    for key in value:
        if key not in ("remote", "local"):
            raise InvalidRoleMap(f"{path}.{key}" if isinstance(key, str) else path,
                                 f"unknown key {_show(key)}: expected remote and local")
    remote = value.get("remote")
    if not isinstance(remote, str) or not remote:
        raise InvalidRoleMap(f"{path}.remote", f"required: a role name, glob or ^regex$, got {_show(remote)}")
    if len(remote) > MAX_ENTRY or any(ord(ch) < 32 or ord(ch) == 127 for ch in remote):
        raise InvalidRoleMap(f"{path}.remote", f"expected at most {MAX_ENTRY} printable characters")
    groups = 0
    if remote.startswith("^") and remote.endswith("$"):
        try:
            groups = re.compile(remote).groups
        except re.error as exc:
            raise InvalidRoleMap(f"{path}.remote", f"invalid regular expression {_show(remote)}: {exc}") from None
    local = value.get("local")
    if isinstance(local, str):
        local = [local]
    if not isinstance(local, list) or not local:
        raise InvalidRoleMap(f"{path}.local", f"required: a list of local role names, got {_show(local)}")
    roles: list[str] = []
    for index, item in enumerate(local):
        where = f"{path}.local[{index}]"
        if not isinstance(item, str) or not item:
            raise InvalidRoleMap(where, f"expected a role name, got {_show(item)}")
        if len(item) > MAX_ENTRY or not _LOCAL_NAME.fullmatch(item):
            raise InvalidRoleMap(where, f"invalid role name {_show(item)}")
        for ref in _GROUP_REF.finditer(item):
            number = int(ref.group(1) or ref.group(2))
            if number > groups:
                raise InvalidRoleMap(where, f"${number} refers to a group {_show(remote)} does not have")
        if item not in roles:
            roles.append(item)
    return RoleMapping(remote, tuple(roles))


def role_map_to_list(role_map: Sequence[RoleMapping]) -> list[dict[str, Any]]:
    return [entry.to_dict() for entry in role_map]


def map_roles(role_map: Sequence[RoleMapping], remote_roles: Iterable[str]) -> tuple[str, ...]:
    """The leaf roles a root user with ``remote_roles`` gets (in order, no duplicates); an unmapped
    role grants nothing, so an empty result means no access at all."""
    out: dict[str, None] = {}
    for role in remote_roles:
        for entry in role_map:
            for local in entry.map(role):
                out.setdefault(local, None)
    return tuple(out)
