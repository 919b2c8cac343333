"""Local users: records, bcrypt passwords, TOTP second factor, and login lockout like Teleport's.

Backend keys (all of a user's keys share the ``/users/<name>/`` prefix, so one range read
returns everything about a user and ``delete`` is one range delete):

* ``/users/<name>/params``: ``{"name", "roles", "traits", "created", "created_by"}``
* ``/users/<name>/pwd``: ``{"hash": "<bcrypt>"}`` (cost 12); ``"prehash": "sha256"`` when the
  password was longer than bcrypt's 72 bytes (see below)
* ``/users/<name>/totp``: ``{"secret": "<base32>", "last_step": <int>}``: the last accepted
  30-second time step, so a code is accepted once
* ``/users/<name>/attempts/<id>``: ``{"time": ...}`` per failed login, expiring after 30 minutes
* ``/users/<name>/lock``: ``{"until": ..., "reason": ...}`` while the account is locked

Login (:meth:`UserStore.authenticate`): 5 failed logins within 30 minutes lock the account for
30 minutes with ``<user> exceeds 5 failed login attempts, locked until <time>`` (``<time>`` as
Teleport prints it: ``Mon Jan  2 15:04 UTC``); a successful login clears the failures. Any
other failure says only ``invalid username, password or second factor`` (``invalid username
or password`` when the second factor is off), whichever factor failed and whether or not the
user exists; an unknown user costs the same bcrypt check as a known one. As in Teleport, only
existing users get locked, so the lockout message does reveal that the user exists.

Password policy (:func:`check_password_policy`, at invite and reset completion): Teleport's
12 to 128 characters, no NUL. bcrypt reads at most 72 bytes, so a longer password (in UTF-8)
is hashed as bcrypt over the base64 of its SHA-256 (passlib's ``bcrypt_sha256`` construction)
and its record says ``"prehash": "sha256"``; every character then counts.

Times are checked against the injected ``now`` clock (values hold them); backend expiries
derived from it only garbage-collect, so the clock must not run behind the real time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import bcrypt
import pyotp

from teleport_auth.watching import invalidate_on_change
from teleport_core.errors import AlreadyExists, AuthenticationFailed, CompareFailed, NotFound, TeleportError
from teleport_core.logs import get_logger
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.roles import check_name
from teleport_core.state.backend import Backend, Item, range_end, utcnow

USERS_PREFIX = b"/users/"
USER_CACHE_SIZE = 4096  # users :meth:`UserStore.get` keeps in memory (all forgotten when full)
BCRYPT_COST = 12
MIN_PASSWORD_LENGTH = 12  # characters, as Teleport
MAX_PASSWORD_LENGTH = 128
MAX_PASSWORD_BYTES = 72  # what bcrypt reads; longer passwords are pre-hashed with SHA-256
MAX_LOGIN_ATTEMPTS = 5
ATTEMPT_WINDOW = dt.timedelta(minutes=30)
LOCK_DURATION = dt.timedelta(minutes=30)
TOTP_STEP = 30
TOTP_DIGITS = 6
TOTP_WINDOW = 1  # steps accepted either side of now
SECOND_FACTORS = ("off", "otp")
LOCK_REASON = "user has exceeded maximum failed login attempts"

BAD_CREDENTIALS = "invalid username or password"
BAD_CREDENTIALS_2FA = "invalid username, password or second factor"


class PasswordPolicyError(TeleportError):
    """A new password breaks the policy; the message never contains the password."""


class InvalidUser(TeleportError):
    """A user record (name, roles, traits) is invalid."""


def human_time(when: dt.datetime) -> str:
    """Teleport's ``HumanTimeFormat``: ``Mon Jan  2 15:04 UTC``."""
    when = when.astimezone(dt.UTC)
    return f"{when:%a %b} {when.day:2d} {when:%H:%M} UTC"


def lockout_message(username: str, until: dt.datetime) -> str:
    return f"{username} exceeds {MAX_LOGIN_ATTEMPTS} failed login attempts, locked until {human_time(until)}"


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _frozen_traits(value: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in value.items()})


