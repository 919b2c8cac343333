"""The node's SSH server on paramiko: certificate login with RBAC, sessions, forwarding.

Threads: one accept thread, one paramiko transport thread per connection (paramiko's
design: key exchange, crypto and packet framing of that connection; connections are capped
by ``connection_limits``), and one :class:`~teleport_node.pump.Pump` thread moving every
session's bytes and watching every child. No thread per session or per stream.

Before a connection gets a transport thread, a :class:`~teleport_core.net.limits.ConnectionGate`
admits it (``connection_limits``): ``max_connections`` in all, unauthenticated ones capped
apart from sessions (``max_startups`` with early random drop, ``per_source_max_startups``)
and closed after ``login_grace_time``; ``max_users`` distinct users logged in. Refusals are
audited (T3007W) once per source a minute, so a flood cannot fill the audit log.

Everything the server needs from the cluster (user CA keys, roles, labels, recording mode)
comes from a :class:`NodeState` the async service keeps fresh; audit events and finished
recordings go back to it through thread-safe callbacks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import pty
import pwd
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_REQUEST, cMSG_CHANNEL_SUCCESS

from teleport_core.config.limits import ConnectionLimits
from teleport_core.metrics import Metrics, metrics_for
from teleport_core.net import sshalgos
from teleport_core.net.limits import AuditThrottle, ConnectionGate, Refused, Ticket, on_authenticated
from teleport_core.net.pipes import grow_pipe
from teleport_core.policy.access import (
    AGENT_FORWARD,
    PORT_FORWARD,
    REMOTE_PORT_FORWARD,
    SSH,
    AccessRequest,
    Decision,
    Identity,
    IdentityKind,
    check_access,
)
from teleport_core.policy.locks import Lock, cert_issued, lock_in_force, lock_message
from teleport_core.policy.roles import Role, RoleSet
from teleport_core.recording.events import emit_end, start_fields
from teleport_core.recording.spool import Recorder, finalize, write_sidecar
from teleport_core.recording.stream import StreamRecorder
from teleport_core.state.trackers import TrackedSession
from teleport_node import party, spawn, tracking
from teleport_node.certs import CertRefused, TrustedUserCA, UserCert, check_user_cert
from teleport_node.pump import ChannelToFd, FdToChannel, Pump
from teleport_node.streaming import close_stream, stream_recorder
from teleport_node.transport import NodeTransport

# 4 MiB, not more: an OpenSSH client buffers up to the window of input and then spends its CPU
# moving and zeroing that buffer (ssh -J to the node: 0.70 of sshd's speed at 16 MiB, 1.04 at 4)
WINDOW = 4 * 1024 * 1024
MAX_PACKET = 256 * 1024
# paramiko's transport thread wakes every 0.1 s by default only to see whether close() was called
# (close() itself does not wait for it): with 500 idle sessions that is 5,000 wake-ups a second,
# each taking the GIL. Once a second, as at the proxy.
IDLE_POLL = 1.0
# Only AES-GCM: OpenSSH clients list chacha20 and aes-ctr first, and the client's order wins;
# paramiko has no chacha20 and aes-gcm is about 30 % faster than aes-ctr + HMAC in paramiko.
# Every OpenSSH since 6.2 offers aes-gcm, and every hardening guide lists it.
CIPHERS = sshalgos.AEAD_CIPHERS
ENV_ALLOWED = ("LANG", "LANGUAGE", "TERM")
WEB_CLIENT_ENV = "TELEPORT_WEB_CLIENT"  # sent by the proxy's web terminal: events say client: web
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARD_CONNECT_TIMEOUT = 10.0
MAX_REMOTE_FORWARDS = 32  # tcpip-forward listeners one connection may hold (ssh -R)
PRIVILEGED_PORTS = 1024  # below: only a root login may listen (as sshd)
AUTH_OK: int = int(paramiko.AUTH_SUCCESSFUL)
AUTH_FAILED: int = int(paramiko.AUTH_FAILED)
OPEN_OK: int = int(paramiko.OPEN_SUCCEEDED)
OPEN_PROHIBITED: int = int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)
OPEN_CONNECT_FAILED: int = int(paramiko.OPEN_FAILED_CONNECT_FAILED)
# RFC 4254 6.9/6.10 signal names, the set OpenSSH's sshd delivers (``signal``) and reports
# (``exit-signal``; any other signal is reported as "SIG@openssh.com", as sshd does)
SIGNALS: dict[str, int] = {name: int(getattr(signal, "SIG" + name)) for name in (
    "ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2")}
ACCEPT_POLL = 0.5  # seconds the accept loop waits before looking at its stop flag again
STOP_GRACE = 2.0  # seconds a stopping node's sessions get after SIGHUP, before SIGKILL
STOP_KILL_WAIT = 1.5  # and after SIGKILL, to end through the normal path
STOP_FINALIZE_WAIT = 3.0  # and for their recordings to be finalized and handed over


@attrs.define
class NodeState:
    """What the SSH side reads (replaced wholesale by the service, so reads need no lock)."""

    cluster_name: str
    host_uuid: str
    nodename: str
    ca_keys: list[bytes]
    roles: dict[str, Role]
    labels: dict[str, str]
    recording: str  # "node", "node-sync" or "off"
    spool: Path
    emit: Callable[[str, str, dict[str, Any]], None]  # (event, outcome, fields): thread-safe
    # a session ended, its session.end emitted: (session id, its finished recording or None); thread-safe
    recorded: Callable[[str, Path | None], None]
    locks: tuple[Lock, ...] = ()  # the cluster's locks (teleport_core.policy.locks), followed from auth
    hook: Any = None  # plugins.hook: the teleport_authorize plugins installed where the node runs
    trackers: Any = None  # the TrackerKeeper of its live sessions' trackers in auth (tracking.py)
    streamer: Any = None  # node-sync: the service's Streamer of sessions' recordings to auth (streaming.py)
    # trusted clusters: the enabled root clusters' user CAs, whose users' roles are mapped (certs.py)
    trusted_cas: tuple[TrustedUserCA, ...] = ()


def sftp_server_path() -> str | None:
    return next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)


def _set_ctty() -> None:  # runs in the child between fork and exec: make the PTY its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _winsize(fd: int, width: int, height: int, px: int = 0, py: int = 0) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(height, 1), max(width, 1), px, py))


class SSHServer:
    """Listens and hands each connection to paramiko with the node's host certificate."""

    def __init__(self, state: Callable[[], NodeState], host_key: paramiko.PKey,
                 listen: tuple[str, int] | socket.socket | None, log: Any, limits: ConnectionLimits | None = None,
                 metrics: Metrics | None = None) -> None:
        self.state = state
        self.metrics = metrics or metrics_for(None)  # teleport_core.metrics: sessions by kind
        self.gate = ConnectionGate(limits or ConnectionLimits(), "ssh_service")
        self._refusals = AuditThrottle()
        self.host_key = host_key
        self.log = log
        self.pump = Pump()
        self.connections: set[Connection] = set()
        self._lock = threading.Lock()
        # no listener (``listen`` None) for a node reached only through a reverse tunnel, which
        # hands its connections to serve_connection
        # ``listen`` may be a socket (ctx.listen: inherited across a graceful reload): accepted with a
        # timeout, so the loop sees a stop, and another process taking a connection is just a retry
        if isinstance(listen, socket.socket):
            self.sock: socket.socket | None = listen
        else:
            self.sock = socket.create_server(listen, backlog=512, reuse_port=False) if listen else None
        if self.sock is not None:
            self.sock.settimeout(ACCEPT_POLL)
        host, port = self.sock.getsockname()[:2] if self.sock else ("", 0)
        self.addr: tuple[str, int] = (str(host), int(port))
        self._stopping = False
        self._accepting = True  # False: the accept loop ends (stop, graceful reload)
        self._thread = threading.Thread(target=self._accept_loop, name="teleport-node-accept", daemon=True)
        self.recorders: set[Recorder | StreamRecorder] = set()
        self._interrupted: set[Session] = set()  # sessions a stop is ending
        self._finalizing: set[concurrent.futures.Future[None]] = set()  # recordings being finalized

    def start(self) -> None:
        self.pump.start()
        self.pump.call(self._flush_recorders)
        self.gate.start()
        if self.sock is not None:
            self._thread.start()

    def end_sessions(self, grace: float = STOP_GRACE) -> int:
        """The node is stopping: end every live session through its normal path; how many.

        Each session's client is told on its channel (stderr, or the terminal of a PTY), its
        process group gets SIGHUP (SIGKILL after ``grace`` seconds), and it ends as any session
        does (``session.end`` with ``end_reason`` "interrupted", recording finalized and handed
        to the uploader). Bounded: what has not ended after a few seconds is left to the
        connection close, and its sidecar to the next start. New sessions are refused from now."""
        self._stopping = True
        told = threading.Event()

        def tell() -> None:
            try:
                with self._lock:
                    connections = list(self.connections)
                for conn in connections:
                    for session in list(conn.sessions.values()):
                        session.interrupt()
            finally:
                told.set()

        self.pump.call(tell)
        told.wait(5)
        if not self._wait_ended(grace):
            self.pump.call(self._kill_interrupted)
            self._wait_ended(STOP_KILL_WAIT)
        with self._lock:
            finalizing = list(self._finalizing)
            ended = len(self._interrupted)
        concurrent.futures.wait(finalizing, timeout=STOP_FINALIZE_WAIT)
        return ended

    def _kill_interrupted(self) -> None:
        for session in self._live_interrupted():
            session.kill()

    def _live_interrupted(self) -> list[Session]:
        with self._lock:
            return [s for s in self._interrupted if not s.finished]

    def _wait_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._live_interrupted():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def interrupting(self, session: Session) -> None:
        with self._lock:
            self._interrupted.add(session)

    def finalizing(self, future: concurrent.futures.Future[None]) -> None:
        """Track a recording's finalization (a stop waits for it)."""
        with self._lock:
            self._finalizing.add(future)

        def done(f: concurrent.futures.Future[None]) -> None:
            with self._lock:
                self._finalizing.discard(f)

        future.add_done_callback(done)

    def stop_accepting(self) -> None:
        """Stop the accept loop and close our listening descriptor (never ``shutdown()``: the new
        process of a graceful reload accepts on the same socket); sessions carry on."""
        self._accepting = False
        if self._thread.is_alive():
            self._thread.join(ACCEPT_POLL * 4 + 1)
        if self.sock is not None:
            self.sock.close()

    def stop(self) -> None:
        self.end_sessions()
        self.gate.stop()
        self.stop_accepting()
        with self._lock:
            connections = list(self.connections)
        for conn in connections:
            conn.close()
        done = threading.Event()

        def finish_recordings() -> None:
            for recorder in list(self.recorders):
                recorder.flush()
            done.set()

        self.pump.call(finish_recordings)
        done.wait(5)
        self.pump.stop()

    def _flush_recorders(self) -> None:
        for recorder in list(self.recorders):
            recorder.flush()
        self.pump.call_later(0.5, self._flush_recorders)

    def serve_connection(self, sock: socket.socket, remote: tuple[str, int],
                         local: tuple[str, int] | None = None) -> None:
        """Serve SSH on a connection that did not come through the listener (a reverse tunnel's;
        ``local``: its TCP address when ``sock`` is the end of a socketpair bridged to it)."""
        ticket = None if self._stopping else self._admit(sock, remote)
        if ticket is None:
            sock.close()
            return
        try:
            self._serve(sock, remote, ticket, local)
        except Exception as exc:  # as in the accept loop: one bad handshake, one closed socket
            self.log.warning("SSH connection failed", remote=f"{remote[0]}:{remote[1]}", error=str(exc))
            ticket.close()
            sock.close()

    def _admit(self, sock: socket.socket, remote: tuple[str, int]) -> Ticket | None:
        """The gate's ticket for a new connection, or None (refusal logged and audited, throttled)."""

        def expire() -> None:  # login grace time over: wake the transport thread, which then ends
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        try:
            return self.gate.admit(str(remote[0]), expire)
        except Refused as exc:
            self.refused(str(remote[0]), f"{remote[0]}:{remote[1]}", str(exc))
            return None

    def refused(self, source: str, remote: str, reason: str, user: str = "", login: str = "") -> None:
        """Audit (T3007W) and log a connection the limits refused, once per source a minute."""
        held = self._refusals.allow(source)
        if held is None:
            return
        state = self.state()
        if held:
            reason = f"{reason} ({held} more refused from {source} in the last minute)"
        state.emit("auth", "failure", {
            "user": user, "login": login, "error": reason, "success": False, "cluster_name": state.cluster_name,
            "server_id": state.host_uuid, "server_hostname": state.nodename, "addr.remote": remote,
            "addr.local": f"{self.addr[0]}:{self.addr[1]}", "proto": "ssh"})
        self.log.info("SSH connection refused", remote=remote, reason=reason)

    def _accept_loop(self) -> None:
        assert self.sock is not None
        while not self._stopping and self._accepting:
            try:
                sock, remote = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping or not self._accepting:
                    return
                time.sleep(0.05)  # EMFILE and the like: keep serving the connections there are
                continue
            sock.settimeout(None)
            ticket = self._admit(sock, remote)
            if ticket is None:
                sock.close()
                continue
            try:
                self._serve(sock, remote, ticket)
            except Exception as exc:  # a broken handshake must not stop the listener
                self.log.warning("SSH connection failed", remote=f"{remote[0]}:{remote[1]}", error=str(exc))
                ticket.close()
                sock.close()

    def _serve(self, sock: socket.socket, remote: tuple[str, int], ticket: Ticket,
               local: tuple[str, int] | None = None) -> None:
        # a reverse tunnel through the proxy's web port hands the end of a socketpair (its TLS is
        # bridged) with the TCP connection's addresses
        tcp = sock.family != socket.AF_UNIX
        if local is None:
            local = sock.getsockname()[:2] if tcp else ("", 0)
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = NodeTransport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
        transport._active_check_timeout = IDLE_POLL
        sock.settimeout(IDLE_POLL)  # (the Transport set paramiko's 0.1 s)
        sshalgos.configure(transport, ciphers=CIPHERS, key_types=[self.host_key.get_name()])
        transport.add_server_key(self.host_key)
        conn = Connection(self, transport, remote, local, ticket)
        with self._lock:
            self.connections.add(conn)
        transport.start_server(event=threading.Event(), server=conn)
        # watched once started: before, is_active() is False and the watch would close it at once
        self.pump.call(conn._watch_transport)

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self.connections.discard(conn)

    def elevation_lapsed(self) -> bool:
        """Whether a live connection's access-request elevation has ended (then :meth:`enforce_locks`)."""
        now = time.time()
        with self._lock:
            connections = list(self.connections)
        return any(conn.cert is not None and conn.cert.active_requests and now >= conn.cert.valid_before
                   and not conn.terminating for conn in connections)

    def enforce_locks(self) -> int:
        """End every connection a lock now matches (after the locks changed); how many.

        Each is ended on its own thread: a client that stopped reading cannot hold up the rest.
        """
        state = self.state()
        with self._lock:
            connections = list(self.connections)
        ended = 0
        for conn in connections:
            reason = conn.locked(state)
            if reason and not conn.terminating:
                conn.terminating = True
                ended += 1
                threading.Thread(target=conn.terminate, args=(reason,), name="teleport-node-lock",
                                 daemon=True).start()
        return ended


