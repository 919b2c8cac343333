"""The dialing side of a reverse tunnel, shared by nodes (``teleport_node.tunnel``) and leaf
proxies (``teleport_proxy.clusters``): an agent behind a firewall dials a proxy's tunnel port
(3024) and keeps one SSH control connection up; the proxy reaches it through that.

The agent logs in with its host certificate (user = the login its kind uses), after checking the
proxy's own host certificate against the host CA of ``cluster`` (role ``Proxy``), and opens the
control channel (:data:`CONTROL_CHANNEL`, JSON lines). It pings every :data:`PING_INTERVAL` and
reconnects, with exponential backoff and jitter, when the connection ends or the proxy stops
answering. Messages from the proxy:

- ``dial`` with a one-time token: the agent opens a new TCP connection to the tunnel port, sends
  :data:`DATA_MAGIC` + the token and hands it to ``serve(conn, message)`` (a :class:`Dialed`: the
  socket and that TCP connection's own addresses; a node serves SSH on it; a leaf proxy connects it
  to the node the message names);
- ``request`` with an ``id``: ``answer(message)`` (in a thread) gives the reply, sent back on the
  control channel (SSH-encrypted) as ``{"type": "reply", "id": ..., ...}``.

**Through the proxy's web port** (TLS routing): when ``tls_routing(addr)`` says the address is a
proxy's web port, every connection (control and data) is TLS with ALPN
:data:`ALPN_REVERSE_TUNNEL` and the same bytes go inside. The web certificate is checked as the
agent's ``/webapi/find`` call checks it (the system's CAs; nothing with ``insecure``): it is not
what authenticates the proxy. The SSH layer inside does that, as on the tunnel port: the proxy's
host certificate against the cluster's host CA, and the agent's host certificate signs the SSH
session, so a party that terminates the TLS sees only SSH-encrypted bytes and cannot pass as
either side; a data connection's token is single-use and the stream after it is the user's own
SSH session, checked end to end (:mod:`teleport_core.net.tlsbridge` gives paramiko a plain socket:
the end of a socketpair, whose own addresses are meaningless, so :class:`Dialed` carries the TCP
connection's, read from the kernel on this host, never from anything the proxy sends).

**When it cannot connect** it keeps trying (the proxy may come up later) and logs an ERROR once
for each reason it meets while the tunnel is down (a reason seen before: DEBUG, so two causes that
alternate do not flood the log; a tunnel that came up starts afresh), e.g. ``connection refused at
<addr>: is the proxy's tunnel port open? ...`` with the hint its owner gives (``refused_hint``: a
leaf names ``tunnel_addr``). :attr:`TunnelAgent.last_error` holds the reason while the tunnel is down.

See ``teleport_proxy.tunnel`` for the proxy's side.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import paramiko
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.config.values import NetAddr
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.net import sshalgos
from teleport_core.net.tlsbridge import bridge
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.tsh.hostcert import verify_host_cert

CONTROL_CHANNEL = "teleport-tunnel@teleport-py"
ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"  # Teleport's: the web port routes it to the tunnel server
DATA_MAGIC = b"TPY-TUNNEL-DATA\n"
TOKEN_BYTES = 32
CONNECT_TIMEOUT = 10.0
PING_INTERVAL = 10.0
PONG_LIMIT = 30.0  # no answer from the proxy for this long: reconnect
FIRST_RETRY, MAX_RETRY = 1.0, 30.0
STABLE = 60.0  # a tunnel up this long resets the backoff
MAX_REPORTED = 16  # reasons remembered as logged (ERROR once each) while the tunnel stays down
MAX_LINE = 16 * 1024 * 1024  # the longest control message the agent reads
HOST_CERT_TYPES = ("ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                   "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com")

Answer = Callable[[dict[str, Any]], dict[str, Any]]


@attrs.frozen
class Dialed:
    """A connection to a proxy's tunnel server: ``sock`` to read and write (through the web port, the
    end of a socketpair bridged to the TLS) and the TCP connection's ``local`` and ``remote``
    addresses, read from its socket here (what a session on it audits, as on the tunnel port)."""

    sock: socket.socket
    local: tuple[str, int]
    remote: tuple[str, int]


Serve = Callable[[Dialed, dict[str, Any]], None]


def client_key(identity: LocalIdentity) -> paramiko.PKey:
    """The host's private key with its SSH host certificate attached (paramiko)."""
    key = keys.load_private_key(identity.key_pem)
    text = keys.private_key_openssh(key).decode()
    kinds: dict[keys.KeyAlgorithm, type[paramiko.PKey]] = {
        keys.KeyAlgorithm.ED25519: paramiko.Ed25519Key, keys.KeyAlgorithm.ECDSA_P256: paramiko.ECDSAKey,
        keys.KeyAlgorithm.RSA2048: paramiko.RSAKey}
    pkey = kinds[keys.key_algorithm(key)].from_private_key(io.StringIO(text))
    pkey.load_certificate(identity.ssh_cert)
    return pkey


