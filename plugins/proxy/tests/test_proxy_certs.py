"""The proxy's checks of user certificates (SSH and X.509) and of subsystem names."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from cryptography.x509.oid import NameOID
from teleport_proxy.certs import InvalidCertificate, self_signed, user_from_tls_cert, verify_user_ssh_cert
from teleport_proxy.sshserver import parse_subsystem

NOW = int(dt.datetime.now(dt.UTC).timestamp())


def verify(text: str, trusted: list[str], **kw: Any) -> Any:
    """Checked as of ``NOW`` (taken at import: the suite may run many minutes after collection)."""
    kw.setdefault("now", dt.datetime.fromtimestamp(NOW, dt.UTC))
    return verify_user_ssh_cert(text, trusted, **kw)


def line(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def user_cert(ca: ed25519.Ed25519PrivateKey, *, kind: ssh.SSHCertificateType = ssh.SSHCertificateType.USER,
              after: int = NOW - 60, before: int = NOW + 3600, options: dict[bytes, bytes] | None = None) -> str:
    builder = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key())
               .serial(7).key_id(b"alice").type(kind).valid_principals([b"root"])
               .valid_after(after).valid_before(before)
               .add_extension(b"permit-pty", b"")
               .add_extension(b"teleport-roles", json.dumps({"roles": ["dev"]}).encode())
               .add_extension(b"teleport-traits", json.dumps({"logins": ["root"]}).encode()))
    for name, value in (options or {}).items():
        builder = builder.add_critical_option(name, value)
    return builder.sign(ca).public_bytes().decode()


@pytest.fixture
def ca() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_valid_user_certificate(ca: ed25519.Ed25519PrivateKey) -> None:
    cert = verify(user_cert(ca), [line(ca.public_key())])
    assert (cert.user, cert.roles, dict(cert.traits), cert.principals) == ("alice", ("dev",), {"logins": ("root",)},
                                                                          ("root",))


def test_refusals(ca: ed25519.Ed25519PrivateKey) -> None:
    trusted = [line(ca.public_key())]
    other = ed25519.Ed25519PrivateKey.generate()
    cases = [
        (user_cert(other), "unrecognized authority"),
        (user_cert(ca, kind=ssh.SSHCertificateType.HOST), "a user certificate is required"),
        (user_cert(ca, after=NOW - 7200, before=NOW - 1), "expired"),
        (user_cert(ca, after=NOW + 600), "not yet valid"),
        (user_cert(ca, options={b"force-command": b"/bin/true"}), "unsupported critical options"),
        (line(ca.public_key()), "a certificate is required"),
    ]
    for text, reason in cases:
        with pytest.raises(InvalidCertificate, match=reason):
            verify(text, trusted)


def test_clock_skew_of_one_minute_is_accepted(ca: ed25519.Ed25519PrivateKey) -> None:
    verify(user_cert(ca, after=NOW + 30), [line(ca.public_key())])


def test_source_address_pins_the_client(ca: ed25519.Ed25519PrivateKey) -> None:
    pinned = user_cert(ca, options={b"source-address": b"10.0.0.0/8,192.0.2.7"})
    trusted = [line(ca.public_key())]
    verify(pinned, trusted, client_ip="10.1.2.3")
    verify(pinned, trusted, client_ip="192.0.2.7")
    with pytest.raises(InvalidCertificate, match="source-address"):
        verify(pinned, trusted, client_ip="127.0.0.1")
    with pytest.raises(InvalidCertificate, match="source-address"):
        verify(pinned, trusted, client_ip="")


def test_user_from_tls_certificate() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dev"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "access"),
                         x509.NameAttribute(NameOID.POSTAL_CODE, json.dumps({"logins": ["root"]}))])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1)).sign(key, None))
    user = user_from_tls_cert(cert.public_bytes(Encoding.DER))
    assert (user.user, user.roles, dict(user.traits)) == ("alice", ("dev", "access"), {"logins": ("root",)})


def test_self_signed_certificate_names_the_hosts() -> None:
    cert_pem, key_pem = self_signed(["proxy.example.com", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["proxy.example.com"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256) and b"PRIVATE KEY" in key_pem


@pytest.mark.parametrize(("name", "expected"), [
    ("proxy:node-1:3022@example.com", ("node-1", 3022, "example.com")),
    ("proxy:node-1:0@example.com", ("node-1", 0, "example.com")),
    ("proxy:node-1@example.com", ("node-1", 0, "example.com")),
    ("proxy:[::1]:22@c", ("::1", 22, "c")),
    ("proxy:10.0.0.1:x@c", None),
    ("sftp", None),
])
def test_parse_subsystem(name: str, expected: tuple[str, int, str] | None) -> None:
    assert parse_subsystem(name) == expected
