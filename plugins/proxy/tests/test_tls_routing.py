"""TLS routing on the proxy's web port (real auth, proxy and OpenSSH sshd on 127.0.0.1): tsh's
SSH over ALPN ``teleport-proxy-ssh``, the auth API passed through to auth by SNI, HTTPS for the
rest, and refusals of foreign, expired or missing client certificates and of garbage bytes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from proxy_helpers import CLUSTER, LOGIN, Env

from teleport_core.api.client import AuthClient, load_tls
from teleport_core.errors import AccessDenied
from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

pytestmark = pytest.mark.e2e

PASSWORD = "tls routing password 0123456789"
ALPN_SSH = "teleport-proxy-ssh"


@pytest.fixture(scope="module")
def carol(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env.signup("carol", ["dev"], [LOGIN], PASSWORD)
    home = tmp_path_factory.mktemp("carol-tsh")
    result = env.login(home, "carol")
    assert result.returncode == 0, result.stderr
    return home


def profile_meta(home: Path) -> dict[str, Any]:
    return json.loads((home / "profiles" / "127.0.0.1" / "profile.json").read_text())  # type: ignore[no-any-return]


def denials(env: Env, needle: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """T3007W events whose error mentions ``needle`` (audit delivery from the proxy is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in env.call("search_events")["events"]
                 if e["code"] == "T3007W" and needle in e.get("error", "")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_ping_advertises_tls_routing_and_login_remembers_it(env: Env, carol: Path) -> None:
    with env.web_client() as web:
        assert web.get("/webapi/ping").json()["proxy"]["tls_routing_enabled"] is True
    assert profile_meta(carol)["tls_routing"] is True


def test_tsh_ssh_goes_through_the_web_port(env: Env, carol: Path, tmp_path: Path) -> None:
    home = tmp_path / "tsh"
    shutil.copytree(carol, home)
    meta_path = home / "profiles" / "127.0.0.1" / "profile.json"
    meta = profile_meta(home)
    meta["ssh_addr"] = "127.0.0.1:1"  # nothing listens there: only the web port can carry the session
    meta_path.write_text(json.dumps(meta))
    result = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "echo", "routed")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "routed\n"
    failing = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "exit 3")
    assert failing.returncode == 3
    missing = env.tsh(home, "ssh", f"{LOGIN}@nowhere-tls", "true")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "ERROR: target host nowhere-tls is offline or does not exist"
    assert denials(env, "nowhere-tls")


def test_tsh_refuses_a_web_port_without_the_cluster_host_certificate(env: Env, carol: Path, tmp_path: Path) -> None:
    """Strict checking of the proxy hop: a TLS server offering teleport-proxy-ssh with a
    certificate the cluster's host CA did not sign is refused before anything is sent."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives.serialization import Encoding

    write_private(tmp_path / "cert.pem", cert.public_bytes(Encoding.PEM))
    write_private(tmp_path / "key.pem", keys.private_key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.set_alpn_protocols([ALPN_SSH])
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError):
            tls = context.wrap_socket(conn, server_side=True)
            received.append(tls.recv(100))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    home = tmp_path / "tsh"
    shutil.copytree(carol, home)
    meta = profile_meta(home)
    meta["web_addr"] = f"127.0.0.1:{listener.getsockname()[1]}"
    (home / "profiles" / "127.0.0.1" / "profile.json").write_text(json.dumps(meta))
    result = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "true")
    thread.join(10)
    listener.close()
    assert result.returncode == 1
    assert "is not a proxy of this cluster" in result.stderr
    assert not any(received), "tsh sent the dial request to an impostor"


def _user_cert(ca_cert: x509.Certificate, ca_key: Any, user_key: Any, *, not_before: dt.datetime,
               not_after: dt.datetime) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dev")])
    algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(user_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(ca_key, algorithm))  # type: ignore[arg-type]
    return cert.public_bytes(Encoding.PEM)


def _dial_with(env: Env, cert_pem: bytes | None, key: Any, folder: Path, source: str = "127.0.0.1") -> bytes:
    """Connect to the web port from ``source`` with ALPN teleport-proxy-ssh and ``cert_pem``, ask for
    sshd-node; what the proxy answers (b"" when it closed the connection or failed the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN_SSH])
    if cert_pem is not None:
        write_private(folder / "cert.pem", cert_pem)
        write_private(folder / "key.pem", keys.private_key_pem(key))
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    raw = socket.create_connection(("127.0.0.1", env.proxy.web_address.port), timeout=10, source_address=(source, 0))
    try:
        tls = context.wrap_socket(raw)
        tls.sendall(f"sshd-node:0@{CLUSTER}\n".encode())
        return tls.recv(100)
    except (ssl.SSLError, OSError):
        return b""
    finally:
        raw.close()


