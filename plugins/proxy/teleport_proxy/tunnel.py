"""Reverse tunnels at the proxy: nodes behind firewalls dial ``tunnel_listen_addr`` (3024).

Two kinds of connections arrive on the tunnel port, told apart by their first bytes:

- **control** (an SSH connection): the node logs in with its host certificate — a host
  certificate signed by the cluster's host CA, valid now, with ``x-teleport-role`` = ``Node``,
  ``x-teleport-authority`` = this cluster and the host UUID (the login name) among its
  principals. User certificates, other CAs' certificates and plain keys are refused and
  audited (T3007W). The node then opens one ``teleport-tunnel@teleport-py`` channel that
  carries JSON lines: the node's ``ping`` every few seconds (answered ``pong``; a node silent
  for :data:`IDLE_LIMIT` is dropped) and the proxy's ``dial`` requests.
- **data** (``TPY-TUNNEL-DATA\\n`` + a 32-byte one-time token): to reach a tunnelled node, the
  proxy sends ``dial`` with a fresh random token over the control channel; the node opens a
  new TCP connection to the tunnel port, sends the token and then serves SSH on that
  connection exactly as if a client had connected to its listener. The proxy hands the
  socket to its usual forwarding (the user's end-to-end encrypted SSH stream, spliced as
  for a directly reachable node): the tunnel adds one TCP connection per session and no
  extra encryption, copy or thread on the data path. A token is single-use and expires
  after :data:`DIAL_TIMEOUT`; an unknown token is refused and audited.

- **cluster** (trusted clusters): a leaf cluster's proxy logs in the same way with its own
  host certificate (role ``Proxy``, ``x-teleport-authority`` = the leaf), accepted only when the
  leaf is a known ``remote_cluster`` of this cluster and the certificate is signed by the leaf's
  host CA this cluster stored (:func:`teleport_proxy.clusters.verify_cluster_cert`). Its control
  channel also carries ``dial`` requests naming the leaf node (the leaf proxy connects the data
  connection to it) and ``request``/``reply`` pairs (a leaf's node list for a root user); each
  of its pings is the leaf's heartbeat to auth (:class:`teleport_proxy.clusters.Clusters`).

**Through the web port** (TLS routing): an agent may reach the same server on the proxy's web
port, in TLS with ALPN ``teleport-reversetunnel`` (:mod:`teleport_proxy.mux` terminates that TLS
with the web certificate and hands the plain stream to :meth:`TunnelServer.serve_routed`). Both
kinds of connection then go exactly as on the tunnel port: the same gate, host certificate checks,
tokens and audit. With ``proxy_listener_mode: multiplex`` the proxy opens no tunnel port at all
(``sock`` None) and the web port is the only way in.

Tunnel connects and disconnects are audited (``reverse_tunnel.connect``/``.disconnect``).
Connections are admitted as on the proxy's SSH port (``connection_limits``, one
:class:`~teleport_core.net.limits.ConnectionGate` for this port): a control connection counts as
unauthenticated until the node logged in, a data connection until its token matched.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.net import sshalgos
from teleport_core.net.limits import ConnectionGate, Refused, Ticket, on_authenticated
from teleport_core.state.audit import new_event
from teleport_core.tsh.hostcert import verify_host_cert
from teleport_proxy.sshserver import Refusals, accept_loop

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

CONTROL_CHANNEL = "teleport-tunnel@teleport-py"
DATA_MAGIC = b"TPY-TUNNEL-DATA\n"
TOKEN_BYTES = 32
HANDSHAKE_TIMEOUT = 10.0  # seconds a new connection has to say what it is / to log in
DIAL_TIMEOUT = 10.0  # seconds the node has to connect back for a session
IDLE_LIMIT = 45.0  # a control channel silent this long (nodes ping every 10 s) is dropped
MAX_LINE = 64 * 1024
MAX_CLUSTER_LINE = 16 * 1024 * 1024  # a leaf's replies (node lists) are longer
REQUEST_TIMEOUT = 15.0  # seconds a leaf has to answer a request
WINDOW = 1024 * 1024


class TunnelRefused(AccessDenied):
    """A connection to the tunnel port that is not a node of this cluster."""


def verify_node_cert(key_type: str, blob: bytes, login: str, host_ca_keys: list[str], cluster: str) -> str:
    """The host UUID of a node's host certificate, or :class:`TunnelRefused`.

    Signed by the cluster's host CA (signature checked), a host certificate, valid now, with
    ``x-teleport-role`` = ``Node``, ``x-teleport-authority`` = ``cluster`` and ``login`` (the
    host UUID) and ``<login>.<cluster>`` among its principals.
    """
    try:
        cert = ssh.load_ssh_public_identity(f"{key_type} {base64.b64encode(blob).decode()}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        cert = None
    if not isinstance(cert, ssh.SSHCertificate):
        raise TunnelRefused("reverse tunnel: a plain key was offered, only node host certificates are accepted")
    if cert.type is ssh.SSHCertificateType.USER:
        raise TunnelRefused("reverse tunnel: a user certificate was offered, only node host certificates are "
                            "accepted")
    try:
        verify_host_cert(key_type, blob, host_ca_keys, login)
    except AccessDenied as exc:
        reason = str(exc).replace("the server's", "the")
        raise TunnelRefused(f"reverse tunnel: {reason}") from None
    ext = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in cert.extensions.items()}
    if ext.get("x-teleport-role") != "Node":
        raise TunnelRefused(f"reverse tunnel: the certificate is for role {ext.get('x-teleport-role', '')!r}, "
                            "only nodes may open a reverse tunnel")
    if ext.get("x-teleport-authority") != cluster:
        raise TunnelRefused("reverse tunnel: the certificate belongs to another cluster")
    if f"{login}.{cluster}".encode() not in cert.valid_principals:
        raise TunnelRefused(f"reverse tunnel: the certificate does not name host {login} of this cluster")
    return login


def verify_cluster_cert(key_type: str, blob: bytes, login: str, leaf_host_cas: Mapping[str, Sequence[str]]) -> str:
    """The leaf cluster whose proxy presents this host certificate, or :class:`TunnelRefused`.

    ``leaf_host_cas``: each known, enabled remote cluster's stored host CA keys. The certificate's
    ``x-teleport-authority`` must be one of them, signed (checked) by that cluster's host CA, a host
    certificate valid now, role ``Proxy`` and ``<login>.<leaf>`` among its principals.
    """
    try:
        cert = ssh.load_ssh_public_identity(f"{key_type} {base64.b64encode(blob).decode()}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        cert = None
    if not isinstance(cert, ssh.SSHCertificate) or cert.type is not ssh.SSHCertificateType.HOST:
        raise TunnelRefused("reverse tunnel: only host certificates are accepted")
    ext = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in cert.extensions.items()}
    cluster = ext.get("x-teleport-authority", "")
    trusted = leaf_host_cas.get(cluster) if cluster else None
    if not trusted:
        raise TunnelRefused(f"reverse tunnel: the certificate belongs to another cluster ({cluster!r} is not a "
                            "trusted leaf cluster of this one)")
    try:
        verify_host_cert(key_type, blob, list(trusted), login)
    except AccessDenied as exc:
        reason = str(exc).replace("the server's", "the")
        raise TunnelRefused(f"reverse tunnel: leaf cluster {cluster}: {reason}") from None
    if ext.get("x-teleport-role") != "Proxy":
        raise TunnelRefused(f"reverse tunnel: leaf cluster {cluster}: the certificate is for role "
                            f"{ext.get('x-teleport-role', '')!r}, only a leaf's proxies may open a cluster tunnel")
    if f"{login}.{cluster}".encode() not in cert.valid_principals:
        raise TunnelRefused(f"reverse tunnel: the certificate does not name host {login} of cluster {cluster}")
    return cluster


@attrs.define
class _Pending:
    host_uuid: str
    ready: threading.Event = attrs.field(factory=threading.Event)
    sock: socket.socket | None = None


class NodeTunnel:
    """One node's control channel: keepalives in, dial requests out (one reader thread)."""

    def __init__(self, server: TunnelServer, host_uuid: str, transport: paramiko.Transport,
                 channel: paramiko.Channel, remote: str, cluster: str = "") -> None:
        self.server = server
        self.host_uuid = host_uuid
        self.cluster = cluster  # a leaf cluster's proxy; "" for a node of this cluster
        self.max_line = MAX_CLUSTER_LINE if cluster else MAX_LINE
        self.replies: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self.transport = transport
        self.channel = channel
        self.remote = remote
        self.connected = time.time()
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._send_lock:
            self.channel.sendall(json.dumps(message).encode() + b"\n")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        self.transport.close()

    def run(self) -> str:
        """Read the node's messages until the tunnel ends; returns why it ended."""
        self.channel.settimeout(IDLE_LIMIT)
        buffer = b""
        try:
            while True:
                try:
                    data = self.channel.recv(4096)
                except TimeoutError:
                    return f"no keepalive from the node for {IDLE_LIMIT:.0f}s"
                if not data:
                    return "the node closed the tunnel"
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(line)
                if len(buffer) > self.max_line:
                    return "the node sent an oversized message"
        except (OSError, EOFError, paramiko.SSHException) as exc:
            return f"connection lost: {exc or type(exc).__name__}"

    def _handle(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "ping":
            self.send({"type": "pong"})
            if self.cluster:
                self.server.proxy.clusters.heartbeat(self.cluster)
        elif message.get("type") == "reply" and self.cluster:
            waiting = self.replies.get(str(message.get("id")))
            if waiting is not None:
                waiting[1].append(message)
                waiting[0].set()

    def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Ask the leaf's proxy (``message`` gets a fresh ``id``) and wait for its reply."""
        ident = secrets.token_hex(8)
        ready: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
        self.replies[ident] = ready
        try:
            self.send({**message, "type": "request", "id": ident})
            if not ready[0].wait(timeout):
                raise TeleportError(f"cluster {self.cluster} did not answer within {timeout:.0f}s")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TeleportError(f"cluster {self.cluster}: reverse tunnel lost ({exc or type(exc).__name__})") from None
        finally:
            self.replies.pop(ident, None)
        return ready[1][0]


class TunnelConnection(paramiko.ServerInterface):  # type: ignore[misc]
    """Authentication of one control connection: nodes' host certificates only."""

    def __init__(self, server: TunnelServer, remote: str) -> None:
        self.server = server
        self.remote = remote
        self.host_uuid = ""
        self.cluster = ""  # set when a leaf cluster's proxy logged in

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = getattr(key, "public_blob", None)
        try:
            if blob is None:
                raise TunnelRefused("reverse tunnel: a plain key was offered, only node host certificates are "
                                    "accepted")
            proxy = self.server.proxy
            authority = cert_authority(blob.key_type, blob.key_blob)
            if authority and authority != proxy.cluster_name:  # a leaf cluster's proxy, or refused
                self.cluster = verify_cluster_cert(blob.key_type, blob.key_blob, username,
                                                   proxy.clusters.leaf_host_cas())
                self.host_uuid = username
                return int(paramiko.AUTH_SUCCESSFUL)
            self.host_uuid = verify_node_cert(blob.key_type, blob.key_blob, username, list(proxy.host_ca_keys),
                                              proxy.cluster_name)
        except TunnelRefused as exc:
            self.server.audit_denial(username, str(exc), self.remote)
            return int(paramiko.AUTH_FAILED)
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == CONTROL_CHANNEL and self.host_uuid:
            return int(paramiko.OPEN_SUCCEEDED)
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)


