"""Agentless OpenSSH nodes: the proxy terminates the user's SSH connection, checks it as a node
would, records the session and carries it on to the node's plain ``sshd`` (Teleport's forwarding
server for ``sub_kind: openssh`` nodes).

A routed connection to such a node (the ``proxy:host:port`` subsystem of ``tsh``, ``ssh -J``'s
``direct-tcpip``, TLS routing, the web terminal) gets, instead of a TCP connection to the node,
one end of a socket pair whose other end is served here, on a thread, by a paramiko SSH server:

* it presents a **host certificate for the node's principals** (host UUID, hostname, each also
  ``.<cluster>``, the address's host) that auth signed for this proxy's forwarding key, for that
  registered node only, valid an hour (``/v1/agentless/host-cert``, cached per node): the client
  sees the node's identity signed by the cluster's host CA, as with our nodes;
* it **authenticates the user** as our node does: a certificate of the user CA, valid now, of
  type user, the login among its principals, roles that allow that login on the node's labels,
  no lock in force, every ``teleport_authorize`` plugin; port forwarding only as the
  certificate's ``permit-port-forwarding`` and the roles allow; every refusal audited (T3007W);
* it dials ``sshd`` with a **user certificate auth signs for that one connection and login**
  (``/v1/agentless/session-cert``: auth re-derives the identity from the user's certificate and
  the current user, roles and locks; principals ``[login]``, two minutes), after checking
  sshd's host certificate against the cluster's host CA (one of the node's names among its
  principals);
* it relays sessions (PTY, environment, window changes, signals, shell, exec, ``scp``, the
  ``sftp`` subsystem) and ``direct-tcpip`` (``-L``), and records shells and commands with the
  kernel's spool recorder (:mod:`teleport_core.recording.spool`: sidecars, crash recovery),
  emitting the node's session events (``server_id`` the node; auth stamps ``forwarded_by``)
  and uploading the recording, which this proxy owns; each shell and command has its
  ``session_tracker`` (:mod:`teleport_core.state.trackers`, ``server_id`` the node) while it runs.

With ``session_recording: proxy-sync`` the recording streams to auth while the session runs
instead (the kernel's :class:`~teleport_core.recording.stream.Streamer`: chunks from memory,
nothing on disk but the sidecar): the session's output pauses while the recorder's buffer is
full (the output thread stops reading the node's channel, so sshd's window and the process
block), and when the recorder gives up (auth unreachable for ``STALL_LIMIT`` seconds, or a
refused chunk) the user is told, the output stops and the node's channel is closed
(``end_reason`` ``interrupted``, ``recording_error``). After a crash, the restart completes
what auth received (``partial``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from cryptography.hazmat.primitives.serialization import ssh
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_FAILURE, cMSG_CHANNEL_REQUEST, cMSG_CHANNEL_SUCCESS

from teleport_core.errors import AccessDenied, AlreadyExists, NotFound, TeleportError
from teleport_core.net import sshalgos
from teleport_core.pki import keys
from teleport_core.policy.access import PORT_FORWARD, SSH, AccessRequest, Decision, Identity, IdentityKind, check_access
from teleport_core.recording.events import emit_end, start_fields
from teleport_core.recording.spool import (
    FINAL,
    Recorder,
    claim,
    finalize,
    prepare_spool,
    recover,
    recover_sessions,
    remove_sidecar,
    write_sidecar,
)
from teleport_core.recording.stream import SYNC_MODES, Streamer, StreamRecorder
from teleport_core.state.audit import new_event
from teleport_core.state.nodes import NodeInfo
from teleport_core.state.trackers import SessionTracker, TrackedSession, TrackerKeeper
from teleport_core.tsh.hostcert import verify_host_cert
from teleport_core.tsh.sshclient import CERT_TYPES
from teleport_proxy.certs import InvalidCertificate, UserCert, verify_user_ssh_cert
from teleport_proxy.sshserver import CertHostKey, paramiko_key

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

WINDOW = 4 * 1024 * 1024
MAX_PACKET = 256 * 1024
CHUNK = 256 * 1024
CALL_TIMEOUT = 30.0  # seconds a call to auth may take (certificates)
CONNECT_TIMEOUT = 10.0
HOST_CERT_MARGIN = 10 * 60  # seconds: a cached node host certificate is renewed this long before it expires
ENV_ALLOWED = ("LANG", "LANGUAGE", "TERM")
SIGNALS = ("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2")
FLUSH_EVERY = 0.5
RETRY = 2.0
MAX_RETRY = 60.0
UPLOAD_UNKNOWN_FOR = 600.0  # seconds an upload auth has no record for is retried (its session.start is late)
REFUSED = ".cast.refused"
PAUSE_POLL = 0.05  # seconds between looks at a paused (sync) recorder's buffer
MESSAGE_WAIT = 5.0  # seconds the message ending a session whose recording gave up may wait for the window
STOP_STREAM_WAIT = 5.0  # seconds a stopping proxy waits for its streamed recordings to be completed
OPEN_OK: int = int(paramiko.OPEN_SUCCEEDED)
OPEN_PROHIBITED: int = int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)
OPEN_CONNECT_FAILED: int = int(paramiko.OPEN_FAILED_CONNECT_FAILED)


class Forwarder:
    """The proxy's side of its agentless nodes: host certificates, connections, recordings, uploads."""

    def __init__(self, proxy: ProxyState, spool: Path) -> None:
        self.proxy = proxy
        self.spool = spool
        key = keys.generate_private_key(keys.KeyAlgorithm.ED25519)
        self._pem = keys.private_key_pem(key)
        self.public_key = keys.public_key_openssh(key)
        self._pkey = paramiko_key(self._pem)
        self._host_certs: dict[str, tuple[str, float]] = {}  # node uuid -> (cert line, expires: unix time)
        self._certs_lock = threading.Lock()
        self.recording = "proxy"  # "off": the cluster records nothing; "proxy-sync": streamed (auth's ping)
        self.streamer: Streamer | None = None  # proxy-sync: the sessions' recordings streaming to auth
        self.sessions: set[ForwardedSession] = set()
        self._lock = threading.Lock()
        self.connections: set[ForwardedConnection] = set()
        self._uploads: asyncio.Queue[tuple[str, Path]] | None = None
        self._queued: set[str] = set()
        self._stopping = threading.Event()
        self.trackers: TrackerKeeper | None = None  # the live sessions' session_trackers in auth
        self._node_of: dict[str, str] = {}  # session ID -> its node's UUID, until its recording is uploaded

    # -- service life ----------------------------------------------------------------------------

    async def start(self) -> list[asyncio.Task[None]]:
        """Prepare the spool, end what a crash left, queue leftover uploads; the background tasks."""
        ping = await self.proxy.auth.ping()
        mode = str(ping.get("session_recording", "node"))
        self.recording = mode if mode in ("off", "proxy-sync") else "proxy"
        loop = asyncio.get_running_loop()
        # the streamer also completes what a crash left of sessions streamed in an earlier run
        self.streamer = streamer = Streamer(loop, self.proxy.auth, self.proxy.log)
        await asyncio.to_thread(prepare_spool, self.spool)
        self._uploads = asyncio.Queue()
        ended, _ = await asyncio.to_thread(recover_sessions, self.spool, set())
        for session in ended:
            self._node_of[session.session_id] = str(session.fields.get("server_id", ""))
            await self.proxy.audit.emit(new_event("session.end", "ok", when=session.stop, **session.fields))
            await asyncio.to_thread(remove_sidecar, self.spool, session.session_id)
            if session.fields.get("session_recording") in SYNC_MODES:  # streamed: auth completes what it has
                streamer.complete_lost(session.session_id)
        for path in await asyncio.to_thread(recover, self.spool, set()):
            self.queue_upload(path.name.removesuffix(FINAL), path)
        threading.Thread(target=self._flush_loop, name="proxy-agentless-flush", daemon=True).start()
        self.trackers = TrackerKeeper(self.proxy.auth, loop, self.proxy.log)
        return [loop.create_task(self._send_uploads(), name="proxy-agentless-uploads"),
                loop.create_task(self.trackers.run(), name="proxy-agentless-trackers")]

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            connections = list(self.connections)
        for conn in connections:
            conn.close()

    async def close(self) -> None:
        """After :meth:`stop`: the ended sessions' streamed recordings are sent and completed, their
        trackers go from auth (each bounded; a recording left in chunks is completed by auth's sweep)."""
        deadline = time.monotonic() + STOP_STREAM_WAIT
        while self.streamer is not None and self.streamer.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.trackers is not None:
            await self.trackers.stop(timeout=3)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(FLUSH_EVERY):
            with self._lock:
                sessions = list(self.sessions)
            for session in sessions:
                session.flush()

    # -- calls to auth (from threads) ------------------------------------------------------------------

    def call(self, coro: Any, timeout: float = CALL_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.proxy.loop).result(timeout)

    def emit(self, event: str, outcome: str, fields: dict[str, Any]) -> None:
        """Spool an audit event (waits until it is on the proxy's disk)."""
        with contextlib.suppress(Exception):
            self.call(self.proxy.audit.emit(new_event(event, outcome, **fields)))

    def host_cert(self, node: NodeInfo) -> str:
        """The host certificate for ``node``'s principals on the forwarding key (cached, renewed)."""
        with self._certs_lock:
            held = self._host_certs.get(node.uuid)
            if held is not None and held[1] - time.time() > HOST_CERT_MARGIN:
                return held[0]
        answer = self.call(self.proxy.auth.call("POST", "/v1/agentless/host-cert",
                                                {"node": node.uuid, "public_key": self.public_key}))
        line = str(answer["ssh_cert"])
        expires = dt.datetime.fromisoformat(str(answer["valid_before"])).timestamp()
        with self._certs_lock:
            self._host_certs[node.uuid] = (line, expires)
        return line

    # -- connections -------------------------------------------------------------------------------------

    def dial(self, node: NodeInfo, remote: str = "") -> socket.socket:
        """A socket whose other end is this proxy's SSH server for ``node`` (served on a thread)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        threading.Thread(target=self._serve, args=(theirs, node, remote), name="proxy-agentless",
                         daemon=True).start()
        return ours

    def _serve(self, sock: socket.socket, node: NodeInfo, remote: str) -> None:
        log = self.proxy.log
        try:
            host_key = CertHostKey(self._pkey, self.host_cert(node))
        except Exception as exc:  # auth unreachable or refused: the client's handshake fails
            log.warning("no host certificate for an agentless node", node=node.uuid, error=str(exc))
            self.proxy.spawn_audit("", f"agentless node {node.nodename}: no host certificate: {exc}", remote,
                                   target=node.uuid)
            sock.close()
            return
        transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
        # AES-GCM only, as our node offers (docs/security.md: every OpenSSH since 6.2 has it): about a
        # third faster than aes-ctr + HMAC in paramiko, and the client's order would pick aes-ctr
        sshalgos.configure(transport, ciphers=sshalgos.AEAD_CIPHERS, key_types=[host_key.get_name()])
        transport.add_server_key(host_key)
        conn = ForwardedConnection(self, transport, node, remote)
        with self._lock:
            self.connections.add(conn)
        try:
            transport.start_server(server=conn)
            while transport.is_active() and not self._stopping.is_set():
                channel = transport.accept(1.0)
                if channel is None:
                    continue
                target = conn.pending.pop(channel.get_id(), None)
                if target is not None:
                    relay_forward(channel, target)
        except (paramiko.SSHException, EOFError, OSError):
            pass
        finally:
            conn.close()
            with self._lock:
                self.connections.discard(conn)

    # -- recordings ------------------------------------------------------------------------------------

    def queue_upload(self, sid: str, path: Path) -> None:
        if self._uploads is not None and sid not in self._queued:
            self._queued.add(sid)
            self._uploads.put_nowait((sid, path))

    def recorded(self, sid: str, node: str, path: Path | None) -> None:
        """(thread) A session on ``node`` ended (on disk): queue its recording, forget its sidecar."""
        with contextlib.suppress(RuntimeError):
            if path is not None:
                self._node_of[sid] = node
                self.proxy.loop.call_soon_threadsafe(self.queue_upload, sid, path)
        remove_sidecar(self.spool, sid)

    async def _send_uploads(self) -> None:
        assert self._uploads is not None
        while True:
            sid, path = await self._uploads.get()
            self._queued.discard(sid)
            claimed = await asyncio.to_thread(claim, path)
            try:
                if claimed is not None and await self._upload(sid, path):
                    size = path.stat().st_size
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    node = self._node_of.pop(sid, "")
                    if node:  # as the node does (unknown for a recording found without its sidecar)
                        await self.proxy.audit.emit(new_event("session.upload", "ok", sid=sid, size=size,
                                                              cluster_name=self.proxy.cluster_name, server_id=node))
                    self.proxy.log.info("agentless session recording uploaded", sid=sid, size=size)
            finally:
                if claimed is not None:
                    os.close(claimed)

    async def _upload(self, sid: str, path: Path) -> bool:
        """Upload one recording once its session.start reached auth (the spool is delivered in
        order); retried while auth is away or has no record yet; kept as ``.cast.refused`` when
        auth refuses it for good."""
        waited = 0.0
        while waited < 30 and await asyncio.to_thread(self.proxy.audit.backlog) > 0:
            await asyncio.sleep(0.2)
            waited += 0.2
        delay, first = RETRY, time.monotonic()
        while True:
            try:
                await self.proxy.auth.upload_recording(sid, path)
                return True
            except NotFound as exc:
                if time.monotonic() - first > UPLOAD_UNKNOWN_FOR:
                    self._refused(sid, path, str(exc))
                    return False
            except (AccessDenied, AlreadyExists) as exc:
                self._refused(sid, path, str(exc))
                return False
            except (TeleportError, OSError) as exc:
                if not path.exists():
                    return False
                self.proxy.log.warning("cannot upload a recording, will retry", sid=sid, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY, delay * 2)

    def _refused(self, sid: str, path: Path, reason: str) -> None:
        kept = path.with_name(sid + REFUSED)
        with contextlib.suppress(FileNotFoundError):
            path.rename(kept)
        self.proxy.log.error("auth refused the recording for good, kept locally", sid=sid, error=reason,
                             path=str(kept))


class ForwardedConnection(paramiko.ServerInterface):  # type: ignore[misc]
    """One user's connection to an agentless node: authentication, then its channels."""

    def __init__(self, forwarder: Forwarder, transport: paramiko.Transport, node: NodeInfo, remote: str) -> None:
        self.forwarder = forwarder
        self.proxy = forwarder.proxy
        self.transport = transport
        self.node = node
        self.remote = remote
        self.client_ip = remote.rpartition(":")[0].strip("[]") if remote else ""
        self.user: UserCert | None = None
        self.cert_line = ""
        self.extensions: frozenset[str] = frozenset()
        self.login = ""
        self.upstream: paramiko.Transport | None = None
        self._upstream_lock = threading.Lock()
        self.sessions: dict[int, ForwardedSession] = {}
        self.pending: dict[int, paramiko.Channel] = {}  # direct-tcpip: our channel id -> the node's channel
        self._closed = False
        transport._channel_handler_table = {**paramiko.Transport._channel_handler_table,
                                            MSG_CHANNEL_REQUEST: self._channel_request}

    # -- events ---------------------------------------------------------------------------------------

    def fields(self) -> dict[str, Any]:
        """What every event of this connection carries: the node (auth stamps ``forwarded_by``)."""
        node = self.node
        return {"cluster_name": self.proxy.cluster_name, "server_id": node.uuid, "server_hostname": node.nodename,
                "server_labels": dict(node.labels), "server_sub_kind": node.sub_kind, "addr.remote": self.remote,
                "addr.local": node.addr, "user": self.user.user if self.user else "", "login": self.login,
                **({"access_requests": list(self.user.active_requests)}
                   if self.user and self.user.active_requests else {})}

    def emit(self, event: str, outcome: str = "ok", **fields: Any) -> None:
        self.forwarder.emit(event, outcome, {**self.fields(), **fields})

    def refuse(self, user: str, reason: str, **fields: Any) -> None:
        """Audit a refusal (T3007W) and log it."""
        self.proxy.log.info("agentless access refused", user=user, node=self.node.nodename, reason=reason)
        self.proxy.spawn_audit(user, reason, self.remote, target=self.node.uuid, server_hostname=self.node.nodename,
                               **fields)

    # -- authentication: what our node checks --------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        blob = getattr(key, "public_blob", None)
        if blob is None:
            return int(paramiko.AUTH_FAILED)  # plain keys are never accepted
        line = f"{blob.key_type} {base64.b64encode(blob.key_blob).decode()}"
        user = ""
        try:
            cert = verify_user_ssh_cert(line, self.proxy.user_ca_keys, client_ip=self.client_ip)
            user = cert.user
            if username not in cert.principals:
                raise AccessDenied(f"ssh: principal {username!r} not in the set of valid principals for this "
                                   "certificate")
            decision = self.decide(cert, SSH, username, self.node.uuid)
            if not decision.allowed:
                raise AccessDenied(decision.reason)
        except (InvalidCertificate, AccessDenied) as exc:
            self.refuse(user, f"access denied to {user or 'an unknown user'} connecting to "
                              f"{self.node.nodename} as {username}: {exc}", login=username)
            return int(paramiko.AUTH_FAILED)
        parsed = ssh.load_ssh_public_identity(line.encode())
        assert isinstance(parsed, ssh.SSHCertificate)
        self.user, self.login, self.cert_line = cert, username, line
        self.extensions = frozenset(k.decode(errors="replace") for k in parsed.extensions)
        return int(paramiko.AUTH_SUCCESSFUL)

    def decide(self, cert: UserCert, verb: str, login: str, name: str) -> Decision:
        """Roles, a lock in force, every ``teleport_authorize`` plugin: deny wins."""
        proxy = self.proxy
        try:
            roleset = proxy.roleset(cert)
        except AccessDenied as exc:
            return Decision.deny(str(exc))
        locked = proxy.lock_reason(cert, login, self.node.uuid)
        if verb == SSH:
            by_roles = roleset.check_login(login, self.node.labels)
        else:
            by_roles = Decision.allow() if roleset.port_forwarding else Decision.deny(
                "port_forwarding is not allowed by the roles")
        identity = Identity(cert.user, IdentityKind.USER, roles=cert.roles, traits=cert.traits,
                            cluster=proxy.cluster_name, issued=cert.issued)
        request = AccessRequest(identity, verb, "node", name, self.node.labels, login)
        return check_access(proxy.ctx.plugins.hook, request, by_roles, Decision.deny(locked) if locked else None)

    # -- the node's side ---------------------------------------------------------------------------------

    def connect_upstream(self) -> paramiko.Transport:
        """The SSH connection to the node's sshd as the login, with a certificate auth signs for it."""
        with self._upstream_lock:
            if self.upstream is not None and self.upstream.is_active():
                return self.upstream
            key = keys.generate_private_key(keys.KeyAlgorithm.ED25519)
            public = keys.public_key_openssh(key)
            answer = self.forwarder.call(self.proxy.auth.call("POST", "/v1/agentless/session-cert", {
                "node": self.node.uuid, "login": self.login, "user_cert": self.cert_line, "public_key": public,
                "client_ip": self.client_ip}))
            pkey = paramiko_key(keys.private_key_pem(key))
            pkey.load_certificate(str(answer["ssh_cert"]))
            host, _, port = self.node.addr.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=MAX_PACKET)
            try:
                sshalgos.configure(transport, ciphers=sshalgos.AEAD_CIPHERS, key_types=CERT_TYPES)
                transport.start_client(timeout=CONNECT_TIMEOUT)
                self._check_host(transport)
                transport.auth_publickey(self.login, pkey)
            except BaseException:
                transport.close()
                raise
            self.upstream = transport
            return transport

    def _check_host(self, transport: paramiko.Transport) -> None:
        """sshd's host certificate: from the cluster's host CA, naming one of the node's names."""
        blob = transport.get_remote_server_key().public_blob
        if blob is None:
            raise AccessDenied(f"{self.node.nodename} presented a plain host key, not a certificate from the "
                               "cluster's host CA")
        names = [self.node.nodename, self.node.host, self.node.uuid, f"{self.node.nodename}.{self.proxy.cluster_name}"]
        problem: AccessDenied | None = None
        for name in dict.fromkeys(n for n in names if n):
            try:
                verify_host_cert(blob.key_type, blob.key_blob, self.proxy.host_ca_keys, name)
                return
            except AccessDenied as exc:
                problem = exc
        raise AccessDenied(f"{self.node.nodename}: {problem}")

    def _upstream_or_refuse(self, what: str) -> paramiko.Transport | None:
        try:
            return self.connect_upstream()
        except Exception as exc:  # auth refused (audited there), sshd unreachable or refusing
            message = str(exc) or type(exc).__name__
            self.refuse(self.user.user if self.user else "", f"{what} to {self.node.nodename} as {self.login} "
                                                              f"failed: {message}", login=self.login)
            return None

    # -- channels -------------------------------------------------------------------------------------

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or self.user is None:
            return OPEN_PROHIBITED
        return OPEN_OK if self._upstream_or_refuse("session") is not None else OPEN_CONNECT_FAILED

    def _session(self, channel: paramiko.Channel) -> ForwardedSession:
        session = self.sessions.get(channel.get_id())
        if session is None:
            session = self.sessions[channel.get_id()] = ForwardedSession(self, channel)
        return session

    def check_channel_pty_request(self, channel: paramiko.Channel, term: bytes | str, width: int, height: int,
                                  pixelwidth: int, pixelheight: int, modes: bytes) -> bool:
        session = self._session(channel)
        if session.started or "permit-pty" not in self.extensions:
            return False
        session.term = term.decode(errors="replace") if isinstance(term, bytes) else term
        session.size = (width, height, pixelwidth, pixelheight)
        session.modes = modes
        session.pty = True
        return True

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes | str, value: bytes | str) -> bool:
        key = name.decode(errors="replace") if isinstance(name, bytes) else name
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key in ENV_ALLOWED or key.startswith("LC_"):
            self._session(channel).env[key] = text
            return True
        return False

    def check_channel_window_change_request(self, channel: paramiko.Channel, width: int, height: int,
                                            pixelwidth: int, pixelheight: int) -> bool:
        self._session(channel).resize(width, height, pixelwidth, pixelheight)
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._session(channel).request(None, None)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._session(channel).request(command.decode(errors="replace"), None)

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp":
            return False
        return self._session(channel).request(None, "sftp")

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        return False  # not relayed to agentless nodes (docs/sessions.md)

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        dest = f"{destination[0]}:{destination[1]}"
        if self.user is None:
            return OPEN_PROHIBITED
        by_cert = None if "permit-port-forwarding" in self.extensions else Decision.deny(
            "the certificate does not permit port forwarding")
        decision = by_cert or self.decide(self.user, PORT_FORWARD, self.login, dest)
        if not decision.allowed:
            reason = f"port forwarding is not allowed: {decision.reason}"
            self.emit("port", "failure", **{"addr.local": dest, "error": reason})
            self.refuse(self.user.user, f"{reason} ({dest} on {self.node.nodename})", login=self.login)
            return OPEN_PROHIBITED
        upstream = self._upstream_or_refuse("port forwarding")
        if upstream is None:
            return OPEN_CONNECT_FAILED
        try:
            target = upstream.open_channel("direct-tcpip", destination, origin, timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.emit("port", "failure", **{"addr.local": dest, "error": f"cannot connect: {exc}"})
            return OPEN_CONNECT_FAILED
        self.emit("port", "ok", **{"addr.local": dest})
        self.pending[chanid] = target
        return OPEN_OK

    def _channel_request(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        """A CHANNEL_REQUEST (transport thread): ``signal`` goes to the node; the rest to paramiko,
        then what a request started waits for its reply to be sent (OpenSSH expects the reply
        before the channel's data, exit status and close)."""
        start = message.packet.tell()
        kind = message.get_text()
        if kind == "signal":
            want_reply = message.get_boolean()
            name = message.get_text()
            session = self.sessions.get(channel.get_id())
            ok = session is not None and name in SIGNALS and session.signal(name)
            if want_reply:
                reply = paramiko.Message()
                reply.add_byte(cMSG_CHANNEL_SUCCESS if ok else cMSG_CHANNEL_FAILURE)
                reply.add_int(channel.remote_chanid)
                self.transport._send_user_message(reply)
            return
        message.packet.seek(start)
        channel._handle_request(message)
        session = self.sessions.get(channel.get_id())
        if session is not None and session.ready is not None:
            begin, session.ready = session.ready, None
            begin()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session in list(self.sessions.values()):
            session.hangup()
        with contextlib.suppress(Exception):
            self.transport.close()
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.close()


class ForwardedSession:
    """One session channel relayed to the node, recorded unless it is a subsystem (sftp)."""

    def __init__(self, conn: ForwardedConnection, channel: paramiko.Channel) -> None:
        self.conn = conn
        self.channel = channel
        self.id = str(uuid.uuid4())
        self.term = ""
        self.size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self.modes = b""
        self.pty = False
        self.env: dict[str, str] = {}
        self.started = False
        self.command: str | None = None
        self.subsystem: str | None = None
        self.upstream: paramiko.Channel | None = None
        self.recorder: Recorder | StreamRecorder | None = None
        self._record_lock = threading.Lock()
        self.end_reason = "exit"
        self.ready: Callable[[], None] | None = None  # starts the relays once the request's reply is out
        self.tx = self.rx = 0
        self.end_fields: dict[str, Any] = {}
        self.started_at = 0.0
        self.tracker: TrackedSession | None = None  # its session_tracker in auth (not for sftp)

    def request(self, command: str | None, subsystem: str | None) -> bool:
        """Shell, exec or subsystem: open the node's channel with the same requests (transport thread)."""
        conn = self.conn
        if self.started or conn.upstream is None:
            return False
        try:
            up = conn.upstream.open_session(timeout=CONNECT_TIMEOUT)
            if self.pty:
                up.get_pty(self.term or "xterm", self.size[0], self.size[1], self.size[2], self.size[3])
            for key, value in self.env.items():
                with contextlib.suppress(paramiko.SSHException):
                    up.set_environment_variable(key, value)
            if subsystem is not None:
                up.invoke_subsystem(subsystem)
            elif command is not None:
                up.exec_command(command)
            else:
                up.invoke_shell()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            conn.refuse(conn.user.user if conn.user else "", f"{conn.node.nodename} refused the session: {exc}",
                        login=conn.login)
            return False
        self.started, self.command, self.subsystem, self.upstream = True, command, subsystem, up
        self.ready = self._begin
        return True

    def _begin(self) -> None:
        """Record and audit the start, then relay (after the request's reply went out)."""
        conn, forwarder = self.conn, self.conn.forwarder
        self.started_at = time.time()
        streamer = forwarder.streamer
        if forwarder.recording == "proxy-sync" and self.subsystem is None and streamer is not None:
            self.recorder = streamer.recorder(
                self.id, width=self.size[0], height=self.size[1],
                env={"TERM": self.term if self.pty else "", "SHELL": "/bin/sh"},
                title=f"{conn.login}@{conn.node.nodename}", command=self.command or "", started=self.started_at,
                on_give_up=self._give_up)
        elif forwarder.recording != "off" and self.subsystem is None:
            try:
                self.recorder = Recorder(forwarder.spool, self.id, width=self.size[0], height=self.size[1],
                                         env={"TERM": self.term if self.pty else "", "SHELL": "/bin/sh"},
                                         title=f"{conn.login}@{conn.node.nodename}", command=self.command or "",
                                         started=self.started_at)
            except OSError as exc:
                forwarder.proxy.log.error("cannot record session", sid=self.id, error=str(exc))
        recording = forwarder.recording if self.recorder is not None else "off"
        self.end_fields = start_fields(self.id, interactive=self.pty, command=self.command, recording=recording,
                                       started=self.started_at)
        try:
            write_sidecar(forwarder.spool, self.id, self.started_at, {**conn.fields(), **self.end_fields})
        except OSError as exc:
            forwarder.proxy.log.error("cannot write the session's sidecar", sid=self.id, error=str(exc))
        conn.emit("session.start", "ok", sid=self.id, proto="ssh", initial_command=[self.command or ""],
                  size=f"{self.size[0]}:{self.size[1]}", session_recording=recording)
        with forwarder._lock:
            forwarder.sessions.add(self)
        self._track(recording)
        outputs = [threading.Thread(target=self._down, args=(False,), daemon=True, name="proxy-agentless-out")]
        if not self.pty:
            outputs.append(threading.Thread(target=self._down, args=(True,), daemon=True, name="proxy-agentless-err"))
        for thread in outputs:
            thread.start()
        threading.Thread(target=self._up, daemon=True, name="proxy-agentless-in").start()
        threading.Thread(target=self._finish, args=(outputs,), daemon=True, name="proxy-agentless-end").start()

    def _track(self, recording: str) -> None:
        """Register the session's tracker (shells and commands; sftp is a file transfer)."""
        conn, keeper = self.conn, self.conn.forwarder.trackers
        if keeper is None or self.subsystem is not None or conn.user is None:
            return
        node = conn.node
        tracker = SessionTracker(
            session_id=self.id, server_id=node.uuid, owner=conn.user.user, login=conn.login, hostname=node.nodename,
            address=node.addr, cluster=conn.proxy.cluster_name, owner_roles=conn.user.roles,
            terminal_size=f"{self.size[0]}:{self.size[1]}" if self.pty else "", interactive=self.pty,
            command=self.command or "", recording=recording)
        self.tracker = keeper.start_session(tracker)
        self.tracker.add_participant(conn.user.user, "peer")

    def _record(self, data: bytes) -> None:
        if self.recorder is not None:
            with self._record_lock:
                self.recorder.write(data)

    def flush(self) -> None:
        if self.recorder is not None:
            with self._record_lock, contextlib.suppress(OSError):
                self.recorder.flush()

    def _give_up(self, reason: str) -> None:
        """(proxy-sync) The recording gave up (the flush thread or the event loop, so nothing here
        blocks): the output stops (:meth:`_down` shows nothing more), the node's channel is
        killed and closed on a thread, and :meth:`_finish` tells the user."""
        if self.end_fields.get("recording_error"):
            return
        self.end_reason = "interrupted"
        self.end_fields["recording_error"] = reason
        self.conn.proxy.log.error("ending an agentless session its recording cannot keep up with", sid=self.id,
                                  error=reason)

        def cut() -> None:
            self.signal("KILL")
            self.hangup()

        threading.Thread(target=cut, daemon=True, name="proxy-agentless-cut").start()

    def _paused(self) -> bool:
        """(proxy-sync) Wait while the recorder's buffer is full: the node's output stays in its
        channel (its window closes, sshd and the process block). True once the recording gave up."""
        recorder = self.recorder
        if not isinstance(recorder, StreamRecorder):
            return False
        while not recorder.accepting:
            if recorder.failure or self.end_fields.get("recording_error"):
                return True
            if self.upstream is None or self.upstream.closed or self.channel.closed:
                return False
            time.sleep(PAUSE_POLL)
        return bool(self.end_fields.get("recording_error"))

    def _down(self, stderr: bool) -> None:
        """Node -> user (stdout, or stderr), recorded; nothing is shown that is not recorded."""
        up, channel = self.upstream, self.channel
        assert up is not None
        receive = up.recv_stderr if stderr else up.recv
        send = channel.sendall_stderr if stderr else channel.sendall
        try:
            while not self._paused() and (data := receive(CHUNK)):
                self.tx += len(data)
                self._record(data)
                if self.end_fields.get("recording_error"):
                    break  # the recorder gave up: what it may not have taken is not shown
                send(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def _up(self) -> None:
        """User -> node; at the user's end of input, the node's too."""
        up, channel = self.upstream, self.channel
        assert up is not None
        try:
            while data := channel.recv(CHUNK):
                self.rx += len(data)
                up.sendall(data)
            up.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if channel.closed:
            with contextlib.suppress(Exception):
                up.close()

    def _finish(self, outputs: list[threading.Thread]) -> None:
        for thread in outputs:
            thread.join()
        up, channel = self.upstream, self.channel
        assert up is not None
        code: int | None = up.recv_exit_status()  # sshd sends it after the end of output; -1: none (a signal)
        error = self.end_fields.get("recording_error")
        if error:  # proxy-sync: the recording gave up (Teleport's strict mode message)
            self.hangup()
            with contextlib.suppress(Exception):
                channel.settimeout(MESSAGE_WAIT)
                text = f"\r\nteleport: Session terminating due to recording error: {error}. Closing session...\r\n"
                (channel.sendall if self.pty else channel.sendall_stderr)(text.encode())
        with contextlib.suppress(Exception):
            if code is not None and code >= 0:
                channel.send_exit_status(code)
            channel.shutdown_write()
            channel.close()
        with contextlib.suppress(Exception):
            up.close()
        self._report(code)

    def _report(self, code: int | None) -> None:
        conn, forwarder = self.conn, self.conn.forwarder
        conn.sessions.pop(self.channel.get_id(), None)
        emit_end(conn.emit, sid=self.id, command=self.command, code=code, tx=self.tx, rx=self.rx,
                 end_fields=self.end_fields, end_reason=self.end_reason,
                 recorded_bytes=self.recorder.bytes if self.recorder is not None else 0)
        with forwarder._lock:
            forwarder.sessions.discard(self)
        if self.tracker is not None:
            self.tracker.end()
        path: Path | None = None
        if isinstance(self.recorder, StreamRecorder):  # streamed: sent and completed from memory
            self.recorder.close()
        elif self.recorder is not None:
            with self._record_lock:
                part = self.recorder.close()
            try:
                path = finalize(part)
            except (OSError, ValueError) as exc:
                forwarder.proxy.log.warning("cannot finalize recording", sid=self.id, error=str(exc))
        forwarder.recorded(self.id, conn.node.uuid, path)

    def resize(self, width: int, height: int, pixelwidth: int, pixelheight: int) -> None:
        self.size = (width, height, pixelwidth, pixelheight)
        if self.tracker is not None:
            self.tracker.resize(width, height)
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.resize_pty(width, height, pixelwidth, pixelheight)

    def signal(self, name: str) -> bool:
        """Send ``signal`` to the node's channel (RFC 4254 6.9)."""
        up = self.upstream
        if up is None:
            return False
        message = paramiko.Message()
        message.add_byte(cMSG_CHANNEL_REQUEST)
        message.add_int(up.remote_chanid)
        message.add_string("signal")
        message.add_boolean(False)
        message.add_string(name)
        try:
            up.transport._send_user_message(message)
        except (OSError, EOFError, paramiko.SSHException):
            return False
        return True

    def hangup(self) -> None:
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                self.upstream.close()


def relay_forward(channel: paramiko.Channel, target: paramiko.Channel) -> None:
    """Copy bytes both ways between a user's ``direct-tcpip`` channel and the node's (two threads)."""

    def pump(src: paramiko.Channel, dst: paramiko.Channel) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
            dst.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if src.closed or dst.closed:
            for end in (src, dst):
                with contextlib.suppress(Exception):
                    end.close()

    threading.Thread(target=pump, args=(channel, target), daemon=True, name="proxy-agentless-fwd").start()
    threading.Thread(target=pump, args=(target, channel), daemon=True, name="proxy-agentless-fwd").start()
