"""Reverse tunnels through the web port, without clusters: when an agent picks the web port, and
the TLS bridge it reads through (a real TLS server on loopback)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from teleport_node.tunnel import ADDR_ENV, find_tunnel
from teleport_proxy.certs import self_signed
from teleport_proxy.clusters import _is_web_addr

from teleport_core.config.values import NetAddr
from teleport_core.errors import TeleportError
from teleport_core.net.tunnelagent import ALPN_REVERSE_TUNNEL, dial

WEB = NetAddr("proxy.example.com", 3080)


def test_an_explicit_tunnel_address_is_the_web_port_only_when_it_is_the_web_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADDR_ENV, "proxy.example.com:3080")
    assert find_tunnel(WEB, insecure=False) == (WEB, True)
    monkeypatch.setenv(ADDR_ENV, "proxy.example.com")  # the tunnel port (3024): the plain protocol
    assert find_tunnel(WEB, insecure=False) == (NetAddr("proxy.example.com", 3024), False)


def test_a_leaf_uses_the_web_port_when_tunnel_addr_is_web_proxy_addr() -> None:
    assert _is_web_addr(NetAddr("root.example.com", 3080), "root.example.com")  # default web port
    assert _is_web_addr(NetAddr("root.example.com", 443), "root.example.com:443")
    assert not _is_web_addr(NetAddr("root.example.com", 3024), "root.example.com:3080")
    assert not _is_web_addr(NetAddr("root.example.com", 3080), "")
    assert not _is_web_addr(NetAddr("root.example.com", 3080), "root.example.com:bad")


class EchoServer:
    """TLS on loopback (a self-signed certificate) with the ALPN it is given; hashes what it
    receives and sends back ``reply``, then closes."""

    def __init__(self, tmp_path: Path, alpn: str, reply: bytes) -> None:
        cert, key = self_signed(["localhost", "127.0.0.1"])
        (tmp_path / "c.pem").write_bytes(cert)
        (tmp_path / "k.pem").write_bytes(key)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        self.context.set_alpn_protocols([alpn])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.reply = reply
        self.digest = ""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> NetAddr:
        return NetAddr("127.0.0.1", self.listener.getsockname()[1])

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):  # the client refused the handshake
            conn.close()
            return
        with tls:
            size = int.from_bytes(_exact(tls, 8), "big")
            self.digest = hashlib.sha256(_exact(tls, size)).hexdigest()
            tls.sendall(self.reply)


def _exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_the_tls_bridge_carries_both_directions_and_ends_with_the_connection(tmp_path: Path) -> None:
    sent, reply = os.urandom(3 << 20), os.urandom(2 << 20)  # more than the bridge holds per direction
    server = EchoServer(tmp_path, ALPN_REVERSE_TUNNEL, reply)
    sock, peer = dial(server.addr, tls=True, insecure=True)
    assert peer == ("127.0.0.1", server.addr.port) and sock.family == socket.AF_UNIX
    with sock:
        sock.sendall(len(sent).to_bytes(8, "big") + sent)
        sock.settimeout(30)
        assert _exact(sock, len(reply) + 1) == reply  # then the end: the server closed its TLS
    server.thread.join(30)
    assert server.digest == hashlib.sha256(sent).hexdigest()


def test_the_agent_refuses_a_web_port_that_does_not_route_tunnels(tmp_path: Path) -> None:
    server = EchoServer(tmp_path, "http/1.1", b"")
    with pytest.raises(TeleportError, match="does not accept reverse tunnels on its web port"):
        dial(server.addr, tls=True, insecure=True)


def test_the_agent_checks_the_web_certificate_unless_insecure(tmp_path: Path) -> None:
    server = EchoServer(tmp_path, ALPN_REVERSE_TUNNEL, b"")
    with pytest.raises(TeleportError, match="is not trusted .*use --insecure"):
        dial(server.addr, tls=True, insecure=False)
