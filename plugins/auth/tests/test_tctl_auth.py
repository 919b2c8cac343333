"""``tctl auth export`` and ``tctl auth sign`` against a real auth server, checked with OpenSSH and openssl."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tctl_helpers import TctlCluster, tctl_cluster

from teleport_core.api.client import AuthClient, load_identity_file, load_key_pair
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.pki.pins import pin_of_cert

pytestmark = pytest.mark.e2e  # real processes end to end

needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-auth")) as c:
        c.call("create_user", "ed", ["editor"])
        c.call("create_user", "aud", ["auditor"])
        c.call("create_user", "dev", ["access"], {"logins": ["dev", "root"]})
        yield c


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ssh_keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def roles_with(cluster: TctlCluster, loader) -> list[str]:
    async def main() -> list[str]:
        async with AuthClient(cluster.addr, [loader]) as client:
            return [r["metadata"]["name"] for r in await client.get_roles()]

    return asyncio.run(main())


# -- export ---------------------------------------------------------------------------------------------


def test_export_user_is_cert_authority_lines(cluster):
    out = cluster.ok("auth", "export", "--type=user")
    ca = cluster.call("get_cert_authority", "user")
    assert out == "".join(f"cert-authority {key} clustername=example.com&type=user\n" for key in ca["ssh_public_keys"])
    assert re.fullmatch(r"cert-authority ssh-ed25519 AAAA\S+ clustername=example\.com&type=user\n", out)


def test_export_host_is_known_hosts_lines(cluster):
    out = cluster.ok("auth", "export", "--type=host")
    ca = cluster.call("get_cert_authority", "host")
    assert out == ca["known_hosts"]  # what the API already formats for known_hosts
    assert re.fullmatch(r"@cert-authority example\.com,\*\.example\.com ssh-ed25519 AAAA\S+ type=host\n", out)
    assert out.split()[2:4] == ca["ssh_public_keys"][0].split()


def test_export_tls_pems(cluster):
    host = x509.load_pem_x509_certificates(cluster.ok("auth", "export", "--type=tls-host").encode())
    user = x509.load_pem_x509_certificates(cluster.ok("auth", "export", "--type=tls-user").encode())
    assert len(host) == len(user) == 1
    assert host[0] != user[0]
    assert pin_of_cert(host[0].public_bytes(serialization.Encoding.DER)) == cluster.call("status")["ca_pin"]
    assert user[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_export_without_type_prints_host_then_user(cluster):
    both = cluster.ok("auth", "export")
    assert both == cluster.ok("auth", "export", "--type=host") + cluster.ok("auth", "export", "--type=user")


# -- sign -----------------------------------------------------------------------------------------------


def test_sign_identity_file_works_with_tctl_i(cluster, tmp_path):
    out = tmp_path / "ed.pem"
    assert cluster.ok("auth", "sign", "--user=ed", f"--out={out}") == f"The credentials have been written to {out}\n"
    assert mode(out) == 0o600
    identity = LocalIdentity.read_identity_file(out)
    assert identity.ssh_cert.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert identity.known_hosts and identity.known_hosts[0].startswith("@cert-authority example.com,*.example.com ")
    # the key was made here: it is the key the certificates certify
    cert = x509.load_pem_x509_certificate(identity.tls_cert_pem)
    key = keys.load_private_key(identity.key_pem)
    assert keys.same_public_key(key, cert.public_key())  # type: ignore[arg-type]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "ed"
    # the client library and tctl -i both use it; an editor may read roles
    assert "editor" in roles_with(cluster, load_identity_file(out))
    names = [line.split()[0] for line in cluster.ok("get", "roles", "--format=text", identity=out).splitlines()[2:]]
    assert {"access", "auditor", "editor"} <= set(names)


def test_auditor_identity_is_refused_create_with_403_reason(cluster, tmp_path):
    out = tmp_path / "aud.pem"
    cluster.ok("auth", "sign", "--user=aud", f"--out={out}")
    role = "kind: role\nversion: v5\nmetadata: {name: sneaky}\nspec: {}\n"
    assert cluster.error("create", identity=out, input=role) == (
        'ERROR: access denied to user "aud": no role allows create on role (auditor)')
    assert cluster.error("users", "add", "mallory", "--roles=editor", identity=out) == (
        'ERROR: access denied to user "aud": no role allows create on user (auditor)')
    assert "sneaky" not in {r["metadata"]["name"] for r in cluster.call("get_roles")}


@needs_ssh_keygen
def test_sign_openssh_writes_key_and_cert_that_ssh_keygen_reads(cluster, tmp_path):
    out = tmp_path / "dev"
    cert_file = tmp_path / "dev-cert.pub"
    printed = cluster.ok("auth", "sign", "--user=dev", f"--out={out}", "--format=openssh", "--ttl=1h")
    assert printed == f"The credentials have been written to {out}, {cert_file}\n"
    assert mode(out) == 0o600 and mode(cert_file) == 0o600
    assert out.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    listing = ssh_keygen("-L", "-f", str(cert_file))
    assert "user certificate" in listing and 'Key ID: "dev"' in listing
    principals = listing.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["dev", "root"]
    # the certified key is the private key's public half; the signer is the exported user CA
    public = tmp_path / "dev.pub"
    public.write_text(ssh_keygen("-y", "-f", str(out)))
    key_fingerprint = ssh_keygen("-l", "-f", str(public)).split()[1]
    assert f"Public key: ED25519-CERT {key_fingerprint}" in listing
    exported = tmp_path / "user_ca.pub"
    exported.write_text(cluster.ok("auth", "export", "--type=user"))
    ca_fingerprint = ssh_keygen("-l", "-f", str(exported)).split()[1]
    assert f"Signing CA: ED25519 {ca_fingerprint}" in listing
    valid = re.search(r"Valid: from (\S+) to (\S+)", listing)
    assert valid is not None
    lifetime = dt.datetime.fromisoformat(valid[2]) - dt.datetime.fromisoformat(valid[1])
    assert lifetime == dt.timedelta(hours=1, minutes=1)  # --ttl=1h, valid from a minute ago


def test_sign_tls_files_load_as_a_key_pair(cluster, tmp_path):
    out = tmp_path / "ed"
    files = [tmp_path / f"ed{suffix}" for suffix in (".key", ".crt", ".cas")]
    printed = cluster.ok("auth", "sign", "--user=ed", f"--out={out}", "--format=tls")
    assert printed == f"The credentials have been written to {', '.join(map(str, files))}\n"
    assert [mode(f) for f in files] == [0o600] * 3
    assert "editor" in roles_with(cluster, load_key_pair(files[1], files[0], files[2]))
    if shutil.which("openssl"):
        user_ca = tmp_path / "user_ca.pem"
        user_ca.write_text(cluster.ok("auth", "export", "--type=tls-user"))
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(user_ca), str(files[1])], capture_output=True,
                                  text=True, timeout=30, check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sign_refuses_to_overwrite_unless_asked(cluster, tmp_path):
    out = tmp_path / "id.pem"
    out.write_text("precious")
    assert cluster.error("auth", "sign", "--user=ed", f"--out={out}") == (
        f"ERROR: {out} already exists; pass --overwrite to replace it")
    assert out.read_text() == "precious"
    cluster.ok("auth", "sign", "--user=ed", f"--out={out}", "--overwrite")
    assert mode(out) == 0o600 and "PRIVATE KEY" in out.read_text()


def test_sign_ttl_capped_by_the_server_warns(cluster, tmp_path):
    out = tmp_path / "long.pem"
    result = cluster.tctl("auth", "sign", "--user=ed", f"--out={out}", "--ttl=40h")
    assert result.returncode == 0 and out.exists()
    assert re.fullmatch(r"WARNING: the certificates expire .* UTC, before the requested --ttl=40h \(capped by the "
                        r"user's roles max_session_ttl or the cluster's maximum\)\n", result.stderr), result.stderr


def test_sign_for_unknown_user_writes_nothing(cluster, tmp_path):
    out = tmp_path / "ghost.pem"
    assert cluster.error("auth", "sign", "--user=ghost", f"--out={out}") == 'ERROR: user "ghost" not found'
    assert list(tmp_path.iterdir()) == []


def test_signed_identity_of_an_editor_cannot_sign_for_others_without_rights(cluster, tmp_path):
    """auth sign needs create on user_cert: the editor role does not grant it."""
    editor = tmp_path / "ed.pem"
    cluster.ok("auth", "sign", "--user=ed", f"--out={editor}")

    async def main() -> None:
        async with AuthClient(cluster.addr, [load_identity_file(editor)]) as client:
            await client.sign_user_cert("dev", keys.public_key_openssh(keys.generate_private_key("ed25519")))

    with pytest.raises(AccessDenied):
        asyncio.run(main())


BAD_SIGN = [
    (("auth", "sign", "--out=x.pem"), "ERROR: --user or --host must be specified (one of them)"),
    (("auth", "sign", "--user=ed"), 'ERROR: tctl auth sign: the following arguments are required: -o/--out '
                                    '(see "tctl auth sign --help")'),
    (("auth", "sign", "--user=ed", "--out=x", "--format=pkcs12"),
     "ERROR: tctl auth sign: argument --format: invalid choice: 'pkcs12' (choose from 'file', 'openssh', 'tls') "
     '(see "tctl auth sign --help")'),
    (("auth", "sign", "--user=ed", "--out=x", "--ttl=forever"),
     'ERROR: --ttl: expected a duration like "30m" or "1h", got "forever"'),
    (("auth", "sign", "--user=ed", "--out=sub/"), 'ERROR: --out: expected a file name, got "sub/"'),
    (("auth", "export", "--type=db"), "ERROR: tctl auth export: argument --type: invalid choice: 'db' (choose from "
                                      "'user', 'host', 'tls-user', 'tls-host', 'tls') (see \"tctl auth export --help\")"),
    (("auth", "export", "extra"), 'ERROR: tctl auth export: unrecognized arguments: extra '
                                  '(see "tctl auth export --help")'),
]


@pytest.mark.parametrize(("args", "message"), BAD_SIGN)
def test_bad_auth_arguments_are_one_clear_line(cluster, args, message):
    assert cluster.error(*args) == message
    assert not (cluster.root / "x").exists() and not (cluster.root / "x.pem").exists()
