"""Certificate issuance and verification, checked with ssh-keygen, openssl and paramiko."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import attrs
import paramiko
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from teleport_auth.authority import CAKeys, CertAuthority, MissingSecrets, generate_authority, signature_hash
from teleport_auth.issuer import (
    DEFAULT_HOST_CERT_TTL,
    NOLOGIN_PREFIX,
    InvalidCertificate,
    identity_from_tls_cert,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    issue_tls_host_cert,
    issue_tls_user_cert,
    user_cert_ttl,
    verify_ssh_cert,
)

from teleport_core import hookimpl
from teleport_core.errors import AuthenticationFailed, CertificateVetoed, PluginError
from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.pki.certs import CertAdditions, CertFormat, CertRequest, CertType
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity, IdentityKind

CLUSTER = "example.com"
HOST_UUID = "5c3f7e1a-2b0d-4a7e-9c1b-0d9e8f7a6b5c"
NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
ALICE = Identity(
    name="alice",
    roles=("access", "editor"),
    traits={"logins": ["root", "alice"], "groups": ["dev"]},
    logins=("root", "alice"),
)
MINUTE = dt.timedelta(minutes=1)


# -- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return generate_authority("user", CLUSTER)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    return generate_authority("host", CLUSTER)


@pytest.fixture(scope="module")
def user_key() -> keys.PrivateKey:
    return keys.generate_private_key("ed25519")


@pytest.fixture
def hook() -> Any:
    """A plugin manager with no plugins at all."""
    return make_plugins(entry_points=False, extra=[]).hook


def hook_with(*plugins: object) -> Any:
    manager = make_plugins(entry_points=False, extra=[])
    for i, plugin in enumerate(plugins):
        manager.pm.register(plugin, name=f"test-plugin-{i}")
    return manager.hook


def ssh_keygen_list(cert: bytes, tmp_path: Path) -> dict[str, Any]:
    """``ssh-keygen -L`` output as a dict; extension values are decoded from their hex dump."""
    path = tmp_path / "cert-cert.pub"
    path.write_bytes(cert + b"\n")
    out = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    fields: dict[str, Any] = {}
    section = ""
    for line in out.splitlines()[1:]:
        if line.startswith(" " * 16):
            item = line.strip()
            if section == "Principals":
                fields[section].append(item)
                continue
            name, _, rest = item.partition(" ")
            if rest.startswith("UNKNOWN OPTION: "):
                raw = bytes.fromhex(rest.split()[2])
                assert int.from_bytes(raw[:4], "big") == len(raw) - 4
                rest = raw[4:].decode()
            fields[section][name] = rest
        else:
            key, _, value = line.strip().partition(":")
            value = value.strip()
            if key in ("Principals", "Critical Options", "Extensions"):
                section = key
                fields[key] = [] if key == "Principals" else {}
            else:
                section = ""
                fields[key] = value
    return fields


def keygen_time(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def openssl(cmd: str, tmp_path: Path, **files: bytes) -> subprocess.CompletedProcess[str]:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True)


def subject_fields(pem: bytes, tmp_path: Path) -> list[tuple[str, str]]:
    out = openssl("openssl x509 -in c.pem -noout -subject -nameopt multiline,utf8", tmp_path, **{"c.pem": pem})
    assert out.returncode == 0, out.stderr
    pairs = []
    for line in out.stdout.splitlines()[1:]:
        name, _, value = line.strip().partition("=")
        pairs.append((name.strip(), value.strip()))
    return pairs


def user_cert(ca: CertAuthority, key: keys.PrivateKey, hook: Any = None, **kwargs: Any) -> bytes:
    kwargs.setdefault("identity", ALICE)
    kwargs.setdefault("now", NOW)
    return issue_ssh_user_cert(ca, hook or hook_with(), public_key=keys.public_key_openssh(key), **kwargs).data


def host_cert(ca: CertAuthority, key: keys.PrivateKey, **kwargs: Any) -> bytes:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("role", "Node")
    return issue_ssh_host_cert(
        ca, hook_with(), public_key=key.public_key(), host_uuid=HOST_UUID, nodename="node1", **kwargs
    ).data


# -- SSH user certificates -----------------------------------------------------------------------------


def test_ssh_user_cert_fields(user_ca, user_key, hook, tmp_path):
    issued = issue_ssh_user_cert(
        user_ca,
        hook,
        public_key=keys.public_key_openssh(user_key),
        identity=ALICE,
        permit_agent_forwarding=True,
        permit_port_forwarding=True,
        permit_x11_forwarding=True,
        client_ip="192.0.2.7",
        now=NOW,
    )
    assert issued.data.startswith(b"ssh-ed25519-cert-v01@openssh.com ")
    info = ssh_keygen_list(issued.data, tmp_path)
    assert info["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert info["Key ID"] == '"alice"'
    assert info["Principals"] == ["root", "alice"]
    assert info["Valid"] == f"from {keygen_time(NOW - MINUTE)} to {keygen_time(NOW + dt.timedelta(hours=12))}"
    assert info["Signing CA"].startswith(f"ED25519 {user_ca.active.ssh_fingerprint} ")
    assert info["Critical Options"] == {}
    assert info["Extensions"] == {
        "permit-pty": "",
        "permit-agent-forwarding": "",
        "permit-port-forwarding": "",
        "permit-X11-forwarding": "",
        "teleport-roles": '{"roles":["access","editor"]}',
        "teleport-traits": '{"groups":["dev"],"logins":["root","alice"]}',
        "teleport-route-to-cluster": CLUSTER,
        "login-ip": "192.0.2.7",
    }
    assert int(info["Serial"]) == issued.serial and 0 <= issued.serial < 2**64
    assert issued.request.cert_type is CertType.USER and issued.request.cert_format is CertFormat.SSH
    assert issued.request.valid_before == NOW + dt.timedelta(hours=12)
    assert "alice" in repr(issued) and "AAAA" not in repr(issued)


def test_ssh_user_cert_minimal_permissions(user_ca, user_key, tmp_path):
    info = ssh_keygen_list(user_cert(user_ca, user_key), tmp_path)
    assert info["Critical Options"] == {}
    assert set(info["Extensions"]) == {
        "permit-pty",
        "teleport-roles",
        "teleport-traits",
        "teleport-route-to-cluster",
    }


def test_source_address_only_when_pinned(user_ca, user_key, tmp_path):
    info = ssh_keygen_list(user_cert(user_ca, user_key, client_ip="::ffff:192.0.2.9", pin_source_ip=True), tmp_path)
    assert info["Critical Options"] == {"source-address": "192.0.2.9"}
    assert info["Extensions"]["login-ip"] == "192.0.2.9"
    with pytest.raises(ValueError, match="needs the client IP"):
        user_cert(user_ca, user_key, pin_source_ip=True)
    with pytest.raises(ValueError, match="invalid client IP"):
        user_cert(user_ca, user_key, client_ip="not-an-ip")


def test_user_without_logins_gets_a_placeholder_principal(user_ca, user_key, tmp_path):
    nobody = attrs.evolve(ALICE, logins=())
    cert = user_cert(user_ca, user_key, identity=nobody)
    principals = ssh_keygen_list(cert, tmp_path)["Principals"]
    assert len(principals) == 1 and principals[0].startswith(NOLOGIN_PREFIX)
    verified = verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal=None, now=NOW)
    assert verified.identity.logins == ()
    with pytest.raises(InvalidCertificate, match="not in the set of valid principals"):
        verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=NOW)


def test_route_to_cluster(user_ca, user_key, tmp_path):
    info = ssh_keygen_list(user_cert(user_ca, user_key, route_to_cluster="leaf.example.org"), tmp_path)
    assert info["Extensions"]["teleport-route-to-cluster"] == "leaf.example.org"


@pytest.mark.parametrize(
    ("ttl", "max_session_ttl", "expected"),
    [
        (None, None, dt.timedelta(hours=12)),
        (dt.timedelta(0), None, dt.timedelta(hours=12)),
        (dt.timedelta(hours=1), None, dt.timedelta(hours=1)),
        (dt.timedelta(seconds=10), None, dt.timedelta(minutes=1)),
        (dt.timedelta(hours=48), None, dt.timedelta(hours=30)),
        (dt.timedelta(hours=30), None, dt.timedelta(hours=30)),
        (None, dt.timedelta(hours=2), dt.timedelta(hours=2)),
        (dt.timedelta(hours=48), dt.timedelta(hours=40), dt.timedelta(hours=30)),
        (dt.timedelta(hours=1), dt.timedelta(hours=8), dt.timedelta(hours=1)),
        (dt.timedelta(hours=1), dt.timedelta(seconds=30), dt.timedelta(seconds=30)),
    ],
)
def test_user_cert_ttl(ttl, max_session_ttl, expected, user_ca, user_key, tmp_path):
    assert user_cert_ttl(ttl, max_session_ttl) == expected
    issued = issue_ssh_user_cert(
        user_ca,
        hook_with(),
        public_key=user_key.public_key(),
        identity=ALICE,
        ttl=ttl,
        max_session_ttl=max_session_ttl,
        now=NOW,
    )
    assert ssh_keygen_list(issued.data, tmp_path)["Valid"] == (
        f"from {keygen_time(NOW - MINUTE)} to {keygen_time(NOW + expected)}"
    )
    tls = issue_tls_user_cert(
        user_ca,
        hook_with(),
        public_key=user_key.public_key(),
        identity=ALICE,
        ttl=ttl,
        max_session_ttl=max_session_ttl,
        now=NOW,
    )
    cert = x509.load_pem_x509_certificate(tls.data)
    assert cert.not_valid_before_utc == NOW - MINUTE
    assert cert.not_valid_after_utc == NOW + expected


def test_bad_ttls():
    with pytest.raises(ValueError):
        user_cert_ttl(dt.timedelta(seconds=-1))
    with pytest.raises(ValueError):
        user_cert_ttl(None, dt.timedelta(0))


def test_user_cert_input_validation(user_ca, host_ca, user_key):
    with pytest.raises(ValueError, match="user CA"):
        user_cert(host_ca, user_key)
    with pytest.raises(ValueError, match="user identity"):
        user_cert(user_ca, user_key, identity=attrs.evolve(ALICE, kind=IdentityKind.HOST))
    for bad in ("", "a b", "a,b", "a\nb"):
        with pytest.raises(ValueError, match="invalid username"):
            user_cert(user_ca, user_key, identity=attrs.evolve(ALICE, name=bad))
        with pytest.raises(ValueError, match="invalid login"):
            user_cert(user_ca, user_key, identity=attrs.evolve(ALICE, logins=("root", bad)))
        with pytest.raises(ValueError, match="invalid role"):
            user_cert(user_ca, user_key, identity=attrs.evolve(ALICE, roles=("access", bad)))
        with pytest.raises(ValueError, match="invalid role"):
            issue_tls_user_cert(
                user_ca, hook_with(), public_key=user_key.public_key(), identity=attrs.evolve(ALICE, roles=(bad,))
            )
    with pytest.raises(keys.UnsupportedKey):
        issue_ssh_user_cert(user_ca, hook_with(), public_key="ssh-ed25519 AAAA", identity=ALICE)
    with pytest.raises(MissingSecrets):
        user_cert(user_ca.without_secrets(), user_key)


@pytest.mark.parametrize("ca_alg", ["ed25519", "ecdsa-p256", "rsa2048"])
@pytest.mark.parametrize("subject_alg", ["ed25519", "ecdsa-p256", "rsa2048"])
def test_every_algorithm_combination_is_read_by_openssh(ca_alg, subject_alg, tmp_path):
    ca = generate_authority("user", CLUSTER, ssh_alg=ca_alg, tls_alg="ecdsa-p256")
    key = keys.generate_private_key(subject_alg)
    cert = user_cert(ca, key)
    info = ssh_keygen_list(cert, tmp_path)
    cert_types = {"ed25519": "ssh-ed25519", "ecdsa-p256": "ecdsa-sha2-nistp256", "rsa2048": "ssh-rsa"}
    assert info["Type"] == f"{cert_types[subject_alg]}-cert-v01@openssh.com user certificate"
    assert info["Signing CA"].split()[1] == ca.active.ssh_fingerprint
    if ca_alg == "rsa2048":
        assert info["Signing CA"].endswith("(using rsa-sha2-512)")
    verified = verify_ssh_cert(cert, ca, cert_type=CertType.USER, principal="root", now=NOW)
    assert keys.same_public_key(verified.public_key, key)


def test_paramiko_loads_the_user_cert(user_ca, user_key, tmp_path):
    path = tmp_path / "id"
    write_private(path, keys.private_key_openssh(user_key))
    cert = user_cert(user_ca, user_key)
    (tmp_path / "id-cert.pub").write_bytes(cert + b"\n")
    pkey = paramiko.Ed25519Key(filename=str(path))
    pkey.load_certificate(str(tmp_path / "id-cert.pub"))
    assert pkey.public_blob is not None
    assert pkey.public_blob.key_type == "ssh-ed25519-cert-v01@openssh.com"
    assert pkey.public_blob.key_blob == base64.b64decode(cert.split()[1])


# -- SSH host certificates -----------------------------------------------------------------------------


def test_ssh_host_cert_fields(host_ca, user_key, tmp_path):
    issued = issue_ssh_host_cert(
        host_ca,
        hook_with(),
        public_key=user_key.public_key(),
        host_uuid=HOST_UUID,
        nodename="node1",
        role="Node",
        additional_principals=["203.0.113.5", "node1.corp.example.org", "localhost"],
        now=NOW,
    )
    info = ssh_keygen_list(issued.data, tmp_path)
    assert info["Type"] == "ssh-ed25519-cert-v01@openssh.com host certificate"
    assert info["Key ID"] == f'"{HOST_UUID}.{CLUSTER}"'
    assert info["Principals"] == [
        f"{HOST_UUID}.{CLUSTER}",
        HOST_UUID,
        f"node1.{CLUSTER}",
        "node1",
        "localhost",
        "127.0.0.1",
        "::1",
        "203.0.113.5",
        "node1.corp.example.org",
    ]
    assert info["Critical Options"] == {}
    assert info["Extensions"] == {"x-teleport-role": "Node", "x-teleport-authority": CLUSTER}
    assert info["Valid"] == f"from {keygen_time(NOW - MINUTE)} to {keygen_time(NOW + DEFAULT_HOST_CERT_TTL)}"
    assert dt.timedelta(days=365) == DEFAULT_HOST_CERT_TTL
    assert issued.request.identity == Identity(
        name=f"{HOST_UUID}.{CLUSTER}", kind=IdentityKind.HOST, roles=("Node",), cluster=CLUSTER
    )


@pytest.mark.parametrize("role", ["Auth", "Proxy", "Node"])
def test_host_cert_roles_and_ttl(role, host_ca, user_key, tmp_path):
    cert = host_cert(host_ca, user_key, role=role, ttl=dt.timedelta(days=2))
    info = ssh_keygen_list(cert, tmp_path)
    assert info["Extensions"]["x-teleport-role"] == role
    assert info["Valid"].endswith(f"to {keygen_time(NOW + dt.timedelta(days=2))}")


def test_host_cert_input_validation(host_ca, user_ca, user_key):
    with pytest.raises(ValueError, match="host CA"):
        host_cert(user_ca, user_key)
    with pytest.raises(ValueError, match="invalid system role"):
        host_cert(host_ca, user_key, role="Admin")
    with pytest.raises(ValueError, match="must be positive"):
        host_cert(host_ca, user_key, ttl=dt.timedelta(0))
    for bad_uuid in ("", "a.b", "a b", "x" * 200):
        with pytest.raises(ValueError, match="invalid host UUID"):
            issue_ssh_host_cert(
                host_ca, hook_with(), public_key=user_key.public_key(), host_uuid=bad_uuid, nodename="n", role="Node"
            )
    with pytest.raises(ValueError, match="invalid principal"):
        host_cert(host_ca, user_key, additional_principals=["a,b"])


def test_host_cert_matches_known_hosts_line(host_ca, user_key, tmp_path):
    from teleport_auth.authority import export_known_hosts

    cert = host_cert(host_ca, user_key)
    info = ssh_keygen_list(cert, tmp_path)
    (tmp_path / "known_hosts").write_text(export_known_hosts(host_ca))
    line = (tmp_path / "known_hosts").read_text().split()
    assert info["Signing CA"].split()[1] == keys.ssh_fingerprint(keys.load_public_key(" ".join(line[2:4])))
    for principal in info["Principals"][:3:2]:  # <uuid>.<cluster>, <nodename>.<cluster>
        out = subprocess.run(
            ["ssh-keygen", "-F", principal, "-f", str(tmp_path / "known_hosts")], capture_output=True, text=True
        )
        assert "found: line 1 CA" in out.stdout


# -- X.509 certificates --------------------------------------------------------------------------------


def test_tls_user_cert_fields(user_ca, user_key, tmp_path):
    issued = issue_tls_user_cert(user_ca, hook_with(), public_key=keys.public_key_openssh(user_key), identity=ALICE)
    assert issued.request.cert_format is CertFormat.TLS
    pem = issued.data
    assert subject_fields(pem, tmp_path) == [
        ("localityName", "root"),
        ("localityName", "alice"),
        ("streetAddress", CLUSTER),
        ("postalCode", '{"groups":["dev"],"logins":["root","alice"]}'),
        ("organizationName", "access"),
        ("organizationName", "editor"),
        ("commonName", "alice"),
    ]
    files = {"ca.pem": user_ca.active.tls_cert_pem, "c.pem": pem}
    verified = openssl("openssl verify -CAfile ca.pem -purpose sslclient c.pem", tmp_path, **files)
    assert verified.stdout.strip() == "c.pem: OK", verified.stderr
    ext = openssl(
        "openssl x509 -in c.pem -noout -ext basicConstraints,keyUsage,extendedKeyUsage,subjectAltName", tmp_path
    ).stdout
    assert "CA:FALSE" in ext
    assert "Digital Signature, Key Encipherment" in ext
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in ext
    assert "Subject Alternative Name" not in ext

    cert = x509.load_pem_x509_certificate(pem)
    assert 0 < cert.serial_number < 2**128 and cert.serial_number == issued.serial
    assert cert.issuer == user_ca.active.tls_cert.subject
    ski = user_ca.active.tls_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert keys.same_public_key(cert.public_key(), user_key)  # type: ignore[arg-type]


def test_tls_user_cert_is_not_accepted_by_the_host_ca(user_ca, host_ca, user_key, tmp_path):
    pem = issue_tls_user_cert(user_ca, hook_with(), public_key=user_key.public_key(), identity=ALICE).data
    result = openssl(
        "openssl verify -CAfile ca.pem c.pem", tmp_path, **{"ca.pem": host_ca.active.tls_cert_pem, "c.pem": pem}
    )
    assert result.returncode != 0


@pytest.mark.parametrize("role", ["Auth"])
def test_tls_host_cert_of_auth(role, host_ca, tmp_path):
    key = keys.generate_private_key("ecdsa-p256")
    issued = issue_tls_host_cert(
        host_ca,
        hook_with(),
        public_key=keys.public_key_pem(key),
        host_uuid=HOST_UUID,
        role=role,
        dns_names=["auth.example.com"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    files = {"ca.pem": host_ca.active.tls_cert_pem, "c.pem": issued.data}
    for purpose in ("sslserver", "sslclient"):
        verified = openssl(f"openssl verify -CAfile ca.pem -purpose {purpose} c.pem", tmp_path, **files)
        assert verified.stdout.strip() == "c.pem: OK", verified.stderr
    assert subject_fields(issued.data, tmp_path) == [
        ("streetAddress", CLUSTER),
        ("organizationName", role),
        ("commonName", f"{HOST_UUID}.{CLUSTER}"),
    ]
    san = openssl("openssl x509 -in c.pem -noout -ext subjectAltName", tmp_path).stdout
    assert (
        "DNS:auth.example.com, DNS:teleport.cluster.local, DNS:*.teleport.cluster.local, "
        "IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"
    ) in san
    # openssl accepts the certificate for the name every client dials the auth API with.
    check = openssl("openssl verify -CAfile ca.pem -verify_hostname teleport.cluster.local c.pem", tmp_path)
    assert check.stdout.strip() == "c.pem: OK", check.stderr


@pytest.mark.parametrize("role", ["Node", "Proxy"])
def test_tls_host_cert_of_a_node_or_proxy_has_no_api_names(role, host_ca, tmp_path):
    """Only auth servers answer to teleport.cluster.local (a proxy passes that name through)."""
    key = keys.generate_private_key("ed25519")
    pem = issue_tls_host_cert(host_ca, hook_with(), public_key=key.public_key(), host_uuid=HOST_UUID, role=role).data
    cert = x509.load_pem_x509_certificate(pem)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    check = openssl(
        "openssl verify -CAfile ca.pem -verify_hostname teleport.cluster.local c.pem",
        tmp_path,
        **{"ca.pem": host_ca.active.tls_cert_pem, "c.pem": pem},
    )
    assert check.returncode != 0


@pytest.mark.parametrize("tls_alg", ["ed25519", "rsa2048"])
def test_tls_certs_from_other_ca_algorithms(tls_alg, tmp_path):
    ca = generate_authority("user", CLUSTER, tls_alg=tls_alg)
    key = keys.generate_private_key("rsa2048")
    pem = issue_tls_user_cert(ca, hook_with(), public_key=key.public_key(), identity=ALICE).data
    verified = openssl(
        "openssl verify -CAfile ca.pem c.pem", tmp_path, **{"ca.pem": ca.active.tls_cert_pem, "c.pem": pem}
    )
    assert verified.stdout.strip() == "c.pem: OK", verified.stderr
    assert identity_from_tls_cert(pem, [ca]).name == "alice"


def test_long_host_names_are_supported_without_warnings(tmp_path):
    cluster = "teleport-production.eu-west-1.corp.example.org"
    ca = generate_authority("host", cluster)
    key = keys.generate_private_key("ecdsa-p256")
    name = f"{HOST_UUID}.{cluster}"
    assert len(name) > 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pem = issue_tls_host_cert(ca, hook_with(), public_key=key.public_key(), host_uuid=HOST_UUID, role="Node").data
        assert identity_from_tls_cert(pem, [ca]).name == name
    assert subject_fields(pem, tmp_path)[-1] == ("commonName", name)
    verified = openssl(
        "openssl verify -CAfile ca.pem c.pem", tmp_path, **{"ca.pem": ca.active.tls_cert_pem, "c.pem": pem}
    )
    assert verified.stdout.strip() == "c.pem: OK", verified.stderr


# -- identity from X.509 -----------------------------------------------------------------------------


def test_identity_round_trip(user_ca, host_ca, user_key):
    pem = issue_tls_user_cert(user_ca, hook_with(), public_key=user_key.public_key(), identity=ALICE, now=NOW).data
    identity = identity_from_tls_cert(pem, [host_ca, user_ca], now=NOW)
    assert identity == Identity(
        name="alice",
        kind=IdentityKind.USER,
        roles=("access", "editor"),
        traits={"groups": ["dev"], "logins": ["root", "alice"]},
        logins=("root", "alice"),
        cluster=CLUSTER,
    )
    der = x509.load_pem_x509_certificate(pem).public_bytes(encoding=x509_der())
    assert identity_from_tls_cert(der, [user_ca], now=NOW) == identity

    host_pem = issue_tls_host_cert(
        host_ca, hook_with(), public_key=user_key.public_key(), host_uuid=HOST_UUID, role="Proxy", now=NOW
    ).data
    assert identity_from_tls_cert(host_pem, [user_ca, host_ca], now=NOW) == Identity(
        name=f"{HOST_UUID}.{CLUSTER}", kind=IdentityKind.HOST, roles=("Proxy",), cluster=CLUSTER
    )


def x509_der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def test_identity_needs_a_trusted_ca(user_ca, user_key):
    pem = issue_tls_user_cert(user_ca, hook_with(), public_key=user_key.public_key(), identity=ALICE, now=NOW).data
    other = generate_authority("user", CLUSTER)  # same subject name, different key
    with pytest.raises(InvalidCertificate, match="not signed by a trusted cluster CA"):
        identity_from_tls_cert(pem, [other], now=NOW)
    with pytest.raises(InvalidCertificate):
        identity_from_tls_cert(pem, [], now=NOW)
    assert issubclass(InvalidCertificate, AuthenticationFailed)


def test_identity_validity_window(user_ca, user_key):
    pem = issue_tls_user_cert(
        user_ca, hook_with(), public_key=user_key.public_key(), identity=ALICE, ttl=dt.timedelta(hours=1), now=NOW
    ).data
    assert identity_from_tls_cert(pem, [user_ca], now=NOW - MINUTE).name == "alice"
    assert identity_from_tls_cert(pem, [user_ca], now=NOW + dt.timedelta(hours=1)).name == "alice"
    with pytest.raises(InvalidCertificate, match="expired"):
        identity_from_tls_cert(pem, [user_ca], now=NOW + dt.timedelta(hours=1, seconds=1))
    with pytest.raises(InvalidCertificate, match="not valid before"):
        identity_from_tls_cert(pem, [user_ca], now=NOW - MINUTE - dt.timedelta(seconds=1))


def test_identity_refuses_the_ca_certificate_itself(user_ca):
    with pytest.raises(InvalidCertificate):
        identity_from_tls_cert(user_ca.active.tls_cert, [user_ca])


def test_identity_accepts_certs_of_the_previous_ca_during_rotation(user_ca, user_key):
    pem = issue_tls_user_cert(user_ca, hook_with(), public_key=user_key.public_key(), identity=ALICE, now=NOW).data
    rotating = attrs.evolve(user_ca, active=CAKeys.generate(CLUSTER), additional_trusted=user_ca.active)
    assert identity_from_tls_cert(pem, [rotating], now=NOW).name == "alice"
    finished = attrs.evolve(rotating, additional_trusted=None)
    with pytest.raises(InvalidCertificate):
        identity_from_tls_cert(pem, [finished], now=NOW)


def test_identity_refuses_host_certs_with_forged_names(host_ca, user_key):
    """A host CA-signed cert whose name is not <uuid>.<cluster> (built directly, bypassing the issuer)."""
    signer, ca_cert = host_ca.tls_signer()
    for cn, role in ((f"{HOST_UUID}.other.com", "Node"), (f"{HOST_UUID}.{CLUSTER}", "Admin")):
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_cert.subject)
            .public_key(user_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - MINUTE)
            .not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(signer, signature_hash(signer))
        )
        with pytest.raises(InvalidCertificate):
            identity_from_tls_cert(cert, [host_ca], now=NOW)


# -- plugins: extensions and vetoes --------------------------------------------------------------------


class AddExtension:
    def __init__(self) -> None:
        self.requests: list[CertRequest] = []

    @hookimpl
    def teleport_certificate_extensions(self, request: CertRequest) -> CertAdditions | None:
        self.requests.append(request)
        if request.cert_format is not CertFormat.SSH:
            return None
        return CertAdditions(extensions={"x-corp-team": "blue"}, critical_options={"force-command": "/bin/true"})


class VetoBob:
    @hookimpl
    def teleport_certificate_veto(self, request: CertRequest) -> str | None:
        if request.identity.name == "bob":
            return "bob is on leave"
        return None


class ChangePty:
    @hookimpl
    def teleport_certificate_extensions(self, request: CertRequest) -> CertAdditions:
        return CertAdditions(extensions={"permit-pty": "no"})


class AddToTLS:
    @hookimpl
    def teleport_certificate_extensions(self, request: CertRequest) -> CertAdditions:
        return CertAdditions(extensions={"x-anything": "1"})


class ReturnsDict:
    @hookimpl
    def teleport_certificate_extensions(self, request: CertRequest) -> Any:
        return {"x-oops": "1"}


def test_plugin_extension_appears_in_the_signed_cert(user_ca, user_key, tmp_path):
    plugin = AddExtension()
    issued = issue_ssh_user_cert(user_ca, hook_with(plugin), public_key=user_key.public_key(), identity=ALICE, now=NOW)
    info = ssh_keygen_list(issued.data, tmp_path)
    assert info["Extensions"]["x-corp-team"] == "blue"
    assert info["Critical Options"] == {"force-command": "/bin/true"}
    assert issued.request.extensions["x-corp-team"] == "blue"
    seen = plugin.requests[0]
    assert seen.identity.name == "alice" and seen.principals == ("root", "alice")
    assert seen.extensions["teleport-roles"] == '{"roles":["access","editor"]}'
    assert seen.public_key == keys.public_key_openssh(user_key)
    assert seen.valid_before == NOW + dt.timedelta(hours=12)
    # A plugin that checks the format leaves X.509 certificates alone.
    tls = issue_tls_user_cert(user_ca, hook_with(plugin), public_key=user_key.public_key(), identity=ALICE)
    assert plugin.requests[-1].cert_format is CertFormat.TLS and tls.request.extensions == {}


def test_plugin_extension_on_host_certs(host_ca, user_key, tmp_path):
    plugin = AddExtension()
    cert = issue_ssh_host_cert(
        host_ca, hook_with(plugin), public_key=user_key.public_key(), host_uuid=HOST_UUID, nodename="n", role="Node"
    ).data
    assert ssh_keygen_list(cert, tmp_path)["Extensions"]["x-corp-team"] == "blue"
    assert plugin.requests[0].cert_type is CertType.HOST


def test_veto_refuses_every_kind_of_issuance(user_ca, host_ca, user_key):
    hook = hook_with(VetoBob())
    bob = attrs.evolve(ALICE, name="bob")
    with pytest.raises(CertificateVetoed, match="bob is on leave"):
        issue_ssh_user_cert(user_ca, hook, public_key=user_key.public_key(), identity=bob)
    with pytest.raises(CertificateVetoed, match="bob is on leave"):
        issue_tls_user_cert(user_ca, hook, public_key=user_key.public_key(), identity=bob)
    assert issue_ssh_user_cert(user_ca, hook, public_key=user_key.public_key(), identity=ALICE).data


def test_veto_runs_before_extensions(user_ca, user_key):
    plugin = AddExtension()
    with pytest.raises(CertificateVetoed):
        issue_ssh_user_cert(
            user_ca,
            hook_with(plugin, VetoBob()),
            public_key=user_key.public_key(),
            identity=attrs.evolve(ALICE, name="bob"),
        )
    assert plugin.requests == []


def test_plugin_changing_an_issuer_extension_is_an_error(user_ca, user_key):
    with pytest.raises(PluginError, match="'permit-pty' set twice"):
        issue_ssh_user_cert(user_ca, hook_with(ChangePty()), public_key=user_key.public_key(), identity=ALICE)


def test_plugin_adding_to_x509_is_an_error(user_ca, host_ca, user_key):
    with pytest.raises(PluginError, match="X.509"):
        issue_tls_user_cert(user_ca, hook_with(AddToTLS()), public_key=user_key.public_key(), identity=ALICE)
    with pytest.raises(PluginError, match="X.509"):
        issue_tls_host_cert(
            host_ca, hook_with(AddToTLS()), public_key=user_key.public_key(), host_uuid=HOST_UUID, role="Node"
        )


def test_plugin_returning_the_wrong_type_is_an_error(user_ca, user_key):
    with pytest.raises(PluginError, match="expected CertAdditions"):
        issue_ssh_user_cert(user_ca, hook_with(ReturnsDict()), public_key=user_key.public_key(), identity=ALICE)


# -- SSH verification ----------------------------------------------------------------------------------


def test_verify_user_cert(user_ca, user_key):
    cert = user_cert(user_ca, user_key, client_ip="192.0.2.7")
    verified = verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=NOW)
    assert verified.cert_type is CertType.USER
    assert verified.key_id == "alice" and verified.principals == ("root", "alice")
    assert verified.valid_after == NOW - MINUTE and verified.valid_before == NOW + dt.timedelta(hours=12)
    assert verified.identity == Identity(
        name="alice",
        roles=("access", "editor"),
        traits={"groups": ["dev"], "logins": ["root", "alice"]},
        logins=("root", "alice"),
        cluster=CLUSTER,
    )
    assert verified.extensions["login-ip"] == "192.0.2.7"
    assert keys.same_public_key(verified.signature_key, user_ca.active.ssh_public_key)
    # trusted keys can also be given as key objects or authorized_keys lines
    line = user_ca.active.ssh_public_key_line
    for trusted in ([user_ca.active.ssh_public_key], [line]):
        assert verify_ssh_cert(cert.decode(), trusted, cert_type=CertType.USER, principal="alice", now=NOW).key_id
    assert (
        verify_ssh_cert(
            ssh.load_ssh_public_identity(cert),
            user_ca,
            cert_type=CertType.USER,
            principal=None,
            now=NOW,  # type: ignore[arg-type]
        ).key_id
        == "alice"
    )


def test_verify_host_cert(host_ca, user_key):
    cert = host_cert(host_ca, user_key, role="Proxy")
    verified = verify_ssh_cert(cert, host_ca, cert_type=CertType.HOST, principal=f"node1.{CLUSTER}", now=NOW)
    assert verified.identity == Identity(
        name=f"{HOST_UUID}.{CLUSTER}", kind=IdentityKind.HOST, roles=("Proxy",), cluster=CLUSTER
    )


def test_verify_rejects_expired(user_ca, user_key):
    cert = user_cert(user_ca, user_key, ttl=dt.timedelta(hours=1))
    end = NOW + dt.timedelta(hours=1)
    assert verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=end - dt.timedelta(seconds=1))
    with pytest.raises(InvalidCertificate, match="expired"):
        verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=end)


def test_verify_not_yet_valid_allows_one_minute_of_skew(user_ca, user_key):
    cert = user_cert(user_ca, user_key)
    # valid after NOW - 1 min; a clock up to one more minute behind is tolerated
    ok = NOW - 2 * MINUTE
    assert verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=ok)
    with pytest.raises(InvalidCertificate, match="not yet valid"):
        verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=ok - dt.timedelta(seconds=1))
    with pytest.raises(InvalidCertificate, match="not yet valid"):
        verify_ssh_cert(cert, user_ca, cert_type=CertType.USER, principal="root", now=ok, skew=dt.timedelta(0))


def test_verify_rejects_wrong_ca(user_ca, user_key):
    cert = user_cert(user_ca, user_key)
    other = generate_authority("user", CLUSTER)
    with pytest.raises(InvalidCertificate, match="unrecognized authority"):
        verify_ssh_cert(cert, other, cert_type=CertType.USER, principal="root", now=NOW)
    with pytest.raises(InvalidCertificate, match="unrecognized authority"):
        verify_ssh_cert(cert, [], cert_type=CertType.USER, principal="root", now=NOW)


def test_verify_rejects_host_cert_as_user_cert(host_ca, user_key):
    cert = host_cert(host_ca, user_key)
    with pytest.raises(InvalidCertificate, match="expected a user certificate, got a host certificate"):
        verify_ssh_cert(cert, host_ca.ssh_public_keys, cert_type=CertType.USER, principal="node1", now=NOW)
    with pytest.raises(InvalidCertificate, match="checked against the user CA"):
        verify_ssh_cert(cert, host_ca, cert_type=CertType.USER, principal="node1", now=NOW)


def test_verify_rejects_user_cert_as_host_cert(user_ca, user_key):
    cert = user_cert(user_ca, user_key)
    with pytest.raises(InvalidCertificate, match="expected a host certificate"):
        verify_ssh_cert(cert, user_ca.ssh_public_keys, cert_type=CertType.HOST, principal="root", now=NOW)


def test_verify_rejects_principal_not_in_cert(user_ca, host_ca, user_key):
    with pytest.raises(InvalidCertificate, match="'admin' not in the set of valid principals"):
        verify_ssh_cert(user_cert(user_ca, user_key), user_ca, cert_type=CertType.USER, principal="admin", now=NOW)
    with pytest.raises(InvalidCertificate, match="not in the set of valid principals"):
        verify_ssh_cert(
            host_cert(host_ca, user_key), host_ca, cert_type=CertType.HOST, principal="node2.example.com", now=NOW
        )


def test_verify_rejects_tampered_cert(user_ca, user_key):
    cert = user_cert(user_ca, user_key)
    kind, blob = cert.split()[:2]
    raw = base64.b64decode(blob)
    assert raw.count(b"\x00\x00\x00\x05alice") == 2  # key id, then a principal
    forged = raw.replace(b"\x00\x00\x00\x05alice", b"\x00\x00\x00\x05admin", 1)
    assert ssh.load_ssh_public_identity(kind + b" " + base64.b64encode(forged)).key_id == b"admin"  # type: ignore[union-attr]
    tampered = kind + b" " + base64.b64encode(forged)
    with pytest.raises(InvalidCertificate, match="signature does not verify"):
        verify_ssh_cert(tampered, user_ca, cert_type=CertType.USER, principal=None, now=NOW)


def test_verify_rejects_cert_signed_by_rogue_key_claiming_a_trusted_ca(user_ca, user_key):
    rogue = generate_authority("user", CLUSTER)
    cert = user_cert(rogue, user_key)
    kind, blob = cert.split()[:2]
    rogue_blob = base64.b64decode(rogue.active.ssh_public_key_line.split()[1])
    real_blob = base64.b64decode(user_ca.active.ssh_public_key_line.split()[1])
    forged = base64.b64decode(blob).replace(rogue_blob, real_blob)
    with pytest.raises(InvalidCertificate, match="signature does not verify"):
        verify_ssh_cert(
            kind + b" " + base64.b64encode(forged), user_ca, cert_type=CertType.USER, principal=None, now=NOW
        )


def test_verify_rejects_plain_keys_and_garbage(user_ca, user_key):
    with pytest.raises(InvalidCertificate, match="got a plain public key"):
        verify_ssh_cert(keys.public_key_openssh(user_key), user_ca, cert_type=CertType.USER, principal=None)
    with pytest.raises(InvalidCertificate, match="cannot parse"):
        verify_ssh_cert(b"ssh-ed25519-cert-v01@openssh.com AAAA", user_ca, cert_type=CertType.USER, principal=None)


def test_verify_source_address(user_ca, user_key):
    cert = user_cert(user_ca, user_key, client_ip="192.0.2.7", pin_source_ip=True)
    kwargs: dict[str, Any] = {"cert_type": CertType.USER, "principal": "root", "now": NOW}
    assert verify_ssh_cert(cert, user_ca, client_ip="192.0.2.7", **kwargs)
    assert verify_ssh_cert(cert, user_ca, client_ip="::ffff:192.0.2.7", **kwargs)
    with pytest.raises(InvalidCertificate, match="not allowed"):
        verify_ssh_cert(cert, user_ca, client_ip="192.0.2.8", **kwargs)
    with pytest.raises(InvalidCertificate, match="client address is unknown"):
        verify_ssh_cert(cert, user_ca, **kwargs)


def test_verify_rejects_unknown_critical_options(user_ca, user_key):
    cert = user_cert(user_ca, user_key, hook=hook_with(AddExtension()))
    kwargs: dict[str, Any] = {"cert_type": CertType.USER, "principal": "root", "now": NOW}
    with pytest.raises(InvalidCertificate, match="unsupported critical option 'force-command'"):
        verify_ssh_cert(cert, user_ca, **kwargs)
    verified = verify_ssh_cert(cert, user_ca, allowed_critical_options=["force-command", "source-address"], **kwargs)
    assert verified.critical_options == {"force-command": "/bin/true"}


def test_verify_accepts_previous_ca_during_rotation(user_ca, user_key):
    old_cert = user_cert(user_ca, user_key)
    rotating = attrs.evolve(user_ca, active=CAKeys.generate(CLUSTER), additional_trusted=user_ca.active)
    new_cert = user_cert(rotating, user_key)
    for cert in (old_cert, new_cert):
        assert verify_ssh_cert(cert, rotating, cert_type=CertType.USER, principal="root", now=NOW).key_id == "alice"
    finished = attrs.evolve(rotating, additional_trusted=None)
    assert verify_ssh_cert(new_cert, finished, cert_type=CertType.USER, principal="root", now=NOW)
    with pytest.raises(InvalidCertificate, match="unrecognized authority"):
        verify_ssh_cert(old_cert, finished, cert_type=CertType.USER, principal="root", now=NOW)


def test_verify_cert_valid_forever(host_ca, user_key):
    cert = (
        ssh.SSHCertificateBuilder()
        .public_key(user_key.public_key())  # type: ignore[arg-type]
        .type(ssh.SSHCertificateType.HOST)
        .key_id(f"{HOST_UUID}.{CLUSTER}".encode())
        .valid_principals([b"node1"])
        .valid_after(0)
        .valid_before(2**64 - 1)
        .add_extension(b"x-teleport-role", b"Node")
        .add_extension(b"x-teleport-authority", CLUSTER.encode())
        .sign(host_ca.ssh_signer())
    )
    far = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)
    verified = verify_ssh_cert(cert.public_bytes(), host_ca, cert_type=CertType.HOST, principal="node1", now=far)
    assert verified.valid_before is None


def test_verify_rejects_host_cert_with_unknown_role(host_ca, user_key):
    cert = (
        ssh.SSHCertificateBuilder()
        .public_key(user_key.public_key())  # type: ignore[arg-type]
        .type(ssh.SSHCertificateType.HOST)
        .key_id(b"x")
        .valid_principals([b"node1"])
        .valid_after(0)
        .valid_before(2**63)
        .add_extension(b"x-teleport-role", b"Admin")
        .sign(host_ca.ssh_signer())
    )
    with pytest.raises(InvalidCertificate, match="invalid system role 'Admin'"):
        verify_ssh_cert(cert.public_bytes(), host_ca, cert_type=CertType.HOST, principal="node1", now=NOW)
