"""teleport_auth.x509cert: the direct DER encoder gives exactly cryptography's builder's certificate
(byte for byte with an Ed25519 CA, whose signatures are deterministic; the to-be-signed part with
ECDSA), the constant parts follow the CA certificate (a rotated CA's leaves name the new issuer and
key identifier), and whatever the builder refuses is still refused by the builder."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from teleport_auth import x509cert
from teleport_auth.authority import generate_authority
from teleport_auth.issuer import InvalidCertificate, identity_from_tls_cert, issue_tls_user_cert
from teleport_auth.x509cert import build, sign_leaf

from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity

CLUSTER = "x509.example"
SUBJECTS: dict[str, Callable[[], Any]] = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
    "rsa": lambda: rsa.generate_private_key(65537, 2048).public_key(),
}
NOW = dt.datetime(2026, 12, 5, 6, 0, 0, tzinfo=dt.UTC)


def ca_with(alg: str) -> Any:
    return generate_authority("user", CLUSTER, tls_alg=alg)


def subject_name(traits: str = '{"logins":["root","ubuntu"]}') -> x509.Name:
    attrs = [(NameOID.LOCALITY_NAME, "root"), (NameOID.LOCALITY_NAME, "ubuntu"),
             (NameOID.STREET_ADDRESS, CLUSTER), (NameOID.POSTAL_CODE, traits),
             (NameOID.ORGANIZATION_NAME, "access"), (NameOID.ORGANIZATION_NAME, "editor"),
             (NameOID.COMMON_NAME, "alice")]
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]) for oid, value in attrs])


def fields(**change: Any) -> dict[str, Any]:
    return {"subject": subject_name(), "public_key": SUBJECTS["ed25519"](), "serial": 2 ** 127 + 12345,
            "not_before": NOW - dt.timedelta(minutes=1), "not_after": NOW + dt.timedelta(hours=12), **change}


def reference(signer: Any, ca_cert: x509.Certificate, **given: Any) -> bytes:
    return build(signer, ca_cert, **given).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("kind", sorted(SUBJECTS))
@pytest.mark.parametrize("change", [
    {},
    {"serial": 1},
    {"serial": 2 ** 159 - 1},
    {"serial": 0x7F},  # the top bit clear and set: with and without a leading zero octet
    {"serial": 0x80},
    {"not_after": dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)},  # the last UTCTime
    {"not_after": dt.datetime(2050, 1, 1, tzinfo=dt.UTC)},  # the first GeneralizedTime
    {"not_before": dt.datetime(1950, 1, 1, tzinfo=dt.UTC)},
    {"not_after": NOW - dt.timedelta(minutes=1)},  # not after == not before: the builder allows it
    {"subject": subject_name("x" * 300)},  # a long traits attribute: long-form DER lengths
])
def test_the_same_bytes_as_cryptographys_builder(kind: str, change: dict[str, Any]) -> None:
    ca = ca_with("ed25519")
    signer, ca_cert = ca.tls_signer()
    given = fields(public_key=SUBJECTS[kind](), **change)
    ours = sign_leaf(signer, ca_cert, **given)
    assert ours == reference(signer, ca_cert, **given)
    cert = x509.load_pem_x509_certificate(ours)
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes)


def self_signed_ca(signer: Any) -> x509.Certificate:
    """A CA certificate the builder signs for ``signer`` (for key types ``generate_authority`` has not)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLUSTER)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(signer.public_key())
            .serial_number(7).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