class Connection(paramiko.ServerInterface):  # type: ignore[misc]
    """One client connection: its authentication and its channels."""

    def __init__(self, server: SSHServer, transport: paramiko.Transport, remote: tuple[str, int],
                 local: tuple[str, int], ticket: Ticket) -> None:
        self.server = server
        self.transport = transport
        self.ticket = ticket
        on_authenticated(transport, self._logged_in)
        self.remote = f"{remote[0]}:{remote[1]}"
        self.client_ip = remote[0]
        self.local = f"{local[0]}:{local[1]}"
        self.cert: UserCert | None = None
        self.login = ""
        self.roleset: RoleSet | None = None
        self.sessions: dict[int, Session] = {}
        # ssh -R listeners by (the address the client asked for, the port listening)
        self.remote_forwards: dict[tuple[str, int], RemoteForward] = {}
        self._after_reply: list[Callable[[], None]] = []
        self._closed = False
        self.terminating = False  # a lock ends this connection
        self._send = transport._send_user_message
        transport._send_user_message = self._send_then_start
        # paramiko's ServerInterface has no hook for the "signal" channel request: route channel
        # requests of this transport through _channel_request, which handles "signal" and hands
        # every other request to paramiko unchanged
        transport._channel_handler_table = {**paramiko.Transport._channel_handler_table,
                                            MSG_CHANNEL_REQUEST: self._channel_request}

    # -- ordering: start a process only once the client has its request's reply -----------------

    def _send_then_start(self, message: Any) -> None:
        self._send(message)
        if self._after_reply and bytes(message.asbytes()[:1]) == cMSG_CHANNEL_SUCCESS:
            starts, self._after_reply = self._after_reply, []
            for start in starts:
                start()

    def after_reply(self, start: Callable[[], None]) -> None:
        """Run ``start`` once paramiko sent the success reply of the request being handled.

        OpenSSH expects a request's reply before the channel's exit status and close; paramiko
        sends the reply only after the ``check_channel_*`` handler returned. A request sent
        without ``want_reply`` has no reply: start at once.
        """
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "_handle_request":  # paramiko's Channel method
            frame = frame.f_back  # type: ignore[assignment]
        want_reply = frame.f_locals.get("want_reply", True) if frame is not None else True
        if want_reply:
            self._after_reply.append(start)
        else:
            start()

    def _channel_request(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        """A CHANNEL_REQUEST (transport thread): ``signal`` here, the rest to paramiko."""
        start = message.packet.tell()
        kind = message.get_text()
        if kind not in ("signal", party.FORCE_TERMINATE):
            message.packet.seek(start)
            channel._handle_request(message)
            return
        want_reply = message.get_boolean()
        name = message.get_text() if kind == "signal" else kind
        session = self.sessions.get(channel.get_id())
        if session is not None and kind == party.FORCE_TERMINATE:
            ok, why = party.force_terminate(session)
        elif session is None:
            ok, why = False, "no session on this channel"
        else:
            ok, why = session.deliver_signal(name)
        if not ok:
            self.server.log.info("signal request refused", signal=name, login=self.login, remote=self.remote,
                                 reason=why)
        if want_reply:
            reply = paramiko.Message()
            reply.add_byte(cMSG_CHANNEL_SUCCESS if ok else cMSG_CHANNEL_FAILURE)
            reply.add_int(channel.remote_chanid)
            self._send(reply)

    def _watch_transport(self) -> None:
        if self.transport.is_active():
            self.server.pump.call_later(0.5, self._watch_transport)
            return
        self.close()

    def _logged_in(self) -> None:
        """The client authenticated (transport thread): a session now, counted in max_users."""
        try:
            self.ticket.authenticated(self.cert.user if self.cert else None)
        except Refused as exc:  # another user took the last place since check_auth_publickey
            self.server.refused(self.client_ip, self.remote, str(exc), self.cert.user if self.cert else "",
                                self.login)
            self.cert = None
            self.transport.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ticket.close()
        for session in list(self.sessions.values()):
            self.server.pump.call(session.hangup)
        for forward in list(self.remote_forwards.values()):
            forward.close()
        self.remote_forwards.clear()
        with contextlib.suppress(Exception):
            self.transport.close()
        self.server.forget(self)
        if self.cert is not None:
            self.emit("client.disconnect", "ok", reason="client disconnected")

    def locked(self, state: NodeState) -> str:
        """The message of the lock in force for this connection's user, login and node, or ""."""
        cert = self.cert
        if cert is None:
            return ""
        return _lock_reason(state, cert, self.login)

    def terminate(self, reason: str) -> None:
        """A lock now matches: write ``reason`` to every session's stderr, end them, close (audited).

        The message goes out on the pump thread, which owns the sessions' channels: a channel
        closed from another thread closes paramiko's event pipe under the pump's feet, and a new
        session reusing that descriptor number would lose its end. Closing the connection hangs
        the sessions up (SIGHUP), and each then finishes on the pump as any session does."""
        self.emit("auth", "failure", error=reason, success=False)
        self.server.log.info("ending a locked connection", user=self.cert.user if self.cert else "",
                             login=self.login, remote=self.remote, reason=reason)
        told = threading.Event()

        def tell() -> None:
            try:
                for session in list(self.sessions.values()):
                    with contextlib.suppress(Exception):  # non-blocking channel: a full window drops it
                        session.channel.send_stderr(f"\r\n{reason}\r\n".encode())
            finally:
                told.set()

        self.server.pump.call(tell)
        told.wait(5)
        self.close()

    def emit(self, event: str, outcome: str = "ok", **fields: Any) -> None:
        state = self.server.state()
        base = self.base_fields(state)
        base.update(fields)
        state.emit(event, outcome, base)

    def base_fields(self, state: NodeState) -> dict[str, Any]:
        """The fields every event of this connection carries (server, addresses, user, login)."""
        return {"cluster_name": state.cluster_name, "server_id": state.host_uuid,
                "server_hostname": state.nodename, "server_labels": dict(state.labels),
                "addr.remote": self.remote, "addr.local": self.local,
                "user": self.cert.user if self.cert else "", "login": self.login,
                **({"access_requests": list(self.cert.active_requests)}
                   if self.cert and self.cert.active_requests else {}),
                **({"user_cluster": self.cert.cluster, "user_roles": list(self.cert.roles),
                    "remote_roles": list(self.cert.remote_roles)} if self.cert and self.cert.cluster else {})}

    # -- authentication -----------------------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        state = self.server.state()
        blob = getattr(key, "public_blob", None)
        user = user_cluster = ""
        try:
            if blob is None:
                raise CertRefused("a plain public key was offered, only certificates from the user CA are accepted")
            joining = username == party.JOIN_PRINCIPAL  # join-only: no login, checked per join (party.py)
            cert = check_user_cert(blob.key_blob, blob.key_type, state.ca_keys, login=None if joining else username,
                                   client_ip=self.client_ip, trusted=state.trusted_cas)
            user_cluster = cert.cluster
            user = cert.user
            route = cert.extensions.get("teleport-route-to-cluster", "")
            # a root cluster's user (trusted clusters) may carry the route its own cluster gave it
            if route and route != state.cluster_name and route != cert.cluster:
                raise CertRefused(f"certificate is for cluster {json.dumps(route)}, "
                                  f"this node is in cluster {json.dumps(state.cluster_name)}")
            roleset = self._roleset(cert, state.roles)
            locked = _lock_reason(state, cert, username)
            # roles, then a lock in force, then every teleport_authorize plugin: deny wins
            decision = check_access(state.hook, self._request(state, cert, SSH, username),
                                    Decision.allow() if joining else roleset.check_login(username, state.labels),
                                    Decision.deny(locked) if locked else None)
            if not decision.allowed:
                raise CertRefused(decision.reason)
            crowded = self.server.gate.user_may_connect(cert.user)
            if crowded:
                raise CertRefused(crowded)
            if not joining:
                self._check_os_user(username)
        except CertRefused as exc:
            user = user or exc.user
            user_cluster = user_cluster or exc.cluster
            fields = {"user": user, "login": username, "error": str(exc), "success": False,
                      "cluster_name": state.cluster_name, "server_id": state.host_uuid,
                      "server_hostname": state.nodename, "addr.remote": self.remote, "addr.local": self.local,
                      "proto": "ssh", **({"user_cluster": user_cluster} if user_cluster else {})}
            state.emit("auth", "failure", fields)
            self.server.log.info("SSH login refused", user=user, login=username, remote=self.remote,
                                 reason=str(exc))
            return AUTH_FAILED
        self.cert, self.login, self.roleset = cert, username, roleset
        return AUTH_OK

    @staticmethod
    def _request(state: NodeState, cert: UserCert, verb: str, login: str, name: str = "") -> AccessRequest:
        """What :func:`~teleport_core.policy.access.check_access` decides at this node: ``verb`` on ``node``."""
        identity = Identity(cert.user, IdentityKind.USER, roles=cert.roles, traits=cert.traits,
                            cluster=state.cluster_name)
        return AccessRequest(identity, verb, "node", name or state.host_uuid, state.labels, login)

    def _forwarding(self, verb: str, option: str, extension: str, what: str, name: str = "") -> Decision:
        """Port or agent forwarding: the roles' ``option``, the certificate's ``extension`` and the plugins."""
        if self.cert is None:
            return Decision.deny("no authenticated user")
        state = self.server.state()
        by_cert = party.refuse_join_only(self, what) or (
            None if self.cert.permits(extension) else Decision.deny(f"the certificate does not permit {what}"))
        permitted = self.roleset is not None and bool(getattr(self.roleset, option))
        by_roles = Decision.allow() if permitted else Decision.deny(f"{option} is not allowed by the roles")
        return check_access(state.hook, self._request(state, self.cert, verb, self.login, name), by_cert, by_roles)

    @staticmethod
    def _roleset(cert: UserCert, roles: Mapping[str, Role]) -> RoleSet:
        missing = [name for name in cert.roles if name not in roles]
        if missing:
            raise CertRefused(f"role {missing[0]!r} of the certificate does not exist")
        if not cert.roles:
            raise CertRefused("the certificate names no roles")
        return RoleSet([roles[name] for name in cert.roles], cert.traits)

    @staticmethod
    def _check_os_user(login: str) -> None:
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            raise CertRefused(f"no OS user {login!r} on this node") from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise CertRefused(f"this node runs as {pwd.getpwuid(os.geteuid()).pw_name!r} (not root) "
                              f"and can only serve that login")

    # -- channels --------------------------------------------------------------------------------------

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session" and self.cert is not None:
            return OPEN_OK
        return OPEN_PROHIBITED

    def _session(self, channel: paramiko.Channel) -> Session:
        session = self.sessions.get(channel.get_id())
        if session is None:
            session = Session(self, channel)
            self.sessions[channel.get_id()] = session
        return session

    def check_channel_pty_request(self, channel: paramiko.Channel, term: bytes | str, width: int, height: int,
                                  pixelwidth: int, pixelheight: int, modes: bytes) -> bool:
        session = self._session(channel)
        if session.started or self.cert is None or not self.cert.permits("permit-pty"):
            return False
        session.term = term.decode(errors="replace") if isinstance(term, bytes) else term
        session.size = (width, height, pixelwidth, pixelheight)
        session.pty = True
        return True

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes | str, value: bytes | str) -> bool:
        key = name.decode(errors="replace") if isinstance(name, bytes) else name
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key in ENV_ALLOWED or key.startswith("LC_"):
            self._session(channel).env[key] = text
            return True
        if key in party.JOIN_ENV:  # tsh join: the session and the mode (never passed to a process)
            self._session(channel).join_env[key] = text
            return True
        if key == WEB_CLIENT_ENV and text == "1":  # the proxy's web terminal (a claim, shown, never trusted)
            self._session(channel).client = "web"
            return True
        return False

    def check_channel_window_change_request(self, channel: paramiko.Channel, width: int, height: int,
                                            pixelwidth: int, pixelheight: int) -> bool:
        session = self._session(channel)
        session.size = (width, height, pixelwidth, pixelheight)
        session.resize()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._session(channel).request(None, None)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._session(channel).request(command.decode(errors="replace"), None)

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or sftp_server_path() is None:
            return False
        return self._session(channel).request(None, "sftp")

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        decision = self._forwarding(AGENT_FORWARD, "forward_agent", "permit-agent-forwarding", "agent forwarding")
        if decision.allowed:
            self._session(channel).agent = True
        else:  # a denial like any other: audited (T3007W), as the proxy audits refused routes
            self.emit("auth", "failure", error=f"agent forwarding refused: {decision.reason}")
        return decision.allowed

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        """``tcpip-forward`` (``ssh -R``, transport thread): listen on the node's loopback and
        send each connection back as a ``forwarded-tcpip`` channel; the bound port, or False.

        Loopback only, whatever address the client names (as sshd with ``GatewayPorts no``):
        ``::1`` for an IPv6 loopback request, ``127.0.0.1`` otherwise. Allowed as ``-L`` is (the
        certificate, the roles' ``port_forwarding`` and the plugins, verb ``remote_port_forward``);
        a port below 1024 only for a root login. Audited as ``port`` (``forward: remote``)."""
        bind = "::1" if address == "::1" else "127.0.0.1"
        where = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
        decision = self._forwarding(REMOTE_PORT_FORWARD, "port_forwarding", "permit-port-forwarding",
                                    "port forwarding", where)
        refusal = "" if decision.allowed else f"port forwarding is not allowed: {decision.reason}"
        if not refusal and len(self.remote_forwards) >= MAX_REMOTE_FORWARDS:
            refusal = f"at most {MAX_REMOTE_FORWARDS} remote forwards per connection"
        if not refusal and not 0 <= port <= 65535:
            refusal = f"invalid port {port}"
        if not refusal and 0 < port < PRIVILEGED_PORTS and _login_uid(self.login) != 0:
            refusal = f"port {port} is privileged: only a root login may listen on it"
        if refusal:
            self.emit("port", "failure", **{"addr.local": where, "forward": "remote", "error": refusal})
            self.server.log.info("remote forward refused", login=self.login, remote=self.remote, addr=where,
                                 reason=refusal)
            return False
        try:
            forward = RemoteForward(self, address, bind, port)
        except OSError as exc:
            self.emit("port", "failure", **{"addr.local": where, "forward": "remote",
                                            "error": f"cannot listen: {exc.strerror or exc}"})
            return False
        self.remote_forwards[(address, forward.port)] = forward
        self.emit("port", "ok", **{"addr.local": forward.where, "forward": "remote"})
        return forward.port

    def cancel_port_forward_request(self, address: str, port: int) -> None:
        """``cancel-tcpip-forward``: stop listening (transport thread); unknown ones are ignored."""
        forward = self.remote_forwards.pop((address, port), None)
        if forward is not None:
            forward.close()

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        dest = f"{destination[0]}:{destination[1]}"
        decision = self._forwarding(PORT_FORWARD, "port_forwarding", "permit-port-forwarding", "port forwarding", dest)
        if not decision.allowed:
            self.emit("port", "failure", **{"addr.local": dest,
                                            "error": f"port forwarding is not allowed: {decision.reason}"})
            return OPEN_PROHIBITED
        try:
            sock = socket.create_connection((destination[0], destination[1]), timeout=FORWARD_CONNECT_TIMEOUT)
        except OSError as exc:
            self.emit("port", "failure", **{"addr.local": dest, "error": f"cannot connect: {exc.strerror or exc}"})
            return OPEN_CONNECT_FAILED
        self.emit("port", "ok", **{"addr.local": dest})
        Forward(self, chanid, sock).wait_for_channel()
        return OPEN_OK


