"""TLSServer: hypercorn over our own TLS listener hands the verified client certificate to the app."""

from __future__ import annotations

import asyncio
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
from teleport_core.tlsserver import TLSServer, bind_socket, client_certificate

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


def test_client_certificate_reaches_the_app_and_context_swaps(tmp_path):
    ca, other_ca, new_ca = make_ca("cluster"), make_ca("intruder"), make_ca("rotated")

    async def run():
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "s1"))
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
