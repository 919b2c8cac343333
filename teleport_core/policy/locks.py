"""Locks, as in Teleport: a ``lock`` resource that refuses an identity everywhere while in force.

A lock targets one user, role, login, node (host UUID) or access request (the certificates
carrying that request's roles: auth locks an approved request it deletes). While it has not expired, every
component refuses an access it matches (auth API, proxy, node SSH) and ends the live sessions
it matches, with :func:`lock_message` shown to the user and written to the audit log.

The resource shape is Teleport's::

    kind: lock
    version: v2
    metadata: {name: <uuid>, expires: <RFC 3339>}
    spec: {target: {user: joe}, message: "...", created_at: ..., created_by: ...}

``LockTarget.issued_before`` is ours (Teleport has no such field): a lock with it matches only
certificates issued before that moment. Auth creates such a lock when a user is deleted, so the
deleted user's outstanding certificates stop working at once while a user re-created later
under the same name logs in normally.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.errors import ConfigError

KIND = "lock"
VERSION = "v2"
#: target fields, in the order they are shown
TARGET_KINDS = ("user", "role", "login", "node", "access_request")
_TARGET_LABELS = {"user": "User", "role": "Role", "login": "Login", "node": "Node", "access_request": "AccessRequest"}
#: an SSH certificate is back-dated this much for clock skew (its issue time is valid_after + this)
CERT_BACKDATE = dt.timedelta(minutes=1)


class InvalidLock(ConfigError):
    """A lock document or target that is not valid; ``str()`` names the key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.args = (f"lock: {path}: {message}" if path else f"lock: {message}",)


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("lock times must be timezone-aware")
    return value.astimezone(dt.UTC)


def _seconds(value: dt.datetime) -> dt.datetime:
    """Whole seconds (the resource's times carry no more), rounded down."""
    return _utc(value).replace(microsecond=0)


