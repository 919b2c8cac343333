"""Join tokens (nodes, proxies) and user tokens (invites), like Teleport's.

Join tokens:

* static: from ``auth_service.tokens`` (``"node:abc123"``, ``"proxy,node:abc123"``); never
  expire, multi-use, cannot be removed.
* dynamic (``tctl nodes add``): 16 random bytes as 32 hex characters; TTL 30 minutes by
  default, which ``ttl`` may reduce but not increase. Every dynamic token is single-use,
  whatever its roles: the first successful join deletes it with a conditional delete on the
  revision that was read, so of two concurrent joins with one token (on one auth server or on
  several sharing the backend) exactly one succeeds. (Teleport's docs call dynamic tokens
  single-use; ours are for proxies too: create one token per proxy, or use a static token.)
* no token admits role ``auth`` (auth servers share the backend and never join): ``create``
  refuses it, and a static ``auth`` token is a configuration error. A token admitting
  ``proxy`` is created only by a caller allowed ``create`` on ``proxy_token`` besides
  ``create`` on ``token`` (the API checks it; see docs/auth.md).
* listing (``tctl tokens ls``): static tokens are masked (``******``), the API never returns
  their values.
* errors: an expired token is deleted and refused with ``token expired``; any other bad
  token with ``"<host>" can not join the cluster with role Node, the token is not valid``.
  Expired tokens stay in the backend for :data:`EXPIRED_GRACE` after their expiry so that the
  two can be told apart; after that an expired token is just not valid.

User tokens (``tctl users add``): 32 hex characters, TTL 1 hour by default, at most 48 hours,
consumed once (same conditional delete).

Backend keys hold the SHA-256 of the token, never the token itself, so keys that reach logs
or error messages reveal nothing: ``/tokens/<sha256 hex>`` -> ``{"token", "roles",
"expires", "created"}``; ``/usertokens/<sha256 hex>`` -> ``{"token", "user", "kind",
"created", "expires"}``. Presented tokens are compared with the stored ones in constant time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.config.values import format_duration
from teleport_core.errors import AccessDenied, AlreadyExists, CompareFailed, ConfigError, NotFound, TeleportError
from teleport_core.pki.secret import Secret
from teleport_core.policy.roles import check_name
from teleport_core.state.backend import Backend, Item, range_end, utcnow

TOKENS_PREFIX = b"/tokens/"
USER_TOKENS_PREFIX = b"/usertokens/"
SYSTEM_ROLES = ("Node", "Proxy", "Auth")
#: the role of a token a leaf cluster joins a root with (``tctl tokens add --type=trusted_cluster``);
#: no host joins with it (``system_role`` refuses it), only the trusted clusters handshake consumes it
TRUSTED_CLUSTER_ROLE = "Trusted_cluster"
DEFAULT_TOKEN_TTL = dt.timedelta(minutes=30)
MAX_TOKEN_TTL = DEFAULT_TOKEN_TTL
EXPIRED_GRACE = dt.timedelta(hours=1)
DEFAULT_USER_TOKEN_TTL = dt.timedelta(hours=1)
MAX_USER_TOKEN_TTL = dt.timedelta(hours=48)
USER_TOKEN_KINDS = ("invite", "reset")
TOKEN_BYTES = 16
NO_AUTH_TOKENS = ("a join token cannot admit role auth: auth servers of a cluster share its backend and "
                  "never join with a token")
MASKED = "******"


class InvalidToken(AccessDenied):
    """A join or user token was refused; the message never contains the token."""


class TokenExpired(InvalidToken):
    """The token existed but expired (``token expired``)."""


class TokenError(TeleportError):
    """A token request is wrong (bad TTL or roles, removing a static token)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def system_role(name: str) -> str:
    """``"node"`` / ``"Node"`` -> ``"Node"``; ``ValueError`` for anything but Node, Proxy, Auth."""
    for role in SYSTEM_ROLES:
        if name.strip().lower() == role.lower():
            return role
    raise ValueError(f"unknown role {json.dumps(name)}: expected one of {', '.join(r.lower() for r in SYSTEM_ROLES)}")


def system_roles(names: Iterable[str] | str) -> tuple[str, ...]:
    """Canonical, de-duplicated system roles from ``["node", "proxy"]`` or ``"node,proxy"``."""
    items = names.split(",") if isinstance(names, str) else list(names)
    roles = tuple(dict.fromkeys(system_role(item) for item in items))
    if not roles:
        raise ValueError("at least one role is required")
    return roles


