"""The node's side of a reverse tunnel: a node with ``teleport.proxy_server`` set opens no
listening port; it dials the proxy's tunnel port (3024) and the proxy reaches it through that.

The agent finds the tunnel address with the proxy's ``/webapi/find`` (``ssh_tunnel_public_addr``;
``TELEPORT_TUNNEL_PUBLIC_ADDR`` overrides it, as in Teleport), logs in over SSH with the node's
host certificate (user = host UUID), after checking the proxy's own host certificate against
the cluster's host CA (role ``Proxy``), and opens the control channel. It pings every
:data:`PING_INTERVAL` and reconnects, with exponential backoff and jitter, when the
connection ends or the proxy stops answering. For each session the proxy sends ``dial`` with
a one-time token: the node opens a new TCP connection to the tunnel port, sends the token and
serves SSH on it exactly as on a connection to its listener (the user's certificate and the
node's roles are checked there, end to end; the proxy only relays the encrypted stream).
See ``teleport_proxy.tunnel`` for the proxy's side.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paramiko
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.config.values import NetAddr, parse_addr
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.net import sshalgos
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.tsh.hostcert import verify_host_cert

CONTROL_CHANNEL = "teleport-tunnel@teleport-py"
DATA_MAGIC = b"TPY-TUNNEL-DATA\n"
TOKEN_BYTES = 32
ADDR_ENV = "TELEPORT_TUNNEL_PUBLIC_ADDR"
CONNECT_TIMEOUT = 10.0
PING_INTERVAL = 10.0
PONG_LIMIT = 30.0  # no answer from the proxy for this long: reconnect
FIRST_RETRY, MAX_RETRY = 1.0, 30.0
STABLE = 60.0  # a tunnel up this long resets the backoff
HOST_CERT_TYPES = ("ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                   "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com")


def client_key(identity: LocalIdentity) -> paramiko.PKey:
    """The node's private key with its SSH host certificate attached (paramiko)."""
    key = keys.load_private_key(identity.key_pem)
    text = keys.private_key_openssh(key).decode()
    kinds: dict[keys.KeyAlgorithm, type[paramiko.PKey]] = {
        keys.KeyAlgorithm.ED25519: paramiko.Ed25519Key, keys.KeyAlgorithm.ECDSA_P256: paramiko.ECDSAKey,
        keys.KeyAlgorithm.RSA2048: paramiko.RSAKey}
    pkey = kinds[keys.key_algorithm(key)].from_private_key(io.StringIO(text))
    pkey.load_certificate(identity.ssh_cert)
    return pkey


def verify_proxy_cert(key_type: str, blob: bytes, trusted: list[str], host: str, cluster: str) -> None:
    """Raise :class:`AccessDenied` unless the proxy's host key is a certificate of this cluster's
    host CA for role ``Proxy`` (naming ``host`` unless it is an IP address)."""
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


def find_tunnel_addr(proxy_server: NetAddr, insecure: bool) -> NetAddr:
    """The proxy's tunnel address: ``$TELEPORT_TUNNEL_PUBLIC_ADDR``, else what ``/webapi/find``
    says, with an unspecified host (``0.0.0.0``) replaced by the proxy's."""
    explicit = os.environ.get(ADDR_ENV, "").strip()
    if explicit:
        try:
            return parse_addr(explicit, 3024)
        except ValueError as exc:
            raise TeleportError(f"{ADDR_ENV}: expected host:port, got {explicit!r} ({exc})") from None
    from teleport_core.tsh.web import call

    found = call(str(proxy_server), "GET", "/webapi/find", insecure=insecure, timeout=CONNECT_TIMEOUT)
    ssh_settings = (found.get("proxy") or {}).get("ssh") or {} if isinstance(found, dict) else {}
    text = ssh_settings.get("ssh_tunnel_public_addr") or ssh_settings.get("tunnel_listen_addr") or ""
    if not text:
        raise TeleportError(f"the proxy at {proxy_server} reports no reverse tunnel address")
    try:
        addr = parse_addr(str(text), 3024)
    except ValueError as exc:
        raise TeleportError(f"the proxy at {proxy_server} reports a bad tunnel address {text!r}: {exc}") from None
    if addr.host in ("", "0.0.0.0", "::"):  # noqa: S104
        addr = NetAddr(proxy_server.host, addr.port)
    return addr