def verify_proxy_cert(key_type: str, blob: bytes, trusted: list[str], host: str, cluster: str) -> None:
    """Raise :class:`AccessDenied` unless the proxy's host key is a certificate of ``cluster``'s
    host CA (``trusted``) for role ``Proxy`` (naming ``host`` unless it is an IP address)."""
    try:
        ipaddress.ip_address(host)
        principal = None
    except ValueError:
        principal = host
    verify_host_cert(key_type, blob, trusted, principal)
    cert = ssh.load_ssh_public_identity(f"{key_type} {base64.b64encode(blob).decode()}".encode())
    assert isinstance(cert, ssh.SSHCertificate)
    ext = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in cert.extensions.items()}
    if ext.get("x-teleport-role") != "Proxy" or ext.get("x-teleport-authority") != cluster:
        raise AccessDenied("the tunnel server's host certificate is not a proxy certificate of this cluster")


def dial(addr: NetAddr, *, tls: bool, insecure: bool, name: str = "teleport-tunnel") -> Dialed:
    """A connection to a proxy's tunnel server at ``addr``: plain TCP to the tunnel port, or (``tls``)
    TLS with ALPN :data:`ALPN_REVERSE_TUNNEL` to its web port, bridged to a plain socket (the web
    certificate checked against the system's CAs unless ``insecure``); with the TCP addresses."""
    raw = socket.create_connection((addr.connect_host, addr.port), timeout=CONNECT_TIMEOUT)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        local, remote = _host_port(raw.getsockname()), _host_port(raw.getpeername())
        if not tls:
            return Dialed(raw, local, remote)
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
        try:
            wrapped = context.wrap_socket(raw, server_hostname=addr.host)
        except ssl.SSLCertVerificationError as exc:
            raise TeleportError(f"the proxy's web certificate at {addr} is not trusted ({exc.verify_message}); "
                                "if it is self-signed, use --insecure") from None
        if wrapped.selected_alpn_protocol() != ALPN_REVERSE_TUNNEL:
            wrapped.close()
            raise TeleportError(f"the proxy at {addr} does not accept reverse tunnels on its web port "
                                f"(ALPN {ALPN_REVERSE_TUNNEL})")
        wrapped.settimeout(None)
        return Dialed(bridge(wrapped, name=f"{name}-tls"), local, remote)
    except BaseException:
        raw.close()
        raise


def _host_port(address: Any) -> tuple[str, int]:
    host, port = address[:2]
    return str(host), int(port)


