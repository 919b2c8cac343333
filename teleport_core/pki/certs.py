"""What the certificate-issuance hooks see and return."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from teleport_core.errors import CertificateVetoed, PluginError
from teleport_core.pki.principal import Identity


class CertType(enum.Enum):
    USER = "user"
    HOST = "host"


class CertFormat(enum.Enum):
    SSH = "ssh"
    TLS = "tls"


def _ro(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class CertRequest:
    """A certificate about to be signed.

    ``extensions`` and ``critical_options`` are what the issuer itself sets (for SSH user
    certificates: ``permit-pty``, ``teleport-roles`` ...; for X.509 they are empty).
    ``public_key`` is the subject key in OpenSSH format (``ssh-ed25519 AAAA...``).
    """

    cert_type: CertType
    cert_format: CertFormat
    identity: Identity
    principals: tuple[str, ...]
    valid_after: dt.datetime
    valid_before: dt.datetime
    public_key: str
    extensions: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)
    critical_options: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)


@attrs.frozen
class CertAdditions:
    """Extensions and critical options one plugin adds to a certificate."""

    extensions: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)
    critical_options: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)


def merge_additions(
    request: CertRequest, additions: Iterable[CertAdditions | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """Return the request's extensions and options with every plugin's additions merged in.

    A plugin may add keys but never change one already set by the issuer or another plugin:
    that would let a plugin silently widen a certificate, so it is an error.
    """
    extensions = dict(request.extensions)
    options = dict(request.critical_options)
    for addition in additions:
        if addition is None:
            continue
        for target, new, what in (
            (extensions, addition.extensions, "extension"),
            (options, addition.critical_options, "critical option"),
        ):
            for key, value in new.items():
                if key in target and target[key] != value:
                    raise PluginError(
                        f"certificate {what} {key!r} set twice with different values "
                        f"({target[key]!r} and {value!r})"
                    )
                target[key] = value
    return extensions, options


def check_veto(reason: str | None, request: CertRequest | None = None) -> None:
    """Raise :class:`CertificateVetoed` (carrying the request's identity) when the veto hook
    returned a reason."""
    if reason:
        raise CertificateVetoed(f"certificate issuance refused: {reason}",
                                request.identity if request is not None else None)


def apply_plugins(hook: Any, request: CertRequest) -> CertRequest:
    """The certificate hooks at their one call site (the auth service's issuer, for every
    certificate it signs): the veto first, then every plugin's additions merged in. Returns the
    request as it will be signed. Raises ``CertificateVetoed`` or ``PluginError`` (an addition
    that is not a :class:`CertAdditions` of strings, that changes a value, or that puts
    extensions on an X.509 certificate, which carries none)."""
    check_veto(hook.teleport_certificate_veto(request=request), request)
    results = hook.teleport_certificate_extensions(request=request) or []
    for item in results:
        if item is None:
            continue
        if not isinstance(item, CertAdditions):
            raise PluginError(
                f"teleport_certificate_extensions returned {type(item).__name__}, expected CertAdditions or None")
        for mapping in (item.extensions, item.critical_options):
            for key, value in mapping.items():
                if not isinstance(key, str) or not key or not isinstance(value, str):
                    raise PluginError(f"certificate extension {key!r}: names and values must be strings")
    if not any(item is not None and (item.extensions or item.critical_options) for item in results):
        return request  # nothing added (the usual case): the request as it is
    extensions, options = merge_additions(request, results)
    if request.cert_format is CertFormat.TLS and (extensions or options):
        raise PluginError(
            "plugins added extensions to an X.509 certificate, which carries none "
            f"({', '.join(sorted({**extensions, **options}))}); check request.cert_format"
        )
    return attrs.evolve(request, extensions=extensions, critical_options=options)
