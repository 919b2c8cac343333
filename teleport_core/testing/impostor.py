"""Attacker tools for tests: a host certificate signed directly with a cluster's host CA key (as
a compromised or rogue host holds one), and a TLS server on loopback that presents it and
records every byte it receives.

::

    cert_pem, key_pem = forge_tls_host_cert(ca.tls_cert, ca.tls_private_key, role="Node",
                                            cluster="example.com",
                                            dns_names=["teleport.cluster.local"])
    with RecordingTLSServer(cert_pem, key_pem, answer=ping_answer) as fake:
        ...  # point a client at fake.addr
    assert fake.received == []
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teleport_core.files import write_private
from teleport_core.pki import keys


def forge_tls_host_cert(ca_cert: x509.Certificate, ca_key: Any, *, role: str, cluster: str,
                        host_uuid: str = "", dns_names: Sequence[str] = (),
                        ip_addresses: Sequence[str] = ("127.0.0.1",)) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): an X.509 host identity as auth issues it (CN
    ``<uuid>.<cluster>``, O = ``role``), signed with ``ca_key``, with the given SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{host_uuid or uuid.uuid4()}.{cluster}")])
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), keys.private_key_pem(key)


@attrs.define
class Received:
    """One connection: whether its TLS handshake completed, and the bytes read after it."""

    handshake: bool = False
    data: bytes = b""


class RecordingTLSServer:
    """A TLS server on 127.0.0.1 presenting ``cert_pem``: it records what each connection sends
    after the handshake (``received``; connections whose handshake failed are counted in
    ``refused_handshakes``) and, when ``answer(request bytes)`` returns bytes, writes them back
    (a fake ``/v1/ping``, say). Offers ALPN ``alpn`` when given."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, *, answer: Callable[[bytes], bytes | None] | None = None,
                 alpn: Sequence[str] = ()) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="impostor-") as tmp:
            write_private(Path(tmp) / "cert.pem", cert_pem)
            write_private(Path(tmp) / "key.pem", key_pem)
            self.context.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
        if alpn:
            self.context.set_alpn_protocols(list(alpn))
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[Received] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._loop, daemon=True)

    @property
    def received(self) -> list[bytes]:
        """What each connection with a completed handshake sent (empty ones left out)."""
        return [c.data for c in self.connections if c.data]

    @property
    def refused_handshakes(self) -> int:
        return sum(1 for c in self.connections if not c.handshake)

    def __enter__(self) -> RecordingTLSServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)
        self.sock.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = Received()
            self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, record: Received) -> None:
        conn.settimeout(5)
        with contextlib.closing(conn):
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return
            record.handshake = True
            with contextlib.suppress(ssl.SSLError, OSError):
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    record.data += chunk
                    reply = self.answer(record.data) if self.answer is not None else None
                    if reply is not None:
                        tls.sendall(reply)
                        break


def http_json_answer(path: str, body: Any) -> Callable[[bytes], bytes | None]:
    """An ``answer`` for :class:`RecordingTLSServer`: ``body`` as JSON to a complete request for
    ``path`` (then the connection closes), nothing to anything else."""

    def answer(request: bytes) -> bytes | None:
        if b"\r\n\r\n" not in request or request.split(b" ", 2)[1:2] != [path.encode()]:
            return None
        data = json.dumps(body).encode()
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(data)}\r\n\r\n".encode() + data)

    return answer
