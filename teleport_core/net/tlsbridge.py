"""A TLS client connection seen as a plain socket: for code that wants a real socket (paramiko's
transport, ``socket.recv`` in several threads, ``shutdown``) on a connection that is TLS on the wire.

:func:`bridge` returns one end of a ``socketpair``; one thread owns the TLS socket and copies both
ways between it and the other end. OpenSSL must not see one connection read and written from two
threads at once: here only that thread touches it. TLS has no half-close: when either side ends
(and what it sent is delivered), both are closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading

CHUNK = 64 * 1024
HIGH = 1024 * 1024  # bytes held for one direction before that side stops being read


def bridge(tls: ssl.SSLSocket, name: str = "tls-bridge") -> socket.socket:
    """A socket whose bytes are ``tls``'s plaintext, both ways (a daemon thread copies them)."""
    ours, theirs = socket.socketpair()
    threading.Thread(target=_pump, args=(tls, ours), name=name, daemon=True).start()
    return theirs


def _pump(tls: ssl.SSLSocket, local: socket.socket) -> None:
    try:
        _copy(tls, local)
    except (OSError, ValueError):
        pass  # either side broke: both are closed
    finally:
        for sock in (tls, local):
            with contextlib.suppress(OSError):
                sock.close()


def _copy(tls: ssl.SSLSocket, local: socket.socket) -> None:
    tls.setblocking(False)
    local.setblocking(False)
    to_local, to_tls = bytearray(), bytearray()
    tls_open = local_open = True  # their reading directions
    while True:
        tls_wants_write = False
        while tls_open and len(to_local) < HIGH:  # TLS -> local (all OpenSSL holds, not only the socket's)
            try:
                data = tls.recv(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                tls_wants_write = True
                break
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:
                tls_open = False
                break
            to_local += data
        if to_local:
            with contextlib.suppress(BlockingIOError):
                del to_local[:local.send(to_local)]
        while local_open and len(to_tls) < HIGH:  # local -> TLS
            try:
                data = local.recv(CHUNK)
            except BlockingIOError:
                break
            if not data:
                local_open = False
                break
            to_tls += data
        while to_tls:
            try:
                del to_tls[:tls.send(to_tls[:CHUNK])]
            except ssl.SSLWantWriteError:
                tls_wants_write = True
                break
            except ssl.SSLWantReadError:
                break
        if (not tls_open and not to_local) or (not local_open and not to_tls):
            return
        poller = select.poll()
        tls_mask = (select.POLLIN if tls_open and len(to_local) < HIGH else 0) | (
            select.POLLOUT if tls_wants_write else 0)
        local_mask = (select.POLLIN if local_open and len(to_tls) < HIGH else 0) | (
            select.POLLOUT if to_local else 0)
        if tls_mask:
            poller.register(tls.fileno(), tls_mask)
        if local_mask:
            poller.register(local.fileno(), local_mask)
        poller.poll(1000)  # a timeout only as a safety net: every wake-up retries all four moves