def _login_uid(login: str) -> int | None:
    try:
        return pwd.getpwnam(login).pw_uid
    except KeyError:
        return None


def open_to_client(conn: Connection, client: socket.socket, open_channel: Callable[[], paramiko.Channel]) -> None:
    """Open a channel to the SSH client (``open_channel``, blocking: call it off the pump) for a
    local connection ``client`` and splice the two on the pump; if the client refuses, close ``client``."""
    try:
        channel = open_channel()
    except Exception:  # the client refused or went away
        client.close()
        return
    forward = Forward(conn, channel.get_id(), client)
    conn.server.pump.call(lambda: forward.attach(channel))


class RemoteForward:
    """One ``tcpip-forward`` listener (``ssh -R``) on the node: each connection it accepts
    becomes a ``forwarded-tcpip`` channel to the client, spliced on the pump. Closed on
    ``cancel-tcpip-forward`` and when the connection ends."""

    def __init__(self, conn: Connection, requested: str, bind: str, port: int) -> None:
        self.conn = conn
        self.requested = requested  # the client matches channels by the address it asked for
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((bind, port))
            self.sock.listen(64)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.port = int(self.sock.getsockname()[1])
        self.where = f"[{bind}]:{self.port}" if ":" in bind else f"{bind}:{self.port}"
        self.closed = False
        pump = conn.server.pump
        pump.call(lambda: pump.watch(self.sock.fileno(), 1, self._accept))

    def _accept(self) -> None:
        try:
            client, origin = self.sock.accept()
        except (BlockingIOError, OSError):
            return
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        AGENT_OPENERS.submit(self._open, client, (str(origin[0]), int(origin[1])))

    def _open(self, client: socket.socket, origin: tuple[str, int]) -> None:
        open_to_client(self.conn, client,
                       lambda: self.conn.transport.open_forwarded_tcpip_channel(origin, (self.requested, self.port)))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        pump = self.conn.server.pump
        sock = self.sock

        def forget() -> None:  # on the pump, which owns the watch
            pump.forget(sock.fileno())
            sock.close()

        pump.call(forget)


