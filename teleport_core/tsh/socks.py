"""The SOCKS side of ``tsh ssh -D``: the server half of a SOCKS handshake, CONNECT only.

SOCKS5 (RFC 1928) without authentication (method ``0x00``; a client offering none of ours gets
``0xFF`` and is closed), IPv4, IPv6 and domain-name addresses (the name is resolved on the
node's side, as ``ssh -D`` does); and SOCKS4/4a (a domain name after the user ID). BIND and UDP
ASSOCIATE are refused with "command not supported". Bounded: the handshake must complete within
:data:`HANDSHAKE_TIMEOUT` and every length is checked, so garbage or a stalled client is closed.

Written here rather than taken from PyPI: the maintained SOCKS packages there are clients, or
asyncio servers that dial the destination themselves; ``-D`` needs only the handshake, with
the connection made by an SSH ``direct-tcpip`` channel, which is a few dozen lines.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import attrs

HANDSHAKE_TIMEOUT = 10.0
MAX_NAME = 255
# SOCKS5 replies (RFC 1928 section 6)
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
HOST_UNREACHABLE = 0x04
REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_NOT_SUPPORTED = 0x08


class SocksError(Exception):
    """A handshake that is not one we accept (the connection is closed)."""


@attrs.frozen
class Request:
    """A client's CONNECT: where to, and which protocol to answer in."""

    host: str
    port: int
    version: int  # 4 or 5


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SocksError("the client closed the connection during the handshake")
        data += chunk
    return data


def _read_until_nul(sock: socket.socket, limit: int) -> bytes:
    data = b""
    while True:
        byte = _read(sock, 1)
        if byte == b"\0":
            return data
        data += byte
        if len(data) > limit:
            raise SocksError("SOCKS4 field too long")


def handshake(sock: socket.socket) -> Request:
    """Read a client's greeting and CONNECT request (answering the SOCKS5 method choice);
    :class:`SocksError` for anything else, after telling the client when the protocol allows."""
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        version = _read(sock, 1)[0]
        if version == 5:
            return _socks5(sock)
        if version == 4:
            return _socks4(sock)
        raise SocksError(f"not a SOCKS4 or SOCKS5 client (first byte {version:#04x})")
    except (TimeoutError, OSError) as exc:
        raise SocksError(f"handshake failed: {exc}") from None


def _socks5(sock: socket.socket) -> Request:
    methods = _read(sock, _read(sock, 1)[0])
    if 0x00 not in methods:
        sock.sendall(b"\x05\xff")
        raise SocksError("the SOCKS5 client offers no method without authentication")
    sock.sendall(b"\x05\x00")
    version, command, _reserved, kind = _read(sock, 4)
    if version != 5:
        raise SocksError(f"bad SOCKS5 request version {version}")
    if kind == 0x01:
        host = str(ipaddress.IPv4Address(_read(sock, 4)))
    elif kind == 0x04:
        host = str(ipaddress.IPv6Address(_read(sock, 16)))
    elif kind == 0x03:
        length = _read(sock, 1)[0]
        if length == 0:
            raise SocksError("empty SOCKS5 domain name")
        raw_name = _read(sock, length)
    else:
        reply(sock, 5, ADDRESS_NOT_SUPPORTED)
        raise SocksError(f"SOCKS5 address type {kind} is not supported")
    (port,) = struct.unpack("!H", _read(sock, 2))
    if kind == 0x03:  # judged once the whole request is read: closing with unread bytes would reset
        host = _name(raw_name)
    if command != 0x01:
        reply(sock, 5, COMMAND_NOT_SUPPORTED)
        raise SocksError(f"SOCKS5 command {command} is not supported (CONNECT only)")
    return Request(host, port, 5)


def _name(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SocksError("the domain name is not ASCII") from None
    if not name or len(name) > MAX_NAME or any(c in name for c in "\0\r\n :/"):
        raise SocksError(f"invalid domain name {name!r}")
    return name


def _socks4(sock: socket.socket) -> Request:
    command = _read(sock, 1)[0]
    (port,) = struct.unpack("!H", _read(sock, 2))
    address = _read(sock, 4)
    _read_until_nul(sock, MAX_NAME)  # the user ID, unused
    if address[:3] == b"\0\0\0" and address[3] != 0:  # SOCKS4a: the name follows
        host = _name(_read_until_nul(sock, MAX_NAME))
    else:
        host = str(ipaddress.IPv4Address(address))
    if command != 0x01:
        reply(sock, 4, COMMAND_NOT_SUPPORTED)
        raise SocksError(f"SOCKS4 command {command} is not supported (CONNECT only)")
    return Request(host, port, 4)


def reply(sock: socket.socket, version: int, code: int) -> None:
    """Answer a request: ``code`` is a SOCKS5 reply code (mapped to granted/rejected for SOCKS4)."""
    if version == 4:
        message = b"\x00" + (b"\x5a" if code == SUCCEEDED else b"\x5b") + b"\0" * 6
    else:
        message = bytes((5, code, 0, 1)) + b"\0" * 6  # bound address 0.0.0.0:0 (unknown to us)
    sock.sendall(message)
