"""The web terminal's SSH session: the proxy is the SSH client of a web user
(:meth:`teleport_core.webui.WebProxy.open_ssh_session`, implemented by
:class:`teleport_proxy.webui.ProxyWebUI`).

The way to the node is ``tsh ssh``'s: :meth:`ProxyState.route` (lookup among the nodes the user
may see, the login against the roles, locks, ``teleport_authorize`` hooks), then
:func:`~teleport_proxy.sshserver.dial_node` (direct, or the node's reverse tunnel), then tsh's
own handshake (:func:`teleport_core.tsh.sshclient.handshake`) with the user's key and SSH
certificate from the web session, checking the node's host certificate against the cluster's
host CA and the node's UUID. The node checks the user again, records the session and audits it,
as for any client; the proxy sends ``TELEPORT_WEB_CLIENT=1`` with the session so the node's
``session.start`` says ``client: web``.

The paramiko channel is blocking: a thread reads it into an :class:`asyncio.Queue`; writes and
window changes go through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import threading
from typing import TYPE_CHECKING, Any

from teleport_core.errors import TeleportError
from teleport_core.pki.identity import LocalIdentity
from teleport_core.state.nodes import NodeInfo
from teleport_core.tsh.join import JOIN_PRINCIPAL, MODE_ENV, SESSION_ENV
from teleport_core.tsh.join import MODES as JOIN_MODES
from teleport_core.tsh.profile import Profile
from teleport_core.tsh.sshclient import TIMEOUT, handshake
from teleport_core.webui import WebSession
from teleport_proxy.sshserver import dial_node

if TYPE_CHECKING:
    import paramiko

    from teleport_proxy.state import ProxyState

TERM = "xterm-256color"
CHUNK = 64 * 1024
WEB_CLIENT_ENV = "TELEPORT_WEB_CLIENT"  # the node stamps client: web on the session's events


def web_profile(proxy: ProxyState, session: WebSession) -> Profile:
    """The web session's certificates as a tsh profile (what :func:`handshake` reads)."""
    identity = LocalIdentity(key_pem=session.private_key.encode(), tls_cert_pem=session.tls_cert.encode(),
                             tls_ca_pems=(), ssh_cert=session.ssh_cert,
                             known_hosts=tuple(f"@cert-authority * {key}" for key in proxy.host_ca_keys))
    return Profile("web", proxy.public_web_addr(), "", session.user, proxy.cluster_name, session.roles,
                   session.logins, session.expires, False, identity)


class WebTerminal:
    """:class:`teleport_core.webui.TerminalChannel` over a paramiko session channel."""

    def __init__(self, node: NodeInfo, sock: socket.socket, transport: paramiko.Transport,
                 channel: paramiko.Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.user: Any = None  # the UserCert it runs for, and its login (locks are checked against them)
        self.login = ""
        self.remote = ""  # the browser's ip:port
        self.registry: WebTerminals | None = None
        self._sock = sock
        self._transport = transport
        self._channel = channel
        self._loop = loop
        self._output: asyncio.Queue[bytes] = asyncio.Queue()
        self._reason = ""
        self._closed = False
        self._closed_why = "closed by the proxy"
        threading.Thread(target=self._read, name="web-terminal-read", daemon=True).start()

    def _read(self) -> None:
        channel = self._channel
        try:
            while True:
                data = channel.recv(CHUNK)
                if not data:
                    break
                self._loop.call_soon_threadsafe(self._output.put_nowait, data)
        except (OSError, EOFError):
            pass
        reason = "the connection to the node was lost"
        if self._closed:
            reason = self._closed_why
        elif channel.exit_status_ready():
            status = channel.recv_exit_status()
            reason = f"exit status {status}" if status >= 0 else "the session was closed by the node"
        self._reason = reason
        self._loop.call_soon_threadsafe(self._output.put_nowait, b"")
        self._shut()

    async def recv(self) -> bytes:
        data = await self._output.get()
        if not data:
            self._output.put_nowait(b"")  # every later call sees the end too
        return data

    async def send(self, data: bytes) -> None:
        if data:
            await asyncio.to_thread(self._guarded, self._channel.sendall, data)

    async def resize(self, cols: int, rows: int) -> None:
        await asyncio.to_thread(self._guarded, self._channel.resize_pty, cols, rows)

    @staticmethod
    def _guarded(call: Any, *args: Any) -> None:
        import paramiko

        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):  # the session ended meanwhile
            call(*args)

    async def close(self) -> None:
        self._closed = True
        if self.registry is not None:
            self.registry.live.discard(self)
        await asyncio.to_thread(self._shut)

    def cut(self, reason: str) -> None:
        """(event loop) A lock now matches: show ``reason`` and end the session."""
        self._closed, self._closed_why = True, reason
        self._output.put_nowait(f"\r\n{reason}\r\n".encode())
        self._shut()

    def end_reason(self) -> str:
        return self._reason

    def _shut(self) -> None:
        with contextlib.suppress(Exception):  # closing anyway
            self._channel.close()
        with contextlib.suppress(Exception):
            self._transport.close()
        with contextlib.suppress(OSError):
            self._sock.close()


