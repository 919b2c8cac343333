"""Certificate authorities: generation, storage form, safe repr, exports and the CA pin."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import logging
import subprocess

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from teleport_auth.authority import (
    CAKeys,
    CAPinMismatch,
    CAType,
    CertAuthority,
    MissingSecrets,
    Rotation,
    RotationMode,
    RotationPhase,
    ca_pin,
    ca_pins,
    check_ca_pin,
    export_authorized_keys,
    export_known_hosts,
    export_tls_pem,
    export_trusted_user_ca_keys,
    generate_authority,
)

from teleport_core.pki import keys

CLUSTER = "example.com"
HOST_UUID = "5c3f7e1a-2b0d-4a7e-9c1b-0d9e8f7a6b5c"


def run(cmd: str, input: bytes | None = None) -> str:
    return subprocess.run(cmd, shell=True, input=input, capture_output=True, check=True).stdout.decode()


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return generate_authority("user", CLUSTER)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    return generate_authority("host", CLUSTER)


# -- generation -------------------------------------------------------------------------------------


def test_default_algorithms(user_ca: CertAuthority):
    assert user_ca.kind is CAType.USER and user_ca.cluster_name == CLUSTER
    assert isinstance(user_ca.active.ssh_private_key, ed25519.Ed25519PrivateKey)
    assert isinstance(user_ca.active.tls_private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(user_ca.active.tls_private_key.curve, ec.SECP256R1)
    assert user_ca.additional_trusted is None
    assert user_ca.rotation == Rotation()
    assert user_ca.rotation.phase is RotationPhase.STANDBY
    assert user_ca.rotation.grace_period == dt.timedelta(hours=30)


@pytest.mark.parametrize(
    ("ssh_alg", "tls_alg", "ssh_type", "tls_type"),
    [
        ("rsa2048", "ed25519", rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey),
        ("ecdsa-p256", "rsa2048", ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey),
    ],
)
def test_selectable_algorithms(ssh_alg, tls_alg, ssh_type, tls_type, tmp_path):
    ca = generate_authority("host", CLUSTER, ssh_alg=ssh_alg, tls_alg=tls_alg)
    assert isinstance(ca.active.ssh_private_key, ssh_type)
    assert isinstance(ca.active.tls_private_key, tls_type)
    (tmp_path / "ca.pem").write_bytes(export_tls_pem(ca))
    assert run(f"openssl verify -CAfile {tmp_path}/ca.pem {tmp_path}/ca.pem").strip().endswith("OK")


def test_tls_ca_certificate_fields(host_ca: CertAuthority, tmp_path):
    now = dt.datetime.now(dt.UTC)
    cert = host_ca.active.tls_cert
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [CLUSTER]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [CLUSTER]
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    assert 0 < cert.serial_number < 2**128
    lifetime = cert.not_valid_after_utc - now
    assert dt.timedelta(days=3649) < lifetime <= dt.timedelta(days=3650)
    assert now - dt.timedelta(minutes=1, seconds=5) < cert.not_valid_before_utc <= now
    (tmp_path / "ca.pem").write_bytes(host_ca.active.tls_cert_pem)
    text = run(f"openssl x509 -in {tmp_path}/ca.pem -noout -subject -ext basicConstraints,keyUsage")
    assert "subject=O = example.com, CN = example.com" in text
    assert "CA:TRUE" in text and "Certificate Sign, CRL Sign" in text
    assert run(f"openssl verify -CAfile {tmp_path}/ca.pem {tmp_path}/ca.pem").strip() == f"{tmp_path}/ca.pem: OK"


def test_serials_are_random():
    serials = {generate_authority("user", CLUSTER).active.tls_cert.serial_number for _ in range(4)}
    assert len(serials) == 4
    assert max(serials).bit_length() > 64


@pytest.mark.parametrize("name", ["", "bad name", "a,b", "-lead", "x/y", "*.example.com", "a" * 254])
def test_invalid_cluster_names(name: str):
    with pytest.raises(ValueError, match="invalid cluster name"):
        generate_authority("user", name)


def test_invalid_kind():
    with pytest.raises(ValueError):
        generate_authority("db", CLUSTER)


# -- storage form and secrets ---------------------------------------------------------------------


def test_json_round_trip_keeps_private_keys(user_ca: CertAuthority):
    data = user_ca.to_json()
    doc = json.loads(data)
    assert doc["kind"] == "user" and doc["cluster_name"] == CLUSTER and doc["version"] == 1
    assert doc["active"]["ssh_private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert doc["active"]["tls_private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    loaded = CertAuthority.from_json(data)
    assert loaded == user_ca
    assert loaded.to_json() == data
    assert keys.private_key_pem(loaded.ssh_signer()) == keys.private_key_pem(user_ca.ssh_signer())
    key, cert = loaded.tls_signer()
    assert keys.private_key_pem(key) == keys.private_key_pem(user_ca.tls_signer()[0])
    assert cert == user_ca.active.tls_cert


def test_json_round_trip_with_rotation_state(user_ca: CertAuthority):
    started = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    rotated = attrs.evolve(
        user_ca,
        active=CAKeys.generate(CLUSTER),
        additional_trusted=user_ca.active,
        rotation=Rotation(
            RotationPhase.UPDATE_CLIENTS,
            RotationMode.AUTO,
            dt.timedelta(hours=6),
            started=started,
            last_rotated=started - dt.timedelta(days=90),
        ),
    )
    loaded = CertAuthority.from_json(rotated.to_json())
    assert loaded == rotated
    assert loaded.rotation.phase is RotationPhase.UPDATE_CLIENTS
    assert loaded.rotation.mode is RotationMode.AUTO
    assert loaded.rotation.grace_period == dt.timedelta(hours=6)
    assert loaded.rotation.started == started
    assert loaded.additional_trusted == user_ca.active
    assert len(loaded.ssh_public_keys) == 2 and len(loaded.tls_certs) == 2
    assert keys.same_public_key(loaded.ssh_public_keys[1], user_ca.active.ssh_public_key)
    assert loaded != user_ca


def test_all_rotation_phases_are_known():
    assert [p.value for p in RotationPhase] == ["standby", "init", "update_clients", "update_servers", "rollback"]
    with pytest.raises(ValueError):
        Rotation(grace_period=dt.timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timezone-aware"):
        Rotation(started=dt.datetime(2024, 1, 1))


def test_without_secrets(user_ca: CertAuthority):
    public = user_ca.without_secrets()
    assert not public.has_secrets and user_ca.has_secrets
    data = public.to_json()
    assert b"PRIVATE KEY" not in data
    loaded = CertAuthority.from_json(data)
    assert loaded == public and loaded.active.ssh_private_key is None
    assert keys.same_public_key(loaded.ssh_public_keys[0], user_ca.ssh_public_keys[0])
    with pytest.raises(MissingSecrets, match="no SSH private key"):
        loaded.ssh_signer()
    with pytest.raises(MissingSecrets, match="no TLS private key"):
        loaded.tls_signer()


def test_mismatched_private_key_is_refused(user_ca: CertAuthority):
    doc = json.loads(user_ca.to_json())
    doc["active"]["ssh_private_key"] = keys.private_key_pem(keys.generate_private_key("ed25519")).decode()
    with pytest.raises(ValueError, match="SSH private key does not match"):
        CertAuthority.from_json(json.dumps(doc))
    doc = json.loads(user_ca.to_json())
    doc["active"]["tls_private_key"] = keys.private_key_pem(keys.generate_private_key("ecdsa-p256")).decode()
    with pytest.raises(ValueError, match="TLS private key does not match"):
        CertAuthority.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(kind="db"),
        lambda d: d.update(cluster_name="bad name"),
        lambda d: d.update(active="x"),
        lambda d: d["active"].update(tls_cert="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        lambda d: d["active"].pop("ssh_public_key"),
        lambda d: d["rotation"].update(phase="spinning"),
        lambda d: d["rotation"].update(grace_period="30h"),
    ],
)
def test_invalid_documents_are_refused(user_ca: CertAuthority, mutate):
    doc = json.loads(user_ca.without_secrets().to_json())
    mutate(doc)
    with pytest.raises(ValueError):
        CertAuthority.from_json(json.dumps(doc))


def test_garbage_is_refused():
    for data in (b"", b"[]", b"not json", b'{"version": 1}'):
        with pytest.raises(ValueError):
            CertAuthority.from_json(data)


def _secret_fragments(ca: CertAuthority) -> list[str]:
    """Pieces of the private keys that must never show up in repr/str/logs."""
    fragments = []
    for key in (ca.active.ssh_private_key, ca.active.tls_private_key):
        assert key is not None
        body = keys.private_key_pem(key).decode().splitlines()[1:-1]
        fragments += [line for line in body if len(line) >= 16]
        fragments.append(base64.b64encode(keys.private_key_openssh(key)).decode()[40:80])
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes_raw()
            fragments += [raw.hex(), base64.b64encode(raw).decode()[:20]]
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            fragments.append(str(key.private_numbers().private_value))
    return fragments


def test_repr_and_logs_show_no_key_material(user_ca: CertAuthority, caplog):
    rotated = attrs.evolve(user_ca, additional_trusted=CAKeys.generate(CLUSTER))
    texts = [repr(rotated), str(rotated), repr(rotated.active), str(rotated.active), f"{rotated!r}"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("loaded %s / %r", rotated, rotated)
    texts.append(caplog.text)
    secrets = [*_secret_fragments(rotated), "PRIVATE", "-----BEGIN"]
    for text in texts:
        for fragment in secrets:
            assert fragment not in text
    assert "SHA256:" in repr(rotated) and "kind=user" in repr(rotated) and CLUSTER in repr(rotated)


# -- CA pin ----------------------------------------------------------------------------------------


def test_ca_pin_matches_openssl(host_ca: CertAuthority, tmp_path):
    (tmp_path / "ca.pem").write_bytes(host_ca.active.tls_cert_pem)
    digest = run(f"openssl x509 -in {tmp_path}/ca.pem -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
    pin = ca_pin(host_ca)
    assert pin == "sha256:" + digest.split()[0]
    assert len(pin) == len("sha256:") + 64


def test_ca_pin_of_rsa_ca_matches_openssl(tmp_path):
    ca = generate_authority("host", CLUSTER, tls_alg="rsa2048")
    (tmp_path / "ca.pem").write_bytes(ca.active.tls_cert_pem)
    digest = run(f"openssl x509 -in {tmp_path}/ca.pem -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
    assert ca_pin(ca) == "sha256:" + digest.split()[0]


def test_ca_pin_is_for_the_host_ca_only(user_ca: CertAuthority):
    with pytest.raises(ValueError, match="host CA"):
        ca_pin(user_ca)


def test_ca_pins_during_rotation(host_ca: CertAuthority):
    rotated = attrs.evolve(host_ca, active=CAKeys.generate(CLUSTER), additional_trusted=host_ca.active)
    pins = ca_pins(rotated)
    assert pins[1] == ca_pin(host_ca) and pins[0] == ca_pin(rotated) and pins[0] != pins[1]


def test_check_ca_pin(host_ca: CertAuthority):
    der = host_ca.active.tls_cert_der
    pin = ca_pin(host_ca)
    assert check_ca_pin([pin], der) == pin
    assert check_ca_pin(["sha256:" + "0" * 64, pin.upper().replace("SHA256", "sha256")], der) == pin
    assert check_ca_pin([pin], host_ca.active.tls_cert) == pin


def test_check_ca_pin_mismatch(host_ca: CertAuthority):
    other = generate_authority("host", CLUSTER)
    with pytest.raises(CAPinMismatch) as err:
        check_ca_pin([ca_pin(other)], host_ca.active.tls_cert_der)
    assert str(err.value).startswith("cluster pin does not match")
    assert ca_pin(host_ca) in str(err.value)


@pytest.mark.parametrize("pin", ["7e12c17c", "sha1:" + "0" * 64, "sha256:" + "g" * 64, "sha256:" + "0" * 63])
def test_check_ca_pin_malformed(host_ca: CertAuthority, pin: str):
    with pytest.raises(ValueError, match="invalid CA pin"):
        check_ca_pin([pin], host_ca.active.tls_cert_der)


def test_check_ca_pin_needs_a_pin(host_ca: CertAuthority):
    with pytest.raises(ValueError, match="at least one pin"):
        check_ca_pin([], host_ca.active.tls_cert_der)


def test_check_ca_pin_compares_every_pin_in_constant_time(host_ca: CertAuthority, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    from teleport_core.pki import pins

    monkeypatch.setattr(pins.hmac, "compare_digest", spy)
    pin = ca_pin(host_ca)
    check_ca_pin([pin, "sha256:" + "1" * 64, "sha256:" + "2" * 64], host_ca.active.tls_cert_der)
    assert len(calls) == 3  # no early exit on the first match
    assert all(b == pin.encode() for _, b in calls)


# -- exports ----------------------------------------------------------------------------------------


def test_known_hosts_export(host_ca: CertAuthority, tmp_path):
    text = export_known_hosts(host_ca)
    assert text == f"@cert-authority {CLUSTER},*.{CLUSTER} {host_ca.active.ssh_public_key_line} type=host\n"
    path = tmp_path / "known_hosts"
    path.write_text(text)
    for host in (f"{HOST_UUID}.{CLUSTER}", f"node1.{CLUSTER}", CLUSTER):
        out = run(f"ssh-keygen -F {host} -f {path}")
        assert f"# Host {host} found: line 1 CA" in out
    result = subprocess.run(["ssh-keygen", "-F", "node1.other.com", "-f", str(path)], capture_output=True)
    assert result.returncode == 1
    with_proxy = export_known_hosts(host_ca, proxy_host="proxy.example.org")
    assert with_proxy.startswith(f"@cert-authority proxy.example.org,{CLUSTER},*.{CLUSTER} ssh-ed25519 ")


def test_known_hosts_export_during_rotation(host_ca: CertAuthority):
    rotated = attrs.evolve(host_ca, active=CAKeys.generate(CLUSTER), additional_trusted=host_ca.active)
    lines = export_known_hosts(rotated).splitlines()
    assert len(lines) == 2
    assert lines[0].split()[2:4] == rotated.active.ssh_public_key_line.split()
    assert lines[1].split()[2:4] == host_ca.active.ssh_public_key_line.split()


def test_user_ca_exports(user_ca: CertAuthority, tmp_path):
    key_line = user_ca.active.ssh_public_key_line
    assert export_authorized_keys(user_ca) == f"cert-authority {key_line} clustername={CLUSTER}&type=user\n"
    trusted = export_trusted_user_ca_keys(user_ca)
    assert trusted == f"{key_line} clustername={CLUSTER}&type=user\n"
    (tmp_path / "ca.pub").write_text(trusted)
    out = run(f"ssh-keygen -l -f {tmp_path}/ca.pub")
    assert out.split()[1] == user_ca.active.ssh_fingerprint


def test_exports_check_the_ca_kind(user_ca: CertAuthority, host_ca: CertAuthority):
    with pytest.raises(ValueError):
        export_known_hosts(user_ca)
    with pytest.raises(ValueError):
        export_authorized_keys(host_ca)
    with pytest.raises(ValueError):
        export_trusted_user_ca_keys(host_ca)
    with pytest.raises(ValueError, match="invalid proxy host"):
        export_known_hosts(host_ca, proxy_host="a b")


def test_tls_pem_export(host_ca: CertAuthority):
    rotated = attrs.evolve(host_ca, active=CAKeys.generate(CLUSTER), additional_trusted=host_ca.active)
    certs = x509.load_pem_x509_certificates(export_tls_pem(rotated))
    assert certs == [rotated.active.tls_cert, host_ca.active.tls_cert]
