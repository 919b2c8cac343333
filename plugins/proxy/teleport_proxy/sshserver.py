"""The proxy's SSH listener (paramiko): user certificate authentication, then forwarding.

Two ways to reach a node, both forwarding the user's own SSH connection to the node as opaque
bytes (the proxy never sees the inner session's plaintext; the node checks the user again):

- the ``proxy:host:port@cluster`` subsystem on a session channel (what ``tsh`` uses); lookup
  errors are written to the channel's stderr with exit status 1; a trusted leaf ``cluster`` is
  reached through its reverse tunnel (:mod:`teleport_proxy.clusters`);
- ``direct-tcpip`` channels (``ssh -J user@proxy:3023 login@node``); a refused target fails
  the channel open ("connect failed").

The target is resolved through the lookup hooks among the nodes the user's roles allow; a
name ending in ``.<cluster>`` names the node without the suffix. Denials are audited (T3007W).

Connections are admitted by a :class:`~teleport_core.net.limits.ConnectionGate` before they get a
thread (``connection_limits``: unauthenticated ones capped apart from sessions, per source, and
closed after ``login_grace_time``); refusals are audited once per source a minute.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paramiko

from teleport_core.errors import TeleportError
from teleport_core.metrics import metrics_for
from teleport_core.net import sshalgos
from teleport_core.net.limits import AuditThrottle, ConnectionGate, Refused, Ticket, on_authenticated
from teleport_core.pki import keys
from teleport_core.state.nodes import NodeInfo
from teleport_proxy.certs import InvalidCertificate, UserCert, verify_user_ssh_cert
from teleport_proxy.channelsplice import SplicingTransport, Upstream, splice

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

WINDOW = 4 * 1024 * 1024  # not more: see the node's WINDOW (OpenSSH clients churn larger buffers)
MAX_PACKET = 256 * 1024
LOOKUP_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# paramiko's reader wakes on this timeout only to see whether close() was called; our transports
# shut their socket down in close(), which wakes it at once. Each wake-up takes the GIL: at 1 s,
# 3,000 idle sessions kept the proxy at 1.4 cores, 80 % of it in the kernel (futex).
IDLE_POLL = 10.0


class CertHostKey(paramiko.PKey):  # type: ignore[misc]
    """The proxy's host key presenting its host certificate (signed by the host CA)."""

    def __init__(self, inner: paramiko.PKey, cert_line: str) -> None:
        self.inner = inner
        self.cert_type = cert_line.split()[0]
        self.blob = base64.b64decode(cert_line.split()[1])

    def get_name(self) -> str:
        return self.cert_type

    def asbytes(self) -> bytes:
        return self.blob

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> Any:
        return self.inner.sign_ssh_data(data, algorithm)


def paramiko_key(key_pem: bytes) -> paramiko.PKey:
    """A paramiko private key from our PEM."""
    import io

    key = keys.load_private_key(key_pem)
    text = keys.private_key_openssh(key).decode()
    kinds: dict[keys.KeyAlgorithm, type[paramiko.PKey]] = {
        keys.KeyAlgorithm.ED25519: paramiko.Ed25519Key, keys.KeyAlgorithm.ECDSA_P256: paramiko.ECDSAKey,
        keys.KeyAlgorithm.RSA2048: paramiko.RSAKey}
    return kinds[keys.key_algorithm(key)].from_private_key(io.StringIO(text))


def parse_subsystem(name: str) -> tuple[str, int, str] | None:
    """``proxy:host:port@cluster`` -> (host, port, cluster); port 0 when absent. None when
    malformed: no host, a port that is not a number from 0 to 65535, or a control character."""
    if not name.startswith("proxy:") or not name.isprintable():
        return None
    rest, _, cluster = name[len("proxy:"):].partition("@")
    host, _, port = rest.rpartition(":") if rest.count(":") == 1 or rest.startswith("[") else (rest, "", "0")
    host = host.strip("[]")
    if not host or not (port == "" or (port.isascii() and port.isdigit() and int(port) <= 65535)):
        return None
    return host, int(port or 0), cluster


