"""AuthClient with several auth servers: fail over on connection errors, never on HTTP errors.

The servers are real HTTPS listeners on 127.0.0.1 (a few lines of HTTP/1.1 over the stdlib's
TLS), each counting what it received, so the tests see where every request really went.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teleport_core.api.client import AUTH_SERVER_NAME, AuthClient, ConnectionProblem, Credentials
from teleport_core.errors import NotFound


def make_contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with an auth server's cert (O=Auth) for teleport.cluster.local, client
    context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Auth"),
                      x509.NameAttribute(NameOID.COMMON_NAME, AUTH_SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(AUTH_SERVER_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(tmp / "cert.pem")
    return server, client


class Server:
    """HTTPS on a free port. ``mode``: ``ok`` answers 200 with its name, ``missing`` answers 404,
    ``drop`` reads the request and closes the connection without answering, ``drop-once`` does
    that once, then answers as ``ok`` (a kept-alive connection the server closed)."""

    def __init__(self, name: str, context: ssl.SSLContext, mode: str = "ok") -> None:
        self.name = name
        self.context = context
        self.mode = mode
        self.requests: list[tuple[str, str]] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.addr = ""

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):  # as a dead process's sockets: every connection closes
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while size := int((await reader.readline()).strip(), 16):
                        await reader.readexactly(size + 2)
                    await reader.readline()
                self.requests.append((method, path))
                if self.mode in ("drop", "drop-once"):
                    self.mode = "ok" if self.mode == "drop-once" else self.mode
                    writer.close()
                    return
                status, body = ((200, {"server": self.name}) if self.mode == "ok"
                                else (404, {"error": f"nothing here ({self.name})"}))
                data = json.dumps(body).encode()
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()
        finally:
            self.writers.discard(writer)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def client(addrs: list[str], context: ssl.SSLContext) -> AuthClient:
    return AuthClient(addrs, credentials=Credentials(context), timeout=10)


def test_fails_over_when_the_current_server_refuses_and_stays_on_the_one_that_answered(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)

    async def body() -> None:
        two = await Server("two", server_ctx).start()
        down = closed_port()
        async with client([down, two.addr], client_ctx) as api:
            assert api.addr == down
            assert await api.call("POST", "/v1/events", {"a": 1}) == {"server": "two"}  # never sent: any method
            assert api.addr == two.addr
            assert await api.call("GET", "/v1/ping") == {"server": "two"}
        assert two.requests == [("POST", "/v1/events"), ("GET", "/v1/ping")]
        await two.stop()

    asyncio.run(body())


def test_fails_over_when_the_server_dies_and_comes_back_to_the_first(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)

    async def body() -> None:
        one = await Server("one", server_ctx).start()
        two = await Server("two", server_ctx).start()
        async with client([one.addr, two.addr], client_ctx) as api:
            assert (await api.ping())["server"] == "one"
            await one.stop()  # the pooled connection to it is closed too
            assert (await api.ping())["server"] == "two"
            assert await api.call("GET", "/v1/roles") == {"server": "two"}
            assert api.addr == two.addr
            await two.stop()
            one = await Server("one", server_ctx, "ok").start()
            api.addrs = (one.addr, two.addr)  # the first one back, at a new port
            assert (await api.ping())["server"] == "one"
        await one.stop()

    asyncio.run(body())


def test_http_errors_are_answers_not_failures(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)

    async def body() -> None:
        one = await Server("one", server_ctx, "missing").start()
        two = await Server("two", server_ctx).start()
        async with client([one.addr, two.addr], client_ctx) as api:
            with pytest.raises(NotFound, match=r"nothing here \(one\)"):
                await api.get_role("nope")
            assert api.addr == one.addr
        assert two.requests == []
        await one.stop()
        await two.stop()

    asyncio.run(body())


def test_a_recording_download_fails_over_and_an_http_error_is_an_answer(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)
    dest = tmp_path / "recording.cast"

    async def body() -> None:
        dropping = await Server("dropping", server_ctx, "drop").start()  # takes the request, never answers
        two = await Server("two", server_ctx).start()
        missing = await Server("missing", server_ctx, "missing").start()
        async with client([closed_port(), dropping.addr, two.addr], client_ctx) as api:
            size = await api.download_recording("sid-1", dest)
            assert api.addr == two.addr
        assert json.loads(dest.read_bytes()) == {"server": "two"} and size == dest.stat().st_size
        assert ("GET", "/v1/sessions/sid-1/recording") in dropping.requests
        async with client([missing.addr, two.addr], client_ctx) as api:
            with pytest.raises(NotFound, match=r"nothing here \(missing\)"):
                await api.download_recording("sid-2", dest)
        assert two.requests == [("GET", "/v1/sessions/sid-1/recording")]  # the 404 was not sent elsewhere
        down = [closed_port(), closed_port()]
        async with client(down, client_ctx) as api:
            with pytest.raises(ConnectionProblem) as problem:
                await api.download_recording("sid-3", dest)
        assert str(problem.value).startswith(f"cannot reach auth server at {down[0]}: ")
        assert f"; cannot reach auth server at {down[1]}: " in str(problem.value)
        for server in (dropping, two, missing):
            await server.stop()

    asyncio.run(body())


def test_a_request_lost_after_sending_is_retried_elsewhere_only_when_idempotent(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)

    async def body() -> None:
        one = await Server("one", server_ctx, "drop").start()
        two = await Server("two", server_ctx).start()
        async with client([one.addr, two.addr], client_ctx) as api:
            with pytest.raises(ConnectionProblem, match=f"auth server at {one.addr}"):
                await api.call("POST", "/v1/login", {"user": "alice"})
            assert two.requests == []  # a login may have been applied: not sent twice
            assert await api.call("GET", "/v1/nodes") == {"server": "two"}
            one.mode = "ok"
            await api.call("PUT", "/v1/nodes/x", {"uuid": "x"})  # sticks to two
            assert two.requests == [("GET", "/v1/nodes"), ("PUT", "/v1/nodes/x")]
            # a streamed upload is sent again from the start on the next server
            recording = tmp_path / "s.cast"
            recording.write_bytes(b"x" * 300_000)
            await two.stop()
            one.mode, one.requests = "ok", []
            assert await api.upload_recording("0b6d5d4e-6f9b-4c52-9b3e-52b1c1f0f0a1", recording) == {"server": "one"}
            assert one.requests == [("PUT", "/v1/sessions/0b6d5d4e-6f9b-4c52-9b3e-52b1c1f0f0a1/recording")]
        await one.stop()

    asyncio.run(body())


def test_a_closed_kept_alive_connection_is_retried_once_on_the_same_server(tmp_path: Path) -> None:
    server_ctx, client_ctx = make_contexts(tmp_path)

    async def body() -> None:
        one = await Server("one", server_ctx).start()
        async with client([one.addr], client_ctx) as api:
            one.mode = "drop-once"
            assert await api.call("PUT", "/v1/nodes/x", {"uuid": "x"}) == {"server": "one"}
            assert one.requests == [("PUT", "/v1/nodes/x")] * 2
            one.mode = "drop-once"
            with pytest.raises(ConnectionProblem, match=f"auth server at {one.addr}"):
                await api.call("POST", "/v1/events", {"a": 1})  # may have been applied: not sent again
            assert one.requests == [("PUT", "/v1/nodes/x")] * 2 + [("POST", "/v1/events")]
        await one.stop()

    asyncio.run(body())


def test_no_server_answers_names_every_address(tmp_path: Path) -> None:
    _, client_ctx = make_contexts(tmp_path)
    first, second = closed_port(), closed_port()

    async def body() -> None:
        async with client([first, second], client_ctx) as api:
            with pytest.raises(ConnectionProblem) as caught:
                await api.ping()
        message = str(caught.value)
        assert f"cannot reach auth server at {first}" in message
        assert f"cannot reach auth server at {second}" in message

    asyncio.run(body())


def test_needs_an_address() -> None:
    with pytest.raises(ValueError, match="at least one"):
        AuthClient([], credentials=Credentials(ssl.create_default_context()))