def test_foreign_expired_and_missing_client_certificates_are_refused_and_audited(env: Env, tmp_path: Path) -> None:
    user_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    # a certificate from a CA of our own that copies the real user CA's name
    real = env.auth_handle.process.services["auth_service"].user_ca.active
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign_ca = (x509.CertificateBuilder().subject_name(real.tls_cert.subject).issuer_name(real.tls_cert.subject)
                  .public_key(foreign_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(hours=1))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                  .sign(foreign_key, hashes.SHA256()))
    foreign = _user_cert(foreign_ca, foreign_key, user_key, not_before=now - dt.timedelta(minutes=1),
                         not_after=now + dt.timedelta(hours=1))
    # each from its own address: refusals are audited once per source and period
    assert _dial_with(env, foreign, user_key, tmp_path, "127.0.0.11") == b""
    # signed by the real user CA, expired an hour ago
    expired = _user_cert(real.tls_cert, real.tls_private_key, user_key, not_before=now - dt.timedelta(hours=3),
                         not_after=now - dt.timedelta(hours=1))
    assert _dial_with(env, expired, user_key, tmp_path, "127.0.0.12") == b""
    assert _dial_with(env, None, user_key, tmp_path, "127.0.0.13") == b""
    # the same certificate, valid now, is let through: the refusals above were about the certificate
    valid = _user_cert(real.tls_cert, real.tls_private_key, user_key, not_before=now - dt.timedelta(minutes=1),
                       not_after=now + dt.timedelta(hours=1))
    assert _dial_with(env, valid, user_key, tmp_path).startswith(f"OK {env.sshd_uuid}\n".encode())  # type: ignore[attr-defined]
    assert denials(env, "client certificate: certificate signature failure")  # same CA name, other key
    assert denials(env, "client certificate: certificate has expired")
    assert denials(env, "peer did not return a certificate")
    assert len(denials(env, "handshake refused")) >= 3


def test_auth_api_through_the_web_port(env: Env) -> None:
    """AuthClient pointed at the proxy's web port: the proxy passes the TLS through (SNI
    teleport.cluster.local), auth sees the client's own certificate and authorizes it."""
    reader_role = {"kind": "role", "version": "v5", "metadata": {"name": "role-reader"},
                   "spec": {"allow": {"rules": [{"resources": ["role"], "verbs": ["list", "read"]}]}}}

    async def body() -> dict[str, Any]:
        async with env.admin() as admin:
            await admin.upsert_role(reader_role)
            await admin.create_user("api-reader", ["role-reader"])
            key = keys.generate_private_key("ed25519")
            certs = await admin.sign_user_cert("api-reader", keys.public_key_openssh(key), ttl="1h")
        identity = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                 tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])
        async with AuthClient(env.web, [load_tls(identity.client_context())]) as api:
            role = await api.get_role("dev")
            with pytest.raises(AccessDenied, match="no role allows create on role"):
                await api.create_role({**reader_role, "metadata": {"name": "sneaky"}})
        return role

    role = asyncio.run(body())
    assert role["metadata"]["name"] == "dev"
    with env.web_client() as web:  # and the same port still serves HTTPS
        assert web.get("/webapi/ping").json()["cluster_name"] == CLUSTER


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP
    b"\x16\x03\x01\x00\x10" + b"\x01\x00\x00\x0c" + b"\xff" * 12,  # a ClientHello cut short inside
    b"\x16\x03\x01\xff\xff" + b"\x00" * 64,  # a record longer than any ClientHello
    b"\x00" * 4096,  # garbage
])
def test_garbage_on_the_web_port_is_closed_and_the_port_keeps_serving(env: Env, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", env.proxy.web_address.port), timeout=15) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        assert b"".join(chunks) == b""  # closed without an answer
    with env.web_client() as web:
        assert web.get("/webapi/ping").status_code == 200
