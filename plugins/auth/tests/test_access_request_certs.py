"""Active access request IDs in certificates: auth's issuer writes them (SSH extension
``teleport-active-requests``, X.509 attribute 1.3.9999.2.8), and auth, the proxy and the node read
the same IDs back; a lock on a request matches a certificate carrying it, and only that one; a
certificate with a malformed list is refused everywhere."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import ssh
from teleport_auth.authority import generate_authority
from teleport_auth.issuer import (
    InvalidCertificate,
    identity_from_tls_cert,
    issue_ssh_user_cert,
    issue_tls_user_cert,
    verify_ssh_cert,
)
from teleport_node.certs import CertRefused, check_user_cert, load_ca_keys
from teleport_proxy.certs import InvalidCertificate as ProxyRefused
from teleport_proxy.certs import user_from_tls_cert, verify_user_ssh_cert

from teleport_core.pki import keys
from teleport_core.pki.certs import CertType
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.locks import LockTarget, lock_in_force, new_lock, parse_target

REQUEST = "0b6f3c52-7d0a-4a43-9b0e-6d2f2c1e9a10"
OTHER = "6a1d4c02-1b1b-4f5e-8c39-2a7f0d3e4b55"


@pytest.fixture(scope="module")
def ca():
    return generate_authority("user", "example.com")


def _identity(requests=(REQUEST,)) -> Identity:
    return Identity("alice", IdentityKind.USER, roles=("dev", "dba"), logins=("alice",), cluster="example.com",
                    active_requests=requests)


def test_every_component_reads_the_request_ids(ca):
    hook = make_plugins(entry_points=False, extra=[]).hook
    key = keys.generate_private_key("ed25519")
    public = keys.public_key_openssh(key)
    ssh_cert = issue_ssh_user_cert(ca, hook, public_key=public, identity=_identity()).data.decode()
    tls_cert = issue_tls_user_cert(ca, hook, public_key=public, identity=_identity()).data
    # auth
    assert verify_ssh_cert(ssh_cert, ca, cert_type=CertType.USER, principal=None).identity.active_requests == (
        REQUEST,)
    assert identity_from_tls_cert(tls_cert, [ca]).active_requests == (REQUEST,)
    # proxy
    ca_lines = [keys.public_key_openssh(k) for k in ca.ssh_public_keys]
    assert verify_user_ssh_cert(ssh_cert, ca_lines).active_requests == (REQUEST,)
    der = x509.load_pem_x509_certificate(tls_cert).public_bytes(serialization.Encoding.DER)
    assert user_from_tls_cert(der).active_requests == (REQUEST,)
    # node
    kind, blob = ssh_cert.split()[:2]
    node_cert = check_user_cert(base64.b64decode(blob), kind, load_ca_keys(ca_lines), login="alice",
                                client_ip="127.0.0.1")
    assert node_cert.active_requests == (REQUEST,)
    # a base certificate carries none
    plain = issue_ssh_user_cert(ca, hook, public_key=public, identity=_identity(())).data.decode()
    assert b"teleport-active-requests" in base64.b64decode(ssh_cert.split()[1])
    assert b"teleport-active-requests" not in base64.b64decode(plain.split()[1])
    assert verify_user_ssh_cert(plain, ca_lines).active_requests == ()


def test_a_lock_on_a_request_matches_only_certificates_carrying_it():
    lock = new_lock(LockTarget(access_request=REQUEST), "access request deleted",
                    expires=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert lock_in_force([lock], user="alice", roles=("dev", "dba"), access_requests=(REQUEST,)) == lock
    assert lock_in_force([lock], user="alice", roles=("dev", "dba"), access_requests=(OTHER,)) is None
    assert lock_in_force([lock], user="alice", roles=("dev",)) is None
    assert str(lock.target) == f'AccessRequest:"{REQUEST}"'
    assert parse_target({"access_request": REQUEST}) == LockTarget(access_request=REQUEST)


def test_a_malformed_request_list_is_refused_everywhere(ca):
    """A certificate the CA signed with a forged list (not IDs) is refused by auth, proxy and node."""
    key = keys.generate_private_key("ed25519")
    now = int(dt.datetime.now(dt.UTC).timestamp())
    cert = (ssh.SSHCertificateBuilder().public_key(key.public_key()).serial(1).type(ssh.SSHCertificateType.USER)
            .key_id(b"alice").valid_principals([b"alice"]).valid_after(now - 60).valid_before(now + 600)
            .add_extension(b"teleport-roles", json.dumps({"roles": ["dev"]}).encode())
            .add_extension(b"teleport-active-requests", b'["../../etc"]')
            .sign(ca.ssh_signer()).public_bytes().decode())
    with pytest.raises(InvalidCertificate, match="teleport-active-requests"):
        verify_ssh_cert(cert, ca, cert_type=CertType.USER, principal=None)
    ca_lines = [keys.public_key_openssh(k) for k in ca.ssh_public_keys]
    with pytest.raises(ProxyRefused, match="teleport-active-requests"):
        verify_user_ssh_cert(cert, ca_lines)
    kind, blob = cert.split()[:2]
    with pytest.raises(CertRefused, match="teleport-active-requests"):
        check_user_cert(base64.b64decode(blob), kind, load_ca_keys(ca_lines), login="alice", client_ip="127.0.0.1")


def test_tctl_lock_targets_an_access_request():
    from teleport_auth.tctl import UsageError
    from teleport_auth.tctl_locks import lock_target

    values = {"user": None, "role": None, "login": None, "node": None, "access_request": REQUEST}
    assert lock_target(values) == LockTarget(access_request=REQUEST)
    with pytest.raises(UsageError, match="--user and --access-request: a lock targets one thing"):
        lock_target({**values, "user": "alice"})
    with pytest.raises(UsageError, match="--access-request: must not be empty"):
        lock_target({**values, "access_request": " "})
