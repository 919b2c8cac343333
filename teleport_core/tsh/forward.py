"""``tsh ssh -L`` (local port forwarding) and ``tsh ssh -A`` (agent forwarding), with paramiko.

``-L [bind_address:]port:host:hostport`` listens on ``bind_address:port`` (``127.0.0.1`` by
default; ``*`` or an empty address: every interface) and carries each accepted connection to
``host:hostport`` *as seen from the node* over a ``direct-tcpip`` channel of the node session.
The node allows it when the user's roles enable ``port_forwarding``; it refuses (and audits) a
channel otherwise, and tsh reports the refusal on stderr for that connection.

``-A`` forwards the local ssh-agent (``$SSH_AUTH_SOCK``): the node creates an
``SSH_AUTH_SOCK`` for the session when the user's roles enable ``forward_agent``. tsh asks
with ``want_reply`` so a refusal is an error, not a silently missing agent.

Both are refused up front when the certificate itself lacks ``permit-port-forwarding`` /
``permit-agent-forwarding`` (what the roles allowed at ``tsh login``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core.errors import AccessDenied, TeleportError

if TYPE_CHECKING:
    import paramiko

    from teleport_core.tsh.profile import Profile

OPEN_TIMEOUT = 30.0
CHUNK = 65536
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - only when the user asks for it (-L *:port:... or :port:...)
OPEN_FAILURES = {1: "administratively prohibited (port forwarding is not allowed)", 2: "connect failed",
                 3: "unknown channel type", 4: "resource shortage"}


class BadForwardSpec(TeleportError):
    """A ``-L``/``-R`` argument that is not ``[bind_address:]port:host:hostport`` (``-D``: ``[bind_address:]port``)."""


@attrs.frozen
class LocalForward:
    bind_host: str
    bind_port: int
    host: str
    port: int

    def __str__(self) -> str:
        def show(host: str) -> str:
            return f"[{host}]" if ":" in host else host

        return f"{show(self.bind_host)}:{self.bind_port}:{show(self.host)}:{self.port}"


def _fields(spec: str, flag: str = "-L") -> list[str]:
    """Split on ``:`` outside ``[...]`` (IPv6 addresses are written in brackets)."""
    out: list[str] = []
    current = ""
    depth = 0
    for char in spec:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise BadForwardSpec(f"invalid {flag} spec {spec!r}: unbalanced ']'")
        if char == ":" and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise BadForwardSpec(f"invalid {flag} spec {spec!r}: unbalanced '['")
    out.append(current)
    return out


def _port(text: str, spec: str, flag: str = "-L", lowest: int = 1) -> int:
    if not (text.isascii() and text.isdigit()) or not lowest <= int(text) <= 65535:
        raise BadForwardSpec(f"invalid {flag} spec {spec!r}: port {text!r} is not a number from {lowest} to 65535")
    return int(text)


def parse_local_forward(spec: str) -> LocalForward:
    """``[bind_address:]port:host:hostport`` -> :class:`LocalForward`."""
    usage = f"invalid -L spec {spec!r}: expected [bind_address:]port:host:hostport"
    fields = _fields(spec.strip())
    if len(fields) == 3:
        bind = LOOPBACK
        port, host, hostport = fields
    elif len(fields) == 4:
        bind, port, host, hostport = fields
        bind = bind.strip("[]")
        bind = {"": ALL_INTERFACES, "*": ALL_INTERFACES, "localhost": LOOPBACK}.get(bind, bind)
    else:
        raise BadForwardSpec(usage)
    host = host.strip("[]")
    if not host:
        raise BadForwardSpec(f"{usage} (the host is empty)")
    return LocalForward(bind, _port(port, spec), host, _port(hostport, spec))


@attrs.frozen
class RemoteForward:
    """``-R``: the node listens on ``bind_host:bind_port`` (``bind_port`` 0: a port it picks) and
    each connection comes back to tsh, which connects it to ``host:port`` on this side."""

    bind_host: str  # as sent in tcpip-forward: "localhost" when the spec names none, as OpenSSH sends
    bind_port: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.bind_host}:{self.bind_port}:{self.host}:{self.port}"


def parse_remote_forward(spec: str) -> RemoteForward:
    """``[bind_address:]port:host:hostport`` -> :class:`RemoteForward` (port 0: the node picks one)."""
    usage = f"invalid -R spec {spec!r}: expected [bind_address:]port:host:hostport"
    fields = _fields(spec.strip(), "-R")
    if len(fields) == 3:
        bind = "localhost"
        port, host, hostport = fields
    elif len(fields) == 4:
        bind, port, host, hostport = fields
        bind = bind.strip("[]")
        bind = "" if bind == "*" else bind
    else:
        raise BadForwardSpec(usage)
    host = host.strip("[]")
    if not host:
        raise BadForwardSpec(f"{usage} (the host is empty)")
    return RemoteForward(bind, _port(port, spec, "-R", lowest=0), host, _port(hostport, spec, "-R"))


@attrs.frozen
class DynamicForward:
    """``-D``: a local SOCKS server on ``bind_host:bind_port``."""

    bind_host: str
    bind_port: int

    def __str__(self) -> str:
        return f"{self.bind_host}:{self.bind_port}"


def parse_dynamic_forward(spec: str) -> DynamicForward:
    """``[bind_address:]port`` -> :class:`DynamicForward` (127.0.0.1 by default; ``*``: every interface)."""
    fields = _fields(spec.strip(), "-D")
    if len(fields) == 1:
        return DynamicForward(LOOPBACK, _port(fields[0], spec, "-D"))
    if len(fields) == 2:
        bind = fields[0].strip("[]")
        bind = {"": ALL_INTERFACES, "*": ALL_INTERFACES, "localhost": LOOPBACK}.get(bind, bind)
        return DynamicForward(bind, _port(fields[1], spec, "-D"))
    raise BadForwardSpec(f"invalid -D spec {spec!r}: expected [bind_address:]port")


def cert_permits(profile: Profile, extension: str) -> bool:
    """Whether the profile's SSH certificate carries ``extension`` (e.g. permit-port-forwarding)."""
    from cryptography.hazmat.primitives.serialization import ssh

    cert = ssh.load_ssh_public_identity(profile.identity.ssh_cert.encode())
    return isinstance(cert, ssh.SSHCertificate) and extension.encode() in cert.extensions