def _optional_seconds(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _seconds(value)


def _expiry(value: dt.datetime | None) -> dt.datetime | None:
    """Whole seconds, rounded up: a lock never ends earlier than asked."""
    if value is None:
        return None
    value = _utc(value)
    return _seconds(value) + dt.timedelta(seconds=1) if value.microsecond else value


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC (``2026-01-02T03:04:05Z``), as Teleport writes resource times."""
    return _utc(when).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str, path: str) -> dt.datetime:
    """An RFC 3339 time (``Z`` or an offset required); :class:`InvalidLock` naming ``path`` otherwise."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidLock(path, f"expected an RFC 3339 time like 2026-01-02T15:04:05Z, got {json.dumps(text)}") \
            from None
    if value.tzinfo is None:
        raise InvalidLock(path, f"expected a time with a zone (Z or +01:00), got {json.dumps(text)}")
    return value.astimezone(dt.UTC)


@attrs.frozen
class LockTarget:
    """What a lock refuses: exactly one of ``user``, ``role``, ``login``, ``node`` (host UUID),
    ``access_request`` (an access request ID a certificate carries).

    ``issued_before``: match only certificates issued before this moment (deleted users).
    """

    user: str = ""
    role: str = ""
    login: str = ""
    node: str = ""
    access_request: str = ""
    issued_before: dt.datetime | None = attrs.field(default=None, converter=_optional_seconds)

    def __attrs_post_init__(self) -> None:
        given = [kind for kind in TARGET_KINDS if getattr(self, kind)]
        if not given:
            raise InvalidLock("spec.target", "a lock needs a target: one of user, role, login, node or access_request")
        if len(given) > 1:
            raise InvalidLock("spec.target", f"a lock targets one thing, got {' and '.join(given)}")

    @property
    def kind(self) -> str:
        return next(kind for kind in TARGET_KINDS if getattr(self, kind))

    @property
    def value(self) -> str:
        return str(getattr(self, self.kind))

    def __str__(self) -> str:
        return f"{_TARGET_LABELS[self.kind]}:{json.dumps(self.value, ensure_ascii=False)}"

    def to_dict(self) -> dict[str, str]:
        out = {self.kind: self.value}
        if self.issued_before is not None:
            out["issued_before"] = format_time(self.issued_before)
        return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class Lock:
    """A lock: ``name`` (a UUID), ``target``, ``message`` for the user, optional ``expires``."""

    name: str
    target: LockTarget
    message: str = ""
    expires: dt.datetime | None = attrs.field(default=None, converter=_expiry)
    created: dt.datetime = attrs.field(factory=_now, converter=_seconds)
    created_by: str = ""

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires is not None and self.expires <= (now or _now())


def new_lock(target: LockTarget, message: str = "", *, expires: dt.datetime | None = None,
             created_by: str = "", now: dt.datetime | None = None) -> Lock:
    """A lock with a fresh UUID name, created ``now``."""
    return Lock(str(uuidlib.uuid4()), target, message, expires, now or _now(), created_by)


def lock_to_dict(lock: Lock) -> dict[str, Any]:
    """The resource form (``tctl get locks``); :func:`parse_lock` reads it back."""
    metadata: dict[str, Any] = {"name": lock.name}
    spec: dict[str, Any] = {"target": lock.target.to_dict()}
    if lock.message:
        spec["message"] = lock.message
    if lock.expires is not None:
        metadata["expires"] = format_time(lock.expires)
        spec["expires"] = format_time(lock.expires)
    spec["created_at"] = format_time(lock.created)
    if lock.created_by:
        spec["created_by"] = lock.created_by
    return {"kind": KIND, "version": VERSION, "metadata": metadata, "spec": spec}


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidLock(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _text(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidLock(path, f"expected a string, got {type(value).__name__}")
    return value


def parse_target(data: Any, path: str = "spec.target") -> LockTarget:
    """A target mapping (``{user: joe}``; ``server_id`` is taken for ``node``, as newer Teleport names it)."""
    raw = dict(_mapping(data, path))
    if "server_id" in raw and "node" not in raw:
        raw["node"] = raw.pop("server_id")
    unknown = sorted(set(raw) - {*TARGET_KINDS, "issued_before"})
    if unknown:
        raise InvalidLock(f"{path}.{unknown[0]}", f"unknown target (expected one of {', '.join(TARGET_KINDS)})")
    fields: dict[str, Any] = {kind: _text(raw.get(kind), f"{path}.{kind}").strip() for kind in TARGET_KINDS}
    if raw.get("issued_before"):
        fields["issued_before"] = parse_time(_text(raw["issued_before"], f"{path}.issued_before"),
                                             f"{path}.issued_before")
    for kind in TARGET_KINDS:
        if any(ch in fields[kind] for ch in "\x00\n\r"):
            raise InvalidLock(f"{path}.{kind}", "control characters are not allowed")
    return LockTarget(**fields)


def parse_lock(data: Any, source: str = "") -> Lock:
    """A lock from its resource form; :class:`InvalidLock` naming the key otherwise."""
    try:
        doc = _mapping(data, "")
        kind = doc.get("kind", KIND)
        if kind != KIND:
            raise InvalidLock("kind", f"expected {KIND}, got {json.dumps(kind)}")
        version = doc.get("version", VERSION)
        if version != VERSION:
            raise InvalidLock("version", f"expected {VERSION}, got {json.dumps(version)}")
        metadata = _mapping(doc.get("metadata"), "metadata")
        spec = _mapping(doc.get("spec"), "spec")
        name = _text(metadata.get("name"), "metadata.name").strip()
        if not name or "/" in name or any(ch.isspace() for ch in name):
            raise InvalidLock("metadata.name", f"expected a name without spaces or slashes, got {json.dumps(name)}")
        expires_text = _text(metadata.get("expires") or spec.get("expires"), "metadata.expires")
        created_text = _text(spec.get("created_at"), "spec.created_at")
        return Lock(
            name=name,
            target=parse_target(spec.get("target")),
            message=_text(spec.get("message"), "spec.message"),
            expires=parse_time(expires_text, "metadata.expires") if expires_text else None,
            created=parse_time(created_text, "spec.created_at") if created_text else _now(),
            created_by=_text(spec.get("created_by"), "spec.created_by"),
        )
    except InvalidLock as exc:
        if source:
            exc.args = (f"{source}: {exc.args[0]}",)
        raise


def lock_message(lock: Lock) -> str:
    """What a refused user sees: ``lock targeting User:"joe" is in force: <message>``."""
    text = f"lock targeting {lock.target} is in force"
    return f"{text}: {lock.message}" if lock.message else text


def cert_issued(valid_after: dt.datetime | int | float) -> dt.datetime:
    """When an SSH certificate was issued: its ``valid_after`` plus the back-dating for clock skew."""
    if isinstance(valid_after, dt.datetime):
        return _utc(valid_after) + CERT_BACKDATE
    return dt.datetime.fromtimestamp(valid_after, dt.UTC) + CERT_BACKDATE


def tls_cert_issued(not_valid_before: dt.datetime) -> dt.datetime:
    """When an X.509 certificate from the cluster CAs was issued (``not_valid_before`` plus back-dating)."""
    return _utc(not_valid_before) + CERT_BACKDATE


def _matches(target: LockTarget, user: str, roles: Sequence[str], login: str, node: str,
             issued: dt.datetime | None, access_requests: Sequence[str]) -> bool:
    if target.issued_before is not None and issued is not None and issued > target.issued_before:
        return False  # a certificate issued after the lock (a re-created user): not this lock's business
    if target.user:
        return target.user == user
    if target.role:
        return target.role in roles
    if target.login:
        return bool(login) and target.login == login
    if target.access_request:
        return target.access_request in access_requests
    return bool(node) and target.node == node


def lock_in_force(locks: Iterable[Lock], *, user: str = "", roles: Sequence[str] = (), login: str = "",
                  node: str = "", issued: dt.datetime | None = None, now: dt.datetime | None = None,
                  access_requests: Sequence[str] = ()) -> Lock | None:
    """The first unexpired lock matching an access, else None.

    ``user`` and ``roles``: the identity's name and roles; ``login``: the OS login asked for;
    ``node``: the host UUID of the node reached (or of a host identity); ``issued``: when the
    identity's certificate was issued (None: unknown, so ``issued_before`` locks match);
    ``access_requests``: the access request IDs the certificate carries.
    """
    moment = now or _now()
    for lock in locks:
        if lock.expired(moment):
            continue
        if _matches(lock.target, user, roles, login, node, issued, access_requests):
            return lock
    return None
