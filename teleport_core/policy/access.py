"""Identities and access decisions: what the authentication and authorization hooks exchange.

Deny by default: :func:`decide` allows a request only when at least one plugin allows it and
none denies it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from teleport_core.pki.principal import Identity as Identity  # re-exported: the public path of the type
from teleport_core.pki.principal import IdentityKind as IdentityKind
from teleport_core.pki.secret import Secret

_NOTHING: Mapping[str, Any] = MappingProxyType({})  # shared: most requests have no labels (every listed item)


def _frozen_labels(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value)) if value else _NOTHING


def _frozen_attributes(value: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    if not value:
        return _NOTHING
    return MappingProxyType({str(k): MappingProxyType(dict(v)) for k, v in value.items()})


@attrs.frozen(repr=False)
class LoginRequest:
    """Credentials offered at login. ``repr`` never shows the password or OTP code."""

    username: str
    password: Secret
    otp: Secret | None = None
    remote_addr: str = ""
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        return f"LoginRequest(username={self.username!r}, remote_addr={self.remote_addr!r})"


@attrs.frozen
class AccessRequest:
    """One thing an identity wants to do.

    ``verb`` is ``list``/``read``/``create``/``update``/``delete`` on a resource ``kind``
    (``role``, ``user``, ``token``, ``node``, ``event``, ``session`` ...), or ``ssh`` on a
    ``node`` with ``login`` set. ``labels`` are the resource's labels (node labels for ``ssh``).

    ``attributes``: the item's fields that role ``where:`` predicates read, by namespace
    (``{"session": {"participants": [...], "login": ...}}``; see
    :mod:`teleport_core.policy.predicate`); empty when the request is not about one item.
    ``filtered``: a listing whose caller then checks each item on its own (one request per
    item, with its ``attributes``), so a rule allowing only some items allows the call.
    """

    identity: Identity
    verb: str
    kind: str
    name: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_labels)
    login: str = ""
    attributes: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict, converter=_frozen_attributes)
    filtered: bool = False


class Effect(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@attrs.frozen
class Decision:
    """A plugin's answer to an :class:`AccessRequest`, with the reason shown in audits and 403s."""

    effect: Effect
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    @classmethod
    def allow(cls, reason: str = "") -> Decision:
        return cls(Effect.ALLOW, reason)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(Effect.DENY, reason)


def decide(request: AccessRequest, decisions: Iterable[Decision | None]) -> Decision:
    """Combine plugin decisions: any deny wins, then any allow, else deny by default."""
    allow: Decision | None = None
    for decision in decisions:
        if decision is None:
            continue
        if decision.effect is Effect.DENY:
            return decision
        allow = allow or decision
    if allow is not None:
        return allow
    what = f"{request.verb} on {request.kind}" + (f" {request.name!r}" if request.name else "")
    if request.login:
        what += f" as login {request.login!r}"
    return Decision.deny(f"access denied to {request.identity.name!r}: no role allows {what}")


def authenticate(hook: Any, request: LoginRequest) -> Identity:
    """Ask the ``teleport_authenticate`` plugins; deny when none claims the user.

    ``AuthenticationFailed`` from a plugin propagates; the message never holds credentials.
    """
    from teleport_core.errors import AuthenticationFailed

    identity = hook.teleport_authenticate(request=request)
    if identity is None:
        raise AuthenticationFailed(f"invalid credentials for user {request.username!r}")
    if not isinstance(identity, Identity):
        raise AuthenticationFailed(f"authentication plugin returned {type(identity).__name__}, not an Identity")
    return identity


#: the verbs of the SSH decision points (``kind`` is ``node``; see :func:`check_access`)
SSH = "ssh"
PORT_FORWARD = "port_forward"
REMOTE_PORT_FORWARD = "remote_port_forward"  # ssh -R: the node listens; ``name`` is its listen address
AGENT_FORWARD = "forward_agent"


def check_access(hook: Any, request: AccessRequest, *own: Decision | None) -> Decision:
    """The one access decision, made the same way at every decision point: the caller's ``own``
    decisions (its roles' answer, a lock in force as a deny, a certificate permission) plus every
    ``teleport_authorize`` plugin's, combined by :func:`decide`: any deny wins, then any allow;
    with no allow the request is denied; a plugin that raises denies. ``hook`` is
    ``plugins.hook`` (None: no plugins). May block (plugins): call it off the event loop.

    Where it is called (verb on kind; see docs/hooks.md): the auth API, every resource verb; the
    node, ``ssh`` (a login, ``login`` and the node's labels set), ``port_forward`` (``name`` is
    the destination ``host:port``), ``remote_port_forward`` (``name`` is the ``host:port`` the
    node would listen on) and ``forward_agent``; the proxy, ``ssh`` whenever it routes a
    connection to a node (``login`` empty when only the node learns it: ``tsh ssh``, ``ssh -J``).
    """
    decisions: list[Decision | None] = list(own)
    if hook is not None:
        try:
            decisions.extend(hook.teleport_authorize(request=request))
        except Exception as exc:
            decisions.append(Decision.deny(f"authorization plugin failed: {type(exc).__name__}: {exc}"))
    return decide(request, decisions)
