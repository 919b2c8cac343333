"""Logins the node must refuse, each audited (``auth`` T3007W with the reason) while the
client only sees OpenSSH's "Permission denied"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from node_helpers import Auth, Node, craft_user_cert, run, ssh_argv

pytestmark = pytest.mark.e2e


def refused(auth: Auth, node: Node, tmp: Path, key: Path, login: str, *, user: str, reason: str,
            extra: tuple[str, ...] = ()) -> None:
    (tmp / "known_hosts").write_text(auth.known_hosts())
    argv = ssh_argv(tmp, node.port, key, login, "echo should-not-run")
    if extra:
        argv = argv[:1] + list(extra) + argv[1:]
    result = run(argv)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert "should-not-run" not in result.stdout
    assert reason not in result.stderr  # no internal detail for the client
    deadline = time.monotonic() + 30
    while True:
        events = [e for e in auth.events(type="auth") if e.get("login") == login and e.get("user") == user
                  and reason in e.get("error", "")]
        if events:
            break
        assert time.monotonic() < deadline, f"no auth event with {reason!r}: {auth.events(type='auth')[-3:]}"
        time.sleep(0.2)
    event = events[-1]
    assert event["code"] == "T3007W" and event["success"] is False and event["addr.remote"].startswith("127.0.0.1:")


def _ca_signer(auth: Auth) -> Any:
    return auth.handle.process.services["auth_service"].user_ca.ssh_signer()


def test_login_not_a_principal(auth: Auth, node: Node, tmp_path: Path) -> None:
    key = auth.user(tmp_path, "bob", ["access"], ["root"])
    refused(auth, node, tmp_path, key, "daemon", user="bob", reason="not a principal")


def test_login_principal_but_denied_by_role(auth: Auth, node: Node, tmp_path: Path) -> None:
    role = {"kind": "role", "version": "v5", "metadata": {"name": "no-root"},
            "spec": {"allow": {"logins": ["root"], "node_labels": {"*": "*"}},
                     "deny": {"node_labels": {"team": "core"}}}}
    auth.run(lambda admin: admin.upsert_role(role))
    key = auth.user(tmp_path, "carl", ["access", "no-root"], ["root"])
    refused(auth, node, tmp_path, key, "root", user="carl", reason="denies access to nodes matching")


def test_wrong_node_labels(auth: Auth, node: Node, tmp_path: Path) -> None:
    role = {"kind": "role", "version": "v5", "metadata": {"name": "prod-only"},
            "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}}}}
    auth.run(lambda admin: admin.upsert_role(role))
    key = auth.user(tmp_path, "dora", ["prod-only"], [])
    refused(auth, node, tmp_path, key, "root", user="dora", reason="matches the node's labels")


def test_expired_certificate(auth: Auth, node: Node, tmp_path: Path) -> None:
    now = int(time.time())
    key = craft_user_cert(tmp_path, "erin", _ca_signer(auth), principals=["root"], roles=["access"],
                          valid_after=now - 7200, valid_before=now - 3600)
    refused(auth, node, tmp_path, key, "root", user="erin", reason="expired")


def test_certificate_of_a_foreign_ca(auth: Auth, node: Node, tmp_path: Path) -> None:
    now = int(time.time())
    key = craft_user_cert(tmp_path, "fred", ed25519.Ed25519PrivateKey.generate(), principals=["root"],
                          roles=["access"], valid_after=now - 60, valid_before=now + 3600)
    refused(auth, node, tmp_path, key, "root", user="", reason="unrecognized authority")


def paramiko_refused(auth: Auth, node: Node, key: Path, *, user: str, reason: str) -> None:
    """Offer a certificate OpenSSH would not send (a host certificate) with paramiko's client."""
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    pkey.load_certificate(str(key) + "-cert.pub")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):
        client.connect("127.0.0.1", node.port, username="root", pkey=pkey, allow_agent=False, look_for_keys=False)
    client.close()
    deadline = time.monotonic() + 30
    while not [e for e in auth.events(type="auth") if e.get("user") == user and reason in e["error"]]:
        assert time.monotonic() < deadline, auth.events(type="auth")[-3:]
        time.sleep(0.2)


def test_host_certificate_presented_as_user_certificate(auth: Auth, node: Node, tmp_path: Path) -> None:
    # the node's own host certificate (host CA)
    folder = node.data_dir / "data" / "keys" / "node"
    from teleport_core.files import write_private, write_public
    from teleport_core.pki import keys

    private = keys.load_private_key((folder / "key").read_bytes())
    write_private(tmp_path / "hostkey", keys.private_key_openssh(private))
    write_public(tmp_path / "hostkey-cert.pub", (folder / "ssh-cert.pub").read_text())
    paramiko_refused(auth, node, tmp_path / "hostkey", user="", reason="unrecognized authority")
    # signed by the user CA but typed "host"
    now = int(time.time())
    key = craft_user_cert(tmp_path, "hank", _ca_signer(auth), principals=["root"], roles=["access"],
                          valid_after=now - 60, valid_before=now + 3600, cert_type="host")
    paramiko_refused(auth, node, key, user="hank", reason="host certificate")


def test_plain_key_without_certificate(auth: Auth, node: Node, tmp_path: Path) -> None:
    key = auth.user(tmp_path, "gina", ["access"], ["root"])
    (tmp_path / "gina-cert.pub").unlink()
    refused(auth, node, tmp_path, key, "root", user="", reason="plain public key")


@pytest.mark.parametrize("login", ["nosuchuser"])
def test_login_without_os_user(auth: Auth, node: Node, tmp_path: Path, login: str) -> None:
    key = auth.user(tmp_path, "ivan", ["access"], [login])
    refused(auth, node, tmp_path, key, login, user="ivan", reason="no OS user")
