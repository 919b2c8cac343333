"""Property tests (hypothesis) of the proxy's parsers of what clients send: user SSH
certificates, the ``proxy:host:port@cluster`` subsystem and the TLS-routing dial line.

Whatever the input, the result is a value or the parser's own refusal (InvalidCertificate,
None for a malformed name), never another exception. Crashes once found stay as ``@example``.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from teleport_proxy.certs import InvalidCertificate, UserCert, user_from_tls_cert, verify_user_ssh_cert
from teleport_proxy.mux import MAX_DIAL_LINE
from teleport_proxy.sshserver import parse_subsystem

from teleport_core.testing.strategies import mutations, ssh_user_certs

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")  # odd names on purpose
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CA = ed25519.Ed25519PrivateKey.generate()
TRUSTED = [CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()]
NOW = dt.datetime.now(dt.UTC)


def _cert(*, key_id: bytes = b"alice", before: int = 2**64 - 1, options: dict[bytes, bytes] | None = None,
          extensions: dict[bytes, bytes] | None = None) -> str:
    builder = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key())
               .serial(1).key_id(key_id).type(ssh.SSHCertificateType.USER).valid_principals([b"root"])
               .valid_after(0).valid_before(before))
    for name, value in sorted((options or {}).items()):
        builder = builder.add_critical_option(name, value)
    for name, value in sorted((extensions or {}).items()):
        builder = builder.add_extension(name, value)
    return builder.sign(CA).public_bytes().decode()


GOOD = _cert(before=int(NOW.timestamp()) + 3600, extensions={b"teleport-roles": b'{"roles": ["dev"]}'})


def _check(line: str, client_ip: str = "127.0.0.1") -> None:
    try:
        cert = verify_user_ssh_cert(line, TRUSTED, client_ip=client_ip, now=NOW)
    except InvalidCertificate as exc:
        assert str(exc).startswith("ssh: ")
        return
    assert isinstance(cert, UserCert)
    assert all(isinstance(r, str) for r in cert.roles)
    assert all(isinstance(k, str) and all(isinstance(v, str) for v in vals) for k, vals in cert.traits.items())


@FAST
@given(st.text(max_size=200) | mutations(GOOD.encode()).map(lambda b: b.decode(errors="replace"))
       | st.binary(max_size=200).map(lambda b: "ssh-ed25519-cert-v01@openssh.com " + b.hex()))
@example("ssh-ed25519-cert-v01@openssh.com \udcff")  # not encodable as UTF-8
def test_any_line_is_a_user_cert_or_refused(line: str) -> None:
    _check(line)


@FAST
@given(ssh_user_certs(CA, principals=[b"root"]).map(bytes.decode), st.sampled_from(["127.0.0.1", "10.1.2.3", "", "x"]))
@example(_cert(), "127.0.0.1")  # valid until the end of time: datetime.fromtimestamp overflowed
@example(_cert(options={b"\xff": b""}), "127.0.0.1")  # a critical option name that is not UTF-8
@example(_cert(key_id=b"\xff"), "127.0.0.1")  # a key ID that is not UTF-8
@example(_cert(options={b"source-address": b"\xff"}), "127.0.0.1")
@example(_cert(extensions={b"teleport-roles": b'{"roles": "abc"}'}), "127.0.0.1")  # a string is not a list of roles
@example(_cert(extensions={b"teleport-roles": b'{"roles": [1]}'}), "127.0.0.1")
@example(_cert(extensions={b"teleport-traits": b'{"logins": "ab"}'}), "127.0.0.1")
@example(_cert(extensions={b"teleport-traits": b'{"logins": [1]}'}), "127.0.0.1")
@example(_cert(extensions={b"teleport-roles": b"[" * 5000}), "127.0.0.1")
@example(_cert(extensions={b"\xff": b""}), "127.0.0.1")
def test_any_signed_cert_is_a_user_cert_or_refused(line: str, client_ip: str) -> None:
    _check(line, client_ip)


def test_roles_and_traits_must_be_string_lists() -> None:
    for ext in ({b"teleport-roles": b'{"roles": "abc"}'}, {b"teleport-traits": b'{"logins": "ab"}'}):
        try:
            verify_user_ssh_cert(_cert(extensions=ext), TRUSTED, now=NOW)
        except InvalidCertificate as exc:
            assert "malformed" in str(exc)
        else:
            raise AssertionError(f"accepted {ext}")
    assert verify_user_ssh_cert(GOOD, TRUSTED, now=NOW).roles == ("dev",)


# -- the user in a (TLS-verified) client certificate ----------------------------------------------

def _x509(attributes: list[tuple[str, str]]) -> bytes:
    oids = {"cn": NameOID.COMMON_NAME, "o": NameOID.ORGANIZATION_NAME, "postal": NameOID.POSTAL_CODE}
    subject = x509.Name([x509.NameAttribute(oids[k], v, _validate=False) for k, v in attributes])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(CA.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(hours=1))
            .sign(CA, None).public_bytes(Encoding.DER))


@FAST
@given(st.lists(st.tuples(st.sampled_from(["cn", "o", "postal"]),
                          st.sampled_from(["alice", "{}", '{"logins": "ab"}', '{"logins": [1]}', "[" * 3000, "null",
                                           '{"logins": ["root"]}']) | st.text(min_size=1, max_size=12)),
                max_size=5))
@example([("cn", "alice"), ("postal", "[" * 3000)])  # nested too deeply: RecursionError
@example([("cn", "alice"), ("postal", '{"logins": "ab"}')])  # a string is not a list of logins
def test_user_of_any_client_certificate_or_refused(attributes: list[tuple[str, str]]) -> None:
    try:
        user = user_from_tls_cert(_x509(attributes))
    except InvalidCertificate as exc:
        assert str(exc).startswith("tls: ")
        return
    assert all(isinstance(v, str) for values in user.traits.values() for v in values)


# -- the proxy: subsystem and the TLS-routing dial line -----------------------------------------

@FAST
@given(st.text(max_size=40).map(lambda s: "proxy:" + s) | st.text(max_size=40))
@example("proxy:node:٣٠٢٢@c")  # Unicode digits: int() took them
@example("proxy:node:-1@c")
@example("proxy:node:+22@c")
@example("proxy:node:99999@c")
@example("proxy::22@c")
@example("proxy:no\nde:22@c")
def test_subsystem_is_parsed_or_none(name: str) -> None:
    parsed = parse_subsystem(name)
    if parsed is not None:
        host, port, cluster = parsed
        assert host and host.isprintable() and 0 <= port <= 65535 and isinstance(cluster, str)


@FAST
@given(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True) | st.sampled_from(["::1", "fe80::1"]),
       st.integers(0, 65535), st.from_regex(r"[a-z0-9.-]{0,12}", fullmatch=True))
def test_subsystem_round_trip(host: str, port: int, cluster: str) -> None:
    shown = f"[{host}]" if ":" in host else host
    assert parse_subsystem(f"proxy:{shown}:{port}@{cluster}") == (host, port, cluster)


@FAST
@given(st.binary(max_size=MAX_DIAL_LINE))
@example(b"node:22@c\r")
@example(b"\xff\xfe:22@c")
def test_dial_line_is_parsed_or_refused(line: bytes) -> None:
    """What ``DialingPipe`` does with the bytes before the newline."""
    request = line.decode(errors="replace").strip()
    parsed = parse_subsystem("proxy:" + request)
    if parsed is not None:
        assert parsed[0] and 0 <= parsed[1] <= 65535
    json.dumps(request[:100])  # the refusal quotes it
