"""SSH through the proxy with paramiko: the inner connection to the node, end to end (the
proxy only forwards its bytes), carried one of two ways:

- TLS routing (when the proxy's ping says ``tls_routing_enabled``, remembered in the profile):
  one TLS connection to the proxy's web port with ALPN ``teleport-proxy-ssh``, presenting the
  user's TLS certificate and checking the proxy's against the cluster's host CA (and its name),
  then the line ``host:port@cluster``; the proxy answers ``OK`` and the rest is the SSH stream;
- otherwise the outer SSH connection to the proxy's SSH port and its
  ``proxy:host:port@cluster`` subsystem.

Every SSH hop checks the host certificate against the cluster's host CA and logs in with the
profile's user certificate. The proxy must present a certificate for system role ``Proxy`` (its
X.509 certificate on TLS routing, its SSH host certificate on the SSH port). The node's host
certificate must name the node tsh asked for by its host UUID (a principal only auth assigns;
an IP address or ``localhost`` names many hosts and never suffices): on TLS routing the proxy
resolves the target and answers ``OK <uuid>`` over the connection tsh has just checked; on the
SSH port tsh resolves it against the node list the proxy shows this user, with the proxy's
lookup rules (:func:`target_node`), and dials that UUID. Label selectors run one
``tsh ssh login@<uuid>`` per matching node."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import select
import socket
import ssl
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.net import sshalgos
from teleport_core.net.pipes import grow_pipe
from teleport_core.pki import keys
from teleport_core.pki.serverrole import PROXY, ServerRoleError, require_server_role
from teleport_core.tsh.hostcert import (
    OLD_CA,
    UnknownHostCA,
    cluster_host_ca_keys,
    from_rotated_tls_ca,
    signer_cluster,
    verify_host_cert,
)
from teleport_core.tsh.profile import Profile, refused_login

if TYPE_CHECKING:
    import paramiko

WINDOW = 16 * 1024 * 1024
MAX_PACKET = 256 * 1024
CERT_TYPES = ("ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
              "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com")
TIMEOUT = 30.0
ALPN_SSH = "teleport-proxy-ssh"
MAX_REPLY = 4096
CHUNK = 256 * 1024


class SSHFailure(TeleportError):
    """The SSH handshake failed (not an access decision)."""


def quiet_paramiko() -> None:
    """paramiko logs transport errors that tsh reports itself: keep them off the terminal."""
    import logging

    log = logging.getLogger("paramiko")
    log.addHandler(logging.NullHandler())
    log.propagate = False


def user_key(profile: Profile) -> paramiko.PKey:
    """The profile's key with its SSH certificate attached."""
    import paramiko

    key = keys.load_private_key(profile.identity.key_pem)
    text = keys.private_key_openssh(key).decode()
    kinds: dict[keys.KeyAlgorithm, Any] = {
        keys.KeyAlgorithm.ED25519: paramiko.Ed25519Key, keys.KeyAlgorithm.ECDSA_P256: paramiko.ECDSAKey,
        keys.KeyAlgorithm.RSA2048: paramiko.RSAKey}
    pkey: paramiko.PKey = kinds[keys.key_algorithm(key)].from_private_key(io.StringIO(text))
    pkey.load_certificate(profile.identity.ssh_cert)
    return pkey


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def handshake(sock: Any, profile: Profile, login: str, principal: str | None, *,
              role: str | None = None, about: str = "", cluster: str = "") -> paramiko.Transport:
    """An authenticated SSH transport over ``sock`` (a socket or a channel) to a server whose
    host certificate names ``principal`` (and carries system ``role``) when given, signed by the
    host CA of ``cluster`` (default: the cluster the profile routes to, a leaf's with
    ``--cluster``); ``about`` names the server in a refusal."""
    import paramiko

    cluster = cluster or profile.cluster

    quiet_paramiko()
    transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
    # only certificates from the cluster's host CA are accepted
    sshalgos.configure(transport, key_types=CERT_TYPES)
    try:
        transport.start_client(timeout=TIMEOUT)
        remote = transport.get_remote_server_key()
        blob = remote.public_blob
        if blob is None:
            raise AccessDenied("the server presented a plain host key, not a certificate from the cluster's host CA")
        known = profile.identity.known_hosts
        trusted = cluster_host_ca_keys(known, cluster)  # this cluster's host CA only, never another's
        try:
            if not trusted:
                raise AccessDenied(f"your profile has no host CA of cluster {cluster} (run tsh login again: "
                                   "a leaf that joined after your login is not in your profile)")
            verify_host_cert(blob.key_type, blob.key_blob, trusted, principal, role=role)
        except UnknownHostCA as exc:
            other = signer_cluster(known, exc.signer)
            if other and other != cluster:  # a host CA tsh knows, of another cluster: never good here
                raise AccessDenied(f"refusing {about or 'the server'}: its host certificate is signed by the host "
                                   f"CA of cluster {other}, not of {cluster}, the cluster it was reached in") from None
            if exc.authority and exc.authority == cluster:  # the cluster's host CA rotated
                raise AccessDenied(f"{OLD_CA} ({about or 'the server'} presents a host certificate of "
                                   f"{cluster} from a host CA your profile does not know)") from None
            raise AccessDenied(f"refusing {about or 'the server'}: its host certificate is not signed by the host "
                               f"CA of cluster {cluster}") from None
        except AccessDenied as exc:
            if not about:
                raise
            raise AccessDenied(f"refusing {about}: {exc}") from None
        transport.auth_publickey(login, user_key(profile))
    except paramiko.AuthenticationException:
        transport.close()
        raise AccessDenied(refused_login(profile, login, role)) from None
    except (paramiko.SSHException, EOFError) as exc:
        transport.close()
        raise SSHFailure(f"ssh: {exc or type(exc).__name__}") from None
    except BaseException:
        transport.close()
        raise
    return transport


