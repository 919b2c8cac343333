"""Roles in cluster state: ``/roles/<name>`` -> the role as JSON (:func:`role_to_dict`)."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable

from teleport_core.errors import AlreadyExists, CompareFailed, NotFound
from teleport_core.policy.roles import (
    InvalidRole,
    Role,
    _quote,
    builtin_roles,
    check_name,
    parse_role,
    role_to_dict,
    superseded_presets,
)
from teleport_core.state.backend import Backend, Item, range_end

ROLES_PREFIX = b"/roles/"


def role_key(name: str) -> bytes:
    return ROLES_PREFIX + check_name("role", name).encode()


def _decode_role(item: Item) -> Role:
    try:
        data = json.loads(item.value)
    except ValueError:
        raise InvalidRole("", "", "stored role is not valid JSON", item.key.decode(errors="replace")) from None
    return parse_role(data, f"backend key {item.key.decode(errors='replace')}")


def _encode_role(role: Role) -> bytes:
    return json.dumps(role_to_dict(role), separators=(",", ":"), sort_keys=True).encode()


class RoleStore:
    """Roles in the backend under ``/roles/<name>``. Listeners hear of every local write."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every write through this store (cache invalidation)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    async def create(self, role: Role) -> Role:
        """``AlreadyExists`` when a role of that name exists."""
        try:
            await self.backend.create(Item(role_key(role.name), _encode_role(role)))
        except AlreadyExists:
            raise AlreadyExists(f"role {_quote(role.name)} already exists") from None
        finally:
            self._changed()
        return role

    async def upsert(self, role: Role) -> bool:
        """Create or replace; True when it replaced an existing role."""
        item = Item(role_key(role.name), _encode_role(role))
        try:
            await self.backend.create(item)
            return False
        except AlreadyExists:
            await self.backend.put(item)
            return True
        finally:
            self._changed()

    async def get(self, name: str) -> Role:
        try:
            return _decode_role(await self.backend.get(role_key(name)))
        except NotFound:
            raise NotFound(f"role {_quote(name)} not found") from None

    async def list(self) -> list[Role]:
        """Every role, by name (one range read)."""
        items = await self.backend.get_range(ROLES_PREFIX, range_end(ROLES_PREFIX))
        return [_decode_role(item) for item in items]

    async def _upgrade(self, role: Role, earlier: Role) -> bool:
        """Replace the stored ``role`` by the current preset when it is still ``earlier``, unedited."""
        try:
            item = await self.backend.get(role_key(role.name))
            if _decode_role(item) != earlier:
                return False
            await self.backend.conditional_update(Item(item.key, _encode_role(role), revision=item.revision))
        except (NotFound, CompareFailed, InvalidRole):
            return False
        return True

    async def delete(self, name: str) -> None:
        try:
            await self.backend.delete(role_key(name))
        except NotFound:
            raise NotFound(f"role {_quote(name)} not found") from None
        finally:
            self._changed()

    async def ensure_builtin(self) -> builtins.list[str]:
        """Create the built-in roles that do not exist yet; their names. A stored preset is never
        overwritten unless it is exactly an earlier release's (:func:`superseded_presets`): that one
        is brought up to date (compare-and-swap, so an edit made meanwhile wins)."""
        created = []
        earlier = superseded_presets()
        for role in builtin_roles():
            try:
                await self.backend.create(Item(role_key(role.name), _encode_role(role)))
                created.append(role.name)
            except AlreadyExists:
                if role.name in earlier and await self._upgrade(role, earlier[role.name]):
                    created.append(role.name)
        if created:
            self._changed()
        return created