def _lock_reason(state: NodeState, cert: UserCert, login: str) -> str:
    """The message of the lock in force for ``cert``'s user and roles, ``login``, this node and the
    certificate's access requests, or ""; for a certificate with the roles of access requests, also
    the end of that access (the certificate's end, which auth caps at the requests' expiry)."""
    if cert.active_requests and time.time() >= cert.valid_before:
        return f"the access granted by access request {', '.join(cert.active_requests)} has expired"
    if not state.locks:
        return ""
    lock = lock_in_force(state.locks, user=cert.user, roles=cert.roles, login=login, node=state.host_uuid,
                         issued=cert_issued(cert.valid_after), access_requests=cert.active_requests)
    return lock_message(lock) if lock is not None else ""


class Forward:
    """A ``direct-tcpip`` channel (``ssh -L``) spliced to a TCP connection on the pump."""

    def __init__(self, conn: Connection, chanid: int, sock: socket.socket) -> None:
        self.conn, self.chanid, self.sock = conn, chanid, sock
        self.fd = sock.detach()
        self.channel: paramiko.Channel | None = None
        self.ends = 0
        self.metered = False  # counted in teleport_sessions_active until closed

    def wait_for_channel(self) -> None:
        # paramiko creates the channel object right after the check returns
        self.conn.server.pump.call(lambda: self.conn.server.pump.park(self._attach))

    def _attach(self) -> bool:
        channel = self.conn.transport._channels.get(self.chanid)
        if channel is None:
            if not self.conn.transport.is_active():
                os.close(self.fd)
                return True
            return False
        self.attach(channel)
        return True

    def attach(self, channel: paramiko.Channel) -> None:
        """Splice the socket and ``channel`` on the pump (pump thread)."""
        self.channel = channel
        pump = self.conn.server.pump
        self.conn.server.metrics.session_started("node", "port-forward")
        self.metered = True
        out_fd = os.dup(self.fd)
        self.inbound = ChannelToFd(pump, channel, self.fd, self._client_eof)
        self.outbound = FdToChannel(pump, out_fd, channel, self._remote_eof)
        self.inbound.start()
        self.outbound.start()

    def _client_eof(self) -> None:
        # half-close toward the remote side; the channel closes when both directions ended.
        # The inbound descriptor is closed by now: the socket lives on in the outbound one.
        if not self.outbound.done:
            with contextlib.suppress(OSError):
                half = socket.socket(fileno=os.dup(self.outbound.fd))
                half.shutdown(socket.SHUT_WR)
                half.close()
        self.ends += 1
        self._maybe_close()

    def _remote_eof(self) -> None:
        assert self.channel is not None
        with contextlib.suppress(Exception):
            self.channel.shutdown_write()
        self.ends += 1
        self._maybe_close()

    def _maybe_close(self) -> None:
        # A closed channel ends the forward only once its last data reached the socket
        # (inbound reported its end): the client may send data, EOF and close together, and
        # paramiko marks the channel closed while that data still waits in its buffer.
        if self.ends >= 2 or (self.channel is not None and self.channel.closed and self.inbound.eof_reported):
            if self.metered:
                self.metered = False
                self.conn.server.metrics.session_ended("node", "port-forward")
            self.inbound.stop()
            self.outbound.stop()
            assert self.channel is not None
            with contextlib.suppress(Exception):
                self.channel.close()


