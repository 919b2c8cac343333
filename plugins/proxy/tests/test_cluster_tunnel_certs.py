"""Which certificates may open a leaf cluster's tunnel at the root proxy, and which forwarded user
certificates a leaf accepts (the checks; no processes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from cryptography.x509.oid import NameOID
from teleport_proxy.certs import InvalidCertificate
from teleport_proxy.clusters import verify_user_tls_cert
from teleport_proxy.tunnel import TunnelRefused, cert_authority, verify_cluster_cert
from test_tunnel_certs import UUID, cert

LEAF = "leaf.example.com"
LEAF_CA = ed25519.Ed25519PrivateKey.generate()
LEAF_CA_LINE = LEAF_CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
PROXY = {"signer": LEAF_CA, "role": "Proxy", "authority": LEAF, "principals": (UUID, f"{UUID}.{LEAF}")}


def leaf_proxy_cert(**kwargs: Any) -> tuple[str, bytes]:
    return cert(**{**PROXY, **kwargs})


def test_a_known_leafs_proxy_certificate_opens_a_cluster_tunnel() -> None:
    key_type, blob = leaf_proxy_cert()
    assert cert_authority(key_type, blob) == LEAF
    assert verify_cluster_cert(key_type, blob, UUID, {LEAF: [LEAF_CA_LINE]}) == LEAF


@pytest.mark.parametrize(("kwargs", "known", "reason"), [
    ({}, {}, "is not a trusted leaf cluster"),  # no remote_cluster (never joined, or removed)
    ({"authority": "other.example.com"}, None, "is not a trusted leaf cluster"),
    # a leaf signing a certificate in another leaf's name: checked against the named leaf's CA
    ({"authority": "other.example.com", "principals": (UUID, f"{UUID}.other.example.com")},
     {LEAF: [LEAF_CA_LINE], "other.example.com": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]},
     "not signed"),
    ({"signer": ed25519.Ed25519PrivateKey.generate()}, None, "not signed"),
    ({"role": "Node"}, None, "only a leaf's proxies"),
    ({"principals": (UUID,)}, None, f"does not name host {UUID} of cluster {LEAF}"),
    ({"hours": -1}, None, "not valid now"),
    ({"kind": ssh.SSHCertificateType.USER}, None, "only host certificates"),
])
def test_everything_else_is_refused(kwargs: dict[str, Any], known: dict[str, list[str]] | None, reason: str) -> None:
    with pytest.raises(TunnelRefused) as err:
        verify_cluster_cert(*leaf_proxy_cert(**kwargs), UUID, {LEAF: [LEAF_CA_LINE]} if known is None else known)
    assert str(err.value).startswith("reverse tunnel: ") and reason in str(err.value)


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return key, ca


def _user_der(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], hours: int = 1) -> bytes:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "access")])
    user = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca[1].subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=2)).not_valid_after(now + dt.timedelta(hours=hours))
            .sign(ca[0], hashes.SHA256()))
    return user.public_bytes(Encoding.DER)


def test_a_forwarded_tls_certificate_must_come_from_the_roots_user_ca() -> None:
    root, other = _ca("root"), _ca("other")
    pems = (root[1].public_bytes(Encoding.PEM).decode(),)
    user = verify_user_tls_cert(_user_der(root), pems)
    assert user.user == "alice" and user.roles == ("access",)
    with pytest.raises(InvalidCertificate, match="not signed by the trusted cluster's user CA"):
        verify_user_tls_cert(_user_der(other), pems)  # the attacker's own CA
    with pytest.raises(InvalidCertificate, match="expired"):
        verify_user_tls_cert(_user_der(root, hours=-1), pems)
    with pytest.raises(InvalidCertificate, match="cannot parse"):
        verify_user_tls_cert(b"not a certificate", pems)
