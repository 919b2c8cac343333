"""Bounded before authentication, and refusals below HTTP audited, on a real cluster (auth and
proxy in one teleport process on 127.0.0.1): oversized bodies on the auth port and the proxy's
web port are 413s before anything is read; client certificates refused in the TLS handshake
(foreign CA, expired, a host certificate where a user one is needed) and calls missing a
client certificate are T3007W events with the reason and the peer address; the victim is
served throughout."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from proxy_helpers import CLUSTER

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e


class Cluster:
    def __init__(self, root: Path, handle: Any) -> None:
        self.root = root
        self.handle = handle
        self.auth = handle.process.services["auth_service"]
        self.proxy = handle.process.services["proxy_service"]
        self.auth_port = int(self.auth.address.rpartition(":")[2])
        self.web_port = self.proxy.web_address.port

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def body() -> Any:
            async with AuthClient(self.auth.address, [load_identity_dir(self.root / "data" / "keys" / "auth")]) as c:
                return await getattr(c, method)(*args, **kwargs)

        return asyncio.run(body())

    def denials(self, needle: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        """T3007W events whose error mentions ``needle``, once there are ``count`` (or the wait is over)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.call("search_events", limit=1000)["events"]
                     if e["code"] == "T3007W" and needle in e.get("error", "")]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hostile")
    config = {
        "teleport": {"data_dir": str(root / "data"), "nodename": "hostile-1"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield Cluster(root, handle)


def tls(port: int, source: str = "127.0.0.1", cert: tuple[bytes, bytes] | None = None,
        folder: Path | None = None) -> ssl.SSLSocket:
    """A TLS connection (server not verified) from ``source``, with ``cert`` (PEM certificate and key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        assert folder is not None
        write_private(folder / "c.pem", cert[0])
        write_private(folder / "k.pem", cert[1])
        context.load_cert_chain(folder / "c.pem", folder / "k.pem")
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")


def answer(sock: ssl.SSLSocket) -> tuple[int, dict[str, Any]]:
    return answer_with_head(sock)[:2]  # type: ignore[return-value]


def answer_with_head(sock: ssl.SSLSocket) -> tuple[int, dict[str, Any], bytes]:
    data = b""
    with contextlib.suppress(OSError, ssl.SSLError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body), head.lower()


def test_oversized_bodies_are_413s_before_reading_on_auth_and_web(cluster: Cluster) -> None:
    for port, head in [(cluster.auth_port, b"POST /v1/login"), (cluster.auth_port, b"POST /v1/roles"),
                       (cluster.web_port, b"POST /v1/webapi/ssh/certs"),
                       (cluster.web_port, b"PUT /v1/webapi/users/password/token")]:
        with tls(port) as sock:  # no client certificate, no body: only the head claiming 1 GiB
            sock.sendall(head + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 1073741824\r\n\r\n")
            status, body, answered = answer_with_head(sock)
            assert status == 413 and body["error"].startswith("request body over "), (head, body)
            if port == cluster.web_port:  # the web port's security headers, on the listener's own answer too
                assert b"content-security-policy: default-src 'self'" in answered, answered
                assert b"x-frame-options: deny" in answered, answered
    with tls(cluster.web_port) as sock:  # chunked: cut once past the login limit
        sock.sendall(b"POST /v1/webapi/ssh/certs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError, ssl.SSLError):
            for _ in range(1024):
                sock.sendall(b"4000\r\n" + b"[" * 0x4000 + b"\r\n")
        with contextlib.suppress(OSError, ssl.SSLError, IndexError, ValueError):
            assert answer(sock) == (413, {"error": "request body over 16384 bytes"})
    assert cluster.call("ping")["cluster_name"] == CLUSTER  # the victim is served


def _cert(issuer: x509.Certificate, issuer_key: Any, *, hours: tuple[int, int]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "access")])
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(hours=hours[0])).not_valid_after(now + dt.timedelta(hours=hours[1]))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(issuer_key, algorithm))  # type: ignore[arg-type]
    return cert.public_bytes(Encoding.PEM), keys.private_key_pem(key)


def _refused(port: int, source: str, cert: tuple[bytes, bytes], folder: Path) -> None:
    with contextlib.suppress(OSError, ssl.SSLError), tls(port, source, cert, folder) as sock:
        sock.sendall(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100) == b""


def test_refused_client_certificates_are_audited_with_reason_and_peer(cluster: Cluster, tmp_path: Path) -> None:
    user_ca = cluster.auth.user_ca.active
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    foreign_ca = (x509.CertificateBuilder().subject_name(user_ca.tls_cert.subject)
                  .issuer_name(user_ca.tls_cert.subject).public_key(foreign_key.public_key())
                  .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
                  .not_valid_after(now + dt.timedelta(hours=1))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                  .sign(foreign_key, hashes.SHA256()))
    foreign = _cert(foreign_ca, foreign_key, hours=(-1, 1))  # a look-alike of the user CA
    expired = _cert(user_ca.tls_cert, user_ca.tls_private_key, hours=(-3, -1))  # the real user CA, expired
    identity = cluster.auth.identity
    host = (identity.tls_cert_pem, identity.key_pem)  # the auth server's host certificate
    unknown_issuer = "client certificate: unable to get local issuer certificate"
    cases = {  # source: port, certificate, reason
        "127.0.0.21": (cluster.auth_port, foreign, unknown_issuer),
        "127.0.0.22": (cluster.auth_port, expired, "client certificate: certificate has expired"),
        "127.0.0.23": (cluster.web_port, foreign, unknown_issuer),
        "127.0.0.24": (cluster.web_port, expired, "client certificate: certificate has expired"),
        "127.0.0.25": (cluster.web_port, host, unknown_issuer),  # a host certificate where a user one is needed
    }
    for source, (port, cert, _) in cases.items():
        _refused(port, source, cert, tmp_path)
    events = {e["addr.remote"].rpartition(":")[0]: e for e in cluster.denials("tls handshake refused", count=5)}
    for source, (_, _, reason) in cases.items():
        assert events[source]["error"] == f"tls handshake refused: {reason}", events[source]
        assert events[source]["event"] == "auth" and events[source]["user"] == ""
    # a flood from one source: one event per period, however many handshakes
    for _ in range(10):
        _refused(cluster.web_port, "127.0.0.26", expired, tmp_path)
    time.sleep(1)  # the proxy's spool delivers asynchronously: give a second event the chance to show
    flood = [e for e in cluster.denials("certificate has expired", count=3) if e["addr.remote"].startswith("127.0.0.26:")]
    assert len(flood) == 1
    # the victim: the real user CA's valid certificate is let through
    valid = _cert(user_ca.tls_cert, user_ca.tls_private_key, hours=(-1, 1))
    with tls(cluster.web_port, "127.0.0.27", valid, tmp_path) as sock:
        sock.sendall(b"GET /v1/webapi/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, body = answer(sock)
        assert status == 200 and body["cluster_name"] == CLUSTER


def test_calls_missing_a_client_certificate_are_audited(cluster: Cluster) -> None:
    for port, path in [(cluster.auth_port, b"/v1/roles"), (cluster.web_port, b"/v1/webapi/sites/x/nodes")]:
        with tls(port, "127.0.0.31" if port == cluster.auth_port else "127.0.0.32") as sock:
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer(sock)[0] == 401
    [auth_event] = [e for e in cluster.denials("GET /v1/roles: this call needs a client certificate")
                    if e["addr.remote"].startswith("127.0.0.31:")]
    [web_event] = [e for e in cluster.denials("a client certificate from tsh login is required")
                   if e["addr.remote"].startswith("127.0.0.32:")]
    assert auth_event["user"] == "" and web_event["error"].startswith("GET /v1/webapi/sites/x/nodes: ")
