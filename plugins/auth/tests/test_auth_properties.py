"""Property tests (hypothesis) of the auth server's reading of client X.509 certificates:
any bytes, a real certificate damaged, and a certificate the cluster CA signed whatever its
subject and extensions, give an :class:`Identity` or :class:`InvalidCertificate`, never
another exception. Crashes once found stay as ``@example``."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from teleport_auth.authority import generate_authority
from teleport_auth.issuer import InvalidCertificate, identity_from_tls_cert

from teleport_core.policy.access import Identity
from teleport_core.testing.strategies import mutations

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")  # CA-signed odd names
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLUSTER = "example.com"
USER_CA = generate_authority("user", CLUSTER)
HOST_CA = generate_authority("host", CLUSTER)
NOW = dt.datetime.now(dt.UTC)
KEY = ed25519.Ed25519PrivateKey.generate().public_key()
OIDS = {"cn": NameOID.COMMON_NAME, "o": NameOID.ORGANIZATION_NAME, "l": NameOID.LOCALITY_NAME,
        "street": NameOID.STREET_ADDRESS, "postal": NameOID.POSTAL_CODE}


def _sign(attributes: list[tuple[str, str]], *, host: bool = False, ca: bool = False, client: bool = True,
          extensions: bool = True) -> bytes:
    authority = HOST_CA if host else USER_CA
    subject = x509.Name([x509.NameAttribute(OIDS[kind], value, _validate=False) for kind, value in attributes])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(authority.active.tls_cert.subject)
               .public_key(KEY).serial_number(1).not_valid_before(NOW - dt.timedelta(minutes=1))
               .not_valid_after(NOW + dt.timedelta(hours=1)))
    if extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    key = authority.active.tls_private_key
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()).public_bytes(
        Encoding.DER)


GOOD = _sign([("cn", "alice"), ("o", "access"), ("postal", json.dumps({"logins": ["root"]}))])


def _flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 1]) + blob[index + 1:]


def _check(cert: bytes | str) -> None:
    try:
        identity = identity_from_tls_cert(cert, [USER_CA, HOST_CA], now=NOW)
    except InvalidCertificate as exc:
        assert str(exc)
        return
    assert isinstance(identity, Identity) and identity.name


def test_good_certificate_is_accepted() -> None:
    assert identity_from_tls_cert(GOOD, [USER_CA], now=NOW).name == "alice"


@FAST
@given(st.binary(max_size=600) | mutations(GOOD) | st.text(max_size=100).map(lambda t: "-----BEGIN CERTIFICATE-----\n" + t)
       | st.text(max_size=50))
@example("\udcff")  # a str that is not encodable as UTF-8
@example(_flip(GOOD, 11))  # the version's length: cryptography's InvalidVersion, not a ValueError
@example(_flip(GOOD, 38))  # inside the issuer name: loads, then fails when .issuer is read
@example(b"-----BEGIN CERTIFICATE-----\n\xff\n-----END CERTIFICATE-----\n")
def test_any_bytes_are_an_identity_or_refused(blob: bytes | str) -> None:
    _check(blob)


attribute_values = (st.sampled_from(["alice", "access", "", "{}", '{"logins": "ab"}', '{"a": [1]}', "[" * 3000,
                                     '{"logins": ["root"]}', f"5c3f7e1a-2b0d-4a7e-9c1b-0d9e8f7a6b5c.{CLUSTER}",
                                     "Node", "Proxy", "Admin"])
                    | st.text(min_size=1, max_size=20))


@FAST
@given(st.lists(st.tuples(st.sampled_from(sorted(OIDS)), attribute_values), max_size=6),
       st.booleans(), st.booleans(), st.booleans(), st.booleans())
@example([("cn", "alice"), ("postal", "[" * 3000)], False, False, True, True)  # nested too deeply
@example([("cn", "alice"), ("postal", '{"logins": "ab"}')], False, False, True, True)
@example([("cn", "x"), ("o", "Node")], True, False, True, True)
def test_any_signed_certificate_is_an_identity_or_refused(attributes: list[tuple[str, str]], host: bool, ca: bool,
                                                         client: bool, extensions: bool) -> None:
    _check(_sign(attributes, host=host, ca=ca, client=client, extensions=extensions))
