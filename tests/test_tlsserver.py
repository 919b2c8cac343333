"""TLSServer: hypercorn over our own TLS listener hands the verified client certificate to the app."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from teleport_core.config.values import NetAddr
from teleport_core.net.tlsserver import (
    HTTP1_SERVERS,
    ClientHello,
    NotClientHello,
    TLSServer,
    bind_socket,
    client_certificate,
    parse_client_hello,
)

NOW = dt.datetime.now(dt.UTC)


def make_ca(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - dt.timedelta(minutes=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, name, *, server=False):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(minutes=1)).not_valid_after(NOW + dt.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pair(tmp_path, name, pair):
    key, cert = pair
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def server_context(tmp_path, ca, name):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*write_pair(tmp_path, name, issue(ca, "localhost", server=True)))
    ctx.load_verify_locations(cadata=ca[1].public_bytes(serialization.Encoding.PEM).decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(tmp_path, ca, client_pair=None, name="client"):
    ctx = ssl.create_default_context(cadata=ca[1].public_bytes(serialization.Encoding.PEM).decode())
    if client_pair is not None:
        ctx.load_cert_chain(*write_pair(tmp_path, name, client_pair))
    return ctx


async def whoami(request: Request) -> JSONResponse:
    der = client_certificate(request.scope)
    name = x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None
    tls = request.scope["extensions"]["tls"]
    return JSONResponse({"subject": name, "tls_version": tls["tls_version"]})


APP = Starlette(routes=[Route("/whoami", whoami)])


@pytest.mark.parametrize("http1", HTTP1_SERVERS)
def test_client_certificate_reaches_the_app_and_context_swaps(tmp_path, http1):
    ca, other_ca, new_ca = make_ca("cluster"), make_ca("intruder"), make_ca("rotated")

    async def run():
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "s1"), http1=http1)
        await server.start()
        url = f"https://localhost:{server.address.port}/whoami"
        try:
            alice = client_context(tmp_path, ca, issue(ca, "alice"), "alice")
            async with httpx.AsyncClient(verify=alice) as client:
                for _ in range(3):  # keep-alive: one connection, several requests
                    response = await client.get(url)
                    assert response.json() == {"subject": "CN=alice", "tls_version": "TLSv1.3"}
            async with httpx.AsyncClient(verify=client_context(tmp_path, ca)) as client:
                assert (await client.get(url)).json()["subject"] is None  # no certificate presented
            intruder = client_context(tmp_path, ca, issue(other_ca, "mallory"), "mallory")
            async with httpx.AsyncClient(verify=intruder) as client:
                with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                    await client.get(url)  # a certificate from a foreign CA fails the handshake
            # rotation: the server now trusts and presents the new CA only
            server.set_context(server_context(tmp_path, new_ca, "s2"))
            bob = client_context(tmp_path, new_ca, issue(new_ca, "bob"), "bob")
            async with httpx.AsyncClient(verify=bob) as client:
                assert (await client.get(url)).json()["subject"] == "CN=bob"
            async with httpx.AsyncClient(verify=alice) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(url)  # alice trusts only the old CA: the new server cert fails
            with pytest.raises(ValueError, match="verify mode"):
                required = server_context(tmp_path, new_ca, "s3")
                required.verify_mode = ssl.CERT_REQUIRED
                server.set_context(required)
        finally:
            await server.stop()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=alice) as client:
                await client.get(url)  # the listener is closed

    asyncio.run(run())


def client_hello(server_name=None, alpn=None):
    """The bytes a real client (the ssl module) sends first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_client_hello_parser_reads_sni_and_alpn_and_refuses_the_rest():
    hello = client_hello("teleport.cluster.local", ["teleport-proxy-ssh", "h2"])
    assert parse_client_hello(hello) == ClientHello("teleport.cluster.local", ("teleport-proxy-ssh", "h2"))
    assert parse_client_hello(client_hello()) == ClientHello("", ())
    assert parse_client_hello(client_hello("Proxy.Example.COM")).server_name == "proxy.example.com"
    for cut in (1, 4, 5, 100, len(hello) - 1):
        assert parse_client_hello(hello[:cut]) is None  # not all here yet
    for bad in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x16\x02\x00", b"\x16\x03\x01\xff\xff",
                b"\x16\x03\x01\x00\x10\x01\x00\x00\x0c" + b"\xff" * 12,  # a ClientHello cut short inside
                b"\x16\x03\x01\x00\x08\x02\x00\x00\x04" + b"\x00" * 4):  # a ServerHello
        with pytest.raises(NotClientHello):
            parse_client_hello(bad)


def test_router_takes_connections_or_leaves_them_to_https(tmp_path):
    ca = make_ca("cluster")
    seen = []

    async def echo_raw(sock, hello):  # a handler gets the socket with the ClientHello still unread
        loop = asyncio.get_running_loop()
        first = await loop.sock_recv(sock, 5)
        seen.append((hello, first))
        sock.close()

    def route(hello):
        return echo_raw if "raw" in hello.alpn else None

    async def run():
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "s1"), router=route)
        await server.start()
        port = server.address.port
        try:
            alice = client_context(tmp_path, ca, issue(ca, "alice"), "alice")
            async with httpx.AsyncClient(verify=alice) as client:
                response = await client.get(f"https://localhost:{port}/whoami")
                assert response.json()["subject"] == "CN=alice"  # HTTPS as before, client cert included
            raw = client_context(tmp_path, ca)
            raw.set_alpn_protocols(["raw"])
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=raw, server_hostname="localhost")
            assert seen[0][0].alpn == ("raw",) and seen[0][1][:1] == b"\x16"
            for garbage in (b"\x00" * 100, b"GET / HTTP/1.1\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(garbage)
                with contextlib.suppress(ConnectionResetError):  # closed with the garbage unread: a reset
                    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
                writer.close()
            async with httpx.AsyncClient(verify=alice) as client:  # and still serving
                assert (await client.get(f"https://localhost:{port}/whoami")).status_code == 200
        finally:
            await server.stop()

    asyncio.run(run())
