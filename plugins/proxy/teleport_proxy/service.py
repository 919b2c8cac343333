"""The proxy service: joins the cluster with a ``proxy`` token, then serves HTTPS (web API,
login, invites, node listing) and SSH (forwarding users' end-to-end encrypted sessions to nodes).

The proxy holds no CA private keys: logins are forwarded to auth with the proxy's identity.
It keeps the user CA public keys, the roles and the locks from auth (refreshed when auth reports
a change) so it can check user certificates, show and reach only the nodes a user's roles allow,
and refuse (and cut off) locked users.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from teleport_core.api.client import AuthClient, Credentials
from teleport_core.api.heartbeat import Backoff, Heartbeat
from teleport_core.api.join import JoinRequest, auth_addresses, identity_dir, obtain_identity
from teleport_core.api.renewal import HostCertRenewer
from teleport_core.config.values import NetAddr, certificate_names, parse_addr
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.files import write_private
from teleport_core.metrics import metrics_for
from teleport_core.net.httplimits import LOGIN_MAX_BODY, HTTPLimits, RouteLimit
from teleport_core.net.limits import RateLimiter, rate_limited
from teleport_core.net.tlsserver import TLSServer
from teleport_core.pki.identity import LocalIdentity
from teleport_core.policy.access import SSH, AccessRequest, Decision, Identity, IdentityKind, check_access
from teleport_core.policy.locks import Lock, lock_in_force, lock_message, parse_lock
from teleport_core.policy.roles import Role, RoleSet, parse_role
from teleport_core.service import Service, ServiceContext
from teleport_core.state.audit import new_event
from teleport_core.state.audit_spool import AuditSpool, export_pending
from teleport_core.state.nodes import AmbiguousHost, NodeInfo, NodeNotFound, find_nodes
from teleport_proxy.certs import UserCert, self_signed
from teleport_proxy.cluster_metrics import ClusterTunnels
from teleport_proxy.clusters import Clusters
from teleport_proxy.forwarder import Forwarder
from teleport_proxy.headers import HEADERS as SECURITY_HEADERS
from teleport_proxy.mux import WebMux
from teleport_proxy.settings import ProxySettings
from teleport_proxy.sshserver import CertHostKey, SSHProxyServer, paramiko_key
from teleport_proxy.tunnel import TunnelServer
from teleport_proxy.web import build_app
from teleport_proxy.webterminal import WebTerminals

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

HEARTBEAT = 60.0  # seconds between keepalives of this proxy's entry (seventh jitter)
MAX_BACKOFF = 90.0  # seconds: heartbeat retries back off (full jitter) up to this
NODE_CACHE = 2.0  # seconds a node list from auth is reused (a lookup that finds nothing refetches)
MISS_REFRESH = 0.2  # a lookup that finds nothing refetches a list older than this
VISIBLE_CACHE = 1024
RETRY = 2.0
#: the web port's body limits (64 KiB for the rest): logins and invites carry a few short fields
WEB_LIMITS = HTTPLimits(routes=(RouteLimit("POST", "/v1/webapi/ssh/certs", LOGIN_MAX_BODY),
                                RouteLimit("PUT", "/v1/webapi/users/password/token", LOGIN_MAX_BODY)),
                        headers=SECURITY_HEADERS)  # the listener's own 413s carry them too
ELEVATION_CHECK = 1.0  # seconds between looks for routed certificates whose access request expired
LOCK_CUT_GRACE = 2.0  # seconds nodes get to end a newly locked user's sessions (with the message) before the cut


class ProxyService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings: ProxySettings = ctx.settings
        self.log = ctx.log
        # the SSH and tunnel listeners' limits and the web login rate (teleport_core.net.limits)
        self.limits = self.settings.connection_limits or ctx.config.connection_limits
        self.login_rate = RateLimiter(self.limits.rates)  # web logins per client address
        self.auth: AuthClient
        self.identity: LocalIdentity
        self.renewer: HostCertRenewer
        self.cluster_name = ""
        self.second_factor = "otp"
        self.user_ca_keys: tuple[str, ...] = ()
        self.user_ca_pems: tuple[str, ...] = ()
        self.host_known_hosts: tuple[str, ...] = ()
        self.host_ca_keys: tuple[str, ...] = ()
        self.tunnel: Any = None  # teleport_proxy.tunnel.TunnelServer
        self.roles: Mapping[str, Role] = {}
        self.locks: tuple[Lock, ...] = ()  # the cluster's locks, followed from auth
        self._cutting: asyncio.Task[None] | None = None
        self._elevation_ends: set[dt.datetime] = set()  # the ends of the elevated certificates routed
        self.web: TLSServer | None = None
        self.web_terminals = WebTerminals()  # the web UI's open terminals (cut when locked, drained)
        self.mux: Any = None  # teleport_proxy.mux.WebMux
        self.ssh: Any = None
        self.agentless: Forwarder | None = None  # teleport_proxy.forwarder: agentless OpenSSH nodes
        self.clusters = Clusters(self)  # trusted clusters: remote sites (root), tunnel agents (leaf)
        self.loop: asyncio.AbstractEventLoop
        self._web_cert: tuple[str, str] = ("", "")
        self._tasks: list[asyncio.Task[None]] = []
        self._nodes: tuple[float, list[NodeInfo]] = (0.0, [])
        self._nodes_lock = asyncio.Lock()
        self._visible: dict[Any, list[NodeInfo]] = {}

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.ctx.config
        dns, ips = self._names()
        self.identity = await obtain_identity(
            config, JoinRequest("proxy", config.nodename, dns_names=tuple(dns), ip_addresses=tuple(ips),
                                additional_principals=tuple(dns + ips)), self.log, self.ctx.resources.shared)
        addrs = auth_addresses(config, self.ctx.resources.shared)
        self.auth = AuthClient(addrs, credentials=Credentials(self.identity.client_context(), self.identity))
        # host CA rotations: new host certificates without a restart (checked on every CA change)
        self.renewer = HostCertRenewer(self.auth, self.identity, identity_dir(config, "proxy"), config.nodename,
                                       self.log, on_renewed=self._renewed, dns_names=dns, ip_addresses=ips,
                                       additional_principals=dns + ips)
        # denials wait on this host's disk while auth is unreachable; delivered in order, once each
        self.audit = AuditSpool(self.ctx.config.data_dir / "log" / "proxy-audit-spool", self.auth.emit_event, self.log)
        export_pending(self.ctx.metrics, "proxy", self.audit)  # teleport_audit_events_pending{service="proxy"}
        self._tasks.append(asyncio.create_task(self.audit.run(), name="proxy-audit"))
        ping = await self.auth.ping()
        self.cluster_name = str(ping["cluster_name"])
        self.second_factor = str(ping.get("auth", {}).get("second_factor", "otp"))
        await self._load_cas()
        await self._load_roles()
        await self._load_locks()
        for kind, reload in (("cert_authority", self._load_cas), ("role", self._load_roles),
                             ("lock", self._load_locks)):
            task = asyncio.create_task(self.auth.follow(kind, reload, self.log), name=f"proxy-{kind}-watch")
            self._tasks.append(task)
        self._tasks.append(asyncio.create_task(self._cut_lapsed_elevation(), name="proxy-access-request-expiry"))

        # agentless OpenSSH nodes: this proxy terminates, records and forwards their sessions
        self.agentless = Forwarder(self, config.data_dir / "log" / "upload" / "proxy-sessions")
        self._tasks.extend(await self.agentless.start())
        # the listeners are inherited across a graceful reload (ctx.listen)
        self.ssh = SSHProxyServer(self, self.ctx.listen("proxy:ssh", self.settings.listen_addr))
        self.ssh.start()
        # multiplex: no tunnel port; agents reach the tunnel server on the web port (mux, ALPN)
        tunnel_sock = (None if self.settings.proxy_listener_mode == "multiplex"
                       else self.ctx.listen("proxy:tunnel", self.settings.tunnel_listen_addr))
        self.tunnel = TunnelServer(self, tunnel_sock, self.ssh.host_key)
        self.tunnel.start()
        self._tasks.extend(await self.clusters.start())
        from prometheus_client import Gauge

        Gauge("reverse_tunnels_connected", "Nodes connected to this proxy through a reverse tunnel (the name "
              "before teleport_reverse_tunnels_connected; kept as an alias)",
              registry=self.ctx.metrics).set_function(lambda: len(self.tunnel.tunnels))
        metrics_for(self.ctx.metrics).reverse_tunnels.labels(type="node").set_function(lambda: len(self.tunnel.tunnels))
        self.ctx.metrics.register(ClusterTunnels(self))  # remote_clusters{cluster} (root), trusted_clusters (leaf)
        # TLS routing: the web port also carries tsh's SSH (ALPN teleport-proxy-ssh) and the auth API
        self.mux = WebMux(self)
        web_sock = self.ctx.listen("proxy:web", self.settings.web_listen_addr)
        web_sock.setblocking(False)
        self.web = TLSServer(build_app(self), web_sock, self._web_context(),
                             router=self.mux.route, limits=WEB_LIMITS,
                             on_refused=lambda peer, reason: self.audit_denial("", reason, peer))
        await self.web.start()
        await self._start_heartbeat()
        self.log.info("proxy service is ready", cluster=self.cluster_name, web_addr=str(self.web.address),
                      ssh_addr=str(self.ssh_address), tunnel_addr=str(self.tunnel_address))

    async def stop_accepting(self) -> None:
        """Graceful reload: new connections go to the new process. The reverse tunnels' control
        connections are closed, so their nodes dial again and land on the new proxy; sessions
        already routed (their own data connections) carry on."""
        if self.web is not None:
            await self.web.stop_accepting()
        if self.ssh is not None:
            await asyncio.to_thread(self.ssh.stop_accepting)
        await asyncio.to_thread(self.clusters.stop)  # the new process dials the roots' tunnels
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.stop_accepting)

    def live_sessions(self) -> int:
        """SSH connections through this proxy: on the SSH port, routed on the web port, web terminals."""
        routed = len(self.mux.ssh_connections()) if self.mux is not None else 0
        return (self.ssh.connections if self.ssh is not None else 0) + routed + len(self.web_terminals)

    async def drain(self) -> None:
        """Wait until the users' SSH connections through this proxy have ended."""
        waited = 0
        while live := self.live_sessions():
            if waited % 50 == 0:  # every 10 s
                self.log.info("draining: waiting for SSH connections through this proxy", connections=live)
            await asyncio.sleep(0.2)
            waited += 1

    async def stop(self) -> None:
        if self.web is not None:
            await self.web.stop()
        if self.mux is not None:
            self.mux.close()
        if self.ssh is not None:
            await asyncio.to_thread(self.ssh.stop)
        if self.tunnel is not None:
            await asyncio.to_thread(self.tunnel.stop)
        await asyncio.to_thread(self.clusters.stop)
        if self.agentless is not None:
            await asyncio.to_thread(self.agentless.stop)
            await self.agentless.close()
        if self._cutting is not None:
            self._tasks.append(self._cutting)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(AttributeError):
            await self.auth.close()

    def diagnostics(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster_name,
            "web_addr": str(self.web.address) if self.web else None,
            "ssh_addr": str(self.ssh_address) if self.ssh else None,
            "ssh_connections": self.ssh.connections if self.ssh else 0,
            "tls_routed_connections": len(self.mux.live) if self.mux else 0,
            "tunnel_addr": str(self.tunnel_address) if self.tunnel and self.tunnel.sock else None,
            "reverse_tunnels": len(self.tunnel.tunnels) if self.tunnel else 0,
            "trusted_clusters": self.clusters.status(),  # leaf side: each root's tunnel and why it is down
        }

    @property
    def web_address(self) -> NetAddr:
        assert self.web is not None
        return self.web.address

    @property
    def ssh_address(self) -> NetAddr:
        host, port = self.ssh.sock.getsockname()[:2]
        return NetAddr(host, port)

    @property
    def tunnel_address(self) -> NetAddr:
        host, port = self.tunnel.address
        return NetAddr(host, port)

    def public_tunnel_addr(self) -> str:
        """Where nodes dial their reverse tunnel (``tunnel_public_addr``, else the public host and
        the tunnel port); reported by ``/webapi/find``."""
        if self.settings.tunnel_public_addrs:
            return str(self.settings.tunnel_public_addrs[0])
        if self.tunnel is None or self.tunnel.sock is None:  # multiplex: agents use the web port
            return ""
        addr = self.tunnel_address
        host = self.settings.public_addrs[0].host if self.settings.public_addrs else self._default_host(addr)
        return str(NetAddr(host, addr.port))

    def public_web_addr(self) -> str:
        if self.settings.public_addrs:
            return str(self.settings.public_addrs[0])
        addr = self.web_address
        return str(NetAddr(self._default_host(addr), addr.port))

    def public_ssh_addr(self) -> str:
        if self.settings.ssh_public_addrs:
            return str(self.settings.ssh_public_addrs[0])
        addr = self.ssh_address
        host = self.settings.public_addrs[0].host if self.settings.public_addrs else self._default_host(addr)
        return str(NetAddr(host, addr.port))

    def _default_host(self, addr: NetAddr) -> str:
        """The host clients reach ``addr`` at when no public address is set: ``--advertise-ip``
        (``teleport.advertise_ip``, its host), else the listen host, else (a wildcard) the nodename."""
        if self.ctx.config.advertise_ip:
            return parse_addr(self.ctx.config.advertise_ip, default_port=addr.port).host
        return self.ctx.config.nodename if addr.host in ("0.0.0.0", "::") else addr.host  # noqa: S104

    def _names(self) -> tuple[list[str], list[str]]:
        s = self.settings
        advertise = self.ctx.config.advertise_ip
        return certificate_names((s.web_listen_addr, s.listen_addr, *s.public_addrs, *s.ssh_public_addrs,
                                  *s.tunnel_public_addrs, *([parse_addr(advertise, 0)] if advertise else [])),
                                 ("localhost",), ("127.0.0.1", "::1"))

    # -- state from auth --------------------------------------------------------------------------

    async def _load_cas(self) -> None:
        user = await self.auth.get_cert_authority("user")
        host = await self.auth.get_cert_authority("host")
        self.user_ca_keys = tuple(user["ssh_public_keys"])
        self.user_ca_pems = tuple(user["tls_certs"])
        self.host_known_hosts = tuple(line for line in str(host["known_hosts"]).splitlines() if line.strip())
        self.host_ca_keys = tuple(host["ssh_public_keys"])
        if self.web is not None:
            self.web.set_context(self._web_context())
        await self.renewer.check()

    async def _renewed(self, identity: LocalIdentity) -> None:
        """New host certificates (host CA rotation): new SSH connections get the new one."""
        self.identity = identity
        host_key = CertHostKey(paramiko_key(identity.key_pem), identity.ssh_cert)
        for server in (self.ssh, self.tunnel):
            if server is not None:
                server.host_key = host_key
        if self.web is not None:
            self.web.set_context(self._web_context())

    async def _load_roles(self) -> None:
        roles: dict[str, Role] = {}
        for data in await self.auth.get_roles():
            role = parse_role(data)
            roles[role.name] = role
        self.roles = roles
        self._visible.clear()

    async def _load_locks(self) -> None:
        """The cluster's locks; live connections of users a lock now matches are cut soon after."""
        self.locks = tuple(parse_lock(data) for data in await self.auth.get_locks())
        if self._cutting is None or self._cutting.done():
            self._cutting = asyncio.create_task(self._cut_locked(), name="proxy-lock-cut")

    async def _cut_locked(self) -> None:
        """Cut the forwarded connections of locked users, after :data:`LOCK_CUT_GRACE`: our nodes end
        such sessions themselves, writing the lock's message to the user first, which a cut at the
        same moment would lose; an OpenSSH node does not know locks, and is cut off here."""
        await asyncio.sleep(LOCK_CUT_GRACE)
        if self.ssh is not None:
            await asyncio.to_thread(self.ssh.cut_locked)
        if self.mux is not None:
            self.mux.cut_locked()
        self.web_terminals.cut_locked(self)

    async def _cut_lapsed_elevation(self) -> None:
        """Cut the routed connections whose access-request elevation ended (the certificate's end, which
        auth caps at the access expiry), as a lock would: looked at once a second, only when one ended."""
        while True:
            await asyncio.sleep(ELEVATION_CHECK)
            now = dt.datetime.now(dt.UTC)
            ended = {end for end in list(self._elevation_ends) if end <= now}
            if ended:
                self._elevation_ends.difference_update(ended)
                if self._cutting is None or self._cutting.done():
                    self._cutting = asyncio.create_task(self._cut_locked(), name="proxy-lock-cut")

    def lock_reason(self, user: UserCert, login: str = "", node: str = "") -> str:
        """The message of the lock in force for ``user`` (with ``login``, to ``node``), or ""; for a
        certificate with the roles of access requests, also the end of that access."""
        if user.active_requests and user.valid_before is not None:
            if dt.datetime.now(dt.UTC) >= user.valid_before:
                return f"the access granted by access request {', '.join(user.active_requests)} has expired"
            self._elevation_ends.add(user.valid_before)
        if not self.locks:
            return ""
        lock = lock_in_force(self.locks, user=user.user, roles=user.roles, login=login, node=node, issued=user.issued,
                             access_requests=user.active_requests)
        return lock_message(lock) if lock is not None else ""

    def _proxy_entry(self) -> dict[str, Any]:
        """What this proxy announces: the addresses clients use (invite URLs name this proxy)."""
        return {"uuid": self.identity.host_uuid, "nodename": self.ctx.config.nodename,
                "public_addr": self.public_web_addr(), "ssh_public_addr": self.public_ssh_addr()}

    async def _start_heartbeat(self) -> None:
        """Announce this proxy now (a failure is retried by the loop), then keep its entry alive."""
        beat = Heartbeat("proxy", self._proxy_entry, lambda entry: self.auth.upsert_proxy(entry),
                         lambda: self.auth.keep_alive_proxy(self.identity.host_uuid),
                         metrics_for(self.ctx.metrics), self.log, HEARTBEAT, backoff=Backoff(RETRY, MAX_BACKOFF))
        try:
            await beat.beat()
        except TeleportError as exc:
            metrics_for(self.ctx.metrics).heartbeats_missed.labels(type="proxy").inc()
            self.log.warning("proxy heartbeat failed, will retry", error=str(exc))
            self._tasks.append(asyncio.create_task(beat.run(), name="proxy-heartbeat"))
        else:
            self._tasks.append(asyncio.create_task(beat.run(announced=True), name="proxy-heartbeat"))

    def roleset(self, user: UserCert) -> RoleSet:
        """The user's roles as held now; a role that no longer exists denies everything."""
        roles = self.roles
        missing = [name for name in user.roles if name not in roles]
        if missing:
            raise AccessDenied(f"access denied to {user.user}: role {missing[0]} does not exist")
        return RoleSet([roles[name] for name in user.roles], user.traits)

    async def visible_nodes(self, user: UserCert, max_age: float = NODE_CACHE) -> list[NodeInfo]:
        """The nodes ``user``'s roles allow (computed once per node list and set of roles)."""
        nodes = await self.nodes(max_age)
        roleset = self.roleset(user)  # after the await: no role reload can come between this and the store
        key = (id(nodes), user.roles, tuple(sorted(user.traits.items())))  # cleared when nodes or roles change
        found = self._visible.get(key)
        if found is None:
            found = [n for n in nodes if roleset.node_visible(n.labels)]
            if len(self._visible) >= VISIBLE_CACHE:
                self._visible.clear()
            self._visible[key] = found
        return found

    async def nodes(self, max_age: float = NODE_CACHE) -> list[NodeInfo]:
        """Registered nodes from auth, at most ``max_age`` seconds old (one fetch at a time)."""
        async with self._nodes_lock:
            fetched, nodes = self._nodes
            if time.monotonic() - fetched >= max_age or not nodes:
                nodes = [NodeInfo(n["uuid"], n["nodename"], n.get("addr", ""), n.get("labels", {}),
                                  n.get("tunnel", False), n.get("sub_kind", "teleport"))
                         for n in await self.auth.get_nodes()]
                self._nodes = (time.monotonic(), nodes)
                self._visible.clear()
            return nodes

    async def route(self, user: UserCert, login: str, target: str, port: int = 0) -> NodeInfo:
        """The node ``target`` (with ``port`` when several nodes share an address) names among
        those ``user`` may see, checked for ``login`` when given.

        Raises ``NodeNotFound``/``AmbiguousHost`` with REFERENCE's messages, or ``AccessDenied``.
        """
        try:
            return await self._route(user, login, target, port, await self.visible_nodes(user))
        except NodeNotFound:  # maybe registered since the cached list was fetched
            fresh = await self.visible_nodes(user, max_age=MISS_REFRESH)
            return await self._route(user, login, target, port, fresh)

    async def _route(self, user: UserCert, login: str, target: str, port: int, visible: list[NodeInfo]) -> NodeInfo:
        locked = self.lock_reason(user, login)
        if locked:
            raise AccessDenied(locked)
        host = target
        suffix = "." + self.cluster_name
        if host.endswith(suffix) and not any(n.nodename == host for n in visible):
            host = host[: -len(suffix)]  # node.cluster (tsh config, ssh -J) names the node
        hook = self.ctx.plugins.hook
        try:
            found = await asyncio.to_thread(find_nodes, hook, host, visible)
        except AmbiguousHost:
            if not port:
                raise
            same_port = [n for n in visible if n.addr.rpartition(":")[2] == str(port)]
            found = await asyncio.to_thread(find_nodes, hook, host, same_port)
        if len(found) != 1:
            raise AmbiguousHost("ambiguous host could match multiple nodes")
        node = found[0]
        locked = self.lock_reason(user, login, node.uuid)
        if locked:
            raise AccessDenied(locked)
        # the roles (for a known login; without one, tsh ssh and ssh -J, the roles let the user see this
        # node and the login is the node's to check) and every teleport_authorize plugin: deny wins
        roles = (self.roleset(user).check_login(login, node.labels) if login
                 else Decision.allow("the roles let the user see this node"))
        identity = Identity(user.user, IdentityKind.USER, roles=user.roles, traits=user.traits,
                            cluster=self.cluster_name, issued=user.issued)
        request = AccessRequest(identity, SSH, "node", node.uuid, node.labels, login)
        decision = await asyncio.to_thread(check_access, hook, request, roles)
        if not decision.allowed:
            raise AccessDenied(f"access denied to {user.user} connecting to {node.nodename}: {decision.reason}")
        return node

    def spawn_audit(self, user: str, reason: str, remote: str, **fields: Any) -> None:
        """:meth:`audit_denial` without waiting for it (from any thread)."""
        asyncio.run_coroutine_threadsafe(self.audit_denial(user, reason, remote, **fields), self.loop)

    async def login_limited(self, client_ip: str) -> JSONResponse | None:
        """None when ``client_ip`` may try a web login now; else the 429 to answer (audited once a burst)."""
        return await rate_limited(self.login_rate, client_ip, "web login",
                                  lambda reason: self.audit_denial("", reason, client_ip, kind="web_login"))

    async def audit_denial(self, user: str, reason: str, remote: str, **fields: Any) -> None:
        fields.update({"user": user, "error": reason, "cluster_name": self.cluster_name,
                       "server_id": self.identity.host_uuid, "addr.remote": remote})
        await self.audit.emit(new_event("auth", "failure", **fields))

    # -- HTTPS ------------------------------------------------------------------------------------

    def _web_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert, key = self._web_keypair()
        context.load_cert_chain(cert, key)
        # tsh presents the user's certificate for calls on the user's behalf (node listing);
        # browsers and logins present none
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata="".join(self.user_ca_pems))
        return context

    def web_keypair(self) -> tuple[str, str]:
        """The HTTPS certificate and key files (the web port's reverse tunnels present them too)."""
        return self._web_keypair()

    def _web_keypair(self) -> tuple[str, str]:
        if self._web_cert[0]:
            return self._web_cert
        if self.settings.https_keypairs:
            pair = self.settings.https_keypairs[0]
            self._web_cert = (str(pair.cert_file), str(pair.key_file))
            return self._web_cert
        folder = identity_dir(self.ctx.config, "proxy")
        cert_path, key_path = folder / "webproxy_self_signed.crt", folder / "webproxy_self_signed.key"
        if not cert_path.exists() or not key_path.exists():
            dns, ips = self._names()
            cert, key = self_signed([self.ctx.config.nodename, *dns, *ips])
            write_private(key_path, key)
            write_private(cert_path, cert)
        self.log.warning("no https_keypairs configured: serving HTTPS with a self-signed certificate; "
                         "clients need --insecure", cert=str(cert_path))
        self._web_cert = (str(cert_path), str(key_path))
        return self._web_cert