class Connection(paramiko.ServerInterface):  # type: ignore[misc]
    """One client connection's authentication and channel requests."""

    def __init__(self, server: SSHProxyServer, transport: SplicingTransport, remote: str) -> None:
        self.server = server
        self.proxy = server.proxy
        self.transport = transport
        self.remote = remote
        self.user: UserCert | None = None
        self.cert_line = ""  # the user's SSH certificate (forwarded to a leaf cluster, which checks it)
        self.pending: dict[int, Upstream] = {}  # direct-tcpip channels opened, not yet accepted
        self.sessions: list[paramiko.Channel] = []  # session channels (paramiko holds channels weakly)

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = getattr(key, "public_blob", None)
        if blob is None:
            return int(paramiko.AUTH_FAILED)  # plain keys are never accepted; clients try their certificate next
        line = f"{blob.key_type} {base64.b64encode(blob.key_blob).decode()}"
        try:
            cert = verify_user_ssh_cert(line, self.proxy.user_ca_keys, client_ip=self.remote.rpartition(":")[0])
        except InvalidCertificate as exc:
            self.audit("", str(exc))
            return int(paramiko.AUTH_FAILED)
        if username not in (cert.user, *cert.principals):
            self.audit(cert.user, f"ssh: login {username!r} is neither the user nor a principal of the certificate")
            return int(paramiko.AUTH_FAILED)
        crowded = self.server.gate.user_may_connect(cert.user)
        if crowded:
            self.audit(cert.user, crowded)
            return int(paramiko.AUTH_FAILED)
        self.user = cert
        self.cert_line = line
        return int(paramiko.AUTH_SUCCESSFUL)

    def audit(self, user: str, reason: str, **fields: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.audit_denial(user, reason, self.remote, **fields), self.proxy.loop)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return int(paramiko.OPEN_SUCCEEDED)
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def _connect(self, target: str, port: int) -> tuple[NodeInfo, socket.socket]:
        """Resolve ``target`` for this user and connect to the node (raises TeleportError/OSError)."""
        metrics = self.server.metrics
        metrics.connect_attempts.inc()
        try:
            return self._dial(target, port)
        except BaseException:
            metrics.connect_failures.inc()
            raise

    def _dial(self, target: str, port: int) -> tuple[NodeInfo, socket.socket]:
        assert self.user is not None
        future = asyncio.run_coroutine_threadsafe(self.proxy.route(self.user, "", target, port), self.proxy.loop)
        node = future.result(LOOKUP_TIMEOUT)
        return node, dial_node(self.proxy, node, self.remote)

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        host, port = destination
        try:
            _, sock = self._connect(host, port)
        except (TeleportError, OSError) as exc:
            self.audit(self.user.user if self.user else "", f"{host}:{port}: {exc}", target=host)
            return int(paramiko.OPEN_FAILED_CONNECT_FAILED)
        upstream = Upstream(sock, self.server.metrics.rx.inc)
        self.pending[chanid] = upstream
        self.transport.upstreams[chanid] = upstream  # takes the channel's input from its first message
        return int(paramiko.OPEN_SUCCEEDED)

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        parsed = parse_subsystem(name)
        if parsed is None:
            return False
        host, port, cluster = parsed
        try:
            if cluster and cluster != self.proxy.cluster_name:  # a leaf: through its reverse tunnel
                assert self.user is not None
                _, sock = self.proxy.clusters.dial(self.user, host, port, cluster, ssh_cert=self.cert_line)
            else:
                _, sock = self._connect(host, port)
        except (TeleportError, OSError) as exc:
            message = str(exc) if isinstance(exc, TeleportError) else f"cannot reach {host}: {exc.strerror or exc}"
            self.audit(self.user.user if self.user else "", message, target=host)
            threading.Thread(target=_fail_channel, args=(channel, message), daemon=True).start()
            return True
        upstream = Upstream(sock, self.server.metrics.rx.inc)
        upstream.adopt(channel)  # on the transport's thread, before the client hears of success
        self.server.splice_session(channel, upstream, "subsystem")
        return True


