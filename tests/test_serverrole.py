"""teleport_core.pki.serverrole against real TLS servers on loopback: the system-role check fails the
handshake on every way a client opens TLS (a plain socket, asyncio, httpx sync and async) before
anything is sent, lets the wanted role through, and with ``only_from`` judges only certificates
of those CAs."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teleport_core.pki.serverrole import ServerRoleError, find_role_error, require_server_role, system_role
from teleport_core.testing.impostor import RecordingTLSServer, forge_tls_host_cert, http_json_answer

NAME = "teleport.cluster.local"


class CA:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test host CA")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def server(self, role: str) -> RecordingTLSServer:
        cert, key = forge_tls_host_cert(self.cert, self.key, role=role, cluster="example.com", dns_names=[NAME])
        return RecordingTLSServer(cert, key, answer=http_json_answer("/x", {"ok": True}))

    def client(self, role: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.pem.decode())
        return require_server_role(context, role)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture
def node(ca: CA) -> Iterator[RecordingTLSServer]:
    with ca.server("Node") as server:
        yield server


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def test_system_role_reads_subject_o(ca: CA) -> None:
    cert, _ = forge_tls_host_cert(ca.cert, ca.key, role="Auth", cluster="c")
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    assert system_role(der) == "Auth"
    assert system_role(ca.cert.public_bytes(serialization.Encoding.DER)) == ""  # no O
    assert system_role(b"not a certificate") == ""


def test_plain_socket_refused_in_the_handshake(ca: CA, node: RecordingTLSServer) -> None:
    import socket

    with socket.create_connection(split(node.addr)) as raw, pytest.raises(ServerRoleError) as refused:
        ca.client("Auth").wrap_socket(raw, server_hostname=NAME)
    assert str(refused.value) == "presented a Node certificate, not the auth server's"
    assert refused.value.at(node.addr) == f"the server at {node.addr} presented a Node certificate, not the auth server's"


def test_asyncio_streams_refused(ca: CA, node: RecordingTLSServer) -> None:
    async def body() -> None:
        host, port = split(node.addr)
        with pytest.raises(ServerRoleError):
            await asyncio.open_connection(host, port, ssl=ca.client("Proxy"), server_hostname=NAME)

    asyncio.run(body())


def test_httpx_sync_and_async_refused_before_the_request(ca: CA, node: RecordingTLSServer) -> None:
    with httpx.Client(verify=ca.client("Auth")) as client, pytest.raises(httpx.ConnectError) as sync_error:
        client.get(f"https://{node.addr}/x", extensions={"sni_hostname": NAME})
    assert find_role_error(sync_error.value) is not None

    async def body() -> None:
        async with httpx.AsyncClient(verify=ca.client("Auth")) as client:
            with pytest.raises(httpx.ConnectError) as async_error:
                await client.post(f"https://{node.addr}/x", json={"token": "secret"},
                                  extensions={"sni_hostname": NAME})
        assert find_role_error(async_error.value) is not None

    asyncio.run(body())
    assert node.received == []


def test_the_wanted_role_passes(ca: CA) -> None:
    with ca.server("Auth") as auth, httpx.Client(verify=ca.client("Auth")) as client:
        answer = client.get(f"https://{auth.addr}/x", extensions={"sni_hostname": NAME})
    assert answer.json() == {"ok": True}


def test_only_from_judges_only_that_cas_certificates(ca: CA) -> None:
    other = CA()  # a self-signed web certificate's stand-in: not from the cluster's CA
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    require_server_role(insecure, "Proxy", only_from=[ca.pem])
    with other.server("Node") as foreign, httpx.Client(verify=insecure) as client:
        assert client.get(f"https://{foreign.addr}/x").json() == {"ok": True}
    with ca.server("Node") as node, httpx.Client(verify=insecure) as client, \
            pytest.raises(httpx.ConnectError) as refused:
        client.get(f"https://{node.addr}/x")
    wrong = find_role_error(refused.value)
    assert wrong is not None and str(wrong) == "presented a Node certificate, not the proxy's"
    assert node.received == []