def check_allowed(profile: Profile, forwards: Sequence[LocalForward], agent: bool, *,
                  remote: Sequence[RemoteForward] = (), dynamic: Sequence[DynamicForward] = ()) -> None:
    flags = "/".join(flag for flag, given in (("-L", forwards), ("-R", remote), ("-D", dynamic)) if given)
    if flags and not cert_permits(profile, "permit-port-forwarding"):
        raise AccessDenied(f"port forwarding ({flags}) is not allowed: none of your roles enables the port_forwarding "
                           "option (your certificate lacks permit-port-forwarding)")
    if agent and not cert_permits(profile, "permit-agent-forwarding"):
        raise AccessDenied("agent forwarding (-A) is not allowed: none of your roles enables the forward_agent "
                           "option (your certificate lacks permit-agent-forwarding)")
    if agent and not os.environ.get("SSH_AUTH_SOCK"):
        raise TeleportError("agent forwarding (-A) needs a running ssh-agent: SSH_AUTH_SOCK is not set")


# -- splicing ------------------------------------------------------------------------------------------


def splice(channel: Any, sock: socket.socket) -> None:
    """Copy both ways between a channel and a socket until both directions ended (threads)."""
    done = threading.Semaphore(0)

    def to_channel() -> None:
        try:
            while data := sock.recv(CHUNK):
                channel.sendall(data)
        except (OSError, EOFError):
            pass
        with contextlib.suppress(OSError, EOFError):
            channel.shutdown_write()
        done.release()

    def to_socket() -> None:
        try:
            while data := channel.recv(CHUNK):
                sock.sendall(data)
        except (OSError, EOFError):
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        done.release()

    def closer() -> None:
        done.acquire()
        done.acquire()
        with contextlib.suppress(OSError, EOFError):
            channel.close()
        with contextlib.suppress(OSError):
            sock.close()

    for target in (to_channel, to_socket, closer):
        threading.Thread(target=target, daemon=True, name="tsh-forward").start()