class TunnelAgent:
    """Keeps one reverse tunnel to a proxy open (a thread; blocking paramiko client).

    ``tunnel_addr()`` finds where to dial (called before each attempt); ``tls_routing(addr)`` says
    whether that address is the proxy's web port (dialed in TLS with ALPN
    :data:`ALPN_REVERSE_TUNNEL`; the web certificate checked unless ``insecure``); ``login(identity)``
    is the SSH user the proxy expects; ``cluster`` and ``host_ca_keys()`` are what the proxy's host
    certificate must come from. ``peer`` names the proxy in the reason a refused connection gives
    (``connection refused at <addr>: is the <peer>'s tunnel port open?``), ``refused_hint`` what to
    check next when that was its tunnel port (not its web port)."""

    def __init__(self, *, tunnel_addr: Callable[[], NetAddr], cluster: str, login: Callable[[LocalIdentity], str],
                 identity: Callable[[], LocalIdentity], host_ca_keys: Callable[[], list[str]], serve: Serve,
                 log: Any, answer: Answer | None = None, name: str = "teleport-tunnel",
                 describe: str = "", tls_routing: Callable[[NetAddr], bool] | None = None,
                 insecure: bool = False, peer: str = "proxy", refused_hint: str = "") -> None:
        self.find_addr = tunnel_addr
        self.tls_routing = tls_routing or (lambda addr: False)
        self.insecure = insecure
        self.tls = False  # the current tunnel goes through the proxy's web port
        self.cluster = cluster
        self.login = login
        self.identity = identity
        self.host_ca_keys = host_ca_keys
        self.serve = serve
        self.answer = answer
        self.log = log
        self.name = name
        self.describe = describe  # the proxy, for log lines
        self.peer = peer
        self.refused_hint = refused_hint
        self.connected = threading.Event()
        self.tunnel_addr: NetAddr | None = None
        self.reconnects = 0
        self.last_error = ""  # why the tunnel is down ("" while it is up)
        self._reported: set[str] = set()  # the reasons logged as an ERROR since the tunnel was last up
        self._stopping = threading.Event()
        self._transport: paramiko.Transport | None = None
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 10.0) -> None:
        self._stopping.set()
        transport = self._transport
        if transport is not None:
            transport.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                reason = self._session()
            except (TeleportError, OSError, EOFError, paramiko.SSHException) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, paramiko.AuthenticationException):
                    reason = "the proxy refused this host's certificate"
            was_up = self.connected.is_set()
            self.connected.clear()
            self.last_error = reason
            if self._stopping.is_set():
                return
            if was_up and time.monotonic() - started >= STABLE:
                delay = FIRST_RETRY
            wait = delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
            self._report(reason, was_up, wait)
            self.reconnects += 1
            self._stopping.wait(wait)
            delay = min(MAX_RETRY, delay * 2)

    def _report(self, reason: str, was_up: bool, wait: float) -> None:
        """Log why the tunnel is down: a tunnel that was up, a warning; one that cannot be opened, an
        ERROR for a reason not logged since it was last up (the agent keeps retrying: the proxy may
        come up later), else DEBUG."""
        fields = {"proxy": self.describe, "reason": reason, "retry_in": f"{wait:.1f}s"}
        if was_up:
            self.log.warning("reverse tunnel down, will reconnect", **fields)
        elif reason not in self._reported:
            self.log.error("cannot open the reverse tunnel, will keep retrying", **fields)
            if len(self._reported) >= MAX_REPORTED:
                self._reported.clear()
            self._reported.add(reason)
        else:
            self.log.debug("cannot open the reverse tunnel, will retry", **fields)

    def _dial(self, addr: NetAddr, tls: bool) -> Dialed:
        """:func:`dial`, its connection errors naming the address (and, refused, what to check)."""
        try:
            return dial(addr, tls=tls, insecure=self.insecure, name=self.name)
        except ConnectionRefusedError:
            if tls:
                raise TeleportError(f"connection refused at {addr}: is the {self.peer}'s web port open?") from None
            hint = f" {self.refused_hint}" if self.refused_hint else ""
            raise TeleportError(f"connection refused at {addr}: is the {self.peer}'s tunnel port open?{hint}") \
                from None
        except TimeoutError:
            raise TeleportError(f"cannot connect to {addr}: timed out") from None
        except ssl.SSLError as exc:
            raise TeleportError(f"TLS with {addr} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise TeleportError(f"cannot connect to {addr}: {exc.strerror or exc}") from None

    def _session(self) -> str:
        """One tunnel connection, from dialing to its end; returns why it ended."""
        addr = self.find_addr()
        self.tunnel_addr = addr
        self.tls = tls = self.tls_routing(addr)
        identity = self.identity()
        sock = self._dial(addr, tls).sock
        transport = paramiko.Transport(sock)
        self._transport = transport
        try:
            if self._stopping.is_set():
                return "stopping"
            sshalgos.configure(transport, key_types=HOST_CERT_TYPES)  # only certificates from the host CA
            transport.start_client(timeout=CONNECT_TIMEOUT)
            blob = transport.get_remote_server_key().public_blob
            if blob is None:
                raise AccessDenied("the tunnel server presented a plain host key, not a proxy certificate")
            verify_proxy_cert(blob.key_type, blob.key_blob, self.host_ca_keys(), addr.host, self.cluster)
            transport.auth_publickey(self.login(identity), client_key(identity))
            channel = transport.open_channel(CONTROL_CHANNEL, timeout=CONNECT_TIMEOUT)
            self.connected.set()
            self.last_error = ""
            self._reported.clear()
            self.log.info("reverse tunnel connected", proxy=self.describe, tunnel_addr=str(addr),
                          **({"alpn": ALPN_REVERSE_TUNNEL} if tls else {}))
            return self._control(channel, addr, tls)
        finally:
            self._transport = None
            transport.close()

    def _send(self, channel: paramiko.Channel, message: dict[str, Any]) -> None:
        with self._send_lock:
            channel.sendall(json.dumps(message).encode() + b"\n")

    def _control(self, channel: paramiko.Channel, addr: NetAddr, tls: bool) -> str:
        last_pong = next_ping = time.monotonic()
        buffer = b""
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_pong > PONG_LIMIT:
                return f"no answer from the proxy for {PONG_LIMIT:.0f}s"
            if now >= next_ping:
                self._send(channel, {"type": "ping"})
                next_ping = now + PING_INTERVAL
            channel.settimeout(max(0.05, next_ping - time.monotonic()))
            try:
                data = channel.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return "the proxy closed the tunnel"
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                last_pong = time.monotonic()  # any message shows the proxy is alive
                self._handle(channel, addr, tls, message)
            if len(buffer) > MAX_LINE:
                return "the proxy sent an oversized message"
        return "the agent is stopping"

    def _handle(self, channel: paramiko.Channel, addr: NetAddr, tls: bool, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "dial":
            try:
                token = bytes.fromhex(str(message.get("token", "")))
            except ValueError:
                return
            threading.Thread(target=self._dial_back, args=(addr, tls, token, message), name=f"{self.name}-dial",
                             daemon=True).start()
        elif kind == "request" and self.answer is not None:
            threading.Thread(target=self._reply, args=(channel, message), name=f"{self.name}-request",
                             daemon=True).start()

    def _reply(self, channel: paramiko.Channel, message: dict[str, Any]) -> None:
        assert self.answer is not None
        try:
            reply = self.answer(message)
        except TeleportError as exc:
            reply = {"error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # a request must get an answer, not hang the proxy
            self.log.warning("reverse tunnel: a request failed", error=repr(exc))
            reply = {"error": "internal error", "kind": "TeleportError"}
        reply.update({"type": "reply", "id": message.get("id")})
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self._send(channel, reply)

    def _dial_back(self, addr: NetAddr, tls: bool, token: bytes, message: dict[str, Any]) -> None:
        """A session for the proxy: a new connection to the tunnel server (the tunnel port, or the
        web port in TLS as the control connection), handed to ``serve``."""
        if len(token) != TOKEN_BYTES:
            return
        try:
            conn = dial(addr, tls=tls, insecure=self.insecure, name=f"{self.name}-session")
        except (OSError, TeleportError) as exc:
            self.log.warning("reverse tunnel: cannot connect back to the proxy for a session",
                             tunnel_addr=str(addr), error=str(exc))
            return
        try:
            conn.sock.sendall(DATA_MAGIC + token)
            conn.sock.settimeout(None)
        except OSError as exc:
            self.log.warning("reverse tunnel: cannot connect back to the proxy for a session",
                             tunnel_addr=str(addr), error=str(exc))
            with contextlib.suppress(OSError):
                conn.sock.close()
            return
        self.serve(conn, message)