def check_traits(traits: Any) -> dict[str, list[str]]:
    """Traits are a mapping of non-empty names to lists of strings."""
    if traits is None:
        return {}
    if not isinstance(traits, Mapping):
        raise InvalidUser("traits must be a mapping of names to lists of strings")
    out: dict[str, list[str]] = {}
    for name, values in traits.items():
        if not isinstance(name, str) or not name:
            raise InvalidUser(f"trait names must be non-empty strings, got {name!r}")
        if isinstance(values, str) or not isinstance(values, Iterable):
            raise InvalidUser(f"trait {_q(name)} must be a list of strings")
        items = list(values)
        if not all(isinstance(v, str) for v in items):
            raise InvalidUser(f"trait {_q(name)} must be a list of strings")
        out[name] = list(dict.fromkeys(items))
    return out


def check_password_policy(password: Secret) -> bytes:
    """The password as bytes (UTF-8) if it meets the policy, else :class:`PasswordPolicyError`."""
    text = password.reveal()
    if len(text) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(text) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"password is too long: use at most {MAX_PASSWORD_LENGTH} characters")
    if "\x00" in text:
        raise PasswordPolicyError("password must not contain NUL characters")
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        raise PasswordPolicyError("password must be valid Unicode text") from None


def _bcrypt_input(data: bytes) -> tuple[bytes, str | None]:
    """What bcrypt hashes for a password and the pre-hash used: the password itself up to
    72 bytes, else the base64 of its SHA-256 (44 bytes, no NUL)."""
    if len(data) <= MAX_PASSWORD_BYTES:
        return data, None
    return base64.b64encode(hashlib.sha256(data).digest()), "sha256"


def new_totp_secret() -> Secret:
    """A fresh TOTP secret: 160 random bits in base32 (what authenticator apps expect)."""
    return Secret(pyotp.random_base32(32))


def otp_uri(cluster: str, username: str, secret: Secret) -> str:
    """``otpauth://totp/<cluster>:<user>?secret=...&issuer=<cluster>`` for an authenticator app's QR code."""
    label = urllib.parse.quote(f"{cluster}:{username}", safe=":@")
    query = urllib.parse.urlencode({"secret": secret.reveal(), "issuer": cluster}, quote_via=urllib.parse.quote)
    return f"otpauth://totp/{label}?{query}"


@attrs.frozen
class UserStatus:
    """``locked_until`` is set while (and after) a lock; compare with the clock via :meth:`User.locked`."""

    locked_until: dt.datetime | None = None
    lock_reason: str = ""