def connect_proxy(profile: Profile) -> paramiko.Transport:
    host, _, port = profile.ssh_addr.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    except OSError as exc:
        raise TeleportError(f"cannot reach the proxy at {profile.ssh_addr}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return handshake(sock, profile, profile.user, None if _is_address(host) else host, role=PROXY,
                     about=f"the proxy at {profile.ssh_addr}", cluster=profile.proxy_cluster)


def open_subsystem(proxy: paramiko.Transport, profile: Profile, host: str, port: int) -> paramiko.Channel:
    """A channel carrying the raw stream to ``host`` (resolved by the proxy)."""
    import paramiko

    channel = proxy.open_session(timeout=TIMEOUT)
    try:
        channel.invoke_subsystem(f"proxy:{host}:{port}@{profile.cluster}")
    except (paramiko.SSHException, EOFError):  # the proxy refused: its reason is on stderr
        message = _subsystem_error(channel)
        lost = not proxy.is_active()
        proxy.close()
        if lost and not message:
            raise TeleportError(f"lost the connection to the proxy at {profile.ssh_addr}") from None
        raise TeleportError(message or f"the proxy refused the connection to {host}") from None
    return channel


def _subsystem_error(channel: paramiko.Channel) -> str:
    """What the proxy wrote to stderr before closing (a lookup error), if anything."""
    chunks = []
    with contextlib.suppress(OSError, EOFError):
        channel.settimeout(2.0)
        while True:
            data = channel.recv_stderr(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


class TLSStream:
    """A TLS connection that paramiko may read in one thread and write in others: OpenSSL
    allows one call at a time on a connection, so each call holds a lock, the socket is
    non-blocking and the waiting for readiness happens outside the lock."""

    def __init__(self, tls: ssl.SSLSocket, node_uuid: str = "") -> None:
        tls.setblocking(False)
        self.tls = tls
        self.node_uuid = node_uuid  # the node the proxy routed to (its "OK <uuid>" reply)
        self._lock = threading.Lock()
        self._timeout: float | None = None

    @property
    def _closed(self) -> bool:  # paramiko's Transport.stop_thread looks at it
        return bool(getattr(self.tls, "_closed", False))

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self.tls.fileno()

    def getpeername(self) -> Any:
        return self.tls.getpeername()

    def _wait(self, readable: bool, deadline: float | None) -> None:
        poller = select.poll()
        poller.register(self.tls.fileno(), select.POLLIN if readable else select.POLLOUT)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError("timed out")
        if not poller.poll(None if remaining is None else remaining * 1000):
            raise TimeoutError("timed out")

    def _call(self, op: Any, *args: Any) -> Any:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    return op(*args)
                except ssl.SSLWantReadError:
                    readable = True
                except ssl.SSLWantWriteError:
                    readable = False
            self._wait(readable, deadline)

    def recv(self, size: int) -> bytes:
        try:
            data: bytes = self._call(self.tls.recv, size)
        except ssl.SSLZeroReturnError:
            return b""
        return data

    def send(self, data: bytes | memoryview) -> int:
        sent: int = self._call(self.tls.send, data)
        return sent

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view):]

    def shutdown_write(self) -> None:
        """Nothing to do: the SSH session inside ends the connection (TLS has no half-close)."""

    def close(self) -> None:
        with self._lock:
            self.tls.close()