def dial_node(proxy: ProxyState, node: NodeInfo, remote: str = "") -> socket.socket:
    """A connected socket to ``node``'s SSH port: directly, or through its reverse tunnel when it
    has one; for an agentless OpenSSH node, to this proxy's own SSH server speaking for it
    (:mod:`teleport_proxy.forwarder`; ``remote``: the user's address). Raises TeleportError/OSError.
    Blocking; call it from a thread."""
    if node.agentless:
        if proxy.agentless is None:
            raise TeleportError(f"agentless node {node.nodename}: the proxy is starting or stopping")
        return proxy.agentless.dial(node, remote)  # type: ignore[no-any-return]
    if node.tunnel or not node.addr:  # the node dials back through its reverse tunnel: a plain socket too
        if proxy.tunnel is None:  # the proxy is starting or stopping
            raise TeleportError(f"node {node.nodename} is reachable only through a reverse tunnel")
        return proxy.tunnel.dial(node.uuid, node.nodename)
    host, _, node_port = node.addr.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(node_port)), timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _fail_channel(channel: paramiko.Channel, message: str) -> None:
    with contextlib.suppress(OSError, EOFError):
        channel.send_stderr((message + "\n").encode())
        channel.send_exit_status(1)
        channel.shutdown_write()
    channel.close()


