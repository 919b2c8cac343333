"""The node service (``ssh_service``): joins the cluster, heartbeats, serves SSH on port 3022.

The async side (this module) keeps what the SSH threads need fresh — user CA keys, roles and
locks from auth, refreshed as soon as auth reports a change (long poll; a new lock ends the
connections it matches), and the node's labels
(static plus command output) — and carries what they produce back to auth: audit events
(in order, retried until stored) and finished recordings (uploaded, then deleted locally;
``session.upload`` audited). Sessions a crash cut off get their ``session.end`` at the next
start (``end_reason`` ``node_restart``) and their recordings are completed and uploaded.

Uploads (``PUT /v1/sessions/{sid}/recording``): a 404 (auth has no record of the session yet)
is retried with backoff for up to :data:`UPLOAD_UNKNOWN_FOR`; a 403 or 409 is final: the file is
kept as ``<sid>.cast.refused``, logged as an ERROR and counted in ``teleport_recordings_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import paramiko

from teleport_core.api.client import AuthClient, Credentials
from teleport_core.api.heartbeat import Backoff, Heartbeat
from teleport_core.api.join import JoinRequest, auth_addresses, identity_dir, obtain_identity
from teleport_core.api.renewal import HostCertRenewer
from teleport_core.config.values import parse_addr
from teleport_core.errors import AccessDenied, AlreadyExists, NotFound, TeleportError
from teleport_core.metrics import metrics_for
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.policy.locks import parse_lock
from teleport_core.policy.rolemap import parse_role_map
from teleport_core.policy.roles import Role, parse_role
from teleport_core.recording.spool import FINAL, claim, prepare_spool, recover, recover_sessions, remove_sidecar
from teleport_core.recording.stream import SYNC_MODES
from teleport_core.service import Service, ServiceContext
from teleport_core.state.audit import AuditEvent, new_event
from teleport_core.state.audit_spool import AuditSpool, export_pending
from teleport_node import tracking
from teleport_node.certs import HostCertKey, TrustedUserCA, load_ca_keys
from teleport_node.settings import CommandLabel, NodeSettings
from teleport_node.sshserver import NodeState, SSHServer
from teleport_node.streaming import Streamer
from teleport_node.tunnel import TunnelAgent

HEARTBEAT = 30.0  # seconds between keepalives of this node's entry (seventh jitter)
RETRY = 2.0
MAX_RETRY = 30.0
MAX_BACKOFF = 90.0  # seconds: heartbeat retries back off (full jitter) up to this
LABEL_TIMEOUT = 10.0
UPLOAD_AUDIT_WAIT = 30.0  # seconds an upload waits for this node's audit backlog (its session.start)
UPLOAD_UNKNOWN_FOR = 3600.0  # seconds a 404 upload (auth has no record of the session yet) is retried
REFUSED = ".cast.refused"  # a recording auth refused for good, kept in the spool
ELEVATION_CHECK = 1.0  # seconds between looks for connections whose access request expired
SPOOL_RESCAN = 60.0  # seconds between looks for finished recordings no upload holds (a reload's leftovers)


class NodeService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings: NodeSettings = ctx.settings
        self.log = ctx.log
        self.auth: AuthClient
        self.identity: LocalIdentity
        self.renewer: HostCertRenewer
        self.state: NodeState
        self.ssh: SSHServer | None = None
        self.cmd_labels: dict[str, str] = {}
        self._beat: Heartbeat | None = None
        self.loop: asyncio.AbstractEventLoop
        self.audit: AuditSpool
        self._emitting: set[asyncio.Task[None]] = set()
        self._uploads: asyncio.Queue[tuple[str, Path]] = asyncio.Queue()
        self._uploading: str | None = None  # the session whose recording is being sent (or retried)
        self._unknown: dict[str, tuple[float, float]] = {}  # sid -> (its first 404, the next delay)
        self._waiting: set[str] = set()  # recordings waiting to be queued again (after a 404)
        self._queued: set[str] = set()  # sessions whose recording is in the queue, not yet taken
        self._ending: set[asyncio.Task[None]] = set()  # sidecar removals waiting for their session.end
        self._tasks: list[asyncio.Task[None]] = []
        self.spool = ctx.config.data_dir / "log" / "upload" / "sessions"
        # teleport.proxy_server set: no listener, reached through a reverse tunnel to that proxy
        self.tunnelled = ctx.config.proxy_server is not None
        self.tunnel: TunnelAgent | None = None
        self.host_ca_keys: list[str] = []

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.ctx.config
        public = [a.host for a in self.settings.public_addrs]
        self.identity = await obtain_identity(
            config, JoinRequest("node", config.nodename, additional_principals=tuple(public)), self.log,
            self.ctx.resources.shared)
        addrs = auth_addresses(config, self.ctx.resources.shared)
        self.auth = AuthClient(addrs, credentials=Credentials(self.identity.client_context(), self.identity))
        # host CA rotations: new host certificates without a restart (checked on every CA change)
        self.renewer = HostCertRenewer(self.auth, self.identity, identity_dir(config, "node"), config.nodename,
                                       self.log, on_renewed=self._renewed, additional_principals=public)
        ping = await self._retrying("reach the auth server", self.auth.ping)
        recording = str(ping.get("session_recording", "node"))
        cluster = str(ping["cluster_name"])
        prepare_spool(self.spool)
        # events wait on this host's disk while auth is unreachable; delivered in order, once each
        self.audit = AuditSpool(config.data_dir / "log" / "audit-spool", self.auth.emit_event, self.log,
                                retry=RETRY, max_retry=MAX_RETRY)
        self._export_metrics()
        self.state = NodeState(
            cluster_name=cluster, host_uuid=self.identity.host_uuid, nodename=config.nodename, ca_keys=[],
            roles={}, labels=dict(self.settings.labels), recording=recording, spool=self.spool,
            emit=self._emit_threadsafe, hook=self.ctx.plugins.hook, recorded=self._recorded_threadsafe,
            trackers=tracking.keeper(self.auth, self.loop, self.log), streamer=Streamer(self.loop, self.auth, self.log))
        await self._retrying("load the user CA", self._load_cas)
        await self._retrying("load roles", self._load_roles)
        await self._retrying("load locks", self._load_locks)
        await self._run_commands(self.settings.commands)
        await self._recover_sessions()  # before serving: no session is live yet
        if os.geteuid() != 0:
            import pwd

            self.log.warning("the node is not running as root: it can only serve its own login",
                             login=pwd.getpwuid(os.geteuid()).pw_name)
        # paramiko logs every aborted handshake (port probes, scanners) as an ERROR traceback;
        # the node logs refusals and failures itself
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        limits = self.settings.connection_limits or self.ctx.config.connection_limits
        # the listener is inherited across a graceful reload (ctx.listen)
        listener = None if self.tunnelled else self.ctx.listen("node", self.settings.listen_addr)
        self.ssh = SSHServer(lambda: self.state, self._host_key(), listener, self.log,
                             limits, metrics=metrics_for(self.ctx.metrics))
        self.ssh.start()
        if self.tunnelled:
            await self._start_tunnel(cluster)
        for path in await asyncio.to_thread(recover, self.spool, set()):
            sid = path.name.removesuffix(".cast")
            self.log.info("uploading a recording left by an earlier run", sid=sid)
            self._queue_upload(sid, path)
        refused = self._recordings_refused()
        if refused:
            self.log.error("recordings refused by auth are kept in the spool", recordings_refused=refused,
                           path=str(self.spool))
        self._spawn(self.audit.run(), "node-audit")
        self._spawn(self.state.trackers.run(), "node-session-trackers")
        self._spawn(self._send_uploads(), "node-uploads")
        self._spawn(self._rescan_spool(), "node-spool-rescan")
        self._spawn(self._heartbeat(), "node-heartbeat")
        self._spawn(self.auth.follow("cert_authority", self._load_cas, self.log), "node-ca-watch")
        self._spawn(self.auth.follow("role", self._load_roles, self.log), "node-role-watch")
        self._spawn(self.auth.follow("lock", self._load_locks, self.log), "node-lock-watch")
        self._spawn(self._end_lapsed_elevation(), "node-access-request-expiry")
        for command in self.settings.commands:
            self._spawn(self._command_label(command), f"node-label-{command.name}")
        host, port = self.ssh.addr
        where = f"reverse tunnel through {self.ctx.config.proxy_server}" if self.tunnelled else f"{host}:{port}"
        self.log.info("node SSH service is ready", addr=where, host_uuid=self.identity.host_uuid,
                      cluster=cluster, session_recording=recording)

    async def stop_accepting(self) -> None:
        """Graceful reload: new connections go to the new process. A tunnelled node closes its
        reverse tunnel (the new process keeps its own; one per node at the proxy); its sessions'
        data connections carry on."""
        if self.ssh is not None and not self.tunnelled:
            await asyncio.to_thread(self.ssh.stop_accepting)
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.stop)

    async def drain(self) -> None:
        """Wait until every SSH connection to this node has ended (sessions, scp, forwards)."""
        waited = 0
        while self.ssh is not None and self.ssh.connections:
            if waited % 50 == 0:  # every 10 s
                self.log.info("draining: waiting for SSH connections to this node",
                              connections=len(self.ssh.connections))
            await asyncio.sleep(0.2)
            waited += 1

    async def stop(self) -> None:
        if self.ssh is not None:  # first: the sessions' clients are told while their connections last
            ended = await asyncio.to_thread(self.ssh.end_sessions)
            if ended:
                self.log.info("the node is stopping: ended its sessions", sessions=ended)
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.stop)
        if self.ssh is not None:
            await asyncio.to_thread(self.ssh.stop)
        with contextlib.suppress(asyncio.TimeoutError):  # deliver what the last sessions produced
            await asyncio.wait_for(self._drain(), 5)
        keeper = getattr(getattr(self, "state", None), "trackers", None)
        if keeper is not None:  # the ended sessions' trackers go from auth
            await keeper.stop(timeout=3)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(AttributeError):
            await self.auth.close()

    async def _drain(self) -> None:
        if not hasattr(self, "audit"):  # stopped before start got as far as the audit spool
            return
        while True:
            backlog = await asyncio.to_thread(self.audit.backlog)
            streaming = self.state.streamer.pending if hasattr(self, "state") else 0
            if not (self._emitting or self._ending or backlog or not self._uploads.empty()
                    or self._uploading is not None or streaming):
                return
            await asyncio.sleep(0.05)

    def _export_metrics(self) -> None:
        from prometheus_client import Gauge

        export_pending(self.ctx.metrics, "node", self.audit)  # teleport_audit_events_pending{service="node"}
        Gauge("teleport_recordings_pending", "Session recordings kept in the local spool, not yet uploaded",
              registry=self.ctx.metrics).set_function(self._recordings_pending)
        Gauge("teleport_recordings_refused", "Session recordings auth refused for good, kept in the local "
              "spool as <sid>.cast.refused", registry=self.ctx.metrics).set_function(self._recordings_refused)

    def _recordings_pending(self) -> int:
        """Finished recordings not uploaded yet: queued, the one being sent (or retried), and
        those auth did not know the session of yet (retried later)."""
        return self._uploads.qsize() + (self._uploading is not None) + len(self._waiting)

    def _recordings_refused(self) -> int:
        """Recordings auth refused for good: the ``.cast.refused`` files in the spool (so the
        count survives restarts; an operator deletes one once dealt with)."""
        try:
            return sum(1 for _ in self.spool.glob("*" + REFUSED))
        except OSError:
            return 0

    def diagnostics(self) -> dict[str, Any]:
        ssh = self.ssh
        return {
            "ssh_addr": f"{ssh.addr[0]}:{ssh.addr[1]}" if ssh and not self.tunnelled else None,
            "reverse_tunnel": (("connected" if self.tunnel.connected.is_set() else "reconnecting")
                               if self.tunnel else None),
            "reverse_tunnel_error": self.tunnel.last_error if self.tunnel else None,  # why it is down
            "connections": len(ssh.connections) if ssh else 0,
            "pending_audit_events": self.audit.backlog(),
            "pending_uploads": self._recordings_pending(),
            "refused_recordings": self._recordings_refused(),
        }

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    def _listen(self) -> tuple[str, int]:
        addr = self.settings.listen_addr
        return addr.host, addr.port

    def _host_key(self) -> HostCertKey:
        private = keys.load_private_key(self.identity.key_pem)
        inner = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.private_key_openssh(private).decode()))
        return HostCertKey(inner, self.identity.ssh_cert)

    @property
    def ssh_addr(self) -> tuple[str, int]:
        assert self.ssh is not None
        return self.ssh.addr

    def _advertised_addr(self) -> str:
        if self.tunnelled:
            return ""  # heartbeats say tunnel: true; the proxy dials through the tunnel
        if self.settings.public_addrs:
            return str(self.settings.public_addrs[0])
        host, port = self.ssh_addr
        advertise = self.ctx.config.advertise_ip  # host or host:port (--advertise-ip), as Teleport's
        if advertise:
            return str(parse_addr(advertise, default_port=port))
        try:
            unspecified = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified:
            host = "127.0.0.1"
        return f"{host}:{port}"

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        delay = RETRY
        while True:
            try:
                return await call()
            except TeleportError as exc:
                self.log.warning(f"cannot {what}, will retry", error=str(exc), retry_in=f"{delay:.0f}s")
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY, delay * 2)

    # -- reverse tunnel ------------------------------------------------------------------------------

    async def _start_tunnel(self, cluster: str) -> None:
        await self._retrying("load the host CA", self._load_host_ca)
        self._spawn(self.auth.follow("cert_authority", self._load_host_ca, self.log), "node-host-ca-watch")
        assert self.ssh is not None and self.ctx.config.proxy_server is not None
        self.tunnel = TunnelAgent(proxy_server=self.ctx.config.proxy_server, insecure=self.ctx.config.insecure,
                                  cluster=cluster, identity=lambda: self.identity,
                                  host_ca_keys=lambda: self.host_ca_keys, serve=self.ssh.serve_connection, log=self.log)
        self.tunnel.start()
        self.log.info("no SSH listener: this node is reached through a reverse tunnel",
                      proxy_server=str(self.ctx.config.proxy_server))

    async def _load_host_ca(self) -> None:
        """The host CA keys the proxy's certificate is checked against (all trusted keys during a rotation)."""
        host = await self.auth.get_cert_authority("host")
        self.host_ca_keys = list(host["ssh_public_keys"])

    # -- state from auth --------------------------------------------------------------------------

    async def _load_cas(self) -> None:
        user = await self.auth.get_cert_authority("user")
        self.state = attrs.evolve(self.state, ca_keys=load_ca_keys(user["ssh_public_keys"]),
                                  trusted_cas=await self._trusted_user_cas())
        await self.renewer.check()

    async def _trusted_user_cas(self) -> tuple[TrustedUserCA, ...]:
        """The user CAs of the root clusters this cluster trusts, enabled ones only (trusted clusters)."""
        try:
            found = await self.auth.call("GET", "/v1/remote_cas/user")
        except NotFound:  # an auth server without trusted clusters
            return ()
        out = []
        for ca in found:
            if not ca.get("enabled"):
                continue  # a disabled trust: nothing its CA signed is accepted
            try:
                out.append(TrustedUserCA(str(ca["cluster_name"]), tuple(load_ca_keys(ca["ssh_public_keys"])),
                                         parse_role_map(ca.get("role_map"), "role_map")))
            except (KeyError, TypeError, ValueError, TeleportError) as exc:
                self.log.error("unusable trusted user CA", cluster=str(ca.get("cluster_name")), error=str(exc))
        return tuple(out)

    async def _renewed(self, identity: LocalIdentity) -> None:
        """New host certificates (host CA rotation): new SSH connections get the new one."""
        self.identity = identity
        if self.ssh is not None:
            self.ssh.host_key = self._host_key()

    async def _load_roles(self) -> None:
        roles: dict[str, Role] = {}
        for data in await self.auth.get_roles():
            role = parse_role(data)
            roles[role.name] = role
        self.state = attrs.evolve(self.state, roles=roles)

    async def _end_lapsed_elevation(self) -> None:
        """End the connections whose access-request elevation ended (their certificate's end), within
        :data:`ELEVATION_CHECK` seconds: such a certificate grants nothing past it, even to a live session."""
        while True:
            await asyncio.sleep(ELEVATION_CHECK)
            if self.ssh is not None and self.ssh.elevation_lapsed():
                ended = await asyncio.to_thread(self.ssh.enforce_locks)
                if ended:
                    self.log.info("ended connections whose access request expired", connections=ended)

    async def _load_locks(self) -> None:
        """The cluster's locks; connections a lock now matches are ended (with its message)."""
        locks = tuple(parse_lock(data) for data in await self.auth.get_locks())
        self.state = attrs.evolve(self.state, locks=locks)
        if self.ssh is not None:
            ended = await asyncio.to_thread(self.ssh.enforce_locks)
            if ended:
                self.log.info("locks ended connections", connections=ended)

    # -- presence ------------------------------------------------------------------------------------

    def _node_entry(self) -> dict[str, Any]:
        """What this node announces (its full heartbeat)."""
        return {"uuid": self.identity.host_uuid, "nodename": self.ctx.config.nodename,
                "addr": self._advertised_addr(), "labels": dict(self.settings.labels),
                "cmd_labels": dict(self.cmd_labels), "tunnel": self.tunnelled}

    async def _heartbeat(self) -> None:
        """Announce this node, then keep its entry alive (teleport_core.api.heartbeat)."""
        self._beat = Heartbeat("node", self._node_entry, lambda entry: self.auth.upsert_node(entry),
                               lambda: self.auth.keep_alive_node(self.identity.host_uuid),
                               metrics_for(self.ctx.metrics), self.log, HEARTBEAT,
                               backoff=Backoff(RETRY, MAX_BACKOFF))
        await self._beat.run()

    async def _run_commands(self, commands: tuple[CommandLabel, ...]) -> None:
        for command in commands:
            await self._update_label(command)

    async def _update_label(self, command: CommandLabel) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(*command.command, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL,
                                                        stdin=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), LABEL_TIMEOUT)
            value = out.decode(errors="replace").strip()
        except (TimeoutError, OSError) as exc:
            self.log.warning("label command failed", label=command.name, error=str(exc) or type(exc).__name__)
            value = ""
        self.cmd_labels[command.name] = value
        self.state = attrs.evolve(self.state, labels={**self.settings.labels, **self.cmd_labels})

    async def _command_label(self, command: CommandLabel) -> None:
        while True:
            await asyncio.sleep(command.period.total_seconds())
            before = self.cmd_labels.get(command.name)
            await self._update_label(command)
            if self.cmd_labels.get(command.name) != before and self._beat is not None:
                self._beat.changed()  # announced now, by the heartbeat

    # -- audit events and recordings (fed from the SSH threads) ---------------------------------------

    def _emit_threadsafe(self, event: str, outcome: str, fields: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._spool_event, new_event(event, outcome, **fields))

    def _spool_event(self, event: AuditEvent) -> None:
        task = asyncio.create_task(self.audit.emit(event))
        self._emitting.add(task)
        task.add_done_callback(self._emitted)

    def _emitted(self, task: asyncio.Task[None]) -> None:
        self._emitting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("audit event not stored on disk", error=str(task.exception()))

    def _recorded_threadsafe(self, sid: str, path: Path | None) -> None:
        self.loop.call_soon_threadsafe(self._session_ended, sid, path)

    def _session_ended(self, sid: str, path: Path | None) -> None:
        """A session ended (its session.end handed to the spool just before): queue its recording,
        and remove its sidecar once that session.end is on disk."""
        if path is not None:
            self._queue_upload(sid, path)
        task = asyncio.create_task(self._forget_session(sid, set(self._emitting)))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _forget_session(self, sid: str, emitting: set[asyncio.Task[None]]) -> None:
        results = await asyncio.gather(*emitting, return_exceptions=True)
        if any(isinstance(result, BaseException) for result in results):
            return  # an event may not be on disk: the sidecar stays, the next start ends the session
        await asyncio.to_thread(remove_sidecar, self.spool, sid)

    async def _recover_sessions(self) -> None:
        """Emit the ``session.end`` of every session an earlier run left unended (a crash, a stop
        that ran out of time): ``end_reason`` ``node_restart``, dated at the recording's real end."""
        ended, unreadable = await asyncio.to_thread(recover_sessions, self.spool, set())
        for path in unreadable:
            self.log.error("removed an unreadable session sidecar: that session gets no session.end",
                           path=str(path))
        for session in ended:
            await self.audit.emit(new_event("session.end", "ok", when=session.stop, **session.fields))
            await asyncio.to_thread(remove_sidecar, self.spool, session.session_id)
            self.state.trackers.remove(session.session_id)  # its tracker, if auth still has it
            if session.fields.get("session_recording") in SYNC_MODES:  # streamed: auth completes what it has
                self.state.streamer.complete_lost(session.session_id)
            self.log.info("ended a session an earlier run left", sid=session.session_id, end_reason="node_restart",
                          session_stop=session.fields["session_stop"],
                          recorded_bytes=session.fields["recorded_bytes"])

    async def _send_uploads(self) -> None:
        while True:
            sid, path = await self._uploads.get()
            self._queued.discard(sid)
            self._uploading = sid
            claimed = await asyncio.to_thread(claim, path)  # None: the other process of a reload sends it
            try:
                if claimed is not None and await self._upload(sid, path):
                    size = path.stat().st_size
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    self._emit_threadsafe("session.upload", "ok", {
                        "sid": sid, "cluster_name": self.state.cluster_name, "server_id": self.identity.host_uuid,
                        "server_hostname": self.ctx.config.nodename, "size": size})
            finally:
                if claimed is not None:
                    os.close(claimed)
                self._uploading = None
                self._uploads.task_done()

    def _queue_upload(self, sid: str, path: Path) -> None:
        if sid not in self._queued:  # once in the queue at a time
            self._queued.add(sid)
            self._uploads.put_nowait((sid, path))

    async def _rescan_spool(self, every: float = SPOOL_RESCAN) -> None:
        """Queue the finished recordings in the spool that nothing here is sending or waiting to
        send: those the other process of a graceful reload finished but could not upload before it
        exited. A recording queued twice is sent once (:func:`claim`)."""
        while True:
            await asyncio.sleep(every)
            found = await asyncio.to_thread(lambda: sorted(self.spool.glob("*" + FINAL)))
            for path in found:
                sid = path.name.removesuffix(FINAL)
                if sid != self._uploading and sid not in self._waiting:
                    self._queue_upload(sid, path)

    async def _upload(self, sid: str, path: Path) -> bool:
        """Upload one recording; True once stored. Retried with backoff while auth is away. Auth
        takes a recording only from the node that started the session, once: wait for this
        node's audit backlog first (its ``session.start`` may still be on its way). A 404 (auth
        has no record of the session yet) is retried later, apart from the queue, for up to
        :data:`UPLOAD_UNKNOWN_FOR`; a 403 or 409 (or a 404 past that) is final: the file is kept
        as ``<sid>.cast.refused`` (auth audited and recorded the refusal)."""
        waited = 0.0
        while waited < UPLOAD_AUDIT_WAIT and await asyncio.to_thread(self.audit.backlog) > 0:
            await asyncio.sleep(0.2)
            waited += 0.2
        delay = RETRY
        while True:
            try:
                await self.auth.upload_recording(sid, path)
                self._unknown.pop(sid, None)
                return True
            except NotFound as exc:
                first, later = self._unknown.get(sid, (time.monotonic(), RETRY))
                if time.monotonic() - first >= UPLOAD_UNKNOWN_FOR:
                    self._unknown.pop(sid, None)
                    self._refused(sid, path, f"{exc} (for {UPLOAD_UNKNOWN_FOR / 60:.0f} minutes)")
                    return False
                self._unknown[sid] = (first, min(MAX_RETRY, later * 2))
                self.log.warning("auth has no record of the session yet, will retry the upload", sid=sid,
                                 error=str(exc), retry_in=f"{later:.0f}s")
                self._waiting.add(sid)
                self.loop.call_later(later, self._queue_again, sid, path)
                return False
            except (AccessDenied, AlreadyExists) as exc:
                self._unknown.pop(sid, None)
                self._refused(sid, path, str(exc))
                return False
            except (TeleportError, OSError) as exc:
                if not path.exists():
                    self._unknown.pop(sid, None)
                    self.log.error("recording vanished from the spool before its upload", sid=sid, path=str(path))
                    return False
                self.log.warning("cannot upload recording, kept in the spool, will retry", sid=sid, error=str(exc),
                                 recordings_pending=self._recordings_pending(), retry_in=f"{delay:.0f}s")
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY, delay * 2)

    def _queue_again(self, sid: str, path: Path) -> None:
        self._waiting.discard(sid)
        self._queue_upload(sid, path)

    def _refused(self, sid: str, path: Path, reason: str) -> None:
        """Keep a recording auth refused for good as ``<sid>.cast.refused`` (never retried)."""
        kept = path.with_name(sid + REFUSED)
        with contextlib.suppress(FileNotFoundError):
            path.rename(kept)
        self.log.error("auth refused the recording for good, kept locally", sid=sid, error=reason, path=str(kept),
                       recordings_refused=self._recordings_refused())