def dial_tls(profile: Profile, host: str, port: int) -> TLSStream:
    """The raw stream to ``host`` (resolved by the proxy) over TLS routing on the web port; its
    ``node_uuid`` is the host UUID of the node the proxy routed to (``OK <uuid>``)."""
    web_host, _, web_port = profile.web_addr.rpartition(":")
    web_host = web_host.strip("[]")
    try:
        raw = socket.create_connection((web_host, int(web_port)), timeout=TIMEOUT)
    except OSError as exc:
        raise TeleportError(f"cannot reach the proxy at {profile.web_addr}: {exc.strerror or exc}") from None
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # the proxy's host certificate, checked against the cluster's host CA, the proxy's name and
    # its system role (Proxy), before the dial line is sent
    context = require_server_role(profile.identity.client_context(), PROXY)
    context.set_alpn_protocols([ALPN_SSH])
    try:
        tls = context.wrap_socket(raw, server_hostname=web_host)
    except ServerRoleError as exc:
        raw.close()
        raise AccessDenied(f"{exc.at(profile.web_addr)}; nothing was sent") from None
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        if exc.verify_code == UNKNOWN_ISSUER and _rotated(profile, web_host, int(web_port)):
            raise AccessDenied(f"{OLD_CA} (the proxy at {profile.web_addr} presents a certificate from a host CA "
                               f"of {profile.proxy_cluster} your profile does not know)") from None
        raise AccessDenied(f"the proxy at {profile.web_addr} is not a proxy of this cluster "
                           f"({exc.verify_message})") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise TeleportError(f"cannot reach the proxy at {profile.web_addr}: {exc}") from None
    if tls.selected_alpn_protocol() != ALPN_SSH:
        tls.close()
        raise TeleportError(f"the proxy at {profile.web_addr} does not route SSH on its web port")
    try:
        tls.sendall(f"{host}:{port}@{profile.cluster}\n".encode())
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < MAX_REPLY:
            byte = tls.recv(1)  # byte by byte: the node's SSH banner may follow at once
            if not byte:
                break
            reply += byte
    except ssl.SSLError as exc:  # a refused certificate shows up here with TLS 1.3
        tls.close()
        raise AccessDenied(f"the proxy refused the certificate ({exc.reason or exc})") from None
    except OSError as exc:
        tls.close()
        raise TeleportError(f"lost the connection to the proxy at {profile.web_addr}: {exc}") from None
    text = reply.decode(errors="replace").strip()
    word, _, routed = text.partition(" ")
    if word != "OK" or not routed or " " in routed:
        tls.close()
        if text.startswith("ERR "):
            raise TeleportError(text[4:])
        if word == "OK":
            raise AccessDenied(f"the proxy at {profile.web_addr} did not say which node it reached for {host}")
        raise TeleportError(f"lost the connection to the proxy at {profile.web_addr}")
    tls.settimeout(None)
    return TLSStream(tls, routed)


UNKNOWN_ISSUER = 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: signed by a CA we lack (not self-signed)


