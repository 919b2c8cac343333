"""``tctl auth sign --host=... --format=openssh`` (host certificates for plain OpenSSH servers), checked
by a real OpenSSH sshd and ssh with StrictHostKeyChecking=yes; ``tctl auth export --type=tls``."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from tctl_helpers import TctlCluster, tctl_cluster

from teleport_core.testing import openssh

pytestmark = pytest.mark.e2e  # real processes end to end

needs_openssh = pytest.mark.skipif(not (os.path.exists(openssh.SSHD) and shutil.which("ssh")
                                        and shutil.which("ssh-keygen")),
                                   reason="needs OpenSSH sshd, ssh and ssh-keygen")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-auth-host")) as c:
        c.call("create_user", "ops", ["access"], {"logins": ["root"]})
        c.call("create_user", "ed", ["editor"])
        yield c


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def start_sshd(folder: Path, cluster: TctlCluster, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    """OpenSSH sshd with ``key`` and ``key``-cert.pub as its host key and certificate, trusting the user CA."""
    user_ca = cluster.call("get_cert_authority", "user")["ssh_public_keys"]
    (folder / "user_ca.pub").write_text("".join(line + "\n" for line in user_ca))
    return openssh.start_sshd(folder, host_key=key, host_cert=Path(f"{key}-cert.pub"), user_ca=folder / "user_ca.pub")


def ssh(tmp_path: Path, port: int, user_key: Path, known_hosts: Path, alias: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(user_key),
            "-o", f"CertificateFile={user_key}-cert.pub", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={alias}", "-o", "ConnectTimeout=10",
            "root@127.0.0.1", "echo verified-$((6*7))"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)


@needs_openssh
def test_host_cert_for_openssh_sshd_verifies_with_strict_host_key_checking(cluster, tmp_path):
    key = tmp_path / "srv"
    out = cluster.ok("auth", "sign", "--host=srv.example.com,127.0.0.1", "--format=openssh", f"-o={key}")
    assert out.splitlines()[0] == f"The credentials have been written to {key}, {key}.pub, {key}-cert.pub"
    assert mode(key) == 0o600 and mode(Path(f"{key}.pub")) == 0o644
    info = subprocess.run(["ssh-keygen", "-L", "-f", f"{key}-cert.pub"], capture_output=True, text=True,
                          check=True).stdout
    assert "Type: ssh-ed25519-cert-v01@openssh.com host certificate" in info
    principals = info.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["srv.example.com", "127.0.0.1"]
    assert "x-teleport-role" not in info  # never passes for a Teleport node
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(cluster.ok("auth", "export", "--type=host"))  # @cert-authority lines
    user_key = tmp_path / "ops"
    cluster.ok("auth", "sign", "--user=ops", "--format=openssh", f"--out={user_key}")
    sshd, port = start_sshd(tmp_path, cluster, key)
    try:
        ok = ssh(tmp_path, port, user_key, known_hosts, "srv.example.com")
        assert ok.returncode == 0, ok.stderr + (tmp_path / "sshd.log").read_text()
        assert ok.stdout == "verified-42\n"
        # a name the certificate does not list is not trusted, though the CA signed it
        wrong = ssh(tmp_path, port, user_key, known_hosts, "other.example.com")
        assert wrong.returncode == 255 and "verified" not in wrong.stdout
        # nor is a host certificate checked against a known_hosts without the cluster's host CA
        (tmp_path / "empty_known_hosts").write_text("")
        stranger = ssh(tmp_path, port, user_key, tmp_path / "empty_known_hosts", "srv.example.com")
        assert stranger.returncode == 255 and "Host key verification failed" in stranger.stderr
    finally:
        sshd.terminate()
        sshd.wait(10)


def test_default_output_is_the_first_name_and_lives_a_year(cluster):
    out = cluster.ok("auth", "sign", "--host=grav-00", "--format=openssh")
    path = cluster.root / "grav-00"
    assert out.startswith(f"The credentials have been written to {path.name}, {path.name}.pub, "
                          f"{path.name}-cert.pub\n")
    assert (cluster.root / "grav-00-cert.pub").read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert cluster.error("auth", "sign", "--host=grav-00", "--format=openssh") == (
        f"ERROR: {path.name}, {path.name}.pub, {path.name}-cert.pub already exists; pass --overwrite to replace it")
    cluster.ok("auth", "sign", "--host=grav-00", "--format=openssh", "--overwrite", "--ttl=2h")


def test_non_admin_is_refused_host_certs_and_audited(cluster, tmp_path):
    editor = tmp_path / "ed.pem"
    cluster.ok("auth", "sign", "--user=ed", f"--out={editor}")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    key = tmp_path / "evil"
    assert cluster.error("auth", "sign", "--host=srv.example.com", "--format=openssh", f"-o={key}",
                         identity=editor) == ('ERROR: access denied to user "ed": no role allows create on host_cert '
                                              "(editor)")
    assert not key.exists() and not Path(f"{key}-cert.pub").exists()
    events = cluster.call("search_events", type="auth", user="ed", since=since.isoformat(),
                          until=(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)).isoformat())["events"]
    assert any("create on host_cert" in e["error"] for e in events)


def test_export_type_tls_is_the_host_ca_certificate(cluster):
    tls = cluster.ok("auth", "export", "--type=tls")
    assert tls.startswith("-----BEGIN CERTIFICATE-----")
    assert tls == cluster.ok("auth", "export", "--type=tls-host")
    assert tls != cluster.ok("auth", "export", "--type=tls-user")


BAD_HOST = [
    (("auth", "sign", "--host=srv"), 'ERROR: invalid --format flag "file", only "openssh" is supported with --host'),
    (("auth", "sign", "--host=srv", "--format=tls"),
     'ERROR: invalid --format flag "tls", only "openssh" is supported with --host'),
    (("auth", "sign", "--host=srv", "--user=ed", "--format=openssh"),
     "ERROR: --user or --host must be specified (one of them)"),
    (("auth", "sign", "--format=openssh"), "ERROR: --user or --host must be specified (one of them)"),
    (("auth", "sign", "--host=a,,b", "--format=openssh"),
     'ERROR: --host: expected a comma-separated list like "a,b", got "a,,b"'),
    (("auth", "sign", "--host=srv", "--format=openssh", "--ttl=0s"), 'ERROR: --ttl: must be positive, got "0s"'),
    (("auth", "sign", "--host=*.example.com", "--format=openssh", "-o", "x"),
     "ERROR: invalid principal '*.example.com': wildcards are not allowed; name each host"),
    (("auth", "sign", "--host=bad name", "--format=openssh", "-o", "x"),
     "ERROR: invalid principal 'bad name': must be non-empty, without spaces, commas or control characters"),
]


@pytest.mark.parametrize(("args", "message"), BAD_HOST)
def test_bad_host_sign_arguments_are_one_clear_line(cluster, args, message):
    assert cluster.error(*args) == message
    assert not (cluster.root / "srv").exists() and not (cluster.root / "x").exists()


BAD_BODIES = [
    ({"public_key": "ssh-ed25519 AAAA", "principals": ["srv"]}, "public_key: "),
    ({"public_key": "ssh-ed25519 AAAA", "principals": []}, "principals: at least 1 item"),
    ({"principals": ["srv"]}, "public_key: required"),
    ({"public_key": "x", "principals": ["srv"], "ttl": "forever"}, 'ttl: expected a duration like "30m"'),
]


@pytest.mark.parametrize(("payload", "message"), BAD_BODIES)
def test_bad_host_cert_bodies_are_400_naming_the_field(cluster, payload, message):
    from teleport_core.errors import TeleportError

    with pytest.raises(TeleportError) as caught:
        cluster.call("call", "POST", "/v1/certs/openssh-host", payload)
    assert message in str(caught.value)
