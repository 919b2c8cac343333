"""Reverse tunnels through the web port, without clusters: when an agent picks the web port, and
the TLS bridge it reads through (a real TLS server on loopback)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from teleport_node.tunnel import ADDR_ENV, find_tunnel
from teleport_proxy.certs import self_signed
from teleport_proxy.clusters import _is_web_addr

from teleport_core.config.values import NetAddr
from teleport_core.errors import TeleportError
from teleport_core.net import tunnelagent
from teleport_core.net.tunnelagent import ALPN_REVERSE_TUNNEL, TunnelAgent, dial
from teleport_core.testing.processes import free_port
from teleport_core.testing.sockets import tcp_server
from teleport_core.testing.waiting import wait_for

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
        self.client: tuple[str, int] = ("", 0)  # the address the connection came from
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> NetAddr:
        return NetAddr("127.0.0.1", self.listener.getsockname()[1])

    def serve(self) -> None:
        conn, self.client = self.listener.accept()
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
    dialed = dial(server.addr, tls=True, insecure=True)
    sock = dialed.sock
    assert sock.family == socket.AF_UNIX  # the bridge's end of a socketpair: no addresses of its own
    # the TCP connection's addresses, as the server sees them (reversed)
    assert dialed.remote == ("127.0.0.1", server.addr.port)
    assert dialed.local == server.client and dialed.local[1] not in (0, server.addr.port)
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


class Log:
    """The agent's log lines: (level, message, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda message, **fields: self.lines.append((level, message, fields))

    def reasons(self, level: str) -> list[str]:
        return [fields["reason"] for lvl, _, fields in list(self.lines) if lvl == level]


def test_an_agent_that_cannot_connect_logs_an_error_once_per_reason_and_keeps_trying(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnelagent, "FIRST_RETRY", 0.05)  # the same backoff, faster
    monkeypatch.setattr(tunnelagent, "MAX_RETRY", 0.2)
    closed = NetAddr("127.0.0.1", free_port())  # nobody listens there
    where = [closed]
    log = Log()
    agent = TunnelAgent(tunnel_addr=lambda: where[0], cluster="root.example.com", login=lambda ident: "leaf-proxy",
                        identity=lambda: None,  # type: ignore[arg-type,return-value] # never reached: no connection
                        host_ca_keys=list, serve=lambda conn, message: None, log=log, describe="root.example.com",
                        peer="root proxy", refused_hint="with proxy_listener_mode: multiplex, set tunnel_addr to "
                                                       "its web address")
    agent.start()
    try:
        refused = (f"connection refused at {closed}: is the root proxy's tunnel port open? with "
                   "proxy_listener_mode: multiplex, set tunnel_addr to its web address")
        wait_for(lambda: agent.reconnects >= 5, "refused attempts")
        assert log.reasons("error") == [refused]  # once, however many attempts
        assert refused in log.reasons("debug") and agent.last_error == refused
        assert not agent.connected.is_set() and not agent.stopped  # still trying
        # something listening that is not a tunnel server (it hangs up): new reasons, an ERROR each
        with tcp_server(lambda conn: conn.close()) as port:
            where[0] = NetAddr("127.0.0.1", port)
            seen = agent.reconnects
            wait_for(lambda: agent.reconnects >= seen + 6, "attempts at the listener")
            errors = log.reasons("error")
            assert errors[0] == refused and len(errors) >= 2 and not any("refused" in e for e in errors[1:])
            assert len(errors) == len(set(errors))  # each reason once (the hang-up and a reset alternate)
            assert set(log.reasons("debug")) <= set(errors)
        assert not [line for line in log.lines if line[0] == "warning"]  # never up: nothing "went down"
    finally:
        agent.stop()
    assert agent.stopped