@attrs.frozen(repr=False)
class TokenInfo:
    """A join token. ``repr`` hides the token; ``expires`` None means never (static tokens)."""

    token: Secret
    roles: tuple[str, ...]
    expires: dt.datetime | None = None
    static: bool = False
    #: a trusted_cluster token's labels: the remote_cluster the leaf joining with it gets
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"TokenInfo(token=***, roles={self.roles!r}, expires={self.expires!r}, static={self.static!r})"


def parse_static_tokens(values: Sequence[str], path: str = "auth_service.tokens") -> list[TokenInfo]:
    """``["node:abc123", "proxy,node:xyz"]`` -> tokens; :class:`ConfigError` naming the entry (never its value)."""
    out = []
    for index, value in enumerate(values):
        where = f"{path}[{index}]"
        if not isinstance(value, str) or value.count(":") != 1:
            raise ConfigError(where, 'expected "<roles>:<token>" like "node:abc123" or "proxy,node:abc123"')
        roles_text, token = value.split(":")
        if not token:
            raise ConfigError(where, "the token after the colon is empty")
        try:
            roles = system_roles(roles_text)
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
        if "Auth" in roles:
            raise ConfigError(where, NO_AUTH_TOKENS)
        out.append(TokenInfo(Secret(token), roles, None, static=True))
    return out


def not_valid(host: str, role: str) -> str:
    return f"{json.dumps(host)} can not join the cluster with role {role}, the token is not valid"


