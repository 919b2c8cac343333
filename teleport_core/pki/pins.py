"""CA pins: ``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo of the host CA's TLS
certificate. A joining server compares the CA the auth server presents with its pins, in
constant time, before it sends its join token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from teleport_core.errors import AccessDenied

_PIN_RE = re.compile(r"sha256:[0-9a-f]{64}")


class CAPinMismatch(AccessDenied):
    """The CA an auth server presented does not match any configured ``--ca-pin``."""


def pin_of_cert(cert: x509.Certificate | bytes) -> str:
    """``sha256:`` + hex SHA-256 of the DER SubjectPublicKeyInfo of a certificate (DER or object)."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def normalize_pin(pin: str) -> str:
    """``pin`` in canonical form (lower-case hex); raises ValueError when malformed."""
    value = pin.strip()
    head, sep, digest = value.partition(":")
    canonical = f"{head.lower()}{sep}{digest.lower()}"
    if not _PIN_RE.fullmatch(canonical):
        raise ValueError(f"invalid CA pin {pin!r}: expected sha256:<64 hex digits>")
    return canonical


def check_ca_pin(pins: Iterable[str], cert_der: bytes | x509.Certificate) -> str:
    """Check the CA certificate an auth server presented against the configured pins.

    Every pin is compared in constant time. Returns the matching pin; raises
    :class:`CAPinMismatch` ("cluster pin does not match ...") when none matches.
    """
    wanted = [normalize_pin(p) for p in pins]
    if not wanted:
        raise ValueError("check_ca_pin needs at least one pin")
    actual = pin_of_cert(cert_der)
    matched = ""
    for pin in wanted:
        if hmac.compare_digest(pin.encode(), actual.encode()):
            matched = pin
    if not matched:
        raise CAPinMismatch(
            f"cluster pin does not match: the auth server's CA has pin {actual}, expected "
            + (wanted[0] if len(wanted) == 1 else "one of " + ", ".join(wanted))
        )
    return matched