def _rotated(profile: Profile, host: str, port: int) -> bool:
    """(after a failed verification) Whether the proxy's TLS certificate, fetched again without
    verification, names the profile's host CA as issuer but is not signed by it (a rotated CA).
    It only picks the error message: the connection was refused either way."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN_SSH])  # the certificate the proxy shows for SSH, not its web one
    try:
        with socket.create_connection((host, port), timeout=5.0) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return False
    return bool(der) and from_rotated_tls_ca(der or b"", profile.identity.tls_ca_pems)


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def target_node(profile: Profile, host: str, port: int = 0) -> str:
    """(SSH port) The host UUID of the node ``host`` names, by the proxy's lookup rules (REFERENCE: a UUID
    matches UUIDs only; nodename or registered address strong; DNS weak; ``port`` breaks a tie
    between nodes sharing an address) among the nodes the proxy lists for this user.

    A canonical UUID is returned as is (auth assigns UUIDs; no lookup needed). DNS names are
    resolved here, on the client: a name only the proxy's resolver knows must be given as the
    nodename or UUID. Raises ``NodeNotFound`` / ``AmbiguousHost`` with the proxy's messages."""
    if _is_uuid(host):
        return host
    from teleport_core.state.lookup_plugin import teleport_node_candidates
    from teleport_core.state.nodes import AmbiguousHost, NodeInfo, resolve_nodes
    from teleport_core.tsh.web import call

    listed = call(profile.web_addr, "GET", f"/v1/webapi/sites/{profile.cluster}/nodes", insecure=profile.insecure,
                  profile=profile)
    nodes = [NodeInfo(str(n["uuid"]), str(n["nodename"]), str(n.get("addr") or ""), n.get("labels") or {},
                      bool(n.get("tunnel"))) for n in listed]
    target = host
    suffix = "." + profile.cluster
    if target.endswith(suffix) and not any(n.nodename == target for n in nodes):
        target = target[: -len(suffix)]  # node.cluster names the node, as at the proxy
    try:
        found = resolve_nodes(target, [teleport_node_candidates(target=target, nodes=nodes)])
    except AmbiguousHost:
        if not port:
            raise
        same_port = [n for n in nodes if n.addr.rpartition(":")[2] == str(port)]
        found = resolve_nodes(target, [teleport_node_candidates(target=target, nodes=same_port)])
    if len(found) != 1:
        raise AmbiguousHost("ambiguous host could match multiple nodes")
    return found[0].uuid


def _ask_proxy_anyway(profile: Profile, host: str, port: int, problem: TeleportError) -> NoReturn:
    """(SSH port) ``host`` names no single node tsh may see: send it to the proxy all the same,
    so the proxy refuses with its own message and audits the attempt (T3007W), as for any
    client. Should the proxy route it nonetheless (a lookup plugin, its own DNS), tsh cannot tell
    which node answers and refuses with ``problem``. Always raises."""
    proxy = connect_proxy(profile)
    try:
        channel = open_subsystem(proxy, profile, host, port)
        message = _subsystem_error(channel)
    finally:
        proxy.close()
    raise TeleportError(message) if message else problem


def connect_node(profile: Profile, login: str, host: str, port: int = 0) -> tuple[Any, Any]:
    """(the connection to the proxy, the authenticated node transport) for ``login@host``;
    both have ``close()``. The node's host certificate must carry, as a principal, the host UUID
    of the node ``host`` resolves to: on TLS routing the UUID the proxy says it routed to; on the
    SSH port the one :func:`target_node` finds, which is then dialed."""
    if profile.tls_routing:
        stream = dial_tls(profile, host, port)  # the proxy resolves (and audits a refusal)
        uuid = stream.node_uuid
        try:
            if _is_uuid(host) and uuid != host.lower():
                raise AccessDenied(f"the proxy routed {host} to host {uuid}")
            return stream, handshake(stream, profile, login, uuid, about=_about(host, uuid))
        except SSHFailure:
            stream.close()
            raise TeleportError(f"cannot connect to {host} through the proxy") from None
        except BaseException:
            stream.close()
            raise
    from teleport_core.state.nodes import AmbiguousHost, NodeNotFound

    try:
        uuid = target_node(profile, host, port)
    except (NodeNotFound, AmbiguousHost) as exc:
        _ask_proxy_anyway(profile, host, port, exc)
    proxy = connect_proxy(profile)
    channel = open_subsystem(proxy, profile, uuid, port)
    try:
        node = handshake(channel, profile, login, uuid, about=_about(host, uuid))
    except AccessDenied:
        proxy.close()
        raise
    except SSHFailure:
        message = _subsystem_error(channel)
        proxy.close()
        if message:
            raise TeleportError(message) from None
        raise TeleportError(f"cannot connect to {host} through the proxy") from None
    return proxy, node


