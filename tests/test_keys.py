"""Key generation, serialization and private key files, checked against ssh-keygen and openssl."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.pki.keys import KeyAlgorithm, UnsupportedKey

ALGS = ["ed25519", "ecdsa-p256", "rsa2048"]


def run(*args: str, input: bytes | None = None) -> str:
    return subprocess.run(args, input=input, capture_output=True, check=True).stdout.decode()


@pytest.fixture(scope="module", params=ALGS)
def key(request: pytest.FixtureRequest) -> keys.PrivateKey:
    return keys.generate_private_key(request.param)


def test_algorithm_names_and_aliases():
    assert KeyAlgorithm.parse("ed25519") is KeyAlgorithm.ED25519
    assert KeyAlgorithm.parse("ECDSA") is KeyAlgorithm.ECDSA_P256
    assert KeyAlgorithm.parse("ecdsa-p256") is KeyAlgorithm.ECDSA_P256
    assert KeyAlgorithm.parse("rsa") is KeyAlgorithm.RSA2048
    assert KeyAlgorithm.parse("rsa-2048") is KeyAlgorithm.RSA2048
    with pytest.raises(ValueError, match="unsupported key algorithm 'dsa'"):
        KeyAlgorithm.parse("dsa")


def test_generated_key_types():
    assert isinstance(keys.generate_private_key("ed25519"), ed25519.Ed25519PrivateKey)
    ec_key = keys.generate_private_key("ecdsa-p256")
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey) and isinstance(ec_key.curve, ec.SECP256R1)
    rsa_key = keys.generate_private_key("rsa2048")
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert rsa_key.private_numbers().public_numbers.e == 65537
    for name in ALGS:
        assert keys.key_algorithm(keys.generate_private_key(name)).value == name


def test_pem_and_openssh_round_trip(key: keys.PrivateKey):
    pem = keys.private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.same_public_key(keys.load_private_key(pem), key)
    openssh = keys.private_key_openssh(key)
    assert openssh.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert keys.same_public_key(keys.load_private_key(openssh.decode()), key)
    line = keys.public_key_openssh(key)
    assert keys.same_public_key(keys.load_public_key(line + " some comment"), key)
    assert keys.same_public_key(keys.load_public_key(keys.public_key_pem(key)), key)


def test_ssh_keygen_reads_openssh_private_key_and_fingerprint(key: keys.PrivateKey, tmp_path):
    path = tmp_path / "id"
    write_private(path, keys.private_key_openssh(key))
    derived = run("ssh-keygen", "-y", "-f", str(path)).split()
    assert " ".join(derived[:2]) == keys.public_key_openssh(key)
    (tmp_path / "id.pub").write_text(keys.public_key_openssh(key) + "\n")
    assert run("ssh-keygen", "-l", "-f", str(tmp_path / "id.pub")).split()[1] == keys.ssh_fingerprint(key)


def test_openssl_reads_pkcs8_pem(key: keys.PrivateKey):
    public_pem = run("openssl", "pkey", "-pubout", input=keys.private_key_pem(key)).encode()
    assert public_pem == keys.public_key_pem(key)


def test_small_or_unknown_keys_are_refused():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(UnsupportedKey, match="too small"):
        keys.check_supported(small)
    with pytest.raises(UnsupportedKey, match="too small"):
        keys.load_public_key(keys.public_key_pem(small))
    with pytest.raises(UnsupportedKey, match="curve"):
        keys.check_supported(ec.generate_private_key(ec.SECP224R1()))
    with pytest.raises(UnsupportedKey, match="unsupported key type"):
        keys.check_supported(dsa.generate_private_key(2048))
    with pytest.raises(UnsupportedKey):
        keys.load_public_key("ssh-ed25519 not-base64!")
    with pytest.raises(UnsupportedKey):
        keys.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def cryptographys_line(key: keys.PrivateKey | keys.PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    public = keys.public_key_of(key)
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_openssh_lines_and_blobs_are_cryptographys(key: keys.PrivateKey) -> None:
    """The direct Ed25519 encoding and parsing give what cryptography's own give, for every key type."""
    import base64

    from cryptography.hazmat.primitives.serialization import ssh

    for _ in range(20):
        line = cryptographys_line(key if not isinstance(key, ed25519.Ed25519PrivateKey)
                                  else ed25519.Ed25519PrivateKey.generate())
        public = keys.load_public_key(line)
        assert keys.public_key_openssh(public) == line
        assert keys.openssh_blob(public) == base64.b64decode(line.split()[1])
        reference = ssh.load_ssh_public_identity(line.encode())
        assert keys.public_key_der(public) == keys.public_key_der(reference)  # type: ignore[arg-type]
        for variant in (line + " alice@laptop", line + " with spaces in it", "  " + line + "\n"):
            assert keys.public_key_der(keys.load_public_key(variant)) == keys.public_key_der(public)


@pytest.mark.parametrize("line", [
    "ssh-ed25519",
    "ssh-ed25519 ",
    "ssh-ed25519 AAAA",
    "ssh-ed25519 !!!!",
    # the blob of an RSA key under the Ed25519 label; a 31-byte key; trailing data after the key
    "ssh-ed25519 " + cryptographys_line(keys.generate_private_key("rsa2048")).split()[1],
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAHwABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4=",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fAA==",
])
def test_malformed_ed25519_lines_are_refused(line: str) -> None:
    with pytest.raises(UnsupportedKey):
        keys.load_public_key(line)


def test_load_public_key_refuses_certificates(tmp_path):
    ca = keys.generate_private_key("ed25519")
    (tmp_path / "ca").write_bytes(keys.private_key_openssh(ca))
    os.chmod(tmp_path / "ca", 0o600)
    user = keys.generate_private_key("ed25519")
    (tmp_path / "user.pub").write_text(keys.public_key_openssh(user) + "\n")
    run("ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "x", "-n", "root", str(tmp_path / "user.pub"))
    with pytest.raises(UnsupportedKey, match="got an SSH certificate"):
        keys.load_public_key((tmp_path / "user-cert.pub").read_text())


def test_private_file_is_0600_even_with_open_umask(tmp_path):
    path = tmp_path / "key.pem"
    old = os.umask(0)
    try:
        write_private(path, b"secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_private_file_is_created_exclusively_with_0600_and_never_chmodded(tmp_path, monkeypatch):
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy_open(path, flags, mode=0o777, *args, **kwargs):
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def no_chmod(*args, **kwargs):
        raise AssertionError("chmod by path after writing")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    write_private(tmp_path / "k", b"x")
    creates = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert len(creates) == 1
    _, flags, mode = creates[0]
    assert flags & os.O_EXCL and mode == 0o600


def test_private_file_replaces_atomically_and_does_not_follow_symlinks(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "key"
    link.symlink_to(victim)
    write_private(link, b"new")
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink() and link.read_bytes() == b"new"
    write_private(link, b"newer")
    assert link.read_bytes() == b"newer"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def broken_write(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr(os, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_private(tmp_path / "k", b"x")
    assert list(tmp_path.iterdir()) == []


def test_public_file_mode(tmp_path):
    write_public(tmp_path / "k.pub", b"ssh-ed25519 AAAA")
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644