class TokenStore:
    """Static and dynamic join tokens. ``now`` is injectable; it must not run behind the real time."""

    def __init__(
        self, backend: Backend, static: Iterable[TokenInfo] = (), *, now: Callable[[], dt.datetime] = utcnow
    ) -> None:
        self.backend = backend
        self.static = tuple(static)
        self._now = now

    @staticmethod
    def _key(token: str) -> bytes:
        return TOKENS_PREFIX + _digest(token).encode()

    def _static_match(self, token: Secret) -> TokenInfo | None:
        match = None
        for static in self.static:  # compare against every one: no early exit
            if static.token.matches(token):
                match = static
        return match

    async def create(self, roles: Iterable[str] | str, ttl: dt.timedelta | None = None) -> TokenInfo:
        """A new single-use token for ``roles``; ``ttl`` (default 30m) may only shorten its life."""
        try:
            canonical = system_roles(roles)
        except ValueError as exc:
            raise TokenError(str(exc)) from None
        if "Auth" in canonical:
            raise TokenError(NO_AUTH_TOKENS)
        if ttl is None:
            ttl = DEFAULT_TOKEN_TTL
        if ttl <= dt.timedelta(0):
            raise TokenError("token TTL must be positive")
        if ttl > MAX_TOKEN_TTL:
            raise TokenError(
                f"token TTL {format_duration(ttl)} exceeds the maximum of {format_duration(MAX_TOKEN_TTL)}: "
                "it can be reduced, not increased"
            )
        now = self._now()
        expires = now + ttl
        token = secrets.token_hex(TOKEN_BYTES)
        data = {"token": token, "roles": list(canonical), "expires": _iso(expires), "created": _iso(now)}
        try:
            await self.backend.create(Item(self._key(token), _encode(data), expires=expires + EXPIRED_GRACE))
        except AlreadyExists:  # 128 random bits never collide; refuse rather than overwrite
            raise TokenError("could not create a unique token; try again") from None
        return TokenInfo(Secret(token), canonical, expires)

    async def consume(self, token: Secret, role: str, host: str = "") -> TokenInfo:
        """Validate ``token`` for joining as ``role`` (``node``/``Node`` ...); a dynamic token is deleted.

        Raises :class:`TokenExpired` (``token expired``) or :class:`InvalidToken`.
        """
        try:
            wanted = system_role(role)
        except ValueError:
            raise InvalidToken(not_valid(host, role)) from None
        static = self._static_match(token)
        if static is not None:
            if wanted not in static.roles:
                raise InvalidToken(not_valid(host, wanted))
            return static
        key = self._key(token.reveal())
        try:
            item = await self.backend.get(key)
        except NotFound:
            raise InvalidToken(not_valid(host, wanted)) from None
        data = json.loads(item.value)
        if not token.matches(str(data.get("token", ""))):
            raise InvalidToken(not_valid(host, wanted))
        expires = _parse_time(data["expires"])
        if expires <= self._now():
            with contextlib.suppress(NotFound, CompareFailed):
                await self.backend.conditional_delete(key, item.revision)
            raise TokenExpired("token expired")
        roles = tuple(data["roles"])
        if wanted not in roles:
            raise InvalidToken(not_valid(host, wanted))
        try:
            await self.backend.conditional_delete(key, item.revision)
        except (NotFound, CompareFailed):
            raise InvalidToken(not_valid(host, wanted)) from None  # another join used it first
        return TokenInfo(token, roles, expires)

    async def create_trusted(self, labels: Mapping[str, str], ttl: dt.timedelta | None = None) -> TokenInfo:
        """A single-use ``trusted_cluster`` token; ``labels`` become the joining leaf's remote_cluster labels."""
        ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl
        if ttl <= dt.timedelta(0) or ttl > MAX_TOKEN_TTL:
            raise TokenError(f"token TTL must be positive and at most {format_duration(MAX_TOKEN_TTL)}")
        now = self._now()
        expires = now + ttl
        token = secrets.token_hex(TOKEN_BYTES)
        data = {"token": token, "roles": [TRUSTED_CLUSTER_ROLE], "labels": dict(labels), "expires": _iso(expires),
                "created": _iso(now)}
        try:
            await self.backend.create(Item(self._key(token), _encode(data), expires=expires + EXPIRED_GRACE))
        except AlreadyExists:
            raise TokenError("could not create a unique token; try again") from None
        return TokenInfo(Secret(token), (TRUSTED_CLUSTER_ROLE,), expires, labels=dict(labels))

    async def consume_trusted(self, token: Secret) -> TokenInfo:
        """Validate and delete a ``trusted_cluster`` token (single use: of two concurrent handshakes with
        it exactly one succeeds); :class:`InvalidToken` for any other token, :class:`TokenExpired`."""
        refused = "the trusted cluster token is not valid"
        key = self._key(token.reveal())
        try:
            item = await self.backend.get(key)
        except NotFound:
            raise InvalidToken(refused) from None
        data = json.loads(item.value)
        if not token.matches(str(data.get("token", ""))) or TRUSTED_CLUSTER_ROLE not in data.get("roles", ()):
            raise InvalidToken(refused)
        expires = _parse_time(data["expires"])
        if expires <= self._now():
            with contextlib.suppress(NotFound, CompareFailed):
                await self.backend.conditional_delete(key, item.revision)
            raise TokenExpired("token expired")
        try:
            await self.backend.conditional_delete(key, item.revision)
        except (NotFound, CompareFailed):
            raise InvalidToken(refused) from None
        labels = data.get("labels") or {}
        return TokenInfo(token, (TRUSTED_CLUSTER_ROLE,), expires, labels=dict(labels))

    async def list(self) -> list[TokenInfo]:
        """Static tokens, then the live dynamic ones by expiry."""
        now = self._now()
        dynamic = []
        for item in await self.backend.get_range(TOKENS_PREFIX, range_end(TOKENS_PREFIX)):
            data = json.loads(item.value)
            expires = _parse_time(data["expires"])
            if expires > now:
                dynamic.append(TokenInfo(Secret(data["token"]), tuple(data["roles"]), expires,
                                         labels=dict(data.get("labels") or {})))
        dynamic.sort(key=lambda info: (info.expires or now, info.roles))
        return [*self.static, *dynamic]

    async def remove(self, token: Secret) -> None:
        """Delete a dynamic token; static ones cannot be removed (:class:`TokenError`)."""
        if self._static_match(token) is not None:
            raise TokenError("the token is statically configured in auth_service.tokens and cannot be removed")
        try:
            await self.backend.delete(self._key(token.reveal()))
        except NotFound:
            raise NotFound("token not found") from None


@attrs.frozen(repr=False)
class UserToken:
    """A user token (``invite``: set the first password; ``reset``: set a new one)."""

    token: Secret
    user: str
    kind: str
    created: dt.datetime
    expires: dt.datetime
    otp_secret: Secret | None = None  # the TOTP secret to enroll when signing up, if OTP is on

    def __repr__(self) -> str:
        return f"UserToken(token=***, user={self.user!r}, kind={self.kind!r}, expires={self.expires!r})"