# -- -L ----------------------------------------------------------------------------------------------------


class LocalForwarder:
    """Listening sockets for ``-L`` specs; :meth:`start` serves them over a node transport."""

    def __init__(self, forwards: Sequence[LocalForward]) -> None:
        self.forwards = tuple(forwards)
        self.listeners: list[tuple[LocalForward, socket.socket]] = []
        self._closed = False
        try:
            for forward in self.forwards:
                self.listeners.append((forward, self._listen(forward)))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _listen(forward: LocalForward | DynamicForward, flag: str = "-L") -> socket.socket:
        family = socket.AF_INET6 if ":" in forward.bind_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((forward.bind_host, forward.bind_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise TeleportError(f"{flag} {forward}: cannot listen on {forward.bind_host}:{forward.bind_port}: "
                                f"{exc.strerror or exc}") from None
        return sock

    def start(self, transport: paramiko.Transport) -> None:
        for forward, listener in self.listeners:
            threading.Thread(target=self._accept, args=(transport, forward, listener), daemon=True,
                             name=f"tsh-forward-{forward.bind_port}").start()

    def _accept(self, transport: paramiko.Transport, forward: LocalForward, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, origin = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(transport, forward, client, origin), daemon=True).start()

    @staticmethod
    def _open(transport: paramiko.Transport, forward: LocalForward, client: socket.socket,
              origin: tuple[Any, ...]) -> None:
        channel, _ = _open_direct(transport, f"-L {forward}", forward.host, forward.port, origin)
        if channel is None:
            client.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        splice(channel, client)

    def close(self) -> None:
        self._closed = True
        for _forward, listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.close()


def _open_direct(transport: paramiko.Transport, what: str, host: str, port: int,
                 origin: tuple[Any, ...]) -> tuple[paramiko.Channel | None, int]:
    """Open a ``direct-tcpip`` channel to ``host:port`` for a local connection from ``origin`` (-L, -D):
    the channel and SOCKS ``SUCCEEDED``, or None and the SOCKS reply code that fits the failure,
    which is warned about on stderr (``what`` names the forward)."""
    import paramiko

    from teleport_core.tsh import socks

    try:
        channel = transport.open_channel("direct-tcpip", (host, port), (origin[0], origin[1]), timeout=OPEN_TIMEOUT)
    except paramiko.ChannelException as exc:
        reason = OPEN_FAILURES.get(exc.code, exc.text or f"code {exc.code}")
        _warn(f"{what}: the node refused to connect to {host}:{port}: {reason}")
        return None, socks.NOT_ALLOWED if exc.code == 1 else socks.HOST_UNREACHABLE
    except (paramiko.SSHException, EOFError, OSError) as exc:
        _warn(f"{what}: cannot open a channel to {host}:{port}: {exc or type(exc).__name__}")
        return None, socks.GENERAL_FAILURE
    return channel, socks.SUCCEEDED


def _warn(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"tsh: {message}\n")
        sys.stderr.flush()


# -- -R ----------------------------------------------------------------------------------------------------


class RemoteForwarder:
    """``-R``: asks the node to listen (``tcpip-forward``) and connects each ``forwarded-tcpip``
    channel it opens back to the spec's ``host:port`` on this side. The node refuses unless the
    roles allow port forwarding; tsh then fails (as ``ssh -o ExitOnForwardFailure=yes``)."""

    def __init__(self, forwards: Sequence[RemoteForward]) -> None:
        self.forwards = tuple(forwards)
        self.listening: dict[tuple[str, int], RemoteForward] = {}  # (address asked, port the node listens on)
        self._transport: paramiko.Transport | None = None

    def start(self, transport: paramiko.Transport) -> None:
        import paramiko

        self._transport = transport
        for forward in self.forwards:
            try:
                port = transport.request_port_forward(forward.bind_host, forward.bind_port, handler=self._channel)
            except paramiko.SSHException:
                raise AccessDenied(f"-R {forward}: the node refused remote port forwarding (your roles may not allow "
                                   "port_forwarding, or the port is privileged or in use on the node)") from None
            self.listening[(forward.bind_host, int(port))] = forward
            if forward.bind_port == 0:
                _warn(f"Allocated port {port} for remote forward to {forward.host}:{forward.port}")

    def _channel(self, channel: Any, origin: tuple[str, int], listened: tuple[str, int]) -> None:
        """The node opened a ``forwarded-tcpip`` channel (transport thread: connect elsewhere)."""
        forward = self.listening.get((listened[0], int(listened[1])))
        if forward is None:  # not a port we asked for
            with contextlib.suppress(OSError, EOFError):
                channel.close()
            return
        threading.Thread(target=self._connect, args=(channel, forward), daemon=True, name="tsh-remote-forward").start()

    @staticmethod
    def _connect(channel: Any, forward: RemoteForward) -> None:
        try:
            sock = socket.create_connection((forward.host, forward.port), timeout=OPEN_TIMEOUT)
        except OSError as exc:
            _warn(f"-R {forward}: cannot connect to {forward.host}:{forward.port}: {exc.strerror or exc}")
            with contextlib.suppress(OSError, EOFError):
                channel.close()
            return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        splice(channel, sock)

    def close(self) -> None:
        """Cancel the forwards (``cancel-tcpip-forward``) while the connection is up; the node
        also closes them when the connection ends."""
        transport, self._transport = self._transport, None
        if transport is None or not transport.is_active():
            return
        for address, port in list(self.listening):
            with contextlib.suppress(Exception):
                transport.global_request("cancel-tcpip-forward", (address, port), wait=False)
        self.listening.clear()


# -- -D ----------------------------------------------------------------------------------------------------


class DynamicForwarder(LocalForwarder):
    """``-D``: local SOCKS listeners (teleport_core/tsh/socks.py); each CONNECT becomes a
    ``direct-tcpip`` channel through the node, allowed and audited as ``-L`` is."""

    def __init__(self, forwards: Sequence[DynamicForward]) -> None:
        self.dynamic = tuple(forwards)
        self.forwards = ()
        self.listeners = []
        self._closed = False
        try:
            for forward in self.dynamic:
                self.listeners.append((forward, self._listen(forward, "-D")))  # type: ignore[arg-type]
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(transport: paramiko.Transport, forward: Any, client: socket.socket, origin: tuple[Any, ...]) -> None:
        from teleport_core.tsh import socks

        try:
            request = socks.handshake(client)
        except socks.SocksError:
            client.close()  # garbage or a stalled client: closed, nothing opened
            return
        channel, code = _open_direct(transport, f"-D {forward}", request.host, request.port, origin)
        if channel is None:
            with contextlib.suppress(OSError):
                socks.reply(client, request.version, code)
            client.close()
            return
        try:
            socks.reply(client, request.version, socks.SUCCEEDED)
        except OSError:
            client.close()
            channel.close()
            return
        client.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        splice(channel, client)


# -- ServerAliveInterval -------------------------------------------------------------------------------------


class Keepalive:
    """``-o ServerAliveInterval=N`` (and ``ServerAliveCountMax``, 3 by default): every ``interval``
    seconds of the connection, a ``keepalive@openssh.com`` request the node must answer (any answer
    will do); after ``count_max`` unanswered ones tsh gives up on the connection, as ssh does."""

    def __init__(self, interval: int, count_max: int = 3) -> None:
        self.interval = interval
        self.count_max = count_max
        self.timed_out = False
        self._stop = threading.Event()

    def start(self, transport: paramiko.Transport, host: str) -> None:
        if self.interval > 0:
            threading.Thread(target=self._run, args=(transport, host), daemon=True, name="tsh-keepalive").start()

    def _run(self, transport: paramiko.Transport, host: str) -> None:
        answered = threading.Event()
        answered.set()
        missed = 0
        while not self._stop.wait(self.interval) and transport.is_active():
            if not answered.is_set():
                missed += 1
                if missed >= self.count_max:
                    self.timed_out = True
                    _warn(f"Timeout, server {host} not responding.")
                    transport.close()
                    return
                continue
            missed = 0
            answered.clear()

            def ask(done: threading.Event = answered) -> None:
                with contextlib.suppress(Exception):
                    transport.global_request("keepalive@openssh.com", wait=True)
                done.set()

            threading.Thread(target=ask, daemon=True, name="tsh-keepalive-ask").start()

    def stop(self) -> None:
        self._stop.set()


# -- -A ----------------------------------------------------------------------------------------------------


def _agent_channel(channel: Any) -> None:
    """The node opened an ``auth-agent@openssh.com`` channel: connect it to the local agent."""
    path = os.environ.get("SSH_AUTH_SOCK", "")
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        agent.connect(path)
    except OSError as exc:
        agent.close()
        _warn(f"-A: cannot reach the local ssh-agent at {path}: {exc.strerror or exc}")
        with contextlib.suppress(OSError, EOFError):
            channel.close()
        return
    splice(channel, agent)


def request_agent(channel: paramiko.Channel) -> None:
    """Ask the node to forward the agent on this session channel, and wait for its answer."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_REQUEST

    transport = channel.get_transport()
    transport._set_forward_agent_handler(_agent_channel)  # paramiko has no public setter
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("auth-agent-req@openssh.com")
    message.add_boolean(True)  # want_reply: paramiko's request_forward_agent sends False and never learns
    channel._event_pending()  # the same wait exec_command uses
    transport._send_user_message(message)
    try:
        channel._wait_for_event()  # a refusal closes the channel
    except (paramiko.SSHException, EOFError):
        raise AccessDenied("the node refused agent forwarding (-A): none of your roles enables the forward_agent "
                           "option") from None


# -- tying it to a session -----------------------------------------------------------------------------------


@attrs.define
class Forwarding:
    """What ``tsh ssh`` sets up on the node connection before the session starts."""

    local: LocalForwarder | None = None
    agent: bool = False
    remote: RemoteForwarder | None = None
    dynamic: DynamicForwarder | None = None
    keepalive: Keepalive | None = None
    host: str = ""

    def prepare(self, transport: paramiko.Transport, channel: paramiko.Channel | None) -> None:
        if self.agent and channel is not None:
            request_agent(channel)
        if self.remote is not None:
            self.remote.start(transport)
        if self.local is not None:
            self.local.start(transport)
        if self.dynamic is not None:
            self.dynamic.start(transport)
        if self.keepalive is not None:
            self.keepalive.start(transport, self.host)

    def close(self) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        if self.remote is not None:
            self.remote.close()
        if self.local is not None:
            self.local.close()
        if self.dynamic is not None:
            self.dynamic.close()


def setup(profile: Profile, specs: Sequence[str], agent: bool, *, remote: Sequence[str] = (),
          dynamic: Sequence[str] = (), keepalive: Keepalive | None = None, host: str = "") -> Forwarding | None:
    """Parse and check ``-L``/``-R``/``-D`` specs and ``-A``, and start listening (None when
    nothing is asked)."""
    if not specs and not agent and not remote and not dynamic and keepalive is None:
        return None
    forwards = [parse_local_forward(spec) for spec in specs]
    remotes = [parse_remote_forward(spec) for spec in remote]
    socks_forwards = [parse_dynamic_forward(spec) for spec in dynamic]
    check_allowed(profile, forwards, agent, remote=remotes, dynamic=socks_forwards)
    local = LocalForwarder(forwards) if forwards else None
    try:
        socks_server = DynamicForwarder(socks_forwards) if socks_forwards else None
    except BaseException:
        if local is not None:
            local.close()
        raise
    return Forwarding(local, agent, RemoteForwarder(remotes) if remotes else None, socks_server, keepalive, host)


def hold(profile: Profile, login: str, host: str, port: int, forwarding: Forwarding) -> int:
    """``tsh ssh -N``: keep the node connection (and its forwards) open until interrupted; an
    error when the connection is lost."""
    from teleport_core.tsh import sshclient

    if forwarding.agent:
        raise TeleportError("-A forwards the agent to a command or shell: it cannot be used with -N")
    proxy, node = sshclient.connect_node(profile, login, host, port)
    try:
        forwarding.prepare(node, None)
        while node.is_active():
            node.join(1.0)  # the transport is a thread: wait until the connection ends
    finally:
        forwarding.close()
        node.close()
        proxy.close()
    raise TeleportError(f"lost the connection to {host}")
