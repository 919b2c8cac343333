"""Who is acting: the identity a certificate or a login establishes (a user or a cluster host),
used by the certificate issuer (``pki.certs``) and by access decisions (``policy.access``)."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs


def _frozen_traits(value: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in value.items()})


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


class IdentityKind(enum.Enum):
    """Who holds a certificate: a person or bot (``user``), or a cluster server (``host``)."""

    USER = "user"
    HOST = "host"


@attrs.frozen
class Identity:
    """An authenticated principal.

    For users: ``name`` is the Teleport username, ``roles`` their role names and ``traits``
    their traits (``{"logins": ["root"]}``). For hosts: ``name`` is ``<hostUUID>.<cluster>``
    and ``roles`` holds the system role (``Node``, ``Proxy``, ``Auth``). ``issued``: when the
    certificate it came from was issued (None when unknown), which locks on deleted users check.
    ``active_requests``: the IDs of the approved access requests whose roles the certificate
    carries (:mod:`teleport_core.policy.requests`); a lock on one of them refuses the identity.
    """

    name: str
    kind: IdentityKind = IdentityKind.USER
    roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    traits: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_frozen_traits)
    logins: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    cluster: str = ""
    issued: dt.datetime | None = attrs.field(default=None, eq=False)
    active_requests: tuple[str, ...] = attrs.field(default=(), converter=_strings)
