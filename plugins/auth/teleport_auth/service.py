"""The auth service: the cluster's certificate authorities and source of truth.

On first start it names the cluster, generates the user and host CAs and the built-in roles
in cluster state; every start it issues its own host identity (``data_dir/keys/auth``, which
``tctl`` on this host uses) and serves the auth API over mutual TLS on ``listen_addr``.
Several auth servers may share one backend: whoever creates a CA first wins, the others load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from teleport_auth import ha
from teleport_auth.access_requests import AccessRequestStore, Announcer
from teleport_auth.api import ROUTES, build_app
from teleport_auth.authority import CAType, CertAuthority, ca_key, ca_pin, export_known_hosts, generate_authority
from teleport_auth.authz import RoleAuthorizer
from teleport_auth.hosts import HostNames, HostRecord, HostRegistry, check_request
from teleport_auth.issuer import DEFAULT_HOST_CERT_TTL, issue_ssh_host_cert, issue_tls_host_cert
from teleport_auth.locks import LockStore
from teleport_auth.presence import Presence
from teleport_auth.rolestore import RoleStore
from teleport_auth.rotation import Rotator, server_keys, server_signing_ca, signed_by
from teleport_auth.settings import CA_KEY_ALGORITHMS, AuthSettings
from teleport_auth.state import host_uuid
from teleport_auth.tokens import TokenStore, UserTokenStore, system_role
from teleport_auth.trusted import TrustStore
from teleport_auth.users import UserStore
from teleport_auth.workers import CAChanges, check_backend, connection_cap, keep_fresh, watch_cas
from teleport_core.api.join import LocalAuth
from teleport_core.config.values import certificate_names
from teleport_core.errors import AlreadyExists, AuditUnavailable, ConfigError, NotFound, TeleportError
from teleport_core.metrics import metrics_for
from teleport_core.net.httplimits import HTTPLimits, RouteLimit
from teleport_core.net.limits import RateLimiter
from teleport_core.net.shared_rates import SharedRateLimiter
from teleport_core.net.tlsserver import TLSServer
from teleport_core.net.workers import DATA_DIR_LOCK, WorkerPool, worker_index
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.policy.requests import AccessRequest
from teleport_core.service import Service, ServiceContext
from teleport_core.state.audit import AuditEvent, AuditLog, AuditSink, new_event
from teleport_core.state.audit_spool import FanOutSpool, export_pending
from teleport_core.state.backend import Backend, Item, utcnow
from teleport_core.state.change_feed import ChangeFeed

CLUSTER_NAME_KEY = b"/cluster_configuration/name"
AUTH_DNS_NAMES = ("teleport.cluster.local", "*.teleport.cluster.local", "localhost")
RENEW_BEFORE = dt.timedelta(days=30)
SHARED_RATES_FILE = "auth-rates"  # under data_dir: join rate buckets of auth worker processes
AUDIT_SPOOL_DIR = "auth-audit-spool"  # under data_dir/log: auth's events, durable before an action is answered
AUDIT_DELIVERY_WAIT = 1.0  # seconds an emit waits for its event to reach the sinks (while they work)
#: events each sink's sender hands over at once (in order): a sink that batches its durable writes
#: (audit_json: one write + fsync per batch) then stores many per fsync instead of one
AUDIT_DELIVERY_WINDOW = 256
AUDIT_PROBE_EVERY = 1.0  # seconds between checks that an unwritable audit spool can write again
AUDIT_DRAIN_ON_STOP = 5.0  # seconds a stop waits for the spool to reach the sinks; the rest waits on disk
AUDIT_RETRY, AUDIT_MAX_RETRY = 0.5, 5.0  # backoff of deliveries to a failing sink
WORKERS_STOP_TIMEOUT = 8.0  # seconds auth's worker processes get to stop before SIGKILL


class AuthService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings: AuthSettings = ctx.settings
        self.log = ctx.log
        # host registrations per client address (connection_limits.rates; failed attempts only)
        # (auth_service.workers > 1: in a file every auth process on this host shares, so a source gets
        # one allowance, not one per process)
        rates = (self.settings.connection_limits or ctx.config.connection_limits).rates
        self.register_rate = (SharedRateLimiter(rates, ctx.data_dir / SHARED_RATES_FILE) if self.settings.workers > 1
                              else RateLimiter(rates))
        self.server: TLSServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.backend: Backend
        self.audit: AuditLog
        self.cluster_name = self.settings.cluster_name
        self.host_uuid = ""
        self.now: Callable[[], dt.datetime] = utcnow  # the clock of CA rotations (tests replace it)
        self.rotation: Rotator
        self._ca_lock = asyncio.Lock()
        self.audit_spool: FanOutSpool | None = None
        self._audit_down: str | None = None  # why the audit spool cannot write (then actions are refused)
        self._audit_probed = 0.0
        self._audit_broken = asyncio.Event()
        self.stopping = asyncio.Event()  # set by stop(): long polls answer at once, not at their timeout
        self.worker = worker_index("auth_service")  # 0: the leader (teleport_auth.workers)
        self.workers: WorkerPool | None = None  # the leader's, with auth_service.workers > 1
        self.change_feed: ChangeFeed | None = None
        self.ca_changes: CAChanges | None = None  # with workers > 1: CA changes to apply before a request

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.backend = await self.ctx.resources.backend()
        # auth_service.workers > 1: caches catch up with the other workers' writes (teleport_auth.workers)
        self.change_feed = check_backend(self.backend, self.settings.workers)
        if self.change_feed is not None:
            self.ca_changes = watch_cas(self.change_feed, self.cluster_name)
        if self.leader:  # singletons run in the leader only (teleport_auth.workers.LEADER_ONLY)
            self._tasks.append(await ha.join_auth_servers(self))  # refuses a split of audit/recordings between auths
        self.audit = await self.ctx.resources.audit_log()
        self._open_audit_spool()
        await self._claim_cluster_name()
        self.user_ca = await self._load_or_create_ca(CAType.USER)
        self.host_ca = await self._load_or_create_ca(CAType.HOST)
        self.roles = RoleStore(self.backend)
        created = await self.roles.ensure_builtin() if self.leader else []
        if created:
            self.log.info("created built-in roles", roles=created)
        self.users = UserStore(self.backend)
        self.tokens = TokenStore(self.backend, list(self.settings.static_tokens))
        self.user_tokens = UserTokenStore(self.backend)
        self.presence = Presence(self.backend)
        self.authorizer = RoleAuthorizer(self.roles)
        self._tasks.append(asyncio.create_task(self.authorizer.watch(), name="auth-role-watch"))
        self._tasks.append(asyncio.create_task(self.users.watch(), name="auth-user-watch"))
        self.locks = LockStore(self.backend)
        self._tasks.append(asyncio.create_task(self.locks.watch(), name="auth-lock-watch"))
        self.access_requests = AccessRequestStore(self.backend)
        self.trust = TrustStore(self.backend, self.cluster_name)
        self.announcer = Announcer(self.ctx.plugins, self.log)
        self._tasks.append(asyncio.create_task(self.announcer.run(), name="auth-access-request-hook"))
        if self.leader:
            self._tasks.append(asyncio.create_task(self.access_requests.sweep(self._request_lapsed),
                                                   name="auth-access-request-sweep"))
        if self.change_feed is not None:
            keep_fresh(self.change_feed, locks=self.locks, authorizer=self.authorizer, users=self.users)
        self.host_uuid = host_uuid(self.ctx.data_dir)
        self.identity = await self._own_identity()
        self.hosts = HostRegistry(self.backend, self.cluster_name)
        if self.leader:
            await self._record_self()
        self._start_rotation()
        if self.leader:
            self._tasks.append(asyncio.create_task(self._check_session_storage(), name="auth-session-storage-check"))
            from teleport_auth.streamed import sweep  # streamed recordings whose host was lost (node-sync)

            self._tasks.append(asyncio.create_task(sweep(self), name="auth-streamed-sweep"))
        # each route's body limit, enforced by the listener before the API reads (or authenticates) anything
        limits = HTTPLimits(routes=tuple(RouteLimit(op.method, op.path, op.max_body) for op in ROUTES))
        sock = self.ctx.listen("auth", self.settings.listen_addr)  # inherited across a graceful reload
        sock.setblocking(False)
        # connection_limits.max_connections: of every auth process on this host together (teleport_auth.workers)
        cap = connection_cap((self.settings.connection_limits or self.ctx.config.connection_limits).max_connections,
                             self.settings.workers, self.ctx.data_dir)
        self.server = TLSServer(build_app(self), sock, self.server_context(),
                                limits=limits, on_refused=self.audit_refusal, cap=cap,
                                http1="httptools")  # no WebSocket routes: uvicorn's httptools protocol
        await self.server.start()
        if self.leader and self.settings.workers > 1:
            self.workers = WorkerPool("auth_service", self.settings.workers, "auth", str(self.settings.listen_addr),
                                      sock, self.ctx.resources.shared[DATA_DIR_LOCK], self.log,
                                      metrics=self.ctx.metrics)  # every worker's series on /metrics
            await self.workers.start()
        # services started after us in this process join through here, without a token
        listen = self.server.address
        self.ctx.resources.shared["auth"] = LocalAuth(f"{listen.connect_host}:{listen.port}", self.local_register,
                                                  self.host_uuid)
        self.log.info(
            "auth service is ready",
            cluster=self.cluster_name,
            listen_addr=str(self.server.address),
            ca_pin=ca_pin(self.host_ca),
        )

    async def stop_accepting(self) -> None:
        """Graceful reload: new API connections go to the new process; requests in flight here
        finish when :meth:`stop` follows (watch streams end, their clients reconnect there)."""
        if self.workers is not None:
            self.workers.drain()  # SIGQUIT: each worker stops accepting, finishes its requests and exits
        if self.server is not None:
            await self.server.stop_accepting()

    async def drain(self) -> None:
        """After :meth:`stop_accepting`: the worker processes finish their requests in flight."""
        if self.workers is not None:
            await self.workers.wait_drained()

    async def stop(self) -> None:
        self.stopping.set()  # else each /v1/changes long poll holds the graceful stop for its whole timeout
        workers = None
        if self.workers is not None:  # SIGTERM to each worker now; they stop beside this process
            workers = asyncio.create_task(self.workers.stop(WORKERS_STOP_TIMEOUT), name="auth-workers-stop")
        if self.server is not None:
            await self.server.stop()
            if self.server.cap is not None:
                self.server.cap.close()
        await self._drain_audit()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if workers is not None:
            await workers
        if self.change_feed is not None:
            self.change_feed.close()

    def diagnostics(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster_name,
            "listen_addr": str(self.server.address) if self.server else None,
            "host_uuid": self.host_uuid,
            "worker": self.worker,
            **({"workers": self.workers.diagnostics()} if self.workers is not None else {}),
        }

    @property
    def leader(self) -> bool:
        """Whether this process runs auth's singletons (worker 0: the process the user started)."""
        return self.worker == 0

    @property
    def address(self) -> str:
        assert self.server is not None
        return str(self.server.address)

    async def _check_session_storage(self) -> None:
        """Open the session storage (``audit_sessions_uri``) once at start, only to report it: an
        unreachable one (S3 down) is logged with its URL and what failed, and stops nothing.
        Recordings wait in the nodes' spools; each upload opens the storage again."""
        try:
            await self.ctx.resources.session_storage()
        except TeleportError as exc:
            self.log.error("session storage is unreachable; recordings wait on the nodes until it answers",
                           uri=self.ctx.config.storage.audit_sessions_uri, error=str(exc))

    # -- bootstrap ----------------------------------------------------------------------------------

    async def _claim_cluster_name(self) -> None:
        wanted = self.settings.cluster_name
        try:
            await self.backend.create(Item(CLUSTER_NAME_KEY, wanted.encode()))
            self.log.info("created cluster", cluster=wanted)
        except AlreadyExists:
            stored = (await self.backend.get(CLUSTER_NAME_KEY)).value.decode()
            if stored != wanted:
                raise ConfigError(
                    "auth_service.cluster_name",
                    f"the cluster is named {stored!r} in its stored state; a cluster cannot be renamed "
                    f"(set cluster_name: {stored})",
                ) from None

    async def _load_or_create_ca(self, kind: CAType) -> CertAuthority:
        key = ca_key(kind, self.cluster_name)
        try:
            return CertAuthority.from_json((await self.backend.get(key)).value)
        except NotFound:
            pass
        ssh_alg, tls_alg = CA_KEY_ALGORITHMS[self.settings.ca_key_algorithm]
        ca = await asyncio.to_thread(generate_authority, kind, self.cluster_name, ssh_alg, tls_alg)
        try:
            await self.backend.create(Item(key, ca.to_json()))
        except AlreadyExists:  # another auth server created it first: use theirs
            return CertAuthority.from_json((await self.backend.get(key)).value)
        self.log.info("generated certificate authority", type=kind.value, cluster=self.cluster_name)
        return ca

    def _start_rotation(self) -> None:
        """Follow CA changes of every auth server, and advance auto rotations when due."""
        self.rotation = Rotator(self.backend, self.cluster_name, emit=self.emit, on_change=self.apply_cas,
                                now=lambda: self.now())
        actor = f"{self.host_uuid}.{self.cluster_name}"
        self._tasks.append(asyncio.create_task(self.rotation.watch(), name="auth-ca-watch"))
        if self.leader:
            self._tasks.append(asyncio.create_task(self.rotation.run_auto(actor), name="auth-ca-auto-rotate"))

    async def apply_cas(self, need: int = 0) -> None:
        """After a CA change (ours or another auth server's): reload the CAs, re-issue our own
        identity if it no longer matches them, and serve new handshakes with the new certificate
        and trusted CAs. ``need``: the :class:`~teleport_auth.workers.CAChanges` count to reach
        (nothing to do when a reload that ended meanwhile reached it)."""
        async with self._ca_lock:
            changes = self.ca_changes
            if changes is not None and need and changes.applied >= need:
                return
            seen = changes.seen if changes is not None else 0  # counted before this reload reads them
            await self.reload_cas()
            self.identity = await self._own_identity()
            if self.server is not None:
                self.server.set_context(self.server_context())
            if changes is not None:
                changes.applied = max(changes.applied, seen)

    async def fresh_cas(self) -> None:
        """With auth workers: apply every CA change committed so far, by any process, before the
        caller is identified or anything is signed (one ``PRAGMA`` when none happened). One
        process (``workers: 1``) relies on its CA watcher alone, as before."""
        if self.ca_changes is not None and (need := self.ca_changes.pending()):
            await self.apply_cas(need)

    async def reload_cas(self) -> None:
        """Re-read both CAs from cluster state (after a rotation, possibly by another auth server)."""
        self.user_ca = CertAuthority.from_json((await self.backend.get(ca_key(CAType.USER, self.cluster_name))).value)
        self.host_ca = CertAuthority.from_json((await self.backend.get(ca_key(CAType.HOST, self.cluster_name))).value)

    def _addresses(self) -> tuple[list[str], list[str]]:
        return certificate_names((self.settings.listen_addr, *self.settings.public_addrs), AUTH_DNS_NAMES,
                                 ("127.0.0.1", "::1"))

    async def _own_identity(self) -> LocalIdentity:
        """Reuse ``data_dir/keys/auth`` while it trusts exactly the host CA's trusted certificates
        and was signed by the keys servers' certificates come from in this rotation phase, else re-issue."""
        folder = self.ctx.data_dir / "keys" / "auth"
        current = {pem.strip() for pem in self.host_ca_pems()}
        signer = server_signing_ca(self.host_ca)
        try:
            existing = LocalIdentity.load(folder)
        except Exception:
            existing = None
        if (existing is not None and {p.decode().strip() for p in existing.tls_ca_pems} == current
                and signed_by(existing.tls_cert_pem, server_keys(self.host_ca))):
            return existing
        key = keys.generate_private_key("ed25519")
        public = keys.public_key_openssh(key.public_key())
        dns, ips = self._addresses()
        hook = self.ctx.plugins.hook
        tls = issue_tls_host_cert(signer, hook, public_key=public, host_uuid=self.host_uuid, role="Auth",
                                  dns_names=dns, ip_addresses=ips)
        ssh = issue_ssh_host_cert(signer, hook, public_key=public, host_uuid=self.host_uuid,
                                  nodename=self.ctx.config.nodename, role="Auth", additional_principals=dns)
        identity = LocalIdentity(
            key_pem=keys.private_key_pem(key),
            tls_cert_pem=tls.data,
            tls_ca_pems=tuple(pem.encode() for pem in self.host_ca_pems()),
            ssh_cert=ssh.data.decode().strip(),
            known_hosts=tuple(export_known_hosts(self.host_ca).splitlines()),
            host_uuid=self.host_uuid,
        )
        identity.save(folder)
        self.log.info("issued the auth server's own identity", host_uuid=self.host_uuid, path=str(folder))
        return identity

    async def _record_self(self) -> None:
        """Record this auth server in the host registry (its nodename and names, role Auth)."""
        dns, ips = self._addresses()
        names = HostNames(tuple(dns), tuple(dns), tuple(ips))
        record = await self.hosts.record_self(self.host_uuid, self.ctx.config.nodename, "Auth", names,
                                              utcnow() + DEFAULT_HOST_CERT_TTL)
        if not record.owns_nodename:
            self.log.warning("another host holds this auth server's nodename; hosts of this process are "
                             "reachable by host UUID", nodename=record.nodename, host_uuid=self.host_uuid)

    # -- shared helpers for the API -----------------------------------------------------------------

    async def register_host(self, nodename: str, role: str, public_key: str, names: HostNames, *,
                            token_roles: Sequence[str] = (), uuid: str = "",
                            need_token_role: bool = True) -> dict[str, Any]:
        """Record a joining host and issue its certificates (the caller checked its token or
        certificate, and the names with :func:`teleport_auth.hosts.check_request`): a new host
        gets a new UUID; with ``uuid``, a registered host adds ``role``. The answer of
        ``/v1/register``. ``ValueError`` for a bad key; :class:`~teleport_auth.hosts.HostConflict`."""
        keys.load_public_key(public_key)  # a bad key fails before anything is recorded
        expires = utcnow() + DEFAULT_HOST_CERT_TTL
        if uuid:
            record = await self.hosts.add_role(uuid, role, nodename, names, expires, need_token_role=need_token_role)
        else:
            record = await self.hosts.create(nodename, role, names, token_roles, expires)
        return await asyncio.to_thread(self.issue_host_identity, record, role, public_key)

    def issue_host_identity(self, record: HostRecord, role: str, public_key: str) -> dict[str, Any]:
        """Host certificates for ``role`` of a registered host, with exactly the names auth
        recorded for it, and the trust bundle. ``ValueError`` for a bad key or name."""
        names = record.roles[role]
        hook = self.ctx.plugins.hook
        signer = server_signing_ca(self.host_ca)  # the keys servers' certificates come from in this phase
        metrics = metrics_for(self.ctx.metrics)
        metrics.generate_requests.inc()
        with metrics.generate_seconds.time():
            ssh = issue_ssh_host_cert(signer, hook, public_key=public_key, host_uuid=record.uuid,
                                      nodename=record.nodename, role=role,
                                      additional_principals=[*names.principals, *names.dns_names,
                                                             *names.ip_addresses])
            tls = issue_tls_host_cert(signer, hook, public_key=public_key, host_uuid=record.uuid, role=role,
                                      dns_names=names.dns_names, ip_addresses=names.ip_addresses)
        metrics.certificates_issued.labels(kind="host", format="ssh").inc()
        metrics.certificates_issued.labels(kind="host", format="tls").inc()
        return {
            "host_uuid": record.uuid,
            "ssh_cert": ssh.data.decode().strip(),
            "tls_cert": tls.data.decode(),
            "host_ca_pems": self.host_ca_pems(),
            "user_ca_pems": self.user_ca_pems(),
            "known_hosts": export_known_hosts(self.host_ca).splitlines(),
            "user_ca_ssh_keys": [k.ssh_public_key_line for k in self.user_ca.trusted],
            "cluster_name": self.cluster_name,
        }

    async def local_register(self, body: dict[str, Any]) -> dict[str, Any]:
        """Join a server running in this same process: no token or pin (the process trusts
        itself). It gets this auth server's host UUID (one process, one host, as in Teleport)
        and the names are checked as for ``/v1/register``; the same audit event."""
        await self.check_audit()  # a join issues certificates: not while its event cannot be recorded
        role = system_role(body["role"])
        nodename = body["nodename"]
        try:
            names = check_request(nodename, body.get("additional_principals", ()), body.get("dns_names", ()),
                                  body.get("ip_addresses", ()), self.cluster_name)
            answer = await self.register_host(nodename, role, body["public_key"], names, uuid=self.host_uuid,
                                              need_token_role=False)
        except TeleportError as exc:
            await self.emit(new_event("instance.join", "failure", node_name=nodename, role=role, method="local",
                                      error=str(exc), cluster_name=self.cluster_name))
            raise
        await self.emit(new_event("instance.join", node_name=nodename, role=role,
                                  host_id=answer["host_uuid"], method="local", cluster_name=self.cluster_name))
        return answer

    def host_ca_pems(self) -> list[str]:
        return [keys_.tls_cert_pem.decode() for keys_ in self.host_ca.trusted]

    def user_ca_pems(self) -> list[str]:
        return [keys_.tls_cert_pem.decode() for keys_ in self.user_ca.trusted]

    def server_context(self) -> Any:
        """TLS server context: our host certificate; client certificates from either CA verified."""
        context = self.identity.server_context()
        context.load_verify_locations(cadata="".join(self.user_ca_pems()))
        return context

    def refused(self, peer: str, reason: str) -> None:
        """Audit a caller refused before any identity was known (no client certificate), at most
        once per source and period, as the listener does for refused TLS handshakes."""
        if self.server is not None:
            self.server.refused(peer, reason)

    async def audit_refusal(self, peer: str, reason: str) -> None:
        """An ``auth`` failure event (T3007W) for a refusal below the API (a TLS handshake refused
        for its client certificate) or before it knew the caller."""
        fields = {"user": "", "error": reason, "cluster_name": self.cluster_name, "server_id": self.host_uuid,
                  "addr.remote": peer}
        try:
            await self.emit(new_event("auth", "failure", **fields))
        except AuditUnavailable as exc:  # the connection was refused anyway; nobody to answer
            self.log.error("refusal not audited", peer=peer, reason=reason, error=str(exc))

    # -- audit: durable before acknowledged, fails closed -------------------------------------------

    def _open_audit_spool(self) -> None:
        """Auth's events (its own and the hosts') go to ``data_dir/log/auth-audit-spool`` first, one
        durable queue per sink; each sink's sender delivers them in order, retrying with backoff
        while that sink fails (the others go on). Calls wait for the first searchable sink."""
        names, sinks = self.audit.names, self.audit.sinks
        primary = next((name for name, sink in zip(names, sinks, strict=True) if sink.searchable), names[0])
        self.audit_spool = FanOutSpool(self.ctx.data_dir / "log" / AUDIT_SPOOL_DIR,
                                       {name: self._to_sink(sink) for name, sink in zip(names, sinks, strict=True)},
                                       self.log, primary=primary, retry=AUDIT_RETRY, max_retry=AUDIT_MAX_RETRY,
                                       window=AUDIT_DELIVERY_WINDOW,
                                       lines={name: sink.emit_lines for name, sink in zip(names, sinks, strict=True)},
                                       stores={name: sink.emit_lines_now
                                               for name, sink in zip(names, sinks, strict=True) if sink.lines_now})
        export_pending(self.ctx.metrics, "auth", self.audit_spool)
        self._tasks.append(asyncio.create_task(self.audit_spool.run(), name="auth-audit-spool"))
        self._tasks.append(asyncio.create_task(self._watch_audit(), name="auth-audit-probe"))

    def _to_sink(self, sink: AuditSink) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def send(data: dict[str, Any]) -> None:
            try:
                event = AuditEvent.from_dict(data)
            except ValueError as exc:  # never written by us: drop it rather than block the events behind it
                self.log.error("skipping an unreadable event in the audit spool", error=str(exc))
                return
            await sink.emit(event)

        return send

    async def _request_lapsed(self, request: AccessRequest) -> None:
        """An access request lapsed and was removed (the sweeper): audited (T5001I) and announced."""
        with contextlib.suppress(TeleportError):  # the sweep goes on; the hook still hears of it
            await self.emit(new_event("access_request.update", cluster_name=self.cluster_name, id=request.id,
                                      user=request.user, roles=list(request.roles), state=request.state,
                                      expired=True, reason="expired"))
        self.announcer.announce(request, "expired")

    async def emit(self, event: AuditEvent) -> None:
        """Write an audit event: returns once it is durable in the audit spool (and, while the sinks
        work, in the log; bounded wait). :class:`AuditUnavailable` when the spool cannot write: the
        action is then not acknowledged, and auth refuses state-changing calls until it can."""
        metrics = metrics_for(self.ctx.metrics)
        if self.audit_spool is None:
            metrics.audit_failed.inc()
            raise AuditUnavailable("the auth service has not opened its audit spool")
        try:
            with metrics.audit_emit_seconds.time():
                await self.audit_spool.emit(event, wait_delivered=AUDIT_DELIVERY_WAIT)
        except OSError as exc:
            metrics.audit_failed.inc()
            raise self._audit_failed(exc) from exc
        metrics.audit_emit.inc()
        if self._audit_down is not None:
            self._audit_recovered()

    async def check_audit(self) -> None:
        """Refuse (:class:`AuditUnavailable`) while the audit spool cannot write; checks again
        at most once every :data:`AUDIT_PROBE_EVERY` seconds. Called before state-changing calls."""
        if self._audit_down is None:
            return
        if time.monotonic() - self._audit_probed >= AUDIT_PROBE_EVERY:
            await self._probe_audit()
        if self._audit_down is not None:
            raise AuditUnavailable(self._audit_down)

    def _audit_failed(self, exc: OSError) -> AuditUnavailable:
        assert self.audit_spool is not None
        cause = f"cannot write the audit spool {self.audit_spool.directory}: {exc.strerror or exc}"
        error = AuditUnavailable(cause)
        if self._audit_down is None:
            self.log.error("audit log unavailable: refusing state-changing calls until it can write",
                           error=str(error))
        self._audit_down = cause
        self._audit_probed = time.monotonic()
        self.ctx.set_ready(False, str(error))
        self._audit_broken.set()
        return error

    def _audit_recovered(self) -> None:
        self._audit_down = None
        self._audit_broken.clear()
        self.ctx.set_ready(True)
        self.log.info("audit log available again: accepting state-changing calls")
        if self.audit_spool is not None:
            self.audit_spool.nudge()

    async def _probe_audit(self) -> None:
        assert self.audit_spool is not None
        self._audit_probed = time.monotonic()
        try:
            await asyncio.to_thread(self.audit_spool.probe)
        except OSError as exc:
            self._audit_failed(exc)
        else:
            self._audit_recovered()

    async def _watch_audit(self) -> None:
        """While the spool cannot write, check it every second, so auth is ready again without a caller."""
        while True:
            await self._audit_broken.wait()
            await asyncio.sleep(AUDIT_PROBE_EVERY)
            if self._audit_down is not None and time.monotonic() - self._audit_probed >= AUDIT_PROBE_EVERY:
                await self._probe_audit()

    async def _drain_audit(self) -> None:
        """On stop: give the sender up to :data:`AUDIT_DRAIN_ON_STOP` seconds to empty the spool;
        what is left stays on disk and is delivered at the next start."""
        spool = self.audit_spool
        if spool is None:
            return
        spool.nudge()
        deadline = time.monotonic() + AUDIT_DRAIN_ON_STOP
        backlog = await asyncio.to_thread(spool.backlog)
        while backlog and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            backlog = await asyncio.to_thread(spool.backlog)
        if backlog:
            self.log.warning("audit events kept in the spool, delivered at the next start", backlog=backlog,
                             spool=str(spool.directory))
