"""tsh's CLI parity without a cluster: ``--format`` everywhere, ``tsh help``, ``tsh status`` of
stored profiles, ``tsh login`` remembering the proxy, ``tsh scp``'s argument rules, and the
errors that say what to do (refused login, rotated host CA). The same against a real cluster:
plugins/proxy/tests/test_tsh_cli_parity.py and test_tsh_ca_rotation.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from teleport_core.errors import TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.tsh import output
from teleport_core.tsh.commands import _login_target, node_record
from teleport_core.tsh.hostcert import OLD_CA, UnknownHostCA, from_rotated_tls_ca, verify_host_cert
from teleport_core.tsh.profile import Profile, current_name, profile_names, refused_login
from teleport_core.tsh.scp import Remote, parse_remote, plan, with_login

NOW = dt.datetime.now(dt.UTC)


def tsh(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELEPORT_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=60, check=False)


def profile(name: str, user: str = "alice", *, insecure: bool = True, hours: float = 1) -> Profile:
    key = keys.generate_private_key("ed25519")
    identity = LocalIdentity(keys.private_key_pem(key), b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
                             (b"-----BEGIN CERTIFICATE-----\nMQ==\n-----END CERTIFICATE-----\n",),
                             "ssh-ed25519-cert-v01@openssh.com AAAA", ("@cert-authority *.c ssh-ed25519 AAAA",))
    return Profile(name, f"{name}:3080", f"{name}:3023", user, "example.com", ("access",), ("ubuntu", "deploy"),
                   NOW + dt.timedelta(hours=hours), insecure, identity)


# -- --format -----------------------------------------------------------------------------------


def test_dump_json_and_yaml_are_the_same_data() -> None:
    data = [{"kind": "node", "metadata": {"name": "u-1", "labels": {"env": "prod"}}, "spec": {"addr": ""}}]
    assert json.loads(output.dump(data, "json")) == data
    assert yaml.safe_load(output.dump(data, "yaml")) == data
    assert output.dump(data, "yaml").startswith("- kind: node\n")  # keys in the order built


def test_table_columns_and_rule() -> None:
    lines = output.table(("Node Name", "Address"), [("a", "127.0.0.1:3022"), ("long-name", "")])
    assert lines == ["Node Name  Address", "---------  --------------", "a          127.0.0.1:3022", "long-name"]


def test_table_cuts_one_column_to_the_terminal_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    rows = [("node-1", "a=1,b=2,c=3,d=4,e=5,f=6")]
    assert output.table(("Name", "Labels"), rows, truncate=1)[2] == "node-1  a=1,b=2,c=3,d=4,e=5,f=6"  # a pipe
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: os.terminal_size((20, 24)))
    _head, rule, row = output.table(("Name", "Labels"), rows, truncate=1)
    assert row == "node-1  a=1,b=2,c..." and len(row) == 20 and rule == "------  ------------"
    assert output.table(("Name", "Labels"), rows)[2].endswith("f=6")  # no column to cut: -v


def test_node_record_has_teleports_fields_and_the_flat_ones() -> None:
    node = {"uuid": "u-1", "nodename": "db", "addr": "", "labels": {"env": "prod"}, "tunnel": True,
            "logins": ["ubuntu"]}
    record = node_record(node)
    assert record["kind"] == "node" and record["metadata"] == {"name": "u-1", "labels": {"env": "prod"}}
    assert record["spec"] == {"hostname": "db", "addr": "", "use_tunnel": True}
    assert record["nodename"] == "db" and record["logins"] == ["ubuntu"]


@pytest.mark.parametrize("args", [("ls", "--format=xml"), ("status", "--format=table"),
                                  ("recordings", "ls", "--format=csv"), ("version", "--format=toml")])
def test_a_bad_format_is_a_clear_argparse_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = tsh(tmp_path, *args)
    assert result.returncode == 2
    assert "argument --format: invalid choice:" in result.stderr and "'text', 'json', 'yaml'" in result.stderr


def test_version_in_every_format(tmp_path: Path) -> None:
    assert tsh(tmp_path, "version").stdout.startswith("Teleport (teleport-py) v")
    assert "version" in json.loads(tsh(tmp_path, "version", "--format=json").stdout)
    assert "version" in yaml.safe_load(tsh(tmp_path, "version", "--format=yaml").stdout)


# -- tsh help -----------------------------------------------------------------------------------


def test_help_prints_what_help_flags_print(tmp_path: Path) -> None:
    assert tsh(tmp_path, "help").stdout == tsh(tmp_path, "--help").stdout
    assert "  help " in tsh(tmp_path, "help").stdout
    for command in ("ls", "scp", "status", "login"):
        same = tsh(tmp_path, "help", command)
        assert same.returncode == 0 and same.stdout == tsh(tmp_path, command, "--help").stdout, command
        assert same.stdout.startswith(f"usage: tsh {command} ")
    unknown = tsh(tmp_path, "help", "nope")
    assert unknown.returncode == 1 and unknown.stderr.startswith('ERROR: unknown command "nope"')


# -- tsh status and tsh login's proxy ---------------------------------------------------------------


def test_status_shows_the_current_profile_and_the_others(tmp_path: Path) -> None:
    profile("proxy-a.example.com").save(tmp_path)
    profile("proxy-b.example.com", "bob", hours=-1).save(tmp_path)  # saved last: current
    assert current_name(tmp_path) == "proxy-b.example.com"
    assert profile_names(tmp_path) == ["proxy-a.example.com", "proxy-b.example.com"]
    text = tsh(tmp_path, "status")
    assert text.returncode == 0, text.stderr
    first, second = text.stdout.split("\n\n")
    assert first.startswith("> Profile URL:        https://proxy-b.example.com:3080\n") and "[EXPIRED]" in first
    assert second.startswith("  Profile URL:        https://proxy-a.example.com:3080\n")
    for fmt, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        data = load(tsh(tmp_path, "status", f"--format={fmt}").stdout)
        assert data["active"]["profile_url"] == "https://proxy-b.example.com:3080"
        assert data["active"]["username"] == "bob" and data["active"]["expired"] is True
        assert data["active"]["logins"] == ["ubuntu", "deploy"] and data["active"]["valid_until"].endswith("Z")
        assert [p["username"] for p in data["profiles"]] == ["alice"]


def test_status_without_a_profile(tmp_path: Path) -> None:
    assert tsh(tmp_path, "status").stderr == "ERROR: not logged in (run tsh login --proxy=HOST)\n"
    assert json.loads(tsh(tmp_path, "status", "--format=json").stdout) == {"active": None, "profiles": []}


def args(proxy: str | None = None, user: str | None = None, insecure: bool = False) -> argparse.Namespace:
    return argparse.Namespace(proxy=proxy, user=user, insecure=insecure)


def test_login_reuses_the_current_profiles_proxy_user_and_insecure(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEPORT_HOME", str(tmp_path))
    with pytest.raises(TeleportError, match=r"^--proxy=HOST\[:PORT\] is required: there is no earlier profile"):
        _login_target(args())
    profile("proxy-a.example.com", "alice", insecure=True).save(tmp_path)
    assert _login_target(args()) == ("proxy-a.example.com:3080", "alice", True)
    assert _login_target(args(user="carol")) == ("proxy-a.example.com:3080", "carol", True)
    # --proxy switches; a profile of that proxy gives its user, never --insecure by itself
    assert _login_target(args(proxy="proxy-a.example.com")) == ("proxy-a.example.com:3080", "alice", False)
    target = _login_target(args(proxy="https://other.example.com:443/", insecure=True))
    assert target[0] == "other.example.com:443" and target[2] is True


def test_login_without_a_proxy_or_profile_says_what_to_type(tmp_path: Path) -> None:
    result = tsh(tmp_path, "login")
    assert result.returncode == 1
    assert result.stderr == ("ERROR: --proxy=HOST[:PORT] is required: there is no earlier profile to log in to "
                             "again (tsh login --proxy=proxy.example.com)\n")


# -- tsh scp's arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("node:/tmp/x", Remote("", "node", "/tmp/x")), ("root@node:", Remote("root", "node", ".")),
    ("a@b@node:f", Remote("a@b", "node", "f")), ("./x:y", None), ("/tmp/a:b", None), ("plain", None),
    (":x", None)])
def test_parse_remote(spec: str, expected: Remote | None) -> None:
    assert parse_remote(spec) == expected


def test_scp_plans_uploads_and_downloads(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    up = plan([str(tmp_path / "a"), str(tmp_path / "b"), "node:/dest/"])
    assert up.upload and up.sources == (str(tmp_path / "a"), str(tmp_path / "b"))
    assert with_login(up, "ubuntu").remote == Remote("ubuntu", "node", "/dest/")
    down = plan(["deploy@node:/x", "node:/y", str(tmp_path)])
    assert not down.upload and down.sources == ("/x", "/y") and down.local == str(tmp_path)
    assert with_login(down, "ubuntu").remote.login == "deploy"  # the one given wins
    with pytest.raises(TeleportError, match="^no login for node"):
        with_login(plan(["node:/x", str(tmp_path)]), "")


@pytest.mark.parametrize(("paths", "message"), [
    (["only-one"], "give at least one source and a destination"),
    (["{tmp}/a", "{tmp}/b"], "no remote path: one side must be [login@]node:path"),
    (["n1:/a", "n2:/b"], "copying from one node to another is not supported"),
    (["{tmp}/missing", "{tmp}/a", "node:/d"], "{tmp}/missing: no such file or directory"),
    (["n1:/a", "n2:/b", "{tmp}"], "sources on several nodes or logins (n1, n2): copy from one at a time"),
    (["u1@n:/a", "u2@n:/b", "{tmp}"], "sources on several nodes or logins (u1@n, u2@n)"),
    (["n:/a", "{tmp}/a", "{tmp}"], "sources must all be on one node, or all local"),
    (["n:/a", "n:/b", "{tmp}/a"], "{tmp}/a: not a directory (copying several sources needs a directory)"),
])
def test_scp_argument_errors(tmp_path: Path, paths: list[str], message: str) -> None:
    (tmp_path / "a").write_text("a")
    with pytest.raises(TeleportError) as err:
        plan([p.format(tmp=tmp_path) for p in paths])
    assert str(err.value).startswith(message.format(tmp=tmp_path))


def test_scp_refuses_before_connecting(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    no_dir = tsh(tmp_path, "scp", str(tmp_path / "dir"), "node:/x")  # not logged in: checked first
    assert no_dir.returncode == 1 and no_dir.stderr == f"ERROR: {tmp_path / 'dir'} is a directory (use -r)\n"
    missing = tsh(tmp_path, "scp", str(tmp_path / "nope"), "node:/x")
    assert missing.stderr == f"ERROR: {tmp_path / 'nope'}: no such file or directory\n"


# -- errors that say what to do -----------------------------------------------------------------------


def test_a_refused_login_names_the_logins_the_roles_allow() -> None:
    alice = profile("p")
    assert refused_login(alice, "root") == "login root is not allowed: your roles allow ubuntu, deploy"
    assert refused_login(alice, "ubuntu") == "access denied to ubuntu: the server refused the certificate"
    assert refused_login(alice, "alice", role="Proxy").startswith("access denied to alice")
    import attrs

    none = attrs.evolve(alice, logins=("-teleport-internal-join",))
    assert refused_login(none, "root") == "login root is not allowed: your roles allow no logins"


def ca(name: str) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(hours=1))
            .not_valid_after(NOW + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, None))
    return key, cert


def leaf(issuer: tuple[ed25519.Ed25519PrivateKey, x509.Certificate]) -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .issuer_name(issuer[1].subject).public_key(key.public_key()).serial_number(2)
            .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(hours=1))
            .sign(issuer[0], None))
    return cert.public_bytes(Encoding.DER)


def test_a_certificate_from_a_rotated_ca_is_told_apart_from_a_stranger() -> None:
    old, new, other = ca("example.com"), ca("example.com"), ca("other.org")
    known = [old[1].public_bytes(Encoding.PEM)]
    assert from_rotated_tls_ca(leaf(new), known)  # same cluster's CA name, another key: rotated
    assert not from_rotated_tls_ca(leaf(old), known)  # the known CA itself
    assert not from_rotated_tls_ca(leaf(other), known)  # some other CA
    assert not from_rotated_tls_ca(b"not a certificate", known)
    assert OLD_CA == "your certificates were issued by an old CA: run tsh login again"


def test_an_ssh_host_certificate_from_an_unknown_ca_names_its_cluster() -> None:
    from cryptography.hazmat.primitives.serialization import PublicFormat, ssh

    trusted, rotated = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    cert = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key()).serial(1)
            .key_id(b"host").type(ssh.SSHCertificateType.HOST).valid_principals([b"node"])
            .valid_after(int(NOW.timestamp()) - 60).valid_before(int(NOW.timestamp()) + 3600)
            .add_extension(b"x-teleport-authority", b"example.com").sign(rotated))
    kind, data = cert.public_bytes().decode().split()[:2]
    ca_line = trusted.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    import base64

    with pytest.raises(UnknownHostCA) as err:
        verify_host_cert(kind, base64.b64decode(data), [ca_line], "node")
    assert err.value.authority == "example.com"
