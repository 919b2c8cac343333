"""Small TCP servers and clients for tests and benches of forwarding (``ssh -L/-R/-D``, tunnels):
a loopback server that hands each connection to a thread, an echo server, a send-then-read
round trip and a "does it accept?" probe. Plain sockets and threads: real traffic, no mocks."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> Iterator[int]:
    """Listen on ``host`` (a free port, yielded) and run ``handle(conn)`` in a thread of its own for
    each connection accepted, until the block ends (then the listener closes)."""
    listener = socket.create_server((host, 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@contextlib.contextmanager
def echo_server(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP echo server on ``host``: each connection gets back what it sends, until EOF."""
    with tcp_server(_echo, host) as port:
        yield port


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` then EOF on ``sock`` while reading the answer until EOF (a sender thread,
    so an echo larger than the socket buffers cannot deadlock)."""
    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    sender.join(30)
    return b"".join(chunks)


def roundtrip(port: int, payload: bytes, host: str = "127.0.0.1", timeout: float = 60) -> bytes:
    """:func:`exchange` ``payload`` on a new connection to ``host:port``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        return exchange(sock, payload)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True