def _about(host: str, uuid: str) -> str:
    return f"the server reached for {host}" + (f" (host {uuid})" if uuid != host else "")


def run(profile: Profile, login: str, host: str, port: int, command: str, tty: bool, prepare: Any = None) -> int:
    """Run ``command`` (a shell when empty) on the node; returns its exit status. ``prepare(node
    transport, session channel)`` runs before the session starts (forwarding: tsh/forward.py)."""
    proxy, node = connect_node(profile, login, host, port)
    try:
        channel = node.open_session(timeout=TIMEOUT)
        if prepare is not None:
            prepare(node, channel)
        if tty:
            import shutil

            size = shutil.get_terminal_size()
            channel.get_pty(os.environ.get("TERM", "xterm"), size.columns, size.lines)
        if command:
            channel.exec_command(command)
        else:
            channel.invoke_shell()
        if tty and sys.stdin.isatty():
            return _interactive(channel)
        return _pump(channel)
    finally:
        node.close()
        proxy.close()


def _feed(channel: paramiko.Channel | TLSStream, fd: int) -> None:
    """Start a thread copying ``fd`` to ``channel`` until end of input, then half-close it."""
    grow_pipe(fd)  # reads of up to CHUNK, not 64 KiB: fewer, larger SSH packets

    def feed() -> None:
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                channel.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError, EOFError):
            channel.shutdown_write()

    threading.Thread(target=feed, daemon=True).start()


def _pump(channel: paramiko.Channel) -> int:
    """Copy stdin to the channel and its stdout/stderr to ours; the exit status."""
    _feed(channel, sys.stdin.fileno())

    def drain_stderr() -> None:
        while True:
            data = channel.recv_stderr(65536)
            if not data:
                return
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()

    errors = threading.Thread(target=drain_stderr, daemon=True)
    errors.start()
    out = sys.stdout.buffer
    with contextlib.suppress(OSError, ValueError):  # a captured stdout has no descriptor
        grow_pipe(out.fileno())
    while True:
        data = channel.recv(CHUNK)
        if not data:
            break
        out.write(data)
        out.flush()
    status = int(channel.recv_exit_status())
    errors.join(5)
    return status


def _interactive(channel: paramiko.Channel) -> int:
    import select
    import shutil
    import signal
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def resized(*_: Any) -> None:
        size = shutil.get_terminal_size()
        with contextlib.suppress(OSError, EOFError):
            channel.resize_pty(size.columns, size.lines)

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        tty.setraw(fd)
        while True:
            ready, _, _ = select.select([channel, fd], [], [])
            if channel in ready:
                if channel.recv_stderr_ready():
                    os.write(sys.stderr.fileno(), channel.recv_stderr(65536))
                data = channel.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in ready:
                data = os.read(fd, 4096)
                if not data:
                    channel.shutdown_write()
                    continue
                channel.sendall(data)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
    return int(channel.recv_exit_status())


def bridge(profile: Profile, host: str, port: int) -> int:
    """``tsh proxy ssh``: connect stdin/stdout to ``host:port`` through the proxy (for
    OpenSSH's ProxyCommand: the bytes are OpenSSH's own end-to-end session)."""
    proxy: Any
    channel: Any
    if profile.tls_routing:
        proxy = channel = dial_tls(profile, host, port)
    else:
        proxy = connect_proxy(profile)
        channel = open_subsystem(proxy, profile, host, port)
    _feed(channel, 0)
    grow_pipe(1)
    got_any = False
    while True:
        data = channel.recv(CHUNK)
        if not data:
            break
        got_any = True
        os.write(1, data)
    if not got_any:
        message = "" if profile.tls_routing else _subsystem_error(channel)  # TLS routing refuses in dial_tls
        proxy.close()
        if message:
            raise TeleportError(message)
        return 1
    proxy.close()
    return 0

