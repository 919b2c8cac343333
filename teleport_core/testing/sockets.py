"""Small TCP servers and clients for tests and benches of forwarding (``ssh -L/-R/-D``, tunnels):
a loopback server that hands each connection to a thread, an echo server, a send-then-read
round trip, a "does it accept?" probe, and a TCP proxy whose link can be cut and restored
(:class:`CuttableProxy`: S3 or auth going away). Plain sockets and threads: real traffic, no mocks."""

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


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port`` whose link can be cut and restored.

    While cut, existing connections are closed and new ones are closed as soon as accepted,
    as when the network to S3 (or to auth) is down. ``cut_after(n)`` cuts by itself once ``n`` bytes have
    been forwarded upstream since the call (to cut in the middle of an upload), or downstream
    with ``upward=False`` (in the middle of a download).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so that close() is noticed without a connection
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._cut = False
        self._budget: int | None = None
        self._budget_upward = True
        self.bytes_up = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            self._budget = None
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def cut_after(self, nbytes: int, upward: bool = True) -> None:
        with self._lock:
            self._budget = nbytes
            self._budget_upward = upward

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._stopping = True
        self.cut()
        self._thread.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue  # look at _stopping again
            except OSError:
                return
            client.settimeout(None)
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(65536):
                cut_now = False
                with self._lock:
                    if self._cut:
                        break
                    if upward:
                        self.bytes_up += len(data)
                    if self._budget is not None and self._budget_upward == upward:
                        self._budget -= len(data)
                        cut_now = self._budget <= 0
                if cut_now:
                    self.cut()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
