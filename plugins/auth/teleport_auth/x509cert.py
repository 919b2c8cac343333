"""X.509 leaf certificates signed by an Ed25519 or ECDSA CA, serialized directly (RFC 5280 DER).

``cryptography``'s ``CertificateBuilder`` produces the same bytes (tested byte for byte with an
Ed25519 CA, whose signatures are deterministic; with ECDSA the to-be-signed part is compared), but
each certificate cost it about 0.3 ms on top of the signature here: its Rust side checks and
encodes every extension and name through Python objects again, for every certificate. What does
not change between the certificates of one CA (the version, the signature algorithm, the issuer
name and the extensions) is taken once per CA certificate from a certificate the builder itself
made (:func:`_template`), so those bytes are exactly the builder's; per certificate only the
serial, the validity, the subject name and the subject's public key are encoded. Any other CA key
type (RSA), any SAN, and any value the builder would refuse go through the builder, so its
checks and errors stay the only ones.
"""

from __future__ import annotations

import binascii
import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from teleport_auth.authority import signature_hash

#: serials the builder accepts: positive, at most 159 bits (RFC 5280: 20 octets)
MAX_SERIAL_BITS = 159
_UTC_FROM, _UTC_UNTIL = 1950, 2050  # RFC 5280: UTCTime for these years, GeneralizedTime outside
_PEM_LINE = 48  # raw bytes per 64-character base64 line
_CURVES: dict[str, type[ec.EllipticCurve]] = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1,
                                              "secp521r1": ec.SECP521R1}


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _length(len(value)) + value


def _integer(value: int) -> bytes:
    """A non-negative INTEGER, minimal two's complement (a leading zero octet when the top bit is set)."""
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


@functools.lru_cache(maxsize=64)
def _time(when: dt.datetime) -> bytes:
    """UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 4.1.2.5); whole seconds, ``Z`` (an
    aware UTC time: kept per second, the certificates of one second share their times)."""
    rest = f"{when.month:02d}{when.day:02d}{when.hour:02d}{when.minute:02d}{when.second:02d}Z"
    if _UTC_FROM <= when.year < _UTC_UNTIL:
        return _tlv(0x17, f"{when.year % 100:02d}{rest}".encode())
    return _tlv(0x18, f"{when.year:04d}{rest}".encode())


def _elements(der: bytes) -> list[bytes]:
    """The TLV elements inside the outermost constructed element of ``der``, each with its header."""
    def header(at: int) -> tuple[int, int]:  # (offset of the content, length of the content)
        first = der[at + 1]
        if first < 0x80:
            return at + 2, first
        size = first & 0x7F
        return at + 2 + size, int.from_bytes(der[at + 2:at + 2 + size], "big")

    start, length = header(0)
    items, at = [], start
    while at < start + length:
        content, size = header(at)
        items.append(der[at:content + size])
        at = content + size
    return items


@attrs.frozen
class _Template:
    """The parts of a CA's certificates that never change, as its builder encoded them."""

    version: bytes  # [0] EXPLICIT INTEGER 2
    algorithm: bytes  # the signature's AlgorithmIdentifier (in the TBS and the certificate)
    issuer: bytes  # the CA certificate's subject Name
    extensions: bytes  # [3] EXPLICIT Extensions


#: KeyUsage of every leaf: digitalSignature and keyEncipherment (critical, as Teleport's)
LEAF_KEY_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                               data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                               encipher_only=False, decipher_only=False)
Extensions = tuple[tuple[x509.ExtensionType, bool], ...]


