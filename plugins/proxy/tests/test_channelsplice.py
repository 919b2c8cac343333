"""channelsplice.py with real paramiko on both ends: a client opens a ``direct-tcpip`` channel
to a :class:`SplicingTransport`, whose :class:`Upstream` forwards to a TCP socket (the "node")
that reads slowly or not at all."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest
from teleport_proxy.channelsplice import SplicingTransport, Upstream, splice

WINDOW = 4 * 1024 * 1024


class Server(paramiko.ServerInterface):  # type: ignore[misc]
    def __init__(self, node_addr: tuple[str, int]) -> None:
        self.node_addr = node_addr
        self.transport: SplicingTransport | None = None
        self.upstreams: dict[int, Upstream] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_direct_tcpip_request(self, chanid: int, origin: object, destination: object) -> int:
        assert self.transport is not None
        sock = socket.create_connection(self.node_addr)
        upstream = Upstream(sock)
        self.upstreams[chanid] = upstream
        self.transport.upstreams[chanid] = upstream
        return int(paramiko.OPEN_SUCCEEDED)


@pytest.fixture
def pair() -> Iterator[tuple[paramiko.Channel, socket.socket, Upstream]]:
    """(the client's channel, the node's end of the spliced socket, the proxy's Upstream)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the node's side queues little
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    a, b = socket.socketpair()
    server = Server(listener.getsockname())
    server_transport = SplicingTransport(a, default_window_size=WINDOW, default_max_packet_size=256 * 1024)
    server.transport = server_transport
    server_transport.add_server_key(paramiko.ECDSAKey.generate())
    server_transport.start_server(event=threading.Event(), server=server)  # negotiates in its thread
    client = paramiko.Transport(b)
    client.start_client(timeout=10)
    client.auth_none("user")
    channel = client.open_channel("direct-tcpip", ("node", 22), ("127.0.0.1", 1), timeout=10)
    node, _ = listener.accept()
    proxied = server_transport.accept(10)
    assert proxied is not None
    upstream = server.upstreams[proxied.get_id()]
    splice(proxied, upstream)
    try:
        yield channel, node, upstream
    finally:
        client.close()
        server_transport.close()
        node.close()
        listener.close()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        data = sock.recv(min(1 << 20, size - got))
        assert data, f"end of stream after {got} of {size} bytes"
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def queued(upstream: Upstream) -> int:
    return sum(len(chunk) for chunk in upstream._queue)


def test_bytes_arrive_in_order_and_end_of_input_half_closes(pair) -> None:  # type: ignore[no-untyped-def]
    channel, node, _ = pair
    payload = os.urandom(3 * 1024 * 1024)
    channel.sendall(payload)
    channel.shutdown_write()
    assert hashlib.sha256(read_exactly(node, len(payload))).digest() == hashlib.sha256(payload).digest()
    node.settimeout(10)
    assert node.recv(1) == b""  # the client's EOF reached the node as a half-close
    node.sendall(b"answer")  # the other direction still works
    node.close()
    assert channel.recv(6) == b"answer"


def test_a_node_that_does_not_read_holds_the_client_to_one_window(pair) -> None:  # type: ignore[no-untyped-def]
    channel, node, upstream = pair
    payload = os.urandom(16 * 1024 * 1024)
    sender = threading.Thread(target=channel.sendall, args=(payload,), daemon=True)
    sender.start()
    deadline = time.monotonic() + 10
    while channel.out_window_size > 0 and time.monotonic() < deadline:  # the client used up its window
        time.sleep(0.05)
    time.sleep(0.3)
    assert channel.out_window_size == 0
    assert sender.is_alive()  # the client waits for the window: the node has not read
    assert 0 < queued(upstream) <= WINDOW  # what the node's socket did not take waits, bounded by the window
    received = read_exactly(node, len(payload))
    sender.join(10)
    assert not sender.is_alive()
    assert received == payload


def test_a_node_that_went_away_costs_the_transport_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    channel, node, _ = pair
    node.close()
    for _ in range(20):  # the transport thread keeps running: sends fail quietly, then the channel closes
        try:
            channel.send(b"x" * 65536)
        except OSError:
            break
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while not channel.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert channel.closed
    assert channel.get_transport().is_active()  # only the channel ended, not the connection


def test_a_connection_lost_before_its_channel_said_anything_releases_the_node(pair) -> None:  # type: ignore[no-untyped-def]
    channel, node, _ = pair
    channel.get_transport().close()  # the client vanishes: no data, no EOF, no close for the channel
    node.settimeout(10)
    assert node.recv(1) == b""  # the proxy let go of the node connection


def wait_until(condition, seconds: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def test_the_writer_thread_runs_only_while_it_has_work(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An idle session, or one whose keystrokes the node's socket takes at once, holds no writer
    thread; bytes the node does not take start one, which ends once it has written them and then
    waited ``WRITER_IDLE`` for more; the end of input still half-closes the node's socket."""
    import teleport_proxy.channelsplice as channelsplice

    monkeypatch.setattr(channelsplice, "WRITER_IDLE", 0.2)
    channel, node, upstream = pair
    time.sleep(0.3)
    assert not upstream.writer_running  # idle: no thread
    for key in b"ls -la\n":
        channel.sendall(bytes([key]))
    assert read_exactly(node, 7) == b"ls -la\n"
    assert not upstream.writer_running  # keystrokes went straight to the node's socket
    payload = os.urandom(12 * 1024 * 1024)  # more than the node's socket takes: a queue, so a writer
    sender = threading.Thread(target=channel.sendall, args=(payload,), daemon=True)
    sender.start()
    assert wait_until(lambda: upstream.writer_running)
    assert read_exactly(node, len(payload)) == payload
    sender.join(10)
    assert wait_until(lambda: not upstream.writer_running)  # done and idle: it ended
    channel.sendall(b"more")
    assert read_exactly(node, 4) == b"more"
    channel.shutdown_write()
    node.settimeout(10)
    assert node.recv(1) == b""  # the end of input, with no writer running, still half-closes
    assert upstream.finished.wait(10) and not upstream.writer_running
