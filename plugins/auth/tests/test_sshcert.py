"""teleport_auth.sshcert: the direct serializer gives exactly cryptography's builder's certificate
(Ed25519 signatures are deterministic: same nonce, same bytes), OpenSSH reads it, and whatever the
builder refuses is still refused by the builder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import ssh
from teleport_auth import sshcert
from teleport_auth.sshcert import sign_certificate

NONCE = bytes(range(32))
SUBJECTS = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
    "rsa": lambda: rsa.generate_private_key(65537, 2048).public_key(),
}
FIELDS: dict[str, Any] = {
    "serial": 2 ** 64 - 1, "cert_type": ssh.SSHCertificateType.USER, "key_id": b"alice",
    "principals": [b"root", b"alice", b"\xc3\xa9t\xc3\xa9"], "valid_after": 1_700_000_000, "valid_before": 1_700_003_600,
    "critical_options": {b"source-address": b"10.0.0.1/32", b"force-command": b""},
    "extensions": {b"permit-pty": b"", b"teleport-roles": b'{"roles":["access"]}', b"login-ip": b"10.0.0.1",
                   b"permit-agent-forwarding": b""},
}


def builder_certificate(signer: Any, subject: Any, monkeypatch: pytest.MonkeyPatch, **fields: Any) -> bytes:
    """cryptography's certificate for the same fields, its nonce fixed to NONCE."""
    monkeypatch.setattr(ssh.os, "urandom", lambda n: NONCE[:n])
    try:
        return sshcert._builder(signer, subject, fields["serial"], fields["cert_type"], fields["key_id"],
                                fields["principals"], fields["valid_after"], fields["valid_before"],
                                list(fields["critical_options"].items()), list(fields["extensions"].items()))
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("kind", sorted(SUBJECTS))
@pytest.mark.parametrize("cert_type", [ssh.SSHCertificateType.USER, ssh.SSHCertificateType.HOST])
def test_the_same_bytes_as_cryptographys_builder(kind: str, cert_type: ssh.SSHCertificateType,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    signer, subject = ed25519.Ed25519PrivateKey.generate(), SUBJECTS[kind]()
    fields = {**FIELDS, "cert_type": cert_type}
    ours = sign_certificate(signer, subject, nonce=NONCE, **fields)
    assert ours == builder_certificate(signer, subject, monkeypatch, **fields)
    cert = ssh.load_ssh_public_identity(ours)
    assert isinstance(cert, ssh.SSHCertificate)
    cert.verify_cert_signature()
    assert (cert.key_id, cert.valid_principals, cert.serial) == (b"alice", FIELDS["principals"], 2 ** 64 - 1)
    assert cert.extensions == FIELDS["extensions"] and cert.critical_options == FIELDS["critical_options"]
    unfixed = sign_certificate(signer, subject, **fields)  # a random nonce: a different, valid certificate
    assert unfixed != ours
    ssh.load_ssh_public_identity(unfixed).verify_cert_signature()  # type: ignore[union-attr]


def test_empty_options_and_one_principal(monkeypatch: pytest.MonkeyPatch) -> None:
    signer, subject = ed25519.Ed25519PrivateKey.generate(), SUBJECTS["ed25519"]()
    fields = {**FIELDS, "principals": [b"x"], "critical_options": {}, "extensions": {}, "key_id": b""}
    assert sign_certificate(signer, subject, nonce=NONCE, **fields) == builder_certificate(
        signer, subject, monkeypatch, **fields)


@pytest.mark.parametrize("change, message", [
    ({"principals": []}, "can't be empty"),
    ({"principals": [b"p%d" % i for i in range(257)]}, "maximum number of valid_principals"),
    ({"valid_after": 10, "valid_before": 5}, "valid_after must be earlier than valid_before"),
    ({"serial": 2 ** 64}, "serial"),
    ({"valid_before": 2 ** 64}, "valid_before"),
])
def test_what_the_builder_refuses_is_still_refused(change: dict[str, Any], message: str) -> None:
    signer, subject = ed25519.Ed25519PrivateKey.generate(), SUBJECTS["ed25519"]()
    with pytest.raises((ValueError, TypeError), match=message):
        sign_certificate(signer, subject, **{**FIELDS, **change})


def test_other_ca_key_types_go_through_the_builder() -> None:
    for signer in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)):
        cert = ssh.load_ssh_public_identity(sign_certificate(signer, SUBJECTS["ed25519"](), **FIELDS))
        assert isinstance(cert, ssh.SSHCertificate)
        cert.verify_cert_signature()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH's ssh-keygen is not installed")
def test_openssh_reads_the_certificate(tmp_path: Path) -> None:
    signer, subject = ed25519.Ed25519PrivateKey.generate(), SUBJECTS["ed25519"]()
    path = tmp_path / "id-cert.pub"
    fields = {**FIELDS, "critical_options": {b"source-address": b"10.0.0.1/32"}}
    path.write_bytes(sign_certificate(signer, subject, **fields) + b"\n")
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], check=True, capture_output=True, text=True).stdout
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out and "Serial: 18446744073709551615" in out
    assert "source-address 10.0.0.1/32" in out and "permit-pty" in out
    assert "Signing CA: ED25519 SHA256:" in out
