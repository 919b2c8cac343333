"""Property tests (hypothesis) of the node's user-certificate check: any blob a client offers,
and any certificate the user CA signed whatever its fields, is a :class:`UserCert` or a
:class:`CertRefused` with a reason, never another exception. Crashes once found stay as ``@example``."""

from __future__ import annotations

import base64
import datetime as dt

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from teleport_node.certs import CertRefused, UserCert, check_user_cert, load_ca_keys

from teleport_core.testing.strategies import mutations, ssh_user_certs

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CA = ed25519.Ed25519PrivateKey.generate()
CA_KEYS = load_ca_keys([CA.public_key().public_bytes(ssh.Encoding.OpenSSH, ssh.PublicFormat.OpenSSH).decode()])
NOW = dt.datetime.now(dt.UTC)
KEY_TYPE = "ssh-ed25519-cert-v01@openssh.com"


def _blob(line: bytes) -> tuple[str, bytes]:
    kind, data = line.split()[:2]
    return kind.decode(), base64.b64decode(data)


def _cert(**extensions: bytes) -> bytes:
    builder = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key())
               .serial(1).key_id(b"alice").type(ssh.SSHCertificateType.USER).valid_principals([b"root"])
               .valid_after(0).valid_before(2**64 - 1))
    for name, value in sorted(extensions.items()):
        builder = builder.add_extension(name.replace("_", "-").encode(), value)
    return bytes(builder.sign(CA).public_bytes())


GOOD = _blob(_cert(teleport_roles=b'{"roles": ["dev"]}'))[1]


def _check(key_type: str, blob: bytes, login: str = "root", client_ip: str = "127.0.0.1") -> None:
    try:
        cert = check_user_cert(blob, key_type, CA_KEYS, login=login, client_ip=client_ip, now=NOW)
    except CertRefused as exc:
        assert str(exc)
        return
    assert isinstance(cert, UserCert) and login in cert.principals
    assert all(isinstance(r, str) for r in cert.roles)


@FAST
@given(st.sampled_from([KEY_TYPE, "ssh-ed25519", "ssh-rsa-cert-v01@openssh.com", "\udcff"]) | st.text(max_size=20),
       st.binary(max_size=300) | mutations(GOOD))
@example("\udcff", GOOD)  # a key type that is not UTF-8
def test_any_blob_is_a_user_cert_or_refused(key_type: str, blob: bytes) -> None:
    _check(key_type, blob)


@FAST
@given(ssh_user_certs(CA, principals=[b"root"]).map(_blob), st.sampled_from(["root", "\udcff", ""]),
       st.sampled_from(["127.0.0.1", "::1", ""]))
@example(_blob(_cert(teleport_roles=b"[" * 5000)), "root", "127.0.0.1")  # nested too deeply
@example(_blob(_cert(teleport_roles=b'{"roles": "abc"}')), "root", "127.0.0.1")
@example(_blob(_cert(teleport_traits=b'{"logins": "ab"}')), "root", "127.0.0.1")
@example(_blob(_cert(teleport_traits=b"[]")), "root", "127.0.0.1")
def test_any_signed_cert_is_a_user_cert_or_refused(cert: tuple[str, bytes], login: str, client_ip: str) -> None:
    _check(*cert, login=login, client_ip=client_ip)


def test_roles_and_traits_must_be_string_lists() -> None:
    for ext in ({"teleport_roles": b'{"roles": "abc"}'}, {"teleport_traits": b'{"logins": "ab"}'},
                {"teleport_roles": b"[" * 5000}):
        try:
            check_user_cert(_blob(_cert(**ext))[1], KEY_TYPE, CA_KEYS, login="root", client_ip="127.0.0.1", now=NOW)
        except CertRefused as exc:
            assert "malformed" in str(exc)
        else:
            raise AssertionError(f"accepted {ext}")
    assert check_user_cert(GOOD, KEY_TYPE, CA_KEYS, login="root", client_ip="127.0.0.1", now=NOW).roles == ("dev",)