@pytest.mark.parametrize("curve", [ec.SECP256R1, ec.SECP384R1])
def test_ecdsa_ca_the_same_certificate_but_its_random_signature(curve: type[ec.EllipticCurve]) -> None:
    signer = ec.generate_private_key(curve())
    ca_cert = self_signed_ca(signer)
    given = fields()
    ours = x509.load_pem_x509_certificate(sign_leaf(signer, ca_cert, **given))
    theirs = build(signer, ca_cert, **given)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    signer.public_key().verify(ours.signature, ours.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_rsa_ca_and_sans_go_through_the_builder() -> None:
    ca = ca_with("rsa2048")
    signer, ca_cert = ca.tls_signer()
    cert = x509.load_pem_x509_certificate(sign_leaf(signer, ca_cert, **fields()))
    assert cert.issuer == ca_cert.subject
    signer, ca_cert = ca_with("ecdsa-p256").tls_signer()
    sans = [x509.DNSName("teleport.cluster.local")]
    cert = x509.load_pem_x509_certificate(sign_leaf(signer, ca_cert, **fields(), sans=sans))
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == x509.SubjectAlternativeName(
        sans)


@pytest.mark.parametrize("change, message", [
    ({"serial": 0}, "serial number should be positive"),
    ({"serial": 2 ** 159}, "serial number should not be more than 159 bits"),
    ({"not_after": NOW - dt.timedelta(hours=1)}, "not valid after date must be after the not valid before"),
    ({"not_before": dt.datetime(1949, 12, 31, tzinfo=dt.UTC)}, "on or after 1950"),
])
def test_what_the_builder_refuses_is_still_refused(change: dict[str, Any], message: str) -> None:
    signer, ca_cert = ca_with("ed25519").tls_signer()
    with pytest.raises(ValueError, match=message):
        sign_leaf(signer, ca_cert, **fields(**change))


def test_a_rotated_ca_signs_with_its_own_issuer_and_key_identifier() -> None:
    """The constant parts are kept per CA certificate: after a rotation the leaves name the new CA,
    carry its key identifier and verify only against it."""
    hook = make_plugins().hook
    alice = Identity("alice", roles=("access",), traits={"logins": ["root"]}, logins=("root",), cluster=CLUSTER)
    old, new = ca_with("ecdsa-p256"), ca_with("ecdsa-p256")
    key = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    for ca, other in ((old, new), (new, old), (old, new)):  # back and forth: each CA keeps its own template
        pem = issue_tls_user_cert(ca, hook, public_key=key, identity=alice).data
        cert, ca_cert = x509.load_pem_x509_certificate(pem), ca.tls_signer()[1]
        assert cert.issuer == ca_cert.subject
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert identity_from_tls_cert(pem, [ca]).name == "alice"
        with pytest.raises(InvalidCertificate):
            identity_from_tls_cert(pem, [other])


def test_openssl_accepts_the_leaves_in_a_mutual_tls_handshake(tmp_path: Path) -> None:
    """OpenSSL (the TLS library of every mTLS handshake) verifies a client and a server leaf of the
    CA, both signed directly, in a real handshake (in memory)."""
    signer, ca_cert = ca_with("ecdsa-p256").tls_signer()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)

    def context(side: int, name: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / f"{name}.pem").write_bytes(sign_leaf(signer, ca_cert, **fields(
            public_key=key.public_key(), not_before=start, not_after=start + dt.timedelta(hours=1))))
        (tmp_path / f"{name}.key").write_bytes(keys.private_key_pem(key))
        made = ssl.SSLContext(side)
        made.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        made.load_verify_locations(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
        made.verify_mode = ssl.CERT_REQUIRED
        return made

    client_context = context(ssl.PROTOCOL_TLS_CLIENT, "client")
    client_context.check_hostname = False
    pipes = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    client = client_context.wrap_bio(pipes[0][0], pipes[0][1])
    server = context(ssl.PROTOCOL_TLS_SERVER, "server").wrap_bio(pipes[1][0], pipes[1][1], server_side=True)
    done = {client: False, server: False}
    for _ in range(10):
        for end in (client, server):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[1][0].write(pipes[0][1].read())  # client -> server
        pipes[0][0].write(pipes[1][1].read())  # server -> client
    assert done == {client: True, server: True}
    peer = server.getpeercert(binary_form=True)
    assert peer is not None and x509cert.pem(peer) == (tmp_path / "client.pem").read_bytes()