class TunnelAgent:
    """Keeps one reverse tunnel to the proxy open (a thread; blocking paramiko client)."""

    def __init__(self, *, proxy_server: NetAddr, insecure: bool, cluster: str,
                 identity: Callable[[], LocalIdentity], host_ca_keys: Callable[[], list[str]],
                 serve: Callable[[socket.socket, tuple[str, int]], None], log: Any) -> None:
        self.proxy_server = proxy_server
        self.insecure = insecure
        self.cluster = cluster
        self.identity = identity
        self.host_ca_keys = host_ca_keys
        self.serve = serve
        self.log = log
        self.connected = threading.Event()
        self.tunnel_addr: NetAddr | None = None
        self.reconnects = 0
        self._stopping = threading.Event()
        self._transport: paramiko.Transport | None = None
        self._thread = threading.Thread(target=self._run, name="teleport-node-tunnel", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        transport = self._transport
        if transport is not None:
            transport.close()
        self._thread.join(10)

    def _run(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                reason = self._session()
            except (TeleportError, OSError, EOFError, paramiko.SSHException) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, paramiko.AuthenticationException):
                    reason = "the proxy refused this node's host certificate"
            was_up = self.connected.is_set()
            self.connected.clear()
            if self._stopping.is_set():
                return
            if was_up and time.monotonic() - started >= STABLE:
                delay = FIRST_RETRY
            wait = delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
            self.log.warning("reverse tunnel down, will reconnect" if was_up else
                             "cannot open the reverse tunnel, will retry", proxy=str(self.proxy_server),
                             reason=reason, retry_in=f"{wait:.1f}s")
            self.reconnects += 1
            self._stopping.wait(wait)
            delay = min(MAX_RETRY, delay * 2)

    def _session(self) -> str:
        """One tunnel connection, from dialing to its end; returns why it ended."""
        addr = find_tunnel_addr(self.proxy_server, self.insecure)
        self.tunnel_addr = addr
        identity = self.identity()
        sock = socket.create_connection((addr.connect_host, addr.port), timeout=CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        transport = paramiko.Transport(sock)
        self._transport = transport
        try:
            sshalgos.configure(transport, key_types=HOST_CERT_TYPES)  # only certificates from the cluster's host CA
            transport.start_client(timeout=CONNECT_TIMEOUT)
            blob = transport.get_remote_server_key().public_blob
            if blob is None:
                raise AccessDenied("the tunnel server presented a plain host key, not a proxy certificate")
            verify_proxy_cert(blob.key_type, blob.key_blob, self.host_ca_keys(), addr.host, self.cluster)
            transport.auth_publickey(identity.host_uuid, client_key(identity))
            channel = transport.open_channel(CONTROL_CHANNEL, timeout=CONNECT_TIMEOUT)
            self.connected.set()
            self.log.info("reverse tunnel connected", proxy=str(self.proxy_server), tunnel_addr=str(addr))
            return self._control(channel, addr)
        finally:
            self._transport = None
            transport.close()

    def _control(self, channel: paramiko.Channel, addr: NetAddr) -> str:
        last_pong = next_ping = time.monotonic()
        buffer = b""
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_pong > PONG_LIMIT:
                return f"no answer from the proxy for {PONG_LIMIT:.0f}s"
            if now >= next_ping:
                channel.sendall(b'{"type": "ping"}\n')
                next_ping = now + PING_INTERVAL
            channel.settimeout(max(0.05, next_ping - time.monotonic()))
            try:
                data = channel.recv(4096)
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
                if message.get("type") == "dial":
                    token = bytes.fromhex(str(message.get("token", "")))
                    threading.Thread(target=self._dial_back, args=(addr, token), name="teleport-node-tunnel-dial",
                                     daemon=True).start()
        return "the node is stopping"

    def _dial_back(self, addr: NetAddr, token: bytes) -> None:
        """A session for the proxy: a new connection to the tunnel port, served as SSH."""
        if len(token) != TOKEN_BYTES:
            return
        try:
            sock = socket.create_connection((addr.connect_host, addr.port), timeout=CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(DATA_MAGIC + token)
            sock.settimeout(None)
        except OSError as exc:
            self.log.warning("reverse tunnel: cannot connect back to the proxy for a session",
                             tunnel_addr=str(addr), error=str(exc))
            return
        try:
            host, port = sock.getpeername()[:2]
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
            return
        self.serve(sock, (str(host), int(port)))