@attrs.frozen
class User:
    """A local user as stored (no secrets: the hash and TOTP secret stay in the backend)."""

    name: str
    roles: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    traits: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_frozen_traits)
    created: dt.datetime = attrs.field(factory=utcnow)
    created_by: str = ""
    status: UserStatus = attrs.field(factory=UserStatus)
    has_password: bool = False
    totp_enrolled: bool = False

    def locked(self, now: dt.datetime) -> bool:
        return self.status.locked_until is not None and self.status.locked_until > now

    def identity(self, cluster: str = "") -> Identity:
        """The user's identity (``logins`` empty: they come from the roles, see ``RoleSet.all_logins``)."""
        fields: dict[str, Any] = {"roles": self.roles, "traits": self.traits, "cluster": cluster}
        return Identity(self.name, IdentityKind.USER, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The resource form, like Teleport's ``tctl get users`` (without secrets)."""
        spec: dict[str, Any] = {
            "roles": list(self.roles),
            "traits": {k: list(v) for k, v in self.traits.items()},
            "created_by": {"time": _iso(self.created), "user": {"name": self.created_by}},
            "status": {
                "is_locked": self.status.locked_until is not None,
                "lock_expires": _iso(self.status.locked_until) if self.status.locked_until else None,
                "lock_reason": self.status.lock_reason,
            },
        }
        return {"kind": "user", "version": "v2", "metadata": {"name": self.name}, "spec": spec}


@attrs.frozen
class _Records:
    """Everything stored under ``/users/<name>/``."""

    params: Item | None = None
    pwd: Item | None = None
    totp: Item | None = None
    lock: Item | None = None
    attempts: tuple[Item, ...] = ()


def _json(item: Item) -> dict[str, Any]:
    data = json.loads(item.value)
    if not isinstance(data, dict):
        raise TeleportError(f"corrupt user record at {item.key.decode(errors='replace')}")
    return data


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


#: the backend calls that write (:class:`_NotifyingWrites`)
_WRITES = frozenset({"put", "create", "update", "compare_and_swap", "conditional_update", "delete",
                     "conditional_delete", "delete_range", "keep_alive", "atomic_write"})


class _NotifyingWrites:
    """``backend`` whose writes call ``changed()`` once they end (done or failed: a failed write
    may still have been applied), so a cache of what they change is never read stale here."""

    def __init__(self, backend: Backend, changed: Callable[[], None]) -> None:
        self._backend = backend
        self._changed = changed

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name not in _WRITES:
            return attr

        async def write(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            finally:
                self._changed()

        return write


class UserStore:
    """Users in the backend. ``now`` is injectable (tests); ``bcrypt_cost`` below 12 only for tests."""

    def __init__(
        self,
        backend: Backend,
        *,
        now: Callable[[], dt.datetime] = utcnow,
        bcrypt_cost: int = BCRYPT_COST,
    ) -> None:
        if not 4 <= bcrypt_cost <= 31:
            raise ValueError("bcrypt cost must be between 4 and 31")
        self.backend: Backend = _NotifyingWrites(backend, self.invalidate)  # type: ignore[assignment]
        self._now = now
        self.bcrypt_cost = bcrypt_cost
        self._dummy_hash: bytes | None = None
        # :meth:`get` answers from here while :meth:`watch` runs: name -> (user, stale after)
        self._cache: dict[str, tuple[User, dt.datetime | None]] = {}
        self._generation = 0  # bumped by every invalidation
        self._watching = False
        self._log = get_logger("auth")
        #: called before the cache is trusted (auth workers: catch up with other processes' writes)
        self.before_read: Callable[[], None] | None = None

    # -- the cache of :meth:`get` ---------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget every cached user: the next :meth:`get` reads the backend (called after every
        write through this store, and on every backend event under ``/users/`` while watching)."""
        self._generation += 1
        self._cache.clear()

    @property
    def watching(self) -> bool:
        return self._watching

    def _set_watching(self, value: bool) -> None:
        self._watching = value

    async def watch(self, retry_delay: float = 1.0) -> None:
        """Keep :meth:`get`'s cache valid across auth servers sharing the backend: run as a task
        for the auth service's lifetime. Without it, every :meth:`get` reads the backend."""
        await invalidate_on_change(self.backend, USERS_PREFIX, self.invalidate, self._set_watching, "user",
                                   self._log, retry_delay)

    # -- keys and records ----------------------------------------------------------------------------

    @staticmethod
    def _prefix(name: str) -> bytes:
        try:
            check_name("user", name)
        except ValueError as exc:
            raise InvalidUser(str(exc)) from None
        return USERS_PREFIX + name.encode() + b"/"

    async def _records(self, name: str) -> _Records:
        prefix = self._prefix(name)
        found: dict[str, Item] = {}
        attempts = []
        for item in await self.backend.get_range(prefix, range_end(prefix)):
            rest = item.key[len(prefix) :]
            if rest.startswith(b"attempts/"):
                attempts.append(item)
            else:
                found[rest.decode()] = item
        return _Records(found.get("params"), found.get("pwd"), found.get("totp"), found.get("lock"), tuple(attempts))

    def _user(self, records: _Records) -> User:
        assert records.params is not None
        data = _json(records.params)
        status = UserStatus()
        if records.lock is not None:
            lock = _json(records.lock)
            status = UserStatus(_parse_time(lock["until"]), str(lock.get("reason", "")))
        fields: dict[str, Any] = {
            "roles": tuple(data.get("roles", ())),
            "traits": data.get("traits", {}),
            "created": _parse_time(data["created"]),
            "created_by": data.get("created_by", ""),
            "status": status,
            "has_password": records.pwd is not None,
            "totp_enrolled": records.totp is not None,
        }
        return User(data["name"], **fields)

    async def _require(self, name: str) -> _Records:
        records = await self._records(name)
        if records.params is None:
            raise NotFound(f"user {_q(name)} not found")
        return records

    # -- CRUD ----------------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        roles: Iterable[str] = (),
        traits: Mapping[str, Iterable[str]] | None = None,
        *,
        created_by: str = "",
    ) -> User:
        """Create a user (no password yet); ``AlreadyExists`` when the name is taken."""
        prefix = self._prefix(name)
        role_names = self._check_roles(roles)
        checked = check_traits(traits)
        created = self._now()
        data = {
            "name": name,
            "roles": role_names,
            "traits": checked,
            "created": _iso(created),
            "created_by": created_by,
        }
        try:
            await self.backend.create(Item(prefix + b"params", _encode(data)))
        except AlreadyExists:
            raise AlreadyExists(f"user {_q(name)} already exists") from None
        fields: dict[str, Any] = {"roles": role_names, "traits": checked, "created": created, "created_by": created_by}
        return User(name, **fields)

    @staticmethod
    def _check_roles(roles: Iterable[str]) -> list[str]:
        if isinstance(roles, str):
            raise InvalidUser("roles must be a list of role names")
        out = []
        for role in roles:
            try:
                out.append(check_name("role", role))
            except (ValueError, TypeError) as exc:
                raise InvalidUser(str(exc)) from None
        return list(dict.fromkeys(out))

    async def get(self, name: str) -> User:
        """``NotFound`` (``user "joe" not found``) when absent. Answered from memory while
        :meth:`watch` runs and nothing under ``/users/`` changed since the read (nor did any of
        the user's records expire); otherwise one range read."""
        if self.before_read is not None:
            self.before_read()
        cached = self._cache.get(name)
        if cached is not None and self._watching and (cached[1] is None or cached[1] > self._now()):
            return cached[0]
        generation = self._generation
        records = await self._require(name)
        user = self._user(records)
        if self._watching and generation == self._generation:  # nothing changed during the read
            if len(self._cache) >= USER_CACHE_SIZE:
                self._cache.clear()
            expiries = [item.expires for item in (records.params, records.pwd, records.totp, records.lock,
                                                  *records.attempts) if item is not None and item.expires]
            self._cache[name] = (user, min(expiries) if expiries else None)
        return user

    async def list(self) -> list[User]:
        """Every user, by name (one range read)."""
        groups: dict[bytes, dict[str, Item]] = {}
        for item in await self.backend.get_range(USERS_PREFIX, range_end(USERS_PREFIX)):
            user, _, rest = item.key[len(USERS_PREFIX) :].partition(b"/")
            if not rest.startswith(b"attempts/"):
                groups.setdefault(user, {})[rest.decode()] = item
        users = []
        for found in groups.values():
            if "params" in found:
                users.append(
                    self._user(_Records(found["params"], found.get("pwd"), found.get("totp"), found.get("lock")))
                )
        return users

    async def update(
        self,
        name: str,
        *,
        roles: Iterable[str] | None = None,
        traits: Mapping[str, Iterable[str]] | None = None,
    ) -> User:
        """Replace the user's roles and/or traits (optimistic, retried on concurrent writes)."""
        new_roles = self._check_roles(roles) if roles is not None else None
        new_traits = check_traits(traits) if traits is not None else None
        for _ in range(10):
            records = await self._require(name)
            assert records.params is not None
            data = _json(records.params)
            if new_roles is not None:
                data["roles"] = new_roles
            if new_traits is not None:
                data["traits"] = new_traits
            item = attrs.evolve(records.params, value=_encode(data))
            try:
                stored = await self.backend.conditional_update(item)
            except (CompareFailed, NotFound):
                continue
            return self._user(attrs.evolve(records, params=stored))
        raise CompareFailed(f"user {_q(name)} is being changed concurrently; try again")

    async def get_with_revision(self, name: str) -> tuple[User, str]:
        """The user and the revision of its record (what :meth:`update_if` compares)."""
        records = await self._require(name)
        assert records.params is not None
        return self._user(records), records.params.revision

    async def update_if(self, name: str, revision: str, *, roles: Iterable[str],
                        traits: Mapping[str, Iterable[str]]) -> User:
        """Replace the user's roles and traits only if its record is still at ``revision``
        (``tctl edit``); else :class:`CompareFailed`, nothing written."""
        new_roles = self._check_roles(roles)
        new_traits = check_traits(traits)
        records = await self._require(name)
        assert records.params is not None
        if records.params.revision != revision:
            raise CompareFailed(f"user {_q(name)} was changed since revision {revision}")
        data = {**_json(records.params), "roles": new_roles, "traits": new_traits}
        try:
            stored = await self.backend.conditional_update(attrs.evolve(records.params, value=_encode(data)))
        except (CompareFailed, NotFound):
            raise CompareFailed(f"user {_q(name)} was changed since revision {revision}") from None
        return self._user(attrs.evolve(records, params=stored))

    async def delete(self, name: str) -> None:
        """Delete the user and everything stored for them; ``NotFound`` when absent."""
        prefix = self._prefix(name)
        try:
            await self.backend.delete(prefix + b"params")
        except NotFound:
            raise NotFound(f"user {_q(name)} not found") from None
        await self.backend.delete_range(prefix, range_end(prefix))

    async def unlock(self, name: str) -> None:
        """Lift a lock and forget failed attempts (an admin's reset)."""
        prefix = self._prefix(name)
        await self._require(name)
        await self.backend.delete_range(prefix + b"attempts/", range_end(prefix + b"attempts/"))
        with contextlib.suppress(NotFound):
            await self.backend.delete(prefix + b"lock")

    # -- passwords -----------------------------------------------------------------------------------

    async def set_password(self, name: str, password: Secret) -> None:
        """Hash (bcrypt, off the event loop) and store a new password that meets the policy."""
        data, prehash = _bcrypt_input(check_password_policy(password))
        prefix = self._prefix(name)
        await self._require(name)
        hashed = await asyncio.to_thread(bcrypt.hashpw, data, bcrypt.gensalt(self.bcrypt_cost))
        record = {"hash": hashed.decode(), **({"prehash": prehash} if prehash else {})}
        await self.backend.put(Item(prefix + b"pwd", _encode(record)))

    async def _dummy(self) -> bytes:
        if self._dummy_hash is None:
            filler = secrets.token_urlsafe(24).encode()
            self._dummy_hash = await asyncio.to_thread(bcrypt.hashpw, filler, bcrypt.gensalt(self.bcrypt_cost))
        return self._dummy_hash

    async def _check_password(self, pwd: Item | None, password: Secret) -> bool:
        """bcrypt check; a missing hash or an over-long password costs a dummy check and fails."""
        record = _json(pwd) if pwd is not None else {}
        hashed = record["hash"].encode() if pwd is not None else None
        text = password.reveal()
        candidate = text.encode(errors="replace")
        if record.get("prehash") == "sha256":
            candidate = _bcrypt_input(candidate)[0] if len(candidate) > MAX_PASSWORD_BYTES else b""
        usable = hashed is not None and 0 < len(candidate) <= MAX_PASSWORD_BYTES and len(text) <= MAX_PASSWORD_LENGTH
        if not usable or hashed is None:
            await asyncio.to_thread(bcrypt.checkpw, b"not the password", await self._dummy())
            return False
        return await asyncio.to_thread(bcrypt.checkpw, candidate, hashed)

    # -- TOTP ----------------------------------------------------------------------------------------

    def _step(self, now: dt.datetime) -> int:
        return int(now.timestamp()) // TOTP_STEP

    @staticmethod
    def _match_step(secret: str, code: Secret, step: int) -> int | None:
        """The step within ±``TOTP_WINDOW`` of ``step`` whose code is ``code`` (all compared)."""
        totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
        offered = code.reveal().strip().encode()
        matched = None
        for candidate in range(step - TOTP_WINDOW, step + TOTP_WINDOW + 1):
            if hmac.compare_digest(totp.generate_otp(candidate).encode(), offered):
                matched = candidate
        return matched

    def totp_code_valid(self, secret: Secret, code: Secret) -> bool:
        """Whether ``code`` is the app's code for ``secret`` now (±1 step), without using it:
        an enrollment checks it before it spends the invite."""
        return self._match_step(secret.reveal(), code, self._step(self._now())) is not None

    async def set_totp(self, name: str, secret: Secret, code: Secret | None = None) -> None:
        """Enroll a TOTP secret (:func:`new_totp_secret`); with ``code``, first prove the app has it.

        The enrollment code counts as used. ``AuthenticationFailed`` for a wrong code.
        """
        try:
            pyotp.TOTP(secret.reveal()).now()
        except Exception:
            raise ValueError("TOTP secret must be base32, at least 112 bits") from None
        prefix = self._prefix(name)
        await self._require(name)
        last = -1
        if code is not None:
            matched = self._match_step(secret.reveal(), code, self._step(self._now()))
            if matched is None:
                raise AuthenticationFailed("invalid OTP code: check the authenticator app's clock")
            last = matched
        await self.backend.put(Item(prefix + b"totp", _encode({"secret": secret.reveal(), "last_step": last})))

    async def delete_totp(self, name: str) -> None:
        try:
            await self.backend.delete(self._prefix(name) + b"totp")
        except NotFound:
            raise NotFound(f"user {_q(name)} has no OTP device") from None

    async def _use_step(self, totp: Item, step: int) -> bool:
        """Record ``step`` as used unless it (or a later one) was; atomic against concurrent logins."""
        item = totp
        for _ in range(5):
            data = _json(item)
            if step <= int(data.get("last_step", -1)):
                return False
            data["last_step"] = step
            try:
                await self.backend.conditional_update(attrs.evolve(item, value=_encode(data)))
                return True
            except CompareFailed:
                try:
                    item = await self.backend.get(totp.key)
                except NotFound:
                    return False
            except NotFound:
                return False
        return False

    # -- login ---------------------------------------------------------------------------------------

    async def authenticate(
        self,
        username: str,
        password: Secret,
        otp: Secret | None = None,
        second_factor: str = "otp",
    ) -> Identity:
        """Check the password (and the TOTP code when ``second_factor`` is ``"otp"``).

        Returns the user's :class:`Identity` (roles and traits; logins come from the roles).
        Raises :class:`AuthenticationFailed` with a message that tells nothing about which
        check failed, except the lockout message once the account is locked.
        """
        if second_factor not in SECOND_FACTORS:
            raise ValueError(f"second_factor must be one of {', '.join(SECOND_FACTORS)}")
        generic = BAD_CREDENTIALS_2FA if second_factor == "otp" else BAD_CREDENTIALS
        try:
            records = await self._records(username)
        except InvalidUser:
            records = _Records()
        if records.params is None:
            await self._check_password(None, password)
            raise AuthenticationFailed(generic)
        now = self._now()
        if records.lock is not None:
            until = _parse_time(_json(records.lock)["until"])
            if until > now:
                raise AuthenticationFailed(lockout_message(username, until))
        ok = await self._check_password(records.pwd, password)
        step = None
        if second_factor == "otp":
            if records.totp is not None and otp is not None:
                step = self._match_step(_json(records.totp)["secret"], otp, self._step(now))
            ok = ok and step is not None and records.totp is not None and await self._use_step(records.totp, step)
        if ok:
            await self._clear_failures(username)
            return self._user(records).identity()
        await self._record_failure(username, now)
        raise AuthenticationFailed(generic)

    async def _clear_failures(self, name: str) -> None:
        prefix = self._prefix(name)
        await self.backend.delete_range(prefix + b"attempts/", range_end(prefix + b"attempts/"))
        with contextlib.suppress(NotFound):
            await self.backend.delete(prefix + b"lock")

    async def _record_failure(self, name: str, now: dt.datetime) -> None:
        """Store a failed attempt; lock the account (and raise the lockout message) at the fifth."""
        attempts = self._prefix(name) + b"attempts/"
        attempt_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}".encode()
        await self.backend.put(Item(attempts + attempt_id, _encode({"time": _iso(now)}), expires=now + ATTEMPT_WINDOW))
        since = now - ATTEMPT_WINDOW
        items = await self.backend.get_range(attempts, range_end(attempts))
        recent = sum(1 for item in items if _parse_time(_json(item)["time"]) > since)
        if recent < MAX_LOGIN_ATTEMPTS:
            return
        until = now + LOCK_DURATION
        lock = _encode({"until": _iso(until), "reason": LOCK_REASON})
        await self.backend.put(Item(self._prefix(name) + b"lock", lock, expires=until))
        await self.backend.delete_range(attempts, range_end(attempts))
        raise AuthenticationFailed(lockout_message(name, until))
