"""TLS routing on the proxy's web port: one port for HTTPS, SSH and the auth API.

:class:`teleport_core.net.tlsserver.TLSServer` peeks at each connection's ClientHello and asks
:meth:`WebMux.route`, which picks by ALPN and SNI:

- ALPN ``teleport-proxy-ssh``: the proxy terminates TLS with its host certificate (signed by
  the cluster's host CA) and requires a user certificate from the user CA (``tsh login``'s TLS
  certificate; OpenSSL checks the signature and validity period, the proxy checks that the
  user's roles exist). The client then sends one line naming the node, ``host:port@cluster``
  (the ``proxy:`` subsystem's syntax; port 0 for the registered one), and the proxy answers
  ``OK <host UUID>`` (the node it routed to: tsh then requires that UUID among the principals
  of the node's host certificate) and splices the bytes to the node, or ``ERR <reason>`` and
  closes. The bytes are the client's own SSH connection to the node: the proxy never sees its
  plaintext and the node checks the user again. Refusals are audited (T3007W), as on the SSH port.
- ALPN ``teleport-reversetunnel``: a node's or a leaf cluster's reverse tunnel agent (TLS routing
  for tunnels). The proxy terminates TLS with its web certificate (no client certificate: the agent
  authenticates inside) and hands the plain stream to the reverse tunnel server, which serves it
  exactly as a connection to its tunnel port (:meth:`teleport_proxy.tunnel.TunnelServer.serve_routed`:
  same limits, host certificate checks, tokens and audit).
- SNI ``teleport.cluster.local`` (the name on the auth server's certificate) or an ALPN
  starting ``teleport-auth@``: passed through untouched to an auth server. The proxy does not
  terminate this TLS: auth sees the client's own certificate and authorizes it as usual.
- anything else: the HTTPS web app.

Both spliced kinds are copied by asyncio Protocols (no thread per connection).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teleport_core.api.client import AUTH_SERVER_NAME
from teleport_core.api.join import auth_addresses
from teleport_core.errors import TeleportError
from teleport_core.files import write_private
from teleport_core.metrics import metrics_for
from teleport_core.net.tlsserver import ClientHello, Handler, handshake_reason
from teleport_proxy.certs import UserCert, user_from_tls_cert
from teleport_proxy.sshserver import parse_subsystem
from teleport_proxy.tunnel import TunnelServer

if TYPE_CHECKING:
    from teleport_core.pki.identity import LocalIdentity
    from teleport_proxy.state import ProxyState

ALPN_SSH = "teleport-proxy-ssh"
ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"
ALPN_AUTH_PREFIX = "teleport-auth@"
HANDSHAKE_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0
MAX_DIAL_LINE = 1024
WRITE_HIGH_WATER = 1024 * 1024  # bytes queued towards one side before the other side stops reading


class Pipe(asyncio.Protocol):
    """One side of a splice: what it receives goes to ``peer``'s transport, with flow control."""

    def __init__(self, mux: WebMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []  # received before the peer was linked
        self.lost = False
        self.ended: Callable[[], None] | None = None  # called once when the connection is lost
        self.tls = False  # TLS cannot half-close: an end of input closes the peer
        self.count: Callable[[int], None] | None = None  # told each chunk's size (a session's rx or tx)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # asked once, here: once the SSL protocol is gone its transport cannot answer any more
        self.tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.mux.live.add(transport)

    def link(self, peer: Pipe) -> None:
        """Start forwarding to ``peer`` (and what arrived before)."""
        self.peer = peer
        if self.pending and peer.transport is not None:
            peer.transport.write(b"".join(self.pending))
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.count is not None:
            self.count(len(data))
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and not self.tls and peer.can_write_eof():
            peer.write_eof()
            return True  # the other direction may still carry data
        if peer is not None:
            peer.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        ended, self.ended = self.ended, None
        if ended is not None:
            ended()
        if self.transport is not None:
            self.mux.live.discard(self.transport)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class DialingPipe(Pipe):
    """The client's side of ``teleport-proxy-ssh``: reads the dial line, then splices."""

    def __init__(self, mux: WebMux, remote: str) -> None:
        super().__init__(mux)
        self.remote = remote
        self.user: UserCert | None = None
        self.line = b""
        self.request: str | None = None  # the dial line, once complete
        self.dialing = False
        self.der = b""  # the user's certificate (forwarded to a leaf cluster, which checks it)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None or self.dialing:
            super().data_received(data)
            return
        self.line += data
        line, newline, rest = self.line.partition(b"\n")
        if not newline:
            if len(self.line) > MAX_DIAL_LINE:
                self.refuse("dial request too long")
            return
        self.dialing = True
        if rest:
            self.pending.append(rest)
        assert self.transport is not None
        self.transport.pause_reading()
        self.request = line.decode(errors="replace").strip()
        self.authorized()

    def authorized(self) -> None:
        """Dial once both the user's certificate is checked and the request is in."""
        if self.user is not None and self.request is not None:
            request, self.request = self.request, None
            self.mux.spawn(self.dial(request))

    async def dial(self, request: str) -> None:
        assert self.transport is not None and self.user is not None
        if self.transport.is_closing():
            return
        proxy = self.mux.proxy
        metrics = self.mux.metrics
        parsed = parse_subsystem("proxy:" + request)
        metrics.connect_attempts.inc()
        try:
            if parsed is None:
                raise TeleportError(f"malformed dial request {request[:100]!r} (want host:port@cluster)")
            host, port, cluster = parsed
            upstream = Pipe(self.mux)  # holds what the node sends (its banner) until "OK" is written
            loop = asyncio.get_running_loop()
            try:
                if cluster and cluster != proxy.cluster_name:  # a trusted leaf: through its reverse tunnel
                    node_uuid, sock = await asyncio.to_thread(proxy.clusters.dial, self.user, host, port, cluster,
                                                              tls_der=self.der)
                    sock.setblocking(False)
                    await loop.create_connection(lambda: upstream, sock=sock)
                else:
                    node_uuid = await self._dial_local(host, port, upstream)
            except (OSError, TimeoutError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or "timed out")
                raise TeleportError(f"cannot reach {host}: {reason}") from None
        except TeleportError as exc:
            metrics.connect_failures.inc()
            self.refuse(str(exc), target=parsed[0] if parsed else "")
            return
        if self.transport.is_closing():
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.transport.write(f"OK {node_uuid}\n".encode())  # the client checks the node's certificate names it
        metrics.session_started("proxy", "tls-routing")
        metrics.proxy_sessions.inc()

        def ended() -> None:
            metrics.session_ended("proxy", "tls-routing")
            metrics.proxy_sessions.dec()

        self.ended = ended
        self.count, upstream.count = metrics.rx.inc, metrics.tx.inc
        upstream.link(self)
        self.link(upstream)
        if upstream.lost:
            self.transport.close()
            return
        self.transport.resume_reading()

    async def _dial_local(self, host: str, port: int, upstream: Pipe) -> str:
        """Route ``host`` in this cluster for the user and connect ``upstream`` to it; its host UUID."""
        assert self.user is not None
        proxy = self.mux.proxy
        loop = asyncio.get_running_loop()
        node = await proxy.route(self.user, "", host, port)
        if node.agentless:  # this proxy speaks for a plain sshd (teleport_proxy.forwarder)
            if proxy.agentless is None:
                raise TeleportError(f"agentless node {node.nodename}: the proxy is starting or stopping")
            sock = proxy.agentless.dial(node, self.remote)
            sock.setblocking(False)
            await loop.create_connection(lambda: upstream, sock=sock)
        elif node.tunnel or not node.addr:  # the node connects back through its reverse tunnel
            if proxy.tunnel is None:
                raise TeleportError(f"node {node.nodename} is reachable only through a reverse tunnel")
            sock = await asyncio.to_thread(proxy.tunnel.dial, node.uuid, node.nodename)
            sock.setblocking(False)
            await loop.create_connection(lambda: upstream, sock=sock)
        else:
            node_host, _, node_port = node.addr.rpartition(":")
            await asyncio.wait_for(
                loop.create_connection(lambda: upstream, node_host.strip("[]"), int(node_port)), DIAL_TIMEOUT)
        return node.uuid

    def refuse(self, reason: str, **fields: Any) -> None:
        if self.transport is not None:
            self.transport.write(f"ERR {' '.join(reason.split())}\n".encode())  # one line
            self.transport.close()
        self.mux.spawn(self.mux.proxy.audit_denial(self.user.user if self.user else "", reason, self.remote,
                                                   **fields))


class WebMux:
    """Routes connections on the web port (see the module docstring)."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.metrics = metrics_for(proxy.ctx.metrics)
        self.live: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ssh_context: tuple[Any, Any, ssl.SSLContext] | None = None
        self._tunnel_context: tuple[Any, ssl.SSLContext] | None = None

    def route(self, hello: ClientHello) -> Handler | None:
        if ALPN_SSH in hello.alpn:
            return self.serve_ssh
        if ALPN_REVERSE_TUNNEL in hello.alpn:
            return self.serve_reverse_tunnel
        if hello.server_name == AUTH_SERVER_NAME or any(p.startswith(ALPN_AUTH_PREFIX) for p in hello.alpn):
            return self.pass_to_auth
        return None

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cut_locked(self) -> int:
        """Close the routed connections of users a lock now matches (after the locks changed); how many."""
        cut = 0
        for transport in list(self.live):
            pipe = transport.get_protocol()
            if isinstance(pipe, DialingPipe) and pipe.user is not None:
                reason = self.proxy.lock_reason(pipe.user)
                if reason:
                    transport.abort()
                    self.spawn(self.proxy.audit_denial(pipe.user.user, reason, pipe.remote))
                    cut += 1
        return cut

    def ssh_connections(self) -> list[asyncio.Transport]:
        """The live users' SSH connections routed on the web port (a drain waits for them)."""
        return [t for t in list(self.live) if isinstance(t.get_protocol(), DialingPipe)]

    def close(self) -> None:
        for transport in list(self.live):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()

    # -- teleport-proxy-ssh ---------------------------------------------------------------------------

    def ssh_context(self) -> ssl.SSLContext:
        """The proxy's host certificate; client certificates must come from the user CA."""
        identity, user_cas = self.proxy.identity, self.proxy.user_ca_pems
        cached = self._ssh_context
        if cached is not None and cached[0] is identity and cached[1] is user_cas:
            return cached[2]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_key_pair(context, identity)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata="".join(user_cas))
        context.set_alpn_protocols([ALPN_SSH])
        self._ssh_context = (identity, user_cas, context)
        return context

    async def serve_ssh(self, sock: socket.socket, hello: ClientHello) -> None:
        remote = peer_addr(sock)
        pipe = DialingPipe(self, remote)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: pipe, sock, ssl=self.ssh_context(),
                                                              ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            sock.close()
            if self.proxy.web is not None:  # audited once per source and period: a flood cannot fill the log
                self.proxy.web.refused(remote, f"tls routing ({ALPN_SSH}): handshake refused: {handshake_reason(exc)}")
            return
        try:
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise TeleportError("a user certificate is required")
            user = user_from_tls_cert(der)
            self.proxy.roleset(user)  # a role that no longer exists denies everything
        except TeleportError as exc:
            pipe.refuse(f"tls routing ({ALPN_SSH}): {exc}")
            return
        assert der is not None
        locked = self.proxy.lock_reason(user)
        if locked:
            pipe.user = user
            pipe.refuse(locked)  # the lock's own message, shown to the user and audited as is
            return
        pipe.user = user
        pipe.der = der
        pipe.authorized()

    # -- teleport-reversetunnel -----------------------------------------------------------------------

    def tunnel_context(self) -> ssl.SSLContext:
        """The web certificate (as for HTTPS; reloaded when its files change), ALPN
        ``teleport-reversetunnel``, no client certificate asked."""
        cert, key = self.proxy.web_keypair()
        stamp = tuple(_mtime(path) for path in (cert, key))
        cached = self._tunnel_context
        if cached is not None and cached[0] == (cert, key, stamp):
            return cached[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
        self._tunnel_context = ((cert, key, stamp), context)
        return context

    async def serve_reverse_tunnel(self, sock: socket.socket, hello: ClientHello) -> None:
        remote = peer_addr(sock)
        tunnel = self.proxy.tunnel
        if not isinstance(tunnel, TunnelServer):  # starting or stopping: the agent retries
            sock.close()
            return
        loop = asyncio.get_running_loop()
        client, inner = Pipe(self), Pipe(self)
        try:
            await loop.connect_accepted_socket(lambda: client, sock, ssl=self.tunnel_context(),
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            sock.close()
            if self.proxy.web is not None:  # audited once per source and period, as for teleport-proxy-ssh
                self.proxy.web.refused(remote, f"tls routing ({ALPN_REVERSE_TUNNEL}): handshake refused: "
                                               f"{handshake_reason(exc)}")
            return
        # the tunnel server (threads, paramiko) reads a plain socket: this end of a pair is spliced to the TLS
        ours, theirs = socket.socketpair()
        try:
            await loop.connect_accepted_socket(lambda: inner, ours)
        except OSError:
            ours.close()
            theirs.close()
            if client.transport is not None:
                client.transport.close()
            return
        inner.link(client)
        client.link(inner)
        if client.lost:
            theirs.close()
            if inner.transport is not None:
                inner.transport.close()
            return
        tunnel.serve_routed(theirs, remote)

    # -- auth API passthrough ---------------------------------------------------------------------

    async def pass_to_auth(self, sock: socket.socket, hello: ClientHello) -> None:
        loop = asyncio.get_running_loop()
        client, upstream = Pipe(self), Pipe(self)
        client.peer, upstream.peer = upstream, client
        ctx = self.proxy.ctx
        for addr in auth_addresses(ctx.config, ctx.resources.shared):
            host, _, port = addr.removeprefix("https://").rpartition(":")
            try:
                await asyncio.wait_for(loop.create_connection(lambda: upstream, host.strip("[]"), int(port)),
                                       DIAL_TIMEOUT)
                break
            except (OSError, TimeoutError):
                continue
        else:
            sock.close()  # the client sees the connection close, as if auth were down
            return
        try:
            await loop.connect_accepted_socket(lambda: client, sock)
        except OSError:
            sock.close()
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.link(client)


def _load_key_pair(context: ssl.SSLContext, identity: LocalIdentity) -> None:
    # ssl loads key pairs from files only: a private temporary directory, removed at once
    with tempfile.TemporaryDirectory(prefix="teleport-mux-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        write_private(cert, identity.tls_cert_pem)
        write_private(key, identity.key_pem)
        context.load_cert_chain(cert, key)


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def peer_addr(sock: socket.socket) -> str:
    """``host:port`` of the socket's peer ("" when it is gone)."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return ""
    return f"{host}:{port}"
