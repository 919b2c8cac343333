"""Certificates at the proxy: users' SSH and X.509 certificates checked against the user CA
(the proxy holds only CA public keys), and the self-signed HTTPS certificate."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import NameOID

from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.policy.locks import cert_issued, tls_cert_issued
from teleport_core.policy.requests import ACTIVE_REQUESTS_OID, EXT_ACTIVE_REQUESTS, parse_active_requests

CLOCK_SKEW = dt.timedelta(minutes=1)


class InvalidCertificate(AccessDenied):
    """A certificate the proxy does not accept."""


@attrs.frozen
class UserCert:
    """What a verified user certificate says."""

    user: str
    roles: tuple[str, ...]
    traits: Mapping[str, tuple[str, ...]]
    principals: tuple[str, ...] = ()
    valid_before: dt.datetime | None = None
    issued: dt.datetime | None = None  # when the certificate was issued (locks on deleted users)
    active_requests: tuple[str, ...] = ()  # the access requests whose roles it carries (locks on them)


def verify_user_ssh_cert(line: str, trusted: Iterable[str], *, client_ip: str = "",
                         now: dt.datetime | None = None) -> UserCert:
    """Check an OpenSSH user certificate line: signed by a trusted user CA key, of type user,
    valid now (dated up to one minute ahead is accepted), no unknown critical options, and a
    ``source-address`` option (IP pinning) matching ``client_ip``. Raises :class:`InvalidCertificate`."""
    try:
        parsed = ssh.load_ssh_public_identity(line.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCertificate(f"ssh: cannot parse certificate: {exc}") from None
    if not isinstance(parsed, ssh.SSHCertificate):
        raise InvalidCertificate("ssh: a certificate is required, got a plain public key")
    try:
        sig_der = keys.public_key_der(parsed.signature_key())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidCertificate(f"ssh: invalid certificate signature key: {exc}") from None
    match = False
    for ca in trusted:
        match |= hmac.compare_digest(keys.public_key_der(keys.load_public_key(ca)), sig_der)
    if not match:
        raise InvalidCertificate("ssh: certificate signed by unrecognized authority")
    try:
        parsed.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCertificate("ssh: certificate signature does not verify") from None
    if parsed.type is not ssh.SSHCertificateType.USER:
        raise InvalidCertificate("ssh: a user certificate is required, got a host certificate")
    when = (now or dt.datetime.now(dt.UTC)).timestamp()
    if when + CLOCK_SKEW.total_seconds() < parsed.valid_after:
        raise InvalidCertificate("ssh: certificate is not yet valid")
    if when >= parsed.valid_before:
        raise InvalidCertificate("ssh: certificate has expired")
    try:
        options = {k.decode(): v for k, v in parsed.critical_options.items()}
        ext = {k.decode(): v for k, v in parsed.extensions.items()}
        user = parsed.key_id.decode()
        principals = tuple(p.decode() for p in parsed.valid_principals)
    except UnicodeDecodeError:
        raise InvalidCertificate("ssh: certificate key ID, principals, options or extensions are not UTF-8") from None
    unknown = sorted(set(options) - {"source-address"})
    if unknown:
        raise InvalidCertificate(f"ssh: unsupported critical options {unknown}")
    if "source-address" in options:
        _check_source(options["source-address"], client_ip)
    try:
        roles = json.loads(ext.get("teleport-roles", b'{"roles": []}'))["roles"]
        traits = json.loads(ext.get("teleport-traits", b"{}") or b"{}")
    except (ValueError, KeyError, TypeError, RecursionError):
        roles = traits = None
    if not _strings(roles) or not isinstance(traits, dict) or not all(
            isinstance(v, list | None) and _strings(v or []) for v in traits.values()):
        raise InvalidCertificate("ssh: malformed teleport-roles or teleport-traits extension")
    try:
        requests = parse_active_requests(ext.get(EXT_ACTIVE_REQUESTS))
    except ValueError as exc:
        raise InvalidCertificate(f"ssh: {exc}") from None
    return UserCert(
        user=user,
        roles=tuple(roles),
        traits={str(k): tuple(v or ()) for k, v in traits.items()},
        principals=principals,
        valid_before=_moment(parsed.valid_before),
        issued=cert_issued(parsed.valid_after),
        active_requests=requests,
    )


def _strings(value: object) -> bool:
    """Whether ``value`` is a list of strings."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _moment(timestamp: int) -> dt.datetime | None:
    """A certificate time as a datetime; None past what a datetime holds (OpenSSH's "forever")."""
    try:
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _check_source(value: bytes, client_ip: str) -> None:
    try:
        ip = ipaddress.ip_address(client_ip)
        networks = [ipaddress.ip_network(part.strip(), strict=False) for part in value.decode().split(",")]
    except ValueError:
        raise InvalidCertificate("ssh: certificate source-address does not allow this client") from None
    if not any(ip in net for net in networks):
        raise InvalidCertificate(f"ssh: certificate is not valid from {client_ip} (source-address)")


def user_from_tls_cert(der: bytes) -> UserCert:
    """The user in an X.509 client certificate the TLS handshake already verified against the
    user CA: CN = user, O = roles, PostalCode = traits (JSON)."""
    cert = x509.load_der_x509_certificate(der)
    subject = cert.subject

    def values(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in subject.get_attributes_for_oid(oid)]

    names = values(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise InvalidCertificate("tls: the client certificate names no user")
    traits: dict[str, tuple[str, ...]] = {}
    for text in values(NameOID.POSTAL_CODE):
        try:
            found = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            found = None
        if not isinstance(found, dict) or not all(_strings(v or []) for v in found.values()):
            raise InvalidCertificate("tls: malformed traits in the client certificate")
        traits.update({str(k): tuple(v or ()) for k, v in found.items()})
    try:
        requests = parse_active_requests(json.dumps(values(x509.ObjectIdentifier(ACTIVE_REQUESTS_OID))))
    except ValueError as exc:
        raise InvalidCertificate(f"tls: {exc}") from None
    return UserCert(names[0], tuple(values(NameOID.ORGANIZATION_NAME)), traits,
                    valid_before=cert.not_valid_after_utc, issued=tls_cert_issued(cert.not_valid_before_utc),
                    active_requests=requests)


def self_signed(hosts: Iterable[str], days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 server certificate for ``hosts``: (cert PEM, key PEM)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teleport-py proxy (self-signed)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM), keys.private_key_pem(key)