class Refusals:
    """Audits (T3007W) the connections a gate refused, once per source a minute."""

    def __init__(self, proxy: ProxyState, **fields: Any) -> None:
        self.proxy = proxy
        self.fields = fields
        self._throttle = AuditThrottle()

    def __call__(self, source: str, remote: str, reason: str, user: str = "") -> None:
        held = self._throttle.allow(source)
        if held is None:
            return
        if held:
            reason = f"{reason} ({held} more refused from {source} in the last minute)"
        self.proxy.log.info("connection refused", remote=remote, reason=reason)
        coro = self.proxy.audit_denial(user, reason, remote, **self.fields)
        try:
            asyncio.run_coroutine_threadsafe(coro, self.proxy.loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            coro.close()


def accept_loop(sock: socket.socket, stopping: threading.Event,
                serve: Callable[[socket.socket, str, Ticket], None], name: str, gate: ConnectionGate,
                refused: Callable[[str, str, str], None], inline: bool = False) -> None:
    """Accept on ``sock`` (which has a timeout, so ``stopping`` is seen) until it is set or the
    socket is closed; each connection ``gate`` admits gets ``serve(client, "host:port", ticket)``
    in a thread ``name``, which closes the ticket when ``serve`` returns; a refused one is closed at once and
    reported to ``refused(source, remote, reason)``. ``inline``: ``serve`` runs on this thread, must
    not block, and owns the ticket (closes it when the connection ends; the client when it raises)."""
    gate.start()
    while not stopping.is_set():
        try:
            client, addr = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        remote = f"{addr[0]}:{addr[1]}"

        def expire(client: socket.socket = client) -> None:  # login grace time over: wake its thread
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        try:
            ticket = gate.admit(str(addr[0]), expire)
        except Refused as exc:
            client.close()
            refused(str(addr[0]), remote, str(exc))
            continue

        if inline:
            try:
                serve(client, remote, ticket)
            except Exception:  # a connection that cannot start must not stop the listener
                ticket.close()
                client.close()
            continue

        def run(client: socket.socket = client, remote: str = remote, ticket: Ticket = ticket) -> None:
            try:
                serve(client, remote, ticket)
            finally:
                ticket.close()

        threading.Thread(target=run, name=name, daemon=True).start()


class SSHProxyServer:
    """Accepts SSH connections on ``sock`` in a thread; one paramiko transport per client."""

    def __init__(self, proxy: ProxyState, sock: socket.socket) -> None:
        self.proxy = proxy
        self.sock = sock
        # a timeout, never blocking mode: O_NONBLOCK is shared with the other process of a graceful
        # reload, and one that took the connection first is just a retry here
        sock.settimeout(0.5)
        self.host_key = CertHostKey(paramiko_key(proxy.identity.key_pem), proxy.identity.ssh_cert)
        self._stopping = threading.Event()
        self._accepting = threading.Event()  # set: the accept loop ends (stop, graceful reload)
        self._transports: set[paramiko.Transport] = set()
        self._connections: set[Connection] = set()
        self.gate = ConnectionGate(proxy.limits, "proxy_service")
        self.metrics = metrics_for(proxy.ctx.metrics)
        self.refused = Refusals(proxy, proto="ssh")
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-ssh-accept", daemon=True)
        # paramiko logs every client that hangs up mid-handshake at ERROR; denials are audited instead
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)

    @property
    def connections(self) -> int:
        return len(self._transports)

    def start(self) -> None:
        self._thread.start()

    def splice_session(self, channel: paramiko.Channel, upstream: Upstream, kind: str) -> None:
        """Splice a routed connection, counted as a proxy session of ``kind`` until it ends."""
        metrics = self.metrics
        metrics.session_started("proxy", kind)
        metrics.proxy_sessions.inc()

        def ended() -> None:
            metrics.session_ended("proxy", kind)
            metrics.proxy_sessions.dec()

        splice(channel, upstream, sent=metrics.tx.inc, ended=ended)

    def stop_accepting(self) -> None:
        """Stop the accept loop and close our listening descriptor (never ``shutdown()``: the new
        process of a graceful reload accepts on the same socket); connections carry on."""
        self._accepting.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self.stop_accepting()
        self.gate.stop()
        for transport in list(self._transports):
            transport.close()

    def cut_locked(self) -> int:
        """Close the connections of users a lock now matches (after the locks changed); how many."""
        cut = 0
        for conn in list(self._connections):
            reason = conn.user is not None and self.proxy.lock_reason(conn.user)
            if reason:
                conn.audit(conn.user.user if conn.user else "", reason)
                conn.transport.close()
                cut += 1
        return cut

    def _accept_loop(self) -> None:
        accept_loop(self.sock, self._accepting, self._serve, "proxy-ssh-conn", self.gate, self.refused, inline=True)

    def _serve(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        """Start the connection's paramiko transport (its one thread: the handshake runs there, not
        on the accept loop) and return; channels are spliced from that thread as they open, and the
        ticket is closed when the connection ends."""
        client.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = SplicingTransport(client, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
        # paramiko's reader wakes every 0.1 s to look for close() (see IDLE_POLL)
        transport._active_check_timeout = IDLE_POLL
        client.settimeout(IDLE_POLL)
        sshalgos.configure(transport, key_types=[self.host_key.get_name()])
        transport.add_server_key(self.host_key)
        conn = Connection(self, transport, remote)

        def logged_in() -> None:  # counted in max_users from here on
            user = conn.user.user if conn.user else ""
            try:
                ticket.authenticated(user)
            except Refused as exc:  # another user took the last place since check_auth_publickey
                self.refused(remote.rpartition(":")[0], remote, str(exc), user)
                transport.close()

        on_authenticated(transport, logged_in)

        def opened(channel: paramiko.Channel) -> None:  # the transport's thread, after the open's reply
            upstream = conn.pending.pop(channel.get_id(), None)
            if upstream is not None:
                self.splice_session(channel, upstream, "direct-tcpip")
                return
            # a session channel: its subsystem request splices it (check_channel_subsystem_request).
            # paramiko maps channels weakly: hold it (as accept()'s queue did) until it closes
            conn.sessions = [c for c in conn.sessions if not c.closed]
            conn.sessions.append(channel)

        def closed() -> None:  # the transport's thread, once, as it ends
            if transport not in self._transports:
                return
            for upstream in conn.pending.values():
                upstream.sock.close()
            conn.pending.clear()
            conn.sessions.clear()
            self._transports.discard(transport)
            self._connections.discard(conn)
            ticket.close()

        transport.on_channel = opened
        transport.on_closed = closed
        self._transports.add(transport)
        self._connections.add(conn)
        try:
            transport.start_server(event=threading.Event(), server=conn)
        except BaseException:
            closed()
            transport.close()
            raise