@functools.lru_cache(maxsize=16)
def leaf_extensions(ca_cert: x509.Certificate) -> Extensions:
    """The extensions of every leaf ``ca_cert`` signs, with their criticality (kept per CA certificate):
    not a CA, the key usages, server and client authentication, and the AuthorityKeyIdentifier
    (then the SANs, if any)."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return (
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (LEAF_KEY_USAGE, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (aki, False),
    )


def _signer_kind(signer: Any) -> str | None:
    """What the template depends on in the signing key: its type (and curve); None: not ours to do."""
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(signer, ec.EllipticCurvePrivateKey) and signer.curve.name in _CURVES:
        return f"ecdsa-{signer.curve.name}"
    return None


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _sign(signer: Any, tbs: bytes) -> bytes:
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return signer.sign(tbs)
    return signer.sign(tbs, _ECDSA_SHA256)  # type: ignore[no-any-return]


def build(signer: Any, ca_cert: x509.Certificate, *, subject: x509.Name, public_key: Any, serial: int,
          not_before: dt.datetime, not_after: dt.datetime, sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    """cryptography's builder: the reference, and the path for whatever :func:`sign_leaf` does not do."""
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
               .serial_number(serial).not_valid_before(not_before).not_valid_after(not_after))
    for extension, critical in leaf_extensions(ca_cert):
        builder = builder.add_extension(extension, critical=critical)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, signature_hash(signer))


def _throwaway(kind: str) -> Any:
    """A fresh key of ``kind``: the template's bytes depend on the key's type, not on the key."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(_CURVES[kind.removeprefix("ecdsa-")]())


@functools.lru_cache(maxsize=16)
def _template(ca_cert: x509.Certificate, kind: str) -> _Template:
    """The constant parts, from one certificate the builder signs for this CA with a throwaway key of the
    CA key's type (kept per CA certificate and key type: a rotation brings a new CA
    certificate, so a new template; no private key is kept)."""
    epoch = dt.datetime(2000, 1, 1)
    prototype = build(_throwaway(kind), ca_cert, subject=x509.Name([]), public_key=ca_cert.public_key(), serial=1,
                      not_before=epoch, not_after=epoch)
    fields = _elements(prototype.tbs_certificate_bytes)
    if len(fields) != 8 or fields[0][:1] != b"\xa0" or fields[7][:1] != b"\xa3":
        raise ValueError("unexpected TBSCertificate layout from cryptography's builder")
    return _Template(version=fields[0], algorithm=fields[2], issuer=fields[3], extensions=fields[7])


@functools.lru_cache(maxsize=1024)
def name_der(name: x509.Name) -> bytes:
    """A subject Name's DER (kept per Name: the issuer builds one per distinct subject)."""
    return name.public_bytes()


def _ordinary(public_key: Any, serial: int, not_before: dt.datetime, not_after: dt.datetime) -> bool:
    return (isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
            and serial > 0 and serial.bit_length() <= MAX_SERIAL_BITS and not_before.tzinfo is dt.UTC
            and not_after.tzinfo is dt.UTC and not_before.microsecond == 0 == not_after.microsecond
            and not_before.year >= _UTC_FROM and not_before <= not_after)


def sign_leaf(signer: Any, ca_cert: x509.Certificate, *, subject: x509.Name, public_key: Any, serial: int,
              not_before: dt.datetime, not_after: dt.datetime, sans: Sequence[x509.GeneralName] = ()) -> bytes:
    """The leaf certificate as PEM (:func:`leaf_extensions`, then ``sans``); ``not_before`` and
    ``not_after`` are aware datetimes, in UTC for the direct path."""
    kind = _signer_kind(signer)
    if kind is None or sans or not _ordinary(public_key, serial, not_before, not_after):
        cert = build(signer, ca_cert, subject=subject, public_key=public_key, serial=serial,
                     not_before=not_before, not_after=not_after, sans=sans)
        return cert.public_bytes(serialization.Encoding.PEM)
    template = _template(ca_cert, kind)
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    tbs = _tlv(0x30, b"".join((
        template.version, _integer(serial), template.algorithm, template.issuer,
        _tlv(0x30, _time(not_before) + _time(not_after)), name_der(subject), spki, template.extensions,
    )))
    der = _tlv(0x30, tbs + template.algorithm + _tlv(0x03, b"\x00" + _sign(signer, tbs)))
    return pem(der)


def pem(der: bytes) -> bytes:
    """``-----BEGIN CERTIFICATE-----`` with 64-character lines, as cryptography writes it."""
    lines = [binascii.b2a_base64(der[i:i + _PEM_LINE]) for i in range(0, len(der), _PEM_LINE)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"".join(lines) + b"-----END CERTIFICATE-----\n"