class UserTokenStore:
    """User invite/reset tokens under ``/usertokens/``."""

    def __init__(self, backend: Backend, *, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.backend = backend
        self._now = now

    @staticmethod
    def _key(token: str) -> bytes:
        return USER_TOKENS_PREFIX + _digest(token).encode()

    async def create(
        self, user: str, ttl: dt.timedelta | None = None, kind: str = "invite", otp_secret: Secret | None = None
    ) -> UserToken:
        """A new token for ``user``; ``ttl`` defaults to 1h, at most 48h. ``otp_secret`` is kept
        with the token so the signup page and its completion use the same TOTP secret."""
        try:
            check_name("user", user)
        except ValueError as exc:
            raise TokenError(str(exc)) from None
        if kind not in USER_TOKEN_KINDS:
            raise TokenError(f"unknown user token kind {json.dumps(kind)}: expected {' or '.join(USER_TOKEN_KINDS)}")
        if ttl is None:
            ttl = DEFAULT_USER_TOKEN_TTL
        if ttl <= dt.timedelta(0):
            raise TokenError("user token TTL must be positive")
        if ttl > MAX_USER_TOKEN_TTL:
            raise TokenError(
                f"user token TTL {format_duration(ttl)} exceeds the maximum of {format_duration(MAX_USER_TOKEN_TTL)}"
            )
        now = self._now()
        token = secrets.token_hex(TOKEN_BYTES)
        data = {"token": token, "user": user, "kind": kind, "created": _iso(now), "expires": _iso(now + ttl)}
        if otp_secret is not None:
            data["otp_secret"] = otp_secret.reveal()
        try:
            await self.backend.create(Item(self._key(token), _encode(data), expires=now + ttl))
        except AlreadyExists:  # 128 random bits never collide; refuse rather than overwrite
            raise TokenError("could not create a unique user token; try again") from None
        return UserToken(Secret(token), user, kind, now, now + ttl, otp_secret)

    async def _find(self, token: Secret) -> tuple[UserToken, Item]:
        try:
            item = await self.backend.get(self._key(token.reveal()))
        except NotFound:
            raise InvalidToken("the user token is not valid or has expired") from None
        data = json.loads(item.value)
        expires = _parse_time(data["expires"])
        if not token.matches(str(data.get("token", ""))) or expires <= self._now():
            raise InvalidToken("the user token is not valid or has expired")
        secret = Secret(data["otp_secret"]) if data.get("otp_secret") else None
        return UserToken(token, data["user"], data["kind"], _parse_time(data["created"]), expires, secret), item

    async def get(self, token: Secret) -> UserToken:
        """The live token (:class:`InvalidToken` when unknown or expired)."""
        return (await self._find(token))[0]

    async def consume(self, token: Secret) -> UserToken:
        """Use the token once: it is deleted atomically; a second use is refused."""
        info, item = await self._find(token)
        try:
            await self.backend.conditional_delete(item.key, item.revision)
        except (NotFound, CompareFailed):
            raise InvalidToken("the user token is not valid or has expired") from None
        return info

    async def list(self, user: str | None = None) -> list[UserToken]:
        """Live tokens (of ``user`` when given), by expiry."""
        now = self._now()
        out = []
        for item in await self.backend.get_range(USER_TOKENS_PREFIX, range_end(USER_TOKENS_PREFIX)):
            data = json.loads(item.value)
            expires = _parse_time(data["expires"])
            if expires > now and (user is None or data["user"] == user):
                out.append(
                    UserToken(Secret(data["token"]), data["user"], data["kind"], _parse_time(data["created"]), expires)
                )
        out.sort(key=lambda t: t.expires)
        return out

    async def delete_for_user(self, user: str) -> int:
        """Delete every token of ``user`` (when the user is deleted or re-invited); how many went."""
        count = 0
        for item in await self.backend.get_range(USER_TOKENS_PREFIX, range_end(USER_TOKENS_PREFIX)):
            if json.loads(item.value).get("user") == user:
                try:
                    await self.backend.delete(item.key)
                    count += 1
                except NotFound:
                    continue
        return count
