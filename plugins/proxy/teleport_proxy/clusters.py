"""Trusted clusters at the proxy: the leaf's tunnel agent and the root's remote sites.

**Leaf** (its auth has an enabled ``trusted_cluster``): the proxy keeps a reverse tunnel to the
root's ``tunnel_addr`` (:class:`teleport_core.net.tunnelagent.TunnelAgent`, as nodes do: login =
this proxy's host UUID with its proxy host certificate; the root proxy's certificate checked
against the root's host CA the leaf stored). A ``tunnel_addr`` equal to ``web_proxy_addr`` is the
root's web port: dialed in TLS with ALPN ``teleport-reversetunnel`` (TLS routing; the web
certificate checked unless this process runs with ``--insecure``). The leaf needs no inbound port.
Through the tunnel:

- ``dial`` naming a node (``target``, ``port``) and the root user's SSH certificate: the leaf
  proxy checks the certificate against the root's user CA (active trust only), maps its roles
  with the trust's ``role_map`` (an unmapped role grants nothing), routes the node as for its own
  users (its roles, locks and ``teleport_authorize`` plugins; direct or the node's own tunnel) and
  joins the data connection to it. The user's SSH stream goes end to end to the node, which
  authenticates the root user itself. Refusals are audited here, in the leaf.
- ``request`` ``nodes`` with the user's TLS certificate: the nodes the mapped roles may see.

**Root**: the remote clusters and their host CAs (followed from auth) decide which leaf proxy may
open a cluster tunnel (:func:`teleport_proxy.tunnel.verify_cluster_cert`); each ping of a leaf's
tunnel is its heartbeat to auth (``remote_cluster`` online/offline). A root user reaches a leaf
only when it is connected and one of their roles' ``cluster_labels`` matches the leaf's labels
(deny by default; a hidden leaf is "not found", as one that does not exist).

**CA rotation across the trust** (Teleport's remote site: ``RotateExternalCertAuthority`` to the
leaf, the leaf's host CA fetched back): the root proxy asks each connected leaf, on its control
channel, with a ``request`` ``cas`` carrying the root's host and user CAs (public parts, every
trusted key set) when the tunnel comes up, when a CA changes and every :data:`CA_SYNC_EVERY`; the
leaf proxy hands them to its auth for the root it trusts and answers with its own cluster's CAs,
which the root proxy hands to its auth for that leaf (``POST /v1/remote_cas/rotate/external``;
the cluster named is always the tunnel's, never the message's). When the leaf's host CA drops a
key the root closes the leaf's tunnels: they reconnect with the leaf proxy's current certificate.

Auth's trusted cluster API may be absent (an older auth, or a cluster with no trust): a 404
reads as "no remote or trusted clusters", so nothing changes for a cluster on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from teleport_core.api.client import ConnectionProblem
from teleport_core.config.values import NetAddr, parse_addr
from teleport_core.errors import AccessDenied, AuditUnavailable, CompareFailed, NotFound, TeleportError
from teleport_core.net.tunnelagent import TunnelAgent
from teleport_core.policy.rolemap import RoleMapping, map_roles, parse_role_map
from teleport_core.state.nodes import NodeInfo
from teleport_proxy.certs import CLOCK_SKEW, InvalidCertificate, UserCert, user_from_tls_cert, verify_user_ssh_cert

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState

RELOAD = 5.0  # seconds between looks at auth's remote and trusted clusters
HEARTBEAT_EVERY = 20.0  # at most one heartbeat per leaf this often (its pings, every 10 s; auth: offline after 90 s)
ROUTE_TIMEOUT = 40.0  # seconds the leaf has to route and answer OK/ERR on a data connection
MAX_REPLY = 4096
CHUNK = 256 * 1024
CA_SYNC_EVERY = 10.0  # seconds between CA exchanges with each connected leaf (and at once on a change)
OWN_CAS_MAX_AGE = 60.0  # seconds this cluster's CAs are kept between reads (a CA change drops them at once)
ROTATE_EXTERNAL = "/v1/remote_cas/rotate/external"  # auth: another cluster's CAs, from this proxy's tunnel
#: what a leaf checks when the root refuses its tunnel_addr (not the web port: the agent says so itself)
REFUSED_HINT = "with proxy_listener_mode: multiplex, set tunnel_addr to its web address"
#: auth refusals worth asking again (the same CAs): auth unreachable or busy, not a refusal of the CAs
RETRY_ERRORS = (ConnectionProblem, AuditUnavailable, CompareFailed)


@attrs.frozen
class RemoteSite:
    """Root side: a leaf cluster that joined (a ``remote_cluster``)."""

    name: str
    labels: Mapping[str, str]
    host_ca_keys: tuple[str, ...]
    connection: str = ""  # auth's status: online / offline
    last_heartbeat: str = ""


@attrs.frozen
class TrustedRoot:
    """Leaf side: a root cluster this cluster trusts (a ``trusted_cluster`` and the root's CAs)."""

    name: str
    enabled: bool
    tunnel_addr: str
    web_proxy_addr: str
    host_ca_keys: tuple[str, ...] = ()
    user_ca_keys: tuple[str, ...] = ()
    user_ca_pems: tuple[str, ...] = ()
    role_map: tuple[RoleMapping, ...] = ()
    active: bool = True  # the root's user CA is enabled (enabled: false deactivates it)


def _name_labels(item: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = item.get("metadata") or {}
    name = str(item.get("name") or meta.get("name") or "")
    labels = item.get("labels") or meta.get("labels") or {}
    return name, {str(k): str(v) for k, v in dict(labels).items()}


def verify_user_tls_cert(der: bytes, ca_pems: tuple[str, ...], now: dt.datetime | None = None) -> UserCert:
    """A user's X.509 certificate checked against a (root) user CA's certificates: signed by one
    of them, valid now. Raises :class:`InvalidCertificate`."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidCertificate(f"tls: cannot parse certificate: {exc}") from None
    now = now or dt.datetime.now(dt.UTC)
    if not (cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc):
        raise InvalidCertificate("tls: the certificate is expired or not yet valid")
    for pem in ca_pems:
        ca = x509.load_pem_x509_certificate(pem.encode())
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return user_from_tls_cert(der)
    raise InvalidCertificate("tls: the certificate is not signed by the trusted cluster's user CA")


def _is_web_addr(addr: NetAddr, web_proxy_addr: str) -> bool:
    """Whether the tunnel address is the root's web address (its web port: TLS routing)."""
    try:
        return bool(web_proxy_addr) and parse_addr(web_proxy_addr, 3080) == addr
    except ValueError:
        return False


def _fingerprint(cas: Any) -> str:
    return hashlib.sha256(json.dumps(cas, sort_keys=True).encode()).hexdigest()


def join_sockets(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions ended (two threads; returns at once)."""
    done = [0]
    lock = threading.Lock()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with lock:
            done[0] += 1
            last = done[0] == 2
        if last:
            a.close()
            b.close()

    for src, dst in ((a, b), (b, a)):
        threading.Thread(target=pump, args=(src, dst), name="proxy-cluster-pump", daemon=True).start()


class Clusters:
    """The proxy's trusted-cluster state: remote sites (root) and tunnel agents (leaf)."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy
        self.sites: dict[str, RemoteSite] = {}
        self.roots: dict[str, TrustedRoot] = {}
        self.agents: dict[str, TunnelAgent] = {}
        self._dialing: dict[str, tuple[str, str]] = {}  # each agent's (tunnel_addr, web_proxy_addr)
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._absent: set[str] = set()  # the auth routes that answered 404 (feature absent)
        self._stopped = False
        self._reloading = asyncio.Lock()
        self._sync_wake = asyncio.Event()  # a CA changed or a leaf's tunnel came up: exchange CAs now
        self._leaf_seen: dict[str, str] = {}  # root side: each leaf's CAs as last handed to auth
        self._root_seen: dict[str, str] = {}  # leaf side: each root's CAs as last handed to auth
        self._own_cas: tuple[float, list[dict[str, Any]]] | None = None  # (read at, this cluster's CAs)
        self._ca_changes = 0  # CA changes seen: a read that one overtook is not kept

    # -- following auth ---------------------------------------------------------------------------

    async def start(self) -> list[asyncio.Task[None]]:
        try:
            await self.reload()
        except TeleportError as exc:
            self.proxy.log.warning("cannot load trusted clusters, will retry", error=str(exc))
        # a join, enabled: true/false and tctl rm write the other cluster's CAs (under /authorities/):
        # the change wakes this at once; the poll catches the rest (a trusted_cluster's tunnel_addr)
        return [asyncio.create_task(self._follow(), name="proxy-trusted-clusters"),
                asyncio.create_task(self.proxy.auth.follow("cert_authority", self._reload_logged, self.proxy.log),
                                    name="proxy-trusted-clusters-cas"),
                asyncio.create_task(self._sync_loop(), name="proxy-trusted-clusters-ca-sync")]

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except TeleportError as exc:
            self.proxy.log.warning("cannot load trusted clusters, will retry", error=str(exc))
        self._own_cas, self._ca_changes = None, self._ca_changes + 1  # a CA changed: read this cluster's again
        self._sync_wake.set()  # and the leaves hear of it now

    def stop(self) -> None:
        self._stopped = True  # a reload after this (graceful reload: the old process) starts nothing
        for agent in list(self.agents.values()):
            agent.stop(wait=5)
        self.agents.clear()
        self._dialing.clear()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(RELOAD)
            try:
                await self.reload()
            except TeleportError as exc:
                self.proxy.log.warning("cannot load trusted clusters, will retry", error=str(exc))

    async def _list(self, path: str) -> list[dict[str, Any]]:
        try:
            found = await self.proxy.auth.call("GET", path)
        except NotFound:
            self._absent.add(path)
            return []
        self._absent.discard(path)
        return [item for item in (found or []) if isinstance(item, dict)]

    async def _ca(self, ca_type: str, cluster: str) -> dict[str, Any]:
        """Another cluster's CA (public parts, ``enabled``, ``role_map``); {} when auth has none."""
        try:
            found = await self.proxy.auth.call("GET", f"/v1/remote_cas/{ca_type}/{cluster}")
        except NotFound:
            return {}
        if not isinstance(found, dict) or found.get("cluster_name") != cluster:
            return {}
        return found

    async def reload(self) -> None:
        """Remote clusters (root side) and trusted clusters (leaf side) from auth; start, stop and
        close tunnels to match (one reload at a time)."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        sites: dict[str, RemoteSite] = {}
        for item in await self._list("/v1/remote_clusters"):
            name, labels = _name_labels(item)
            if not name or name == self.proxy.cluster_name:
                continue
            ca = await self._ca("host", name)
            status = item.get("status") or {}
            keys = tuple(ca.get("ssh_public_keys") or ()) if ca.get("enabled", False) else ()
            sites[name] = RemoteSite(name, labels, keys,
                                     str(status.get("connection", "")), str(status.get("last_heartbeat", "")))
        removed = set(self.sites) - set(sites)
        self.sites = sites
        tunnel: Any = self.proxy.tunnel
        for name in removed:  # the trust was removed at the root: its tunnels end
            if tunnel is not None:
                await asyncio.to_thread(tunnel.close_cluster, name)

        roots: dict[str, TrustedRoot] = {}
        for item in await self._list("/v1/trusted_clusters"):
            name, _ = _name_labels(item)
            spec = item.get("spec") or item
            if not name:
                continue
            host = await self._ca("host", name)
            user = await self._ca("user", name)
            try:
                role_map = tuple(parse_role_map(user.get("role_map", spec.get("role_map")) or []))
            except TeleportError as exc:
                self.proxy.log.warning("trusted cluster: bad role_map, mapping no role", cluster=name, error=str(exc))
                role_map = ()
            roots[name] = TrustedRoot(
                name, bool(spec.get("enabled", True)), str(spec.get("tunnel_addr", "")),
                str(spec.get("web_proxy_addr", "")), tuple(host.get("ssh_public_keys") or ()),
                tuple(user.get("ssh_public_keys") or ()), tuple(user.get("tls_certs") or ()), role_map,
                bool(user.get("enabled", False)))
        self.roots = roots
        await asyncio.to_thread(self._reconcile_agents)

    def _reconcile_agents(self) -> None:
        if self._stopped:
            return
        want = {name: root for name, root in self.roots.items()
                if root.enabled and root.active and root.tunnel_addr and root.host_ca_keys}
        for name in list(self.agents):
            root = want.get(name)
            if root is None:  # disabled or removed: the tunnel closes
                self.agents.pop(name).stop(wait=5)
                self._dialing.pop(name, None)
                self.proxy.log.info("trusted cluster: tunnel closed", root_cluster=name)
            elif self._dialing.get(name) != (root.tunnel_addr, root.web_proxy_addr):
                # the addresses changed (e.g. tunnel_addr corrected to the root's web address): dial the new one
                self.agents.pop(name).stop(wait=5)
                self.proxy.log.info("trusted cluster: tunnel_addr changed, dialing again", root_cluster=name,
                                    was=self._dialing.pop(name, ("", ""))[0], tunnel_addr=root.tunnel_addr)
        for name, root in want.items():
            if name in self.agents:
                continue
            agent = TunnelAgent(
                tunnel_addr=lambda root=root: parse_addr(root.tunnel_addr, 3024),  # type: ignore[misc]
                cluster=name, login=lambda ident: ident.host_uuid, identity=lambda: self.proxy.identity,
                host_ca_keys=lambda name=name: list(self._root(name).host_ca_keys),  # type: ignore[misc]
                serve=lambda conn, message, name=name: self._serve(name, conn.sock, message),  # type: ignore[misc]
                answer=lambda message, name=name: self._answer(name, message),  # type: ignore[misc]
                log=self.proxy.log, name="proxy-cluster-tunnel", describe=f"{name} ({root.tunnel_addr})",
                tls_routing=lambda addr, root=root: _is_web_addr(addr, root.web_proxy_addr),  # type: ignore[misc]
                insecure=self.proxy.ctx.config.insecure, peer="root proxy", refused_hint=REFUSED_HINT)
            self.agents[name] = agent
            self._dialing[name] = (root.tunnel_addr, root.web_proxy_addr)
            agent.start()
            self.proxy.log.info("trusted cluster: dialing the root's tunnel", root_cluster=name,
                                tunnel_addr=root.tunnel_addr)

    def _root(self, name: str) -> TrustedRoot:
        root = self.roots.get(name)
        if root is None or not root.enabled or not root.active:
            raise AccessDenied(f"cluster {name} is no longer trusted by this cluster")
        return root

    def leaf_host_cas(self) -> dict[str, tuple[str, ...]]:
        """Each known leaf's enabled host CA keys (the tunnel port checks a leaf proxy's certificate with them)."""
        return {name: site.host_ca_keys for name, site in self.sites.items() if site.host_ca_keys}

    # -- root side ----------------------------------------------------------------------------------

    def heartbeat(self, cluster: str, force: bool = False) -> None:
        """The leaf's tunnel is alive: tell auth (at most every :data:`HEARTBEAT_EVERY`; any thread).
        ``force``: the tunnel just came up (the CAs are exchanged at once)."""
        if force:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
                self.proxy.loop.call_soon_threadsafe(self._sync_wake.set)
        now = time.monotonic()
        with self._lock:
            if not force and now - self._beats.get(cluster, 0.0) < HEARTBEAT_EVERY:
                return
            self._beats[cluster] = now
        coro = self._beat(cluster)
        try:
            asyncio.run_coroutine_threadsafe(coro, self.proxy.loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            coro.close()

    async def _beat(self, cluster: str) -> None:
        try:
            await self.proxy.auth.call("PUT", f"/v1/remote_clusters/{cluster}/heartbeat", {})
        except TeleportError as exc:
            self.proxy.log.warning("remote cluster heartbeat failed", leaf_cluster=cluster, error=str(exc))

    def known_hosts(self) -> list[str]:
        """``@cert-authority <leaf>,*.<leaf> KEY type=host`` for each leaf's host CA (``tsh login``)."""
        return [f"@cert-authority {name},*.{name} {key} type=host"
                for name, site in sorted(self.sites.items()) for key in site.host_ca_keys]

    def online(self, cluster: str) -> bool:
        tunnel: Any = self.proxy.tunnel
        return tunnel is not None and bool(tunnel.clusters.get(cluster))

    def visible(self, user: UserCert) -> list[RemoteSite]:
        """The leaves ``user``'s roles' ``cluster_labels`` allow (deny wins; none by default)."""
        roleset = self.proxy.roleset(user)
        return sorted((s for s in self.sites.values() if roleset.cluster_visible(s.labels)), key=lambda s: s.name)

    def site_for(self, user: UserCert, cluster: str) -> RemoteSite:
        """The leaf ``cluster`` if ``user`` may see it; else NotFound (as for a cluster that does not exist)."""
        site = self.sites.get(cluster)
        if site is None or not self.proxy.roleset(user).cluster_visible(site.labels):
            raise NotFound(f'cluster "{cluster}" is not found')
        return site

    def dial(self, user: UserCert, host: str, port: int, cluster: str, *, ssh_cert: str = "",
             tls_der: bytes = b"") -> tuple[str, socket.socket]:
        """(the node's host UUID, a connection to it) for ``host`` in leaf ``cluster``, through its
        tunnel (blocking; a thread). The leaf checks the user's certificate (``ssh_cert`` or
        ``tls_der``) itself, routes as for its own users and answers ``OK <uuid>`` or ``ERR <reason>``
        on the connection before the node's stream."""
        self.site_for(user, cluster)
        tunnel: Any = self.proxy.tunnel
        if tunnel is None:
            raise TeleportError(f"cluster {cluster} is offline: the proxy is starting or stopping")
        fields: dict[str, Any] = {"target": host, "port": port}
        if ssh_cert:
            fields["ssh_cert"] = ssh_cert
        else:
            fields["tls_cert"] = base64.b64encode(tls_der).decode()
        sock: socket.socket = tunnel.dial_cluster(cluster, fields)
        try:
            sock.settimeout(ROUTE_TIMEOUT)
            line = b""
            while not line.endswith(b"\n") and len(line) < MAX_REPLY:
                byte = sock.recv(1)  # byte by byte: the node's SSH banner follows at once
                if not byte:
                    break
                line += byte
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise TeleportError(f"cluster {cluster}: no answer from its proxy ({exc})") from None
        word, _, rest = line.decode(errors="replace").strip().partition(" ")
        if word != "OK" or not rest:
            sock.close()
            raise AccessDenied(f"cluster {cluster}: {rest}") if word == "ERR" and rest else TeleportError(
                f"cluster {cluster}: its proxy closed the connection to {host}")
        return rest, sock

    async def nodes(self, user: UserCert, tls_der: bytes, cluster: str) -> list[dict[str, Any]]:
        """Leaf ``cluster``'s nodes ``user`` may see there (asked through the tunnel, with the
        user's certificate; the leaf maps the roles)."""
        self.site_for(user, cluster)
        tunnel: Any = self.proxy.tunnel
        if tunnel is None:
            raise TeleportError(f"cluster {cluster} is offline: the proxy is starting or stopping")
        message = {"op": "nodes", "tls_cert": base64.b64encode(tls_der).decode()}
        reply = await asyncio.to_thread(lambda: tunnel.cluster_tunnel(cluster).request(message))
        if reply.get("error"):
            kind = {"AccessDenied": AccessDenied, "NotFound": NotFound}.get(str(reply.get("kind")), TeleportError)
            raise kind(f"cluster {cluster}: {reply['error']}")
        return [n for n in reply.get("nodes") or [] if isinstance(n, dict)]

    # -- CA rotation across the trust ---------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_wake.wait(), CA_SYNC_EVERY)
            self._sync_wake.clear()
            try:
                await self.sync_cas()
            except TeleportError as exc:
                self.proxy.log.warning("trusted clusters: cannot exchange CAs, will retry", error=str(exc))
            except Exception as exc:  # the exchange must outlive one bad round
                self.proxy.log.error("trusted clusters: CA exchange failed, will retry", error=repr(exc))

    async def own_cas(self) -> list[dict[str, Any]]:
        """This cluster's host and user CAs as the exchange carries them (public parts, every trusted key
        set). Read from auth once per CA change (at most :data:`OWN_CAS_MAX_AGE` old), not per exchange."""
        cached = self._own_cas
        if cached is not None and time.monotonic() - cached[0] < OWN_CAS_MAX_AGE:
            return cached[1]
        changes = self._ca_changes
        out = []
        for kind in ("host", "user"):
            ca = await self.proxy.auth.get_cert_authority(kind)
            out.append({"type": kind, "cluster": self.proxy.cluster_name,
                        "ssh_public_keys": list(ca["ssh_public_keys"]), "tls_certs": list(ca["tls_certs"])})
        if changes == self._ca_changes:
            self._own_cas = (time.monotonic(), out)
        return out

    async def sync_cas(self) -> None:
        """Root side: exchange CAs with every leaf connected to this proxy."""
        tunnel: Any = self.proxy.tunnel
        leaves = [name for name in sorted(self.sites) if self.online(name)]
        if tunnel is None or not leaves:
            return
        own = await self.own_cas()
        await asyncio.gather(*(self._sync_leaf(tunnel, name, own) for name in leaves))

    async def _sync_leaf(self, tunnel: Any, name: str, own: list[dict[str, Any]]) -> None:
        """Send leaf ``name`` this cluster's CAs; hand its answer (its CAs) to auth as ``name``'s."""
        try:
            reply = await asyncio.to_thread(lambda: tunnel.cluster_tunnel(name).request({"op": "cas", "cas": own}))
        except TeleportError as exc:
            self.proxy.log.warning("trusted cluster: CA exchange failed", leaf_cluster=name, error=str(exc))
            return
        if reply.get("error") or reply.get("refused"):
            self.proxy.log.warning("trusted cluster: the leaf did not take this cluster's CAs", leaf_cluster=name,
                                   error=str(reply.get("error") or reply.get("refused"))[:300])
        cas = reply.get("cas")
        if reply.get("error") or not isinstance(cas, list):
            return
        seen = _fingerprint(cas)
        if self._leaf_seen.get(name) == seen:
            return
        before = self.sites.get(name)
        try:  # the cluster is the tunnel's: auth checks the CAs are that leaf's
            answer = await self.proxy.auth.call("POST", ROTATE_EXTERNAL, {"cluster": name, "cas": cas})
        except TeleportError as exc:
            self.proxy.log.warning("trusted cluster: auth refused the leaf's CAs", leaf_cluster=name, error=str(exc))
            if not isinstance(exc, RETRY_ERRORS):
                self._leaf_seen[name] = seen  # refused (and audited): not again until they change
            return
        self._leaf_seen[name] = seen
        updated = list(answer.get("updated") or []) if isinstance(answer, dict) else []
        if not updated:
            return
        self.proxy.log.info("trusted cluster: the leaf's CAs changed", leaf_cluster=name, ca_types=updated)
        await self.reload()
        after = self.sites.get(name)
        if before is not None and after is not None and set(before.host_ca_keys) - set(after.host_ca_keys):
            # a tunnel whose certificate a dropped key signed ends; the leaf reconnects with its current one
            self.proxy.log.info("trusted cluster: the leaf's host CA dropped a key, its tunnels reconnect",
                                leaf_cluster=name)
            await asyncio.to_thread(tunnel.close_cluster, name)

    def _on_loop(self, coro: Any, what: str) -> Any:
        """Run ``coro`` on the proxy's loop from a tunnel thread."""
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.proxy.loop).result(30)
        except TimeoutError:
            raise TeleportError(f"{what}: no answer from auth within 30s") from None

    def _exchange_cas(self, root_name: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """Leaf side: the root's CAs (from the root proxy this agent authenticated) to auth as
        ``root_name``'s; the answer is this cluster's CAs."""
        self._root(root_name)
        cas, refused = message.get("cas"), ""
        if not isinstance(cas, list) or not cas:
            refused = "the root sent no CAs"
        elif self._root_seen.get(root_name) != (seen := _fingerprint(cas)):
            try:  # the cluster is the agent's root: auth checks the CAs are its CAs
                self._on_loop(self.proxy.auth.call("POST", ROTATE_EXTERNAL, {"cluster": root_name, "cas": cas}),
                              "the root's CAs")
                self._root_seen[root_name] = seen
            except TeleportError as exc:
                refused = str(exc)
                self.proxy.log.warning("trusted cluster: auth refused the root's CAs", root_cluster=root_name,
                                       error=refused)
                if not isinstance(exc, RETRY_ERRORS):
                    self._root_seen[root_name] = seen
        own = self._on_loop(self.own_cas(), "this cluster's CAs")
        return {"cas": own, **({"refused": refused} if refused else {})}

    # -- leaf side ----------------------------------------------------------------------------------

    def _root_user(self, root_name: str, message: Mapping[str, Any], who: list[str]) -> UserCert:
        """The root user a tunnel message carries, checked against the root's user CA, with the
        roles the trust's ``role_map`` maps theirs to (their name in ``who`` once known, for the
        audit). AccessDenied when nothing maps."""
        root = self._root(root_name)
        if message.get("ssh_cert"):
            user = verify_user_ssh_cert(str(message["ssh_cert"]), root.user_ca_keys)
        elif message.get("tls_cert"):
            try:
                der = base64.b64decode(str(message["tls_cert"]), validate=True)
            except ValueError:
                raise InvalidCertificate("tls: the forwarded certificate is not base64") from None
            user = verify_user_tls_cert(der, root.user_ca_pems)
        else:
            raise InvalidCertificate("no user certificate was forwarded")
        who.append(user.user)
        mapped = map_roles(root.role_map, user.roles)
        if not mapped:
            raise AccessDenied(f"access denied to {user.user} of cluster {root_name}: no role of theirs "
                               f"({', '.join(user.roles) or 'none'}) maps to a role of this cluster (role_map)")
        return attrs.evolve(user, roles=mapped)

    def _audit(self, root_name: str, user: str, reason: str, **fields: Any) -> None:
        self.proxy.spawn_audit(user, reason, f"tunnel:{root_name}", user_cluster=root_name, **fields)

    def _serve(self, root_name: str, sock: socket.socket, message: Mapping[str, Any]) -> None:
        """A session from the root: route the named node for the mapped user and join the connection to it."""
        from teleport_proxy.sshserver import dial_node

        target, who = str(message.get("target", "")), list[str]()
        try:
            port = int(message.get("port") or 0)
            user = self._root_user(root_name, message, who)
            future = asyncio.run_coroutine_threadsafe(self.proxy.route(user, "", target, port), self.proxy.loop)
            node: NodeInfo = future.result(30)
            upstream = dial_node(self.proxy, node, f"tunnel:{root_name}")
            sock.sendall(f"OK {node.uuid}\n".encode())
        except (TeleportError, OSError, ValueError, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, TeleportError) else f"cannot reach {target}: {exc}"
            self._audit(root_name, who[0] if who else "", f"{target}: {reason}", target=target)
            with contextlib.suppress(OSError):
                sock.sendall(f"ERR {' '.join(reason.split())[:1000]}\n".encode())
            with contextlib.suppress(OSError):
                sock.close()
            return
        join_sockets(sock, upstream)

    def _answer(self, root_name: str, message: Mapping[str, Any]) -> dict[str, Any]:
        if message.get("op") == "cas":
            return self._exchange_cas(root_name, message)
        if message.get("op") != "nodes":
            raise TeleportError(f"unknown request {json.dumps(str(message.get('op')))[:80]}")
        who: list[str] = []
        try:
            user = self._root_user(root_name, message, who)
            future = asyncio.run_coroutine_threadsafe(self.proxy.visible_nodes(user), self.proxy.loop)
            nodes: list[NodeInfo] = future.result(30)
        except TeleportError as exc:
            self._audit(root_name, who[0] if who else "", f"nodes of {self.proxy.cluster_name}: {exc}")
            raise
        roleset = self.proxy.roleset(user)
        return {"nodes": [
            {"uuid": n.uuid, "nodename": n.nodename, "addr": n.addr, "labels": dict(n.labels), "tunnel": n.tunnel,
             "logins": roleset.logins_for(n.labels), "sub_kind": n.sub_kind}
            for n in sorted(nodes, key=lambda n: (n.nodename, n.uuid))]}

    def sites_for(self, user: UserCert) -> list[dict[str, Any]]:
        """``tsh clusters``: this cluster, then the leaves ``user`` may see, with their status."""
        out: list[dict[str, Any]] = [{"name": self.proxy.cluster_name, "status": "online", "cluster_type": "root"}]
        for site in self.visible(user):
            out.append({"name": site.name, "status": "online" if self.online(site.name) else "offline",
                        "cluster_type": "leaf", "last_connected": site.last_heartbeat, "labels": dict(site.labels)})
        return out

    def status(self) -> list[dict[str, Any]]:
        """Leaf side: each trusted root and its tunnel's state (diagnostics)."""
        out = []
        for name, root in sorted(self.roots.items()):
            agent = self.agents.get(name)
            out.append({"name": name, "enabled": root.enabled, "tunnel_addr": root.tunnel_addr,
                        "connected": bool(agent and agent.connected.is_set()),
                        "last_error": agent.last_error if agent else ""})
        return out
