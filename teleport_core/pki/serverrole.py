"""Checking which cluster component a TLS server is, inside the handshake, before any byte is sent.

A host certificate from the cluster's host CA names its system role in Subject O (``Auth``,
``Proxy``, ``Node``). Chaining to the host CA and naming ``teleport.cluster.local`` proves only
that the server is *some* host of the cluster, so every client that talks to auth (the API
client, ``register``, nodes, proxies, ``tctl``) also requires O = ``Auth``, and tsh requires
``Proxy`` of the proxy when the proxy presents a host certificate.

:func:`require_server_role` installs the check in a client :class:`ssl.SSLContext` through its
``sslobject_class`` / ``sslsocket_class`` (instance attributes, so the context stays a plain
``ssl.SSLContext``: anyio wraps those without a thread): right after OpenSSL has verified the
chain, the handshake raises :class:`ServerRoleError` unless the peer's certificate has the
role. It works for httpx (sync and async, on anyio or asyncio) and for plain sockets alike. With
TLS 1.3 on a memory BIO (httpx async) the client's last handshake flight is not even flushed, so a
refused server never receives the client's certificate; in every case the request (token,
password, body) is never sent.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

AUTH = "Auth"
PROXY = "Proxy"
NODE = "Node"
SYSTEM_ROLES = frozenset({AUTH, PROXY, NODE})
_WHO = {AUTH: "the auth server's", PROXY: "the proxy's", NODE: "a node's"}

PeerCheck = Callable[[bytes], None]


class ServerRoleError(ssl.SSLCertVerificationError):
    """The server's certificate verified but is not the wanted component's (raised in the handshake).

    ``str()`` is ``presented a Node certificate, not the auth server's``; :meth:`at` prefixes the
    server's address."""

    def __init__(self, found: str, wanted: str) -> None:
        shown = f"a {found} certificate" if found in SYSTEM_ROLES else "a certificate with no system role"
        # (errno, strerror): anyio reads ``strerror`` of every SSLError
        super().__init__(1, f"presented {shown}, not {_WHO.get(wanted, wanted)}")
        self.found = found
        self.wanted = wanted
        self.verify_message = str(self)
        self.verify_code = 0

    def at(self, addr: str) -> str:
        return f"the server at {addr} {self.strerror}"


def system_role(der: bytes) -> str:
    """The system role a host certificate (DER) carries in Subject O; ``""`` when it carries not
    exactly one system role (user certificates, anything else)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ""
    roles = [str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return roles[0] if len(roles) == 1 and roles[0] in SYSTEM_ROLES else ""


def _role_check(role: str, only_from: tuple[x509.Certificate, ...]) -> PeerCheck:
    def check(der: bytes) -> None:
        if only_from and not _issued_by(der, only_from):
            return  # not a cluster host certificate: the caller's usual trust decides
        found = system_role(der)
        if found != role:
            raise ServerRoleError(found, role)

    return check


def _issued_by(der: bytes, cas: tuple[x509.Certificate, ...]) -> bool:
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        return False
    for ca in cas:
        if leaf.issuer != ca.subject:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return True
    return False


def require_server_role(context: ssl.SSLContext, role: str, *,
                        only_from: Iterable[bytes] = ()) -> ssl.SSLContext:
    """Make ``context`` (a client context; returned, changed in place) refuse, inside the
    handshake, a server whose certificate does not carry system ``role`` in Subject O.

    With ``only_from`` (CA certificates, PEM) the role is required only of certificates those
    CAs issued (tsh's web calls: a self-signed or public web certificate is judged as before,
    but a cluster host certificate must be the proxy's)."""
    cas = tuple(x509.load_pem_x509_certificate(pem) for pem in only_from)
    return check_peer(context, _role_check(role, cas))


def check_peer(context: ssl.SSLContext, check: PeerCheck) -> ssl.SSLContext:
    """Run ``check(peer certificate DER, b"" when none)`` right after every handshake of ``context``; what it
    raises (an :class:`ssl.SSLError`, e.g. :class:`ServerRoleError`) fails the handshake."""

    def run(tls: ssl.SSLObject | ssl.SSLSocket) -> None:
        check(tls.getpeercert(binary_form=True) or b"")

    class CheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            run(self)

    class CheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            run(self)

    context.sslobject_class = CheckedObject
    context.sslsocket_class = CheckedSocket
    return context


def find_role_error(exc: BaseException | None) -> ServerRoleError | None:
    """The :class:`ServerRoleError` behind a transport error (httpx wraps it), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ServerRoleError):
            return exc
        seen.add(id(exc))
        nxt: Any = exc.__cause__ or exc.__context__
        exc = nxt
    return None
