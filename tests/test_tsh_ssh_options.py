"""``tsh ssh -o`` parsing (teleport_core/tsh/sshopts.py), the ``-R``/``-D`` specs
(teleport_core/tsh/forward.py) and the SOCKS handshake of ``-D`` (teleport_core/tsh/socks.py)
driven over real sockets. The end-to-end tests (a cluster, curl, OpenSSH) are
plugins/proxy/tests/test_tsh_ssh_forwarding.py and plugins/node/tests/test_remote_forward.py."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from teleport_core.testing.sockets import tcp_server
from teleport_core.tsh import forward, socks, sshopts


@pytest.mark.parametrize(("text", "expected"), [
    ("ForwardAgent=yes", {"forward_agent": True}),
    ("forwardagent no", {"forward_agent": False}),
    ("RequestTTY = force", {"request_tty": "force"}),
    ("RequestTTY=auto", {"request_tty": "auto"}),
    ("ServerAliveInterval=15", {"server_alive_interval": 15}),
    ("ServerAliveCountMax 5", {"server_alive_count_max": 5}),
    ("ConnectTimeout=7", {"connect_timeout": 7}),
    ("User=deploy", {"user": "deploy"}),
    ("Port=2222", {"port": 2222}),
    ("AddKeysToAgent=no", {"add_keys_to_agent": False}),
    ("LocalForward 8080 db:5432", {"local": ["8080:db:5432"]}),
    ("RemoteForward=127.0.0.1:9000 localhost:80", {"remote": ["127.0.0.1:9000:localhost:80"]}),
    ("DynamicForward 1080", {"dynamic": ["1080"]}),
    ("StrictHostKeyChecking=yes", {}),
    ("ForwardX11=no", {}),
    ("ExitOnForwardFailure=yes", {"warnings": []}),
])
def test_each_supported_option(text: str, expected: dict[str, object]) -> None:
    options = sshopts.parse_options([text])
    for attribute, value in expected.items():
        assert getattr(options, attribute) == value
    assert options.warnings == []


def test_forwards_add_up_and_single_values_take_the_last() -> None:
    options = sshopts.parse_options(["DynamicForward=1", "DynamicForward=2", "User=a", "User=b"])
    assert options.dynamic == ["1", "2"] and options.user == "b"


def test_known_openssh_options_are_ignored_with_a_warning() -> None:
    options = sshopts.parse_options(["Ciphers=aes256-ctr", "identityfile ~/.ssh/id", "ExitOnForwardFailure=no"])
    assert options.warnings[:2] == ["option Ciphers is decided by tsh itself and has no effect",
                                    "option IdentityFile is decided by tsh itself and has no effect"]
    assert "tsh always stops" in options.warnings[2]


@pytest.mark.parametrize(("text", "message"), [
    ("Frobnicate=1", "unsupported option 'Frobnicate' in -o: tsh ssh supports AddKeysToAgent, ConnectTimeout"),
    ("StrictHostKeyChecking=accept-new", "tsh always checks the host certificate against the cluster's host CA"),
    ("StrictHostKeyChecking=maybe", "expected yes or no or ask or accept-new or off"),
    ("ForwardX11=yes", "X11 forwarding is not supported"),
    ("RequestTTY=always", "-o RequestTTY: expected yes or no or force or auto, got 'always'"),
    ("ServerAliveInterval=-1", "expected a number from 0 to 86400"),
    ("ServerAliveCountMax=0", "expected a number from 1 to 1000"),
    ("ConnectTimeout=0", "expected a number from 1 to 86400"),
    ("Port=0", "expected a number from 1 to 65535"),
    ("User=", "-o User: the value is empty"),
    ("=yes", "expected Option=value"),
    ("RemoteForward 80", "-o RemoteForward: expected '[bind_address:]port host:hostport'"),
])
def test_bad_options_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(sshopts.BadOption) as caught:
        sshopts.parse_options([text])
    assert message in str(caught.value)


def test_remote_and_dynamic_specs() -> None:
    assert forward.parse_remote_forward("8080:localhost:80") == forward.RemoteForward("localhost", 8080, "localhost", 80)
    assert forward.parse_remote_forward("0:h:1") == forward.RemoteForward("localhost", 0, "h", 1)
    assert forward.parse_remote_forward("*:8080:h:80").bind_host == ""  # every address, as ssh sends it
    assert forward.parse_remote_forward("[::1]:8080:[::2]:80") == forward.RemoteForward("::1", 8080, "::2", 80)
    assert forward.parse_dynamic_forward("1080") == forward.DynamicForward("127.0.0.1", 1080)
    assert forward.parse_dynamic_forward("*:1080") == forward.DynamicForward("0.0.0.0", 1080)
    assert forward.parse_dynamic_forward("[::1]:1080") == forward.DynamicForward("::1", 1080)
    for bad, message in (("8080:h", "expected [bind_address:]port:host:hostport"), ("8080::80", "the host is empty"),
                         ("1:h:0", "port '0' is not a number from 1 to 65535"), ("a:b:c:d:e", "expected")):
        with pytest.raises(forward.BadForwardSpec, match=message.replace("[", r"\[")):
            forward.parse_remote_forward(bad)
    for bad in ("", "x", "1:2:3", "70000"):
        with pytest.raises(forward.BadForwardSpec, match="invalid -D spec"):
            forward.parse_dynamic_forward(bad)


# -- the SOCKS handshake, over real sockets ------------------------------------------------------------------


@pytest.fixture
def socks_server() -> Iterator[tuple[int, list[object]]]:
    """A listener whose connections run :func:`socks.handshake`, answer success, then close;
    the results (a Request or the SocksError) are collected."""
    results: list[object] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                request = socks.handshake(conn)
            except socks.SocksError as exc:
                results.append(exc)
                return
            results.append(request)
            socks.reply(conn, request.version, socks.SUCCEEDED)

    with tcp_server(serve) as port:
        yield port, results


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        try:
            sock.shutdown(socket.SHUT_WR)  # all the client will ever send
        except OSError:  # the server already closed on bytes it would not read (a reset): no answer
            return answer
        try:
            while chunk := sock.recv(1024):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def wait_result(results: list[object]) -> object:
    import time

    deadline = time.monotonic() + 30
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    return results.pop()


@pytest.mark.parametrize(("data", "host", "version", "answer"), [
    (b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x01\xbb", "example.com", 5, b"\x05\x00\x05\x00\x00\x01" + b"\0" * 6),
    (b"\x05\x02\x02\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50", "10.0.0.1", 5, None),
    (b"\x05\x01\x00\x05\x01\x00\x04" + b"\0" * 15 + b"\x01\x00\x16", "::1", 5, None),
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00", "127.0.0.1", 4, b"\x00\x5a" + b"\0" * 6),
    (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00db.internal\x00", "db.internal", 4, None),
])
def test_socks_connect_requests(socks_server: tuple[int, list[object]], data: bytes, host: str, version: int,
                                answer: bytes | None) -> None:
    port, results = socks_server
    got = exchange(port, data)
    request = wait_result(results)
    assert isinstance(request, socks.Request), request
    assert (request.host, request.version) == (host, version)
    assert request.port == struct.unpack("!H", data[-2:] if version == 5 else data[2:4])[0]
    if answer is not None:
        assert got == answer


@pytest.mark.parametrize(("data", "answer", "why"), [
    (b"GET / HTTP/1.1\r\n\r\n", b"", "not a SOCKS4 or SOCKS5 client"),
    (b"\x05\x01\x02", b"\x05\xff", "offers no method without authentication"),
    (b"\x05\x01\x00\x05\x02\x00\x01\x7f\0\0\x01\0\x50", b"\x05\x00\x05\x07\x00\x01" + b"\0" * 6, "command 2"),
    (b"\x05\x01\x00\x05\x01\x00\x09", b"\x05\x00\x05\x08\x00\x01" + b"\0" * 6, "address type 9"),
    (b"\x05\x01\x00\x05\x01\x00\x03\x00", b"\x05\x00", "empty SOCKS5 domain name"),
    (b"\x05\x01\x00\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x00", "invalid domain name"),
    (b"\x05\x01\x00\x05\x01\x00\x03\x02\xff\xfe\x00\x50", b"\x05\x00", "not ASCII"),
    (b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300, b"", "SOCKS4 field too long"),
    (b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00", b"\x00\x5b" + b"\0" * 6, "SOCKS4 command 2"),
    (b"\x05\x01", b"", "closed the connection during the handshake"),
])
def test_socks_garbage_is_closed(socks_server: tuple[int, list[object]], data: bytes, answer: bytes, why: str) -> None:
    port, results = socks_server
    assert exchange(port, data) == answer
    error = wait_result(results)
    assert isinstance(error, socks.SocksError) and why in str(error)


def test_a_stalled_socks_client_is_closed(socks_server: tuple[int, list[object]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socks, "HANDSHAKE_TIMEOUT", 0.2)
    port, results = socks_server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"\x05\x01")  # and then nothing
        assert sock.recv(10) == b""  # closed by the server
    error = wait_result(results)
    assert isinstance(error, socks.SocksError) and "timed out" in str(error)


# -- ServerAliveInterval ---------------------------------------------------------------------------------------


def test_keepalive_gives_up_on_a_silent_server() -> None:
    """A real paramiko server behind a relay that stops passing the server's bytes: after
    ServerAliveCountMax unanswered keepalives tsh closes the connection; while the server answers,
    nothing happens."""
    import time

    import paramiko

    key = paramiko.ECDSAKey.generate()
    listener = socket.create_server(("127.0.0.1", 0))
    silent = threading.Event()

    class Anyone(paramiko.ServerInterface):  # type: ignore[misc]
        def get_allowed_auths(self, username: str) -> str:
            return "none"

        def check_auth_none(self, username: str) -> int:
            return int(paramiko.AUTH_SUCCESSFUL)

    def serve() -> None:
        conn, _ = listener.accept()
        server = paramiko.Transport(conn)
        server.add_server_key(key)
        server.start_server(event=threading.Event(), server=Anyone())

    threading.Thread(target=serve, daemon=True).start()
    upstream = socket.create_connection(listener.getsockname())
    near, far = socket.socketpair()

    def pump(src: socket.socket, dst: socket.socket, muted: threading.Event | None) -> None:
        while data := src.recv(65536):
            if muted is None or not muted.is_set():
                dst.sendall(data)

    threading.Thread(target=pump, args=(far, upstream, None), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, far, silent), daemon=True).start()
    client = paramiko.Transport(near)
    try:
        client.start_client(timeout=30)
        client.auth_none("anyone")
        keepalive = forward.Keepalive(interval=1, count_max=2)
        keepalive.start(client, "node-x")
        time.sleep(2.5)  # answered keepalives: the connection stays
        assert client.is_active() and not keepalive.timed_out
        silent.set()
        deadline = time.monotonic() + 30
        while client.is_active() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert keepalive.timed_out and not client.is_active()
    finally:
        client.close()
        listener.close()
        upstream.close()
