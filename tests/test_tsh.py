"""tsh internals without a cluster: the profile on disk (and the kernel client reading it),
addresses, known_hosts patterns, host certificate checks."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh

from teleport_core.api.client import load_profile
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.tsh.commands import _known_hosts, split_host_port
from teleport_core.tsh.hostcert import host_ca_keys, verify_host_cert
from teleport_core.tsh.profile import EXPIRED, NotLoggedIn, Profile, normalize_addr, remove

NOW = dt.datetime.now(dt.UTC)


def ssh_line(key: ed25519.Ed25519PublicKey | ssh.SSHCertificate) -> str:
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() if isinstance(
        key, ed25519.Ed25519PublicKey) else key.public_bytes().decode()


def host_cert(ca: ed25519.Ed25519PrivateKey, principals: list[str], *, user: bool = False,
              hours: float = 1) -> ssh.SSHCertificate:
    subject = ed25519.Ed25519PrivateKey.generate().public_key()
    return (ssh.SSHCertificateBuilder().public_key(subject).serial(1).key_id(b"host")
            .type(ssh.SSHCertificateType.USER if user else ssh.SSHCertificateType.HOST)
            .valid_principals([p.encode() for p in principals])
            .valid_after(int(NOW.timestamp() + min(hours, 0) * 3600 - 7200))
            .valid_before(int(NOW.timestamp() + hours * 3600))
            .sign(ca))


def blob(cert: ssh.SSHCertificate) -> tuple[str, bytes]:
    kind, data = ssh_line(cert).split()[:2]
    return kind, base64.b64decode(data)


def make_profile(valid_before: dt.datetime) -> Profile:
    key = keys.generate_private_key("ed25519")
    identity = LocalIdentity(keys.private_key_pem(key), b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
                             (b"-----BEGIN CERTIFICATE-----\nMQ==\n-----END CERTIFICATE-----\n",),
                             "ssh-ed25519-cert-v01@openssh.com AAAA", ("@cert-authority *.c ssh-ed25519 AAAA",))
    return Profile("proxy.example.com", "proxy.example.com:3080", "proxy.example.com:3023", "alice", "example.com",
                   ("access",), ("root",), valid_before, False, identity)


def test_profile_round_trip_private_files_and_logout(tmp_path) -> None:
    profile = make_profile(NOW + dt.timedelta(hours=1))
    folder = profile.save(tmp_path)
    assert (tmp_path / "current-profile").read_text() == "proxy.example.com\n"
    assert tmp_path.stat().st_mode & 0o777 == 0o700
    for name in ("key", "id", "id-cert.pub", "identity", "profile.json", "known_hosts"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert (folder / "id").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = Profile.load(tmp_path)
    assert (loaded.user, loaded.cluster, loaded.roles, loaded.ssh_addr) == ("alice", "example.com", ("access",),
                                                                          "proxy.example.com:3023")
    assert loaded.identity.key_pem == profile.identity.key_pem
    assert loaded.check_valid() is loaded
    assert remove(tmp_path) == "proxy.example.com"
    with pytest.raises(NotLoggedIn, match="^not logged in"):
        Profile.load(tmp_path)
    assert remove(tmp_path) is None


def test_expired_profile_gives_the_friendly_message(tmp_path) -> None:
    make_profile(NOW - dt.timedelta(seconds=1)).save(tmp_path)
    with pytest.raises(NotLoggedIn) as err:
        Profile.load(tmp_path).check_valid()
    assert str(err.value) == EXPIRED == "your session has expired, run tsh login"


def test_kernel_client_reads_the_profile_tsh_writes(tmp_path) -> None:
    profile = make_profile(NOW + dt.timedelta(hours=1))
    profile.save(tmp_path)
    found = LocalIdentity.load(tmp_path / "profiles" / "proxy.example.com")
    assert found.key_pem == profile.identity.key_pem and found.ssh_cert == profile.identity.ssh_cert
    with pytest.raises(Exception, match="PEM lib|certificate|ssl|SSL"):  # the fake certificates load nowhere
        load_profile(tmp_path)()


@pytest.mark.parametrize(("text", "expected"), [
    ("proxy.example.com", "proxy.example.com:3080"),
    ("proxy.example.com:443", "proxy.example.com:443"),
    ("https://proxy.example.com/", "proxy.example.com:3080"),
    ("[::1]", "[::1]:3080"),
    ("[::1]:8443", "[::1]:8443"),
    ("::1", "[::1]:3080"),
])
def test_normalize_addr(text: str, expected: str) -> None:
    assert normalize_addr(text, 3080) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("node-1", ("node-1", 0)), ("10.0.0.1:3022", ("10.0.0.1", 3022)), ("[::1]:22", ("::1", 22)),
    ("fe80::1", ("fe80::1", 0)),
])
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


def test_known_hosts_trust_the_host_ca_for_the_proxy_and_cluster_names() -> None:
    lines = _known_hosts(["@cert-authority example.com,*.example.com ssh-ed25519 AAAA type=host", "junk"], "10.0.0.5")
    assert lines == ("@cert-authority 10.0.0.5,[10.0.0.5]:*,example.com,*.example.com ssh-ed25519 AAAA type=host",)
    assert host_ca_keys(lines) == ["ssh-ed25519 AAAA"]


def test_host_certificate_checks() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    trusted = [ssh_line(ca.public_key())]
    good = host_cert(ca, ["node-1", "uuid-1"])
    verify_host_cert(*blob(good), trusted, "node-1")
    verify_host_cert(*blob(good), trusted, None)
    with pytest.raises(AccessDenied, match="not valid for other"):
        verify_host_cert(*blob(good), trusted, "other")
    other_ca = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AccessDenied, match="not signed by the cluster's host CA"):
        verify_host_cert(*blob(host_cert(other_ca, ["node-1"])), trusted, "node-1")
    with pytest.raises(AccessDenied, match="user certificate"):
        verify_host_cert(*blob(host_cert(ca, ["node-1"], user=True)), trusted, "node-1")
    with pytest.raises(AccessDenied, match="not valid now"):
        verify_host_cert(*blob(host_cert(ca, ["node-1"], hours=-1)), trusted, "node-1")
    with pytest.raises(AccessDenied, match="plain host key"):
        verify_host_cert("ssh-ed25519", b"x", trusted, "node-1")


def test_tsh_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "--help"], capture_output=True,
                            text=True, check=True)
    for command in ("login", "status", "logout", "ls", "ssh", "config", "proxy"):
        assert f"  {command} " in result.stdout, command