def cert_authority(key_type: str, blob: bytes) -> str:
    """The ``x-teleport-authority`` of a host certificate ("" for anything else)."""
    try:
        cert = ssh.load_ssh_public_identity(f"{key_type} {base64.b64encode(blob).decode()}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return ""
    if not isinstance(cert, ssh.SSHCertificate) or cert.type is not ssh.SSHCertificateType.HOST:
        return ""
    return cert.extensions.get(b"x-teleport-authority", b"").decode(errors="replace")


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class TunnelServer:
    """Accepts tunnel connections on ``sock`` (threads, like the proxy's SSH listener) and those the
    web port routes here (:meth:`serve_routed`); ``sock`` None: no tunnel port (multiplex mode)."""

    def __init__(self, proxy: ProxyState, sock: socket.socket | None, host_key: paramiko.PKey) -> None:
        self.proxy = proxy
        self.sock = sock
        # a timeout, never blocking mode: O_NONBLOCK is shared with the other process of a graceful
        # reload, and one that took the connection first is just a retry here
        if sock is not None:
            sock.settimeout(0.5)
        self.host_key = host_key
        self.tunnels: dict[str, NodeTunnel] = {}
        self.clusters: dict[str, dict[str, NodeTunnel]] = {}  # leaf cluster -> its proxies' tunnels
        self._pending: dict[bytes, _Pending] = {}
        self._controls: set[threading.Thread] = set()
        self._audits: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._accepting = threading.Event()  # set: the accept loop ends (stop, graceful reload)
        self.gate = ConnectionGate(proxy.limits, "proxy_service tunnel")
        self.refused = Refusals(proxy, kind="reverse_tunnel")
        self._thread = threading.Thread(target=self._accept_loop, name="proxy-tunnel-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The tunnel port's address (``("", 0)`` without one)."""
        if self.sock is None:
            return "", 0
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self.sock is None:
            self.gate.start()  # connections come from the web port only
            return
        self._thread.start()

    def stop_accepting(self) -> None:
        """Graceful reload: stop the accept loop, close our listening descriptor (never
        ``shutdown()``: the new process accepts on it) and the tunnels' control connections,
        so each node dials again and reaches the new proxy. Data connections of sessions
        already routed carry on."""
        self._accepting.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.sock is not None:
            self.sock.close()
        with self._lock:
            tunnels = list(self.tunnels.values()) + [t for ts in self.clusters.values() for t in ts.values()]
        for tunnel in tunnels:
            tunnel.close()

    def stop(self) -> None:
        self._stopping.set()
        self.gate.stop()
        self.stop_accepting()
        deadline = time.monotonic() + 5
        for thread in list(self._controls):  # each audits its tunnel's end before the process stops
            thread.join(max(0.0, deadline - time.monotonic()))
        # on the proxy's disk spool before the loop stops (stop runs off the event loop)
        concurrent.futures.wait(list(self._audits), timeout=max(0.5, deadline - time.monotonic()))

    def connected(self, host_uuid: str) -> bool:
        return host_uuid in self.tunnels

    def cluster_tunnel(self, cluster: str) -> NodeTunnel:
        """A tunnel of one of ``cluster``'s proxies (the newest), or TeleportError: the leaf is offline."""
        with self._lock:
            tunnels = list(self.clusters.get(cluster, {}).values())
        if not tunnels:
            raise TeleportError(f"cluster {cluster} is offline: it has no reverse tunnel to this proxy")
        return max(tunnels, key=lambda t: t.connected)

    def close_cluster(self, cluster: str) -> None:
        """End ``cluster``'s tunnels (its trust was removed)."""
        with self._lock:
            tunnels = list(self.clusters.get(cluster, {}).values())
        for tunnel in tunnels:
            tunnel.close()

    def dial_cluster(self, cluster: str, fields: dict[str, Any], timeout: float = DIAL_TIMEOUT) -> socket.socket:
        """A TCP connection that the leaf ``cluster``'s proxy opened through its tunnel and joined to
        the node ``fields`` name (the leaf proxy routes it as for its own users)."""
        return self._dial(self.cluster_tunnel(cluster), f"cluster {cluster}", fields, timeout)

    # -- dialing a node --------------------------------------------------------------------------

    def dial(self, host_uuid: str, nodename: str, timeout: float = DIAL_TIMEOUT) -> socket.socket:
        """A TCP connection on which the node serves SSH, opened by the node through its tunnel."""
        tunnel = self.tunnels.get(host_uuid)
        if tunnel is None:
            raise TeleportError(f"node {nodename} is offline: it has no reverse tunnel to this proxy")
        return self._dial(tunnel, f"node {nodename}", {}, timeout)

    def _dial(self, tunnel: NodeTunnel, nodename: str, fields: dict[str, Any], timeout: float) -> socket.socket:
        token = secrets.token_bytes(TOKEN_BYTES)
        pending = _Pending(tunnel.host_uuid)
        with self._lock:
            self._pending[token] = pending
        try:
            tunnel.send({**fields, "type": "dial", "token": token.hex()})
            arrived = pending.ready.wait(timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TeleportError(f"{nodename}: reverse tunnel lost ({exc or type(exc).__name__})") from None
        finally:
            with self._lock:
                self._pending.pop(token, None)
        if not arrived or pending.sock is None:
            if pending.sock is not None:  # came just too late
                pending.sock.close()
            raise TeleportError(f"{nodename} did not connect back through its reverse tunnel within "
                                f"{timeout:.0f}s")
        return pending.sock

    # -- connections -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self.sock is not None
        accept_loop(self.sock, self._accepting, self._serve, "proxy-tunnel-conn", self.gate, self.refused)

    def serve_routed(self, client: socket.socket, remote: str) -> None:
        """A connection the web port routed here (ALPN ``teleport-reversetunnel``, TLS already
        terminated; ``client`` carries the plain stream, ``remote`` is the agent's address): admitted
        by this server's gate and served as one from the tunnel port (in a thread; returns at once)."""
        if self._accepting.is_set():  # stopping or reloading: the agent dials again
            client.close()
            return
        source = remote.rpartition(":")[0].strip("[]") or remote

        def expire() -> None:  # login grace time over: wake its thread
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        try:
            ticket = self.gate.admit(source, expire)
        except Refused as exc:
            client.close()
            self.refused(source, remote, str(exc))
            return

        def run() -> None:
            try:
                self._dispatch(client, remote, ticket)
            finally:
                ticket.close()

        threading.Thread(target=run, name="proxy-tunnel-routed", daemon=True).start()

    def _serve(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._dispatch(client, remote, ticket)

    def _dispatch(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        """A control or data connection, told apart by its first bytes."""
        client.settimeout(HANDSHAKE_TIMEOUT)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        try:  # both kinds of client speak first: look at their first 4 bytes without taking them
            head = client.recv(4, socket.MSG_PEEK)
            while 0 < len(head) < 4 and time.monotonic() < deadline:
                time.sleep(0.005)
                head = client.recv(4, socket.MSG_PEEK)
        except OSError:
            client.close()
            return
        if head == b"SSH-":
            self._serve_control(client, remote, ticket)
        elif head == DATA_MAGIC[:4]:
            self._serve_data(client, remote, ticket)
        else:
            if head:
                self.audit_denial("", "reverse tunnel: not an SSH or tunnel data connection", remote)
            client.close()

    def _serve_data(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        try:
            data = _read_exact(client, len(DATA_MAGIC) + TOKEN_BYTES)
        except OSError:
            data = b""
        token = data[len(DATA_MAGIC):]
        with self._lock:
            pending = self._pending.pop(token, None) if data.startswith(DATA_MAGIC) else None
        if pending is None or len(token) != TOKEN_BYTES:
            self.audit_denial("", "reverse tunnel: data connection with an unknown or expired token", remote)
            client.close()
            return
        client.settimeout(None)
        ticket.authenticated()
        pending.sock = client
        pending.ready.set()

    def _serve_control(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        client.settimeout(None)
        self._controls.add(threading.current_thread())
        try:
            self._control(client, remote, ticket)
        finally:
            self._controls.discard(threading.current_thread())

    def _control(self, client: socket.socket, remote: str, ticket: Ticket) -> None:
        transport = paramiko.Transport(client, default_window_size=WINDOW)
        on_authenticated(transport, ticket.authenticated)  # a node, not a user: not in max_users
        sshalgos.configure(transport, key_types=[self.host_key.get_name()])
        transport.add_server_key(self.host_key)
        conn = TunnelConnection(self, remote)
        try:
            transport.start_server(server=conn)
            channel = transport.accept(HANDSHAKE_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()
            return
        if channel is None or not conn.host_uuid:
            transport.close()
            return
        tunnel = NodeTunnel(self, conn.host_uuid, transport, channel, remote, conn.cluster)
        table = self.clusters.setdefault(conn.cluster, {}) if conn.cluster else self.tunnels
        with self._lock:
            previous = table.get(tunnel.host_uuid)
            table[tunnel.host_uuid] = tunnel
        if previous is not None:
            previous.close()  # the node reconnected: its old connection is stale
        self._event("reverse_tunnel.connect", tunnel, {})
        self.proxy.log.info("reverse tunnel connected", host_uuid=tunnel.host_uuid, remote=remote,
                            **({"leaf_cluster": conn.cluster} if conn.cluster else {}))
        if conn.cluster:
            self.proxy.clusters.heartbeat(conn.cluster, force=True)
        reason = tunnel.run()
        with self._lock:
            if table.get(tunnel.host_uuid) is tunnel:
                del table[tunnel.host_uuid]
            if conn.cluster and not table:
                self.clusters.pop(conn.cluster, None)
        tunnel.close()
        if self._stopping.is_set():
            reason = "the proxy is stopping"
        self._event("reverse_tunnel.disconnect", tunnel, {"reason": reason,
                                                         "duration": round(time.time() - tunnel.connected, 3)})
        self.proxy.log.info("reverse tunnel disconnected", host_uuid=tunnel.host_uuid, remote=remote, reason=reason)

    # -- audit -----------------------------------------------------------------------------------

    def _event(self, event: str, tunnel: NodeTunnel, fields: dict[str, Any]) -> None:
        proxy = self.proxy
        # server_id is the emitter (auth accepts a host's events only about itself); host_id the node
        fields.update({"server_id": proxy.identity.host_uuid, "host_id": tunnel.host_uuid,
                       "cluster_name": proxy.cluster_name, "addr.remote": tunnel.remote})
        if tunnel.cluster:  # Teleport's tunnel type for a leaf cluster's proxy
            fields.update({"tunnel_type": "proxy", "leaf_cluster": tunnel.cluster})
        self._submit(proxy.audit.emit(new_event(event, **fields)))

    def audit_denial(self, login: str, reason: str, remote: str) -> None:
        self._submit(self.proxy.audit_denial(login, reason, remote, kind="reverse_tunnel"))

    def _submit(self, coro: Any) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.proxy.loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            coro.close()
            return
        self._audits.add(future)
        future.add_done_callback(self._audits.discard)
