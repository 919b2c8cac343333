"""End to end with the real OpenSSH client: it trusts our host certificate through the
``@cert-authority`` line ``tctl auth export --type=host`` prints, and logs in with our user
certificate, which the server side checks with :func:`verify_ssh_cert`.

The server is a minimal paramiko server presenting the host certificate; it only exists to put
the certificates on the wire.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from teleport_auth.authority import CertAuthority, export_known_hosts, generate_authority
from teleport_auth.issuer import InvalidCertificate, issue_ssh_host_cert, issue_ssh_user_cert, verify_ssh_cert

from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.pki.certs import CertType
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity

pytestmark = pytest.mark.e2e  # real processes end to end

CLUSTER = "example.com"
HOST_UUID = "0b6c5e0e-7f43-4a8e-a0b3-6f3c2b1d9e8a"
CERT_ALG = "ssh-ed25519-cert-v01@openssh.com"


class CertHostKey(paramiko.PKey):  # type: ignore[misc]
    """A paramiko host key that presents an OpenSSH host certificate and signs with its key."""

    def __init__(self, inner: paramiko.Ed25519Key, cert_line: bytes) -> None:
        self.inner = inner
        self.blob = base64.b64decode(cert_line.split()[1])

    def get_name(self) -> str:
        return CERT_ALG

    def asbytes(self) -> bytes:
        return self.blob

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> Any:
        return self.inner.sign_ssh_data(data)


class CertServer(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, user_ca: CertAuthority, client_ip: str) -> None:
        self.user_ca = user_ca
        self.client_ip = client_ip
        self.exec_requested = threading.Event()
        self.verified: list[Any] = []
        self.errors: list[str] = []

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: Any) -> int:
        blob = getattr(key, "public_blob", None)
        if blob is None:
            self.errors.append("plain key offered")
            return paramiko.AUTH_FAILED
        line = f"{blob.key_type} {base64.b64encode(blob.key_blob).decode()}"
        try:
            self.verified.append(
                verify_ssh_cert(
                    line, self.user_ca, cert_type=CertType.USER, principal=username, client_ip=self.client_ip
                )
            )
        except InvalidCertificate as exc:
            self.errors.append(str(exc))
            return paramiko.AUTH_FAILED
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        self.exec_requested.set()
        return True


@pytest.fixture(scope="module")
def cas() -> tuple[CertAuthority, CertAuthority]:
    return generate_authority("user", CLUSTER), generate_authority("host", CLUSTER)


def serve_once(host_key: CertHostKey, server: CertServer) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)
    port = listener.getsockname()[1]

    def run() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        finally:
            listener.close()
        transport = paramiko.Transport(sock)
        try:
            transport.get_security_options().key_types = [CERT_ALG]
            transport.add_server_key(host_key)
            transport.start_server(server=server)
            channel = transport.accept(20)
            if channel is not None and server.exec_requested.wait(20):
                channel.send_exit_status(0)
                channel.shutdown_write()
                channel.close()
                deadline = time.monotonic() + 20
                while transport.is_active() and time.monotonic() < deadline:  # let the client hang up
                    time.sleep(0.02)
        except Exception:  # the client gave up (e.g. it refused the host key)
            pass
        finally:
            transport.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def run_ssh(
    tmp_path: Path, port: int, host_alias: str, known_hosts: str, login: str = "root"
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "known_hosts").write_text(known_hosts)
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-v", "-p", str(port),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={host_alias}",
            "-o", f"HostKeyAlgorithms={CERT_ALG}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-i", str(tmp_path / "id"),
            "-o", f"CertificateFile={tmp_path / 'id-cert.pub'}",
            "-o", "ConnectTimeout=10",
            f"{login}@127.0.0.1", "true",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def setup(tmp_path: Path, cas: tuple[CertAuthority, CertAuthority]) -> tuple[CertHostKey, CertServer]:
    user_ca, host_ca = cas
    hook = make_plugins(entry_points=False, extra=[]).hook
    host_private = keys.generate_private_key("ed25519")
    host_cert = issue_ssh_host_cert(
        host_ca, hook, public_key=host_private.public_key(), host_uuid=HOST_UUID, nodename="node1", role="Node"
    ).data
    inner = paramiko.Ed25519Key.from_private_key(_text_io(keys.private_key_openssh(host_private)))
    user_private = keys.generate_private_key("ed25519")
    write_private(tmp_path / "id", keys.private_key_openssh(user_private))
    identity = Identity(name="alice", roles=("access",), logins=("root",))
    user_cert = issue_ssh_user_cert(
        user_ca,
        hook,
        public_key=user_private.public_key(),
        identity=identity,
        client_ip="127.0.0.1",
        pin_source_ip=True,
    ).data
    write_public(tmp_path / "id-cert.pub", user_cert + b"\n")
    return CertHostKey(inner, host_cert), CertServer(user_ca, "127.0.0.1")


def _text_io(data: bytes) -> Any:
    import io

    return io.StringIO(data.decode())


def test_openssh_trusts_host_cert_and_logs_in_with_user_cert(cas, tmp_path):
    host_key, server = setup(tmp_path, cas)
    port, thread = serve_once(host_key, server)
    result = run_ssh(tmp_path, port, f"{HOST_UUID}.{CLUSTER}", export_known_hosts(cas[1]))
    thread.join(30)
    assert f"Host '{HOST_UUID}.{CLUSTER}' is known and matches the ED25519-CERT host certificate" in result.stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert server.errors == []
    assert server.verified[0].identity.name == "alice"
    assert server.verified[0].critical_options == {"source-address": "127.0.0.1"}


def test_openssh_refuses_host_cert_of_another_ca(cas, tmp_path):
    host_key, server = setup(tmp_path, cas)
    port, thread = serve_once(host_key, server)
    other = generate_authority("host", CLUSTER)
    result = run_ssh(tmp_path, port, f"node1.{CLUSTER}", export_known_hosts(other))
    thread.join(30)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert server.verified == []


def test_openssh_refuses_host_cert_for_an_unlisted_name(cas, tmp_path):
    host_key, server = setup(tmp_path, cas)
    port, thread = serve_once(host_key, server)
    result = run_ssh(tmp_path, port, f"node2.{CLUSTER}", export_known_hosts(cas[1]))
    thread.join(30)
    assert result.returncode == 255
    assert "is not a listed principal" in result.stderr or "not in the list of principals" in result.stderr
    assert server.verified == []


def test_server_refuses_a_login_the_cert_does_not_allow(cas, tmp_path):
    host_key, server = setup(tmp_path, cas)
    port, thread = serve_once(host_key, server)
    result = run_ssh(tmp_path, port, f"node1.{CLUSTER}", export_known_hosts(cas[1]), login="admin")
    thread.join(30)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    assert any("'admin' not in the set of valid principals" in e for e in server.errors)