class WebTerminals:
    """The web terminals open on this proxy: cut when a lock matches their user (a node that does
    not know locks, OpenSSH's sshd, would leave them open), counted by a graceful reload's drain."""

    def __init__(self) -> None:
        self.live: set[WebTerminal] = set()

    def __len__(self) -> int:
        return len(self.live)

    def cut_locked(self, proxy: ProxyState) -> int:
        """(event loop) End the terminals of users a lock now matches, audited; how many."""
        cut = 0
        for terminal in list(self.live):
            reason = proxy.lock_reason(terminal.user, terminal.login, terminal.node.uuid)
            if reason:
                self.live.discard(terminal)
                terminal.cut(reason)
                proxy.spawn_audit(terminal.user.user, reason, terminal.remote, target=terminal.node.uuid,
                                  login=terminal.login, client="web")
                cut += 1
        return cut


def connect(proxy: ProxyState, session: WebSession, node: NodeInfo, login: str, cols: int, rows: int,
            loop: asyncio.AbstractEventLoop, join: dict[str, str] | None = None) -> WebTerminal:
    """(blocking) An interactive shell as ``login`` on ``node`` (already routed for the user);
    ``join``: the environment that asks the node to join a live session instead (tsh join's)."""
    import paramiko

    try:
        sock = dial_node(proxy, node)
    except OSError as exc:
        raise TeleportError(f"cannot reach {node.nodename}: {exc.strerror or exc}") from None
    try:
        sock.settimeout(TIMEOUT)
        transport = handshake(sock, web_profile(proxy, session), login, node.uuid,
                              about=f"the server reached for {node.nodename} (host {node.uuid})")
    except BaseException:
        sock.close()
        raise
    try:
        sock.settimeout(None)
        channel = transport.open_session(timeout=TIMEOUT)
        with contextlib.suppress(paramiko.SSHException):  # a node that does not know it refuses it
            channel.set_environment_variable(WEB_CLIENT_ENV, "1")
        for name, value in (join or {}).items():
            channel.set_environment_variable(name, value)
        channel.set_combine_stderr(True)  # the node's messages (a lock's) on stderr: one stream, as a PTY shows it
        channel.get_pty(TERM, cols, rows)
        channel.invoke_shell()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        said = b""
        with contextlib.suppress(Exception):
            while channel.recv_ready():  # stderr is combined: the node's reason for a refused join
                said += channel.recv(4096)
        transport.close()
        sock.close()
        reason = said.decode(errors="replace").strip().removeprefix("teleport: ")
        raise TeleportError(reason or f"{node.nodename} refused the session: {exc or type(exc).__name__}") from None
    return WebTerminal(node, sock, transport, channel, loop)


async def open_ssh_session(proxy: ProxyState, session: WebSession, user: Any, target: str, login: str,
                           cols: int, rows: int, remote: str) -> WebTerminal:
    """Route ``target`` for ``user`` (the session's :class:`~teleport_proxy.certs.UserCert`) and
    open the shell; refusals are audited (T3007W, ``client: web``) and raised."""
    try:
        if dt.datetime.now(dt.UTC) >= session.expires:
            raise TeleportError("your web session has expired: log in again")
        node = await proxy.route(user, login, target)
        terminal = await asyncio.to_thread(connect, proxy, session, node, login, cols, rows,
                                           asyncio.get_running_loop())
    except TeleportError as exc:
        await proxy.audit_denial(session.user, str(exc), remote, target=target, login=login, client="web",
                                 proto="ssh")
        raise
    return _opened(proxy, terminal, user, login, remote)


def _opened(proxy: ProxyState, terminal: WebTerminal, user: Any, login: str, remote: str) -> WebTerminal:
    """Register an open terminal (a lock then closes it: :meth:`WebTerminals.cut_locked`)."""
    terminal.user, terminal.login, terminal.remote = user, login, remote
    terminal.registry = proxy.web_terminals
    proxy.web_terminals.live.add(terminal)
    return terminal


async def join_ssh_session(proxy: ProxyState, session: WebSession, user: Any, auth: Any, sid: str, mode: str,
                           cols: int, rows: int, remote: str) -> WebTerminal:
    """Join the live session ``sid`` for ``user`` (``auth``: the auth client acting for the user):
    found among the trackers the user may see, its node routed as for ``tsh join``, then the
    join principal with ``TELEPORT_SESSION`` and ``TELEPORT_SSH_JOIN_MODE``; refusals audited."""
    try:
        if dt.datetime.now(dt.UTC) >= session.expires:
            raise TeleportError("your web session has expired: log in again")
        if mode not in JOIN_MODES:
            raise TeleportError(f"mode: expected observer, peer or moderator, got {mode[:20]!r}")
        trackers = await auth.list_session_trackers()
        spec = next((t.get("spec", {}) for t in trackers if t.get("spec", {}).get("session_id") == sid), None)
        if spec is None:
            raise TeleportError(f"session {sid} not found: it ended, or your roles do not let you join it")
        if not spec.get("interactive", True):
            raise TeleportError(f"session {sid} is not interactive: only interactive sessions can be joined")
        node = await proxy.route(user, "", str(spec.get("server_id", "")))
        env = {SESSION_ENV: sid, MODE_ENV: mode}
        terminal = await asyncio.to_thread(connect, proxy, session, node, JOIN_PRINCIPAL, cols, rows,
                                           asyncio.get_running_loop(), env)
    except TeleportError as exc:
        await proxy.audit_denial(session.user, str(exc), remote, sid=sid, participant_mode=mode, client="web",
                                 proto="ssh")
        raise
    return _opened(proxy, terminal, user, JOIN_PRINCIPAL, remote)