class Session:
    """One ``session`` channel: a shell, a command or the sftp subsystem, with or without a PTY."""

    def __init__(self, conn: Connection, channel: paramiko.Channel) -> None:
        self.conn = conn
        self.channel = channel
        self.id = str(uuid.uuid4())
        self.env: dict[str, str] = {}
        self.term = "xterm"
        self.size = (80, 24, 0, 0)
        self.pty = False
        self.started = False
        self.command: str | None = None
        self.subsystem: str | None = None
        self.process: Any = None
        self.master: int | None = None
        self.open_outputs = 0
        self.exited = False
        self.finished = False
        self.recorder: Recorder | StreamRecorder | None = None
        self.tx = 0
        self.rx = 0
        self.streams: list[Any] = []
        self.pidfd: int | None = None
        self.agent = False
        self.agent_listener: AgentListener | None = None
        self.started_at = 0.0  # Unix time the process started (session_start)
        self.end_fields: dict[str, Any] = {}  # what session.start said, repeated by session.end
        self.end_reason = "exit"  # "interrupted": the node's stop ended it
        self.kind = ""  # once started: its kind in teleport_sessions_active (interactive, exec, sftp)
        self.client = ""  # "web": opened by the proxy's web terminal (its events say so)
        self.tracker: TrackedSession | None = None  # its session_tracker in auth (tracking.py)
        self.join_env: dict[str, str] = {}  # TELEPORT_SESSION, TELEPORT_SSH_JOIN_MODE (party.py)
        self.party: party.Party | None = None  # an interactive session's participants (party.py)
        self.member: party.Member | None = None  # this channel joined another session (party.py)

    # -- request handling (transport thread) ----------------------------------------------------

    def request(self, command: str | None, subsystem: str | None) -> bool:
        if self.started or self.conn.server._stopping:
            return False
        if party.is_join(self):
            return party.join(self, command, subsystem)
        self.started = True
        self.command, self.subsystem = command, subsystem
        self.conn.after_reply(self._start)
        return True

    def resize(self) -> None:
        if self.member is not None:  # a joiner's terminal size is its own
            return
        if self.master is not None:
            with contextlib.suppress(OSError):
                _winsize(self.master, *self.size)
            with contextlib.suppress(ProcessLookupError, OSError):
                os.killpg(self.process.pid, signal.SIGWINCH)
        self.conn.emit("resize", "ok", sid=self.id, size=f"{self.size[0]}:{self.size[1]}")
        tracking.resized(self)

    def deliver_signal(self, name: str) -> tuple[bool, str]:
        """A client's ``signal`` request: send it to the session's process group, as sshd does
        (``killpg`` of the session leader; refused for subsystems and before the process runs)."""
        signum = SIGNALS.get(name)
        if signum is None:
            return False, "unsupported signal"
        if self.subsystem is not None:
            return False, "no signals to a subsystem"
        process = self.process
        if process is None or self.exited or process.returncode is not None:
            return False, "no process is running"
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError) as exc:
            return False, str(exc)
        return True, ""

    def _argv(self, entry: pwd.struct_passwd) -> tuple[list[str], str]:
        shell = entry.pw_shell or "/bin/sh"
        if self.subsystem == "sftp":
            path = sftp_server_path()
            assert path is not None
            return [path], path
        if self.command is not None:
            return [os.path.basename(shell), "-c", self.command], shell
        return ["-" + os.path.basename(shell)], shell  # a login shell, as sshd starts it

    def _environment(self, entry: pwd.struct_passwd) -> dict[str, str]:
        client_port = self.conn.remote.rsplit(":", 1)
        local = self.conn.local.rsplit(":", 1)
        env = {
            "HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name,
            "SHELL": entry.pw_shell or "/bin/sh", "PATH": DEFAULT_PATH,
            "SSH_CLIENT": f"{client_port[0]} {client_port[1]} {local[1]}",
            "SSH_CONNECTION": f"{client_port[0]} {client_port[1]} {local[0]} {local[1]}",
            "TELEPORT_SESSION": self.id,
        }
        env.update(self.env)
        if self.pty:
            env["TERM"] = self.term or "xterm"
        return env

    def _start(self) -> None:
        """Spawn the process as the login (called right after the request's reply was sent)."""
        if party.hold(self):  # pending until its required participants joined (or refused)
            return
        state = self.conn.server.state()
        try:
            entry = pwd.getpwnam(self.conn.login)
            argv, executable = self._argv(entry)
            env = self._environment(entry)
            drop: dict[str, Any] = {}
            if os.geteuid() == 0 and entry.pw_uid != 0:
                drop = {"user": entry.pw_uid, "group": entry.pw_gid,
                        "extra_groups": os.getgrouplist(entry.pw_name, entry.pw_gid)}
            cwd = entry.pw_dir if os.path.isdir(entry.pw_dir) else "/"
            if self.agent and self.subsystem is None:
                self.agent_listener = AgentListener(self.conn, entry)
                env["SSH_AUTH_SOCK"] = self.agent_listener.path
            import subprocess

            # without fork() of the node where glibc allows (spawn.py); else subprocess, which forks
            # for a PTY (preexec_fn) or another user (CPython 3.11 uses vfork for neither)
            login = spawn.Login(drop["user"], drop["group"], tuple(drop["extra_groups"])) if drop else None
            if self.pty:
                master, slave = pty.openpty()
                _winsize(master, *self.size)
                env["SSH_TTY"] = tty = os.ttyname(slave)
                try:
                    if spawn.AVAILABLE:
                        if login is not None:
                            spawn.give_tty(tty, login)
                        self.process = spawn.spawn(argv, executable, env=env, cwd=cwd, tty=tty, login=login)
                    else:
                        self.process = subprocess.Popen(argv, executable=executable, stdin=slave, stdout=slave,
                                                        stderr=slave, cwd=cwd, env=env, start_new_session=True,
                                                        preexec_fn=_set_ctty, close_fds=True, **drop)
                finally:
                    os.close(slave)
                self.master = master
                fds = {"in": os.dup(master), "out": master}
            else:
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                for fd in (in_r, out_r, err_r):
                    grow_pipe(fd)
                try:
                    if spawn.AVAILABLE and min(in_r, out_w, err_w) > 2:
                        self.process = spawn.spawn(argv, executable, env=env, cwd=cwd, stdio=(in_r, out_w, err_w),
                                                   login=login)
                    else:
                        self.process = subprocess.Popen(argv, executable=executable, stdin=in_r, stdout=out_w,
                                                        stderr=err_w, cwd=cwd, env=env, start_new_session=True,
                                                        close_fds=True, **drop)
                finally:
                    for fd in (in_r, out_w, err_w):
                        os.close(fd)
                fds = {"in": in_w, "out": out_r, "err": err_r}
        except Exception as exc:
            self.conn.server.log.warning("cannot start session process", login=self.conn.login, error=str(exc))
            self._failed_start(str(exc))
            return
        self.started_at = time.time()
        if state.recording != "off" and self.subsystem is None:
            try:
                self.recorder = stream_recorder(self, state, env) or Recorder(
                                         state.spool, self.id, width=self.size[0], height=self.size[1],
                                         env={"TERM": env.get("TERM", ""), "SHELL": env["SHELL"]},
                                         title=f"{self.conn.login}@{state.nodename}",
                                         command=self.command or "", started=self.started_at)
            except OSError as exc:
                self.conn.server.log.error("cannot record session", sid=self.id, error=str(exc))
        # what this session's record says: "off" when nothing is recorded (recording off, a subsystem
        # such as sftp, or a recorder that could not start), so no upload is ever awaited for it
        recording = state.recording if self.recorder is not None else "off"
        self.end_fields = start_fields(self.id, interactive=self.pty, command=self.command, recording=recording,
                                       started=self.started_at, extra={"client": self.client} if self.client else None)
        try:  # what a session.end needs, should the node crash before it ends the session
            write_sidecar(state.spool, self.id, self.started_at,
                          {**self.conn.base_fields(state), **self.end_fields})
        except OSError as exc:
            self.conn.server.log.error("cannot write the session's sidecar: a crash would leave it without "
                                       "a session.end", sid=self.id, error=str(exc))
        self.conn.emit("session.start", "ok", sid=self.id, proto="ssh", initial_command=[self.command or ""],
                       size=f"{self.size[0]}:{self.size[1]}", session_recording=recording,
                       **({"client": self.client} if self.client else {}))
        self.kind = "sftp" if self.subsystem == "sftp" else "interactive" if self.pty else "exec"
        tracking.started(self, state, recording)
        metrics = self.conn.server.metrics
        metrics.session_started("node", self.kind)
        if self.pty:
            metrics.interactive_sessions.inc()
        self.conn.server.pump.call(lambda: self._attach(fds))

    def _failed_start(self, reason: str) -> None:
        if self.party is not None:  # nobody may join a session that never ran
            self.conn.server.pump.call(lambda: self.party.ended(255) if self.party is not None else None)
        with contextlib.suppress(Exception):
            self.channel.send_stderr(b"teleport: cannot start the session\r\n")
            self.channel.send_exit_status(255)
            self.channel.close()
        if self.command is not None:
            self.conn.emit("exec", "failure", sid=self.id, command=self.command, exitCode="255", error=reason)

    def _count_rx(self, n: int) -> None:
        self.rx += n
        tracking.active(self)

    def _count_tx(self, n: int) -> None:
        self.tx += n

    def _attach(self, fds: dict[str, int]) -> None:
        pump = self.conn.server.pump
        if self.recorder is not None:
            self.conn.server.recorders.add(self.recorder)
        self.stdin = ChannelToFd(pump, self.channel, fds["in"], self._client_eof, counter=self._count_rx)
        outputs = [FdToChannel(pump, fds["out"], self.channel, self._output_eof, sink=self.party or self.recorder,
                               counter=self._count_tx)]
        if "err" in fds:
            outputs.append(FdToChannel(pump, fds["err"], self.channel, self._output_eof, stderr=True,
                                       sink=self.recorder, counter=self._count_tx))
        self.open_outputs = len(outputs)
        self.streams = [self.stdin, *outputs]
        for stream in self.streams:
            stream.start()
        self.pidfd = os.pidfd_open(self.process.pid)
        pump.watch(self.pidfd, 1, self._child_exited)
        if self.party is not None:
            self.party.attached()
        if self.conn.server._stopping:  # started while the node's stop was ending the others
            self.interrupt()

    def _client_eof(self) -> None:
        if self.channel.closed:
            self.hangup()

    def _output_eof(self) -> None:
        self.open_outputs -= 1
        self._maybe_finish()

    def _child_exited(self) -> None:
        if self.process.poll() is None:
            return
        pump = self.conn.server.pump
        assert self.pidfd is not None
        pump.forget(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        self.exited = True
        if self.pty:
            # the PTY stays readable until every holder closed it; give stragglers a moment
            pump.call_later(2.0, self._force_finish)
        self._maybe_finish()

    def _force_finish(self) -> None:
        if not self.finished:
            for stream in self.streams:
                stream.stop()
            self.open_outputs = 0
            self._maybe_finish()

    def hangup(self) -> None:
        """The client went away: signal the process group, finish the session."""
        party.gone(self)
        self._signal_group(signal.SIGHUP)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self.process is not None and not self.exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    def interrupt(self) -> None:
        """The node is stopping (pump thread): tell the client, hang the process group up; the
        session then ends as any does, with ``end_reason`` "interrupted"."""
        if self.process is None or self.finished or self.end_reason == "interrupted":
            return
        self.end_reason = "interrupted"
        self.conn.server.interrupting(self)
        line = f"\r\nteleport: the node is shutting down; this session ends (session {self.id})\r\n".encode()
        with contextlib.suppress(Exception):  # a full window drops it: the session ends anyway
            if self.pty:
                self.channel.send(line)
                if self.recorder is not None:
                    self.recorder.write(line)
            else:
                self.channel.send_stderr(line)
        self.hangup()

    def _maybe_finish(self) -> None:
        if self.finished or not self.exited or self.open_outputs > 0:
            return
        self.finished = True
        self.stdin.stop()
        code = self.process.returncode
        with contextlib.suppress(Exception):
            if code is not None and code < 0:
                self._send_exit_signal(-code)
            else:
                self.channel.send_exit_status(code or 0)
            self.channel.shutdown_write()
            self.channel.close()
        self.conn.sessions.pop(self.channel.get_id(), None)
        if self.party is not None:
            self.party.ended(code)
        if self.agent_listener is not None:
            self.agent_listener.close()
        self._report(code)

    def _send_exit_signal(self, signum: int) -> None:
        name = next((n for n, number in SIGNALS.items() if number == signum), "SIG@openssh.com")
        message = paramiko.Message()
        message.add_byte(cMSG_CHANNEL_REQUEST)
        message.add_int(self.channel.remote_chanid)
        message.add_string("exit-signal")
        message.add_boolean(False)
        message.add_string(name)
        message.add_boolean(False)
        message.add_string("")
        message.add_string("")
        self.channel.transport._send_user_message(message)

    def _report(self, code: int | None) -> None:
        tracking.ended(self)
        conn = self.conn
        state = conn.server.state()
        if self.kind:
            conn.server.metrics.session_ended("node", self.kind)
            if self.pty:
                conn.server.metrics.interactive_sessions.dec()
            self.kind = ""
        emit_end(conn.emit, sid=self.id, command=self.command, code=code, tx=self.tx, rx=self.rx,
                 end_fields=self.end_fields, end_reason=self.end_reason,
                 recorded_bytes=self.recorder.bytes if self.recorder is not None else 0,
                 extra=self.party.end_fields() if self.party is not None else None)
        if isinstance(self.recorder, StreamRecorder):  # node-sync: streamed to auth, nothing to upload
            close_stream(self, state)
            return
        if self.recorder is not None:
            conn.server.recorders.discard(self.recorder)
            try:
                part = self.recorder.close()
            except OSError as exc:
                conn.server.log.warning("cannot close recording", sid=self.id, error=str(exc))
            else:
                conn.server.finalizing(FINALIZERS.submit(self._finalize, part, state))
                return
        state.recorded(self.id, None)

    def _finalize(self, part: Path, state: NodeState) -> None:
        """Convert the spool to asciicast off the pump thread, then hand it to the uploader."""
        try:
            path: Path | None = finalize(part)
        except ValueError as exc:  # a torn header: nothing to upload
            self.conn.server.log.warning("cannot finalize recording", sid=self.id, error=str(exc))
            path = None
        except OSError as exc:  # the spool and the sidecar stay: the next start completes them
            self.conn.server.log.warning("cannot finalize recording", sid=self.id, error=str(exc))
            return
        state.recorded(self.id, path)



FINALIZERS = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="teleport-node-finalize")
AGENT_OPENERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="teleport-node-agent")


class AgentListener:
    """``SSH_AUTH_SOCK`` of a session with agent forwarding: a Unix socket only the login can
    use (0700 directory it owns); each connection to it becomes an ``auth-agent@openssh.com``
    channel to the client, spliced on the pump."""

    def __init__(self, conn: Connection, entry: pwd.struct_passwd) -> None:
        self.conn = conn
        self.directory = tempfile.mkdtemp(prefix="teleport-agent-")
        self.path = os.path.join(self.directory, "agent.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        if os.geteuid() == 0:
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            os.chown(self.path, entry.pw_uid, entry.pw_gid)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.closed = False
        conn.server.pump.call(lambda: conn.server.pump.watch(self.sock.fileno(), 1, self._accept))

    def _accept(self) -> None:
        try:
            client, _ = self.sock.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        AGENT_OPENERS.submit(self._open, client)

    def _open(self, client: socket.socket) -> None:
        open_to_client(self.conn, client, self.conn.transport.open_forward_agent_channel)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.server.pump.forget(self.sock.fileno())
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)
