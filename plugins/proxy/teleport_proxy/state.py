"""What the parts of the proxy service share, as they see it.

:class:`~teleport_proxy.service.ProxyService` joins the cluster, follows the CAs, roles and locks
from auth and opens the audit spool, then hands itself to the parts it wires (the SSH listener
in :mod:`teleport_proxy.sshserver`, the reverse tunnels in :mod:`teleport_proxy.tunnel`, the web
API in :mod:`teleport_proxy.web`, TLS routing in :mod:`teleport_proxy.mux`) as a
:class:`ProxyState`. The parts import this module, never :mod:`teleport_proxy.service`, so the
service's modules form no import circle (``tests/test_layout.py`` checks that).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from teleport_core.api.client import AuthClient
from teleport_core.config.limits import ConnectionLimits
from teleport_core.net.limits import RateLimiter
from teleport_core.net.tlsserver import TLSServer
from teleport_core.pki.identity import LocalIdentity
from teleport_core.policy.roles import RoleSet
from teleport_core.service import ServiceContext
from teleport_core.state.audit_spool import AuditSpool
from teleport_core.state.nodes import NodeInfo
from teleport_proxy.certs import UserCert
from teleport_proxy.settings import ProxySettings

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


class Dialer(Protocol):
    """Reaches a node through its reverse tunnel (:class:`teleport_proxy.tunnel.TunnelServer`)."""

    def dial(self, host_uuid: str, nodename: str) -> socket.socket: ...


class ProxyState(Protocol):
    """The proxy service's shared state and the actions the parts call on it."""

    ctx: ServiceContext  # config, resources (auth addresses), plugin hook, metrics
    settings: ProxySettings
    log: structlog.stdlib.BoundLogger
    loop: asyncio.AbstractEventLoop  # the service's event loop (the SSH threads submit to it)
    limits: ConnectionLimits  # of the SSH and tunnel listeners
    login_rate: RateLimiter  # web logins per client address
    auth: AuthClient  # calls to auth with the proxy's own identity
    identity: LocalIdentity  # the proxy's host identity (renewed on host CA rotations)
    audit: AuditSpool  # the proxy's events, durable on its disk before delivery to auth
    cluster_name: str
    second_factor: str
    user_ca_keys: tuple[str, ...]  # followed from auth
    user_ca_pems: tuple[str, ...]
    host_ca_keys: tuple[str, ...]
    tunnel: Dialer | None  # the reverse tunnel server, once started
    web: TLSServer | None  # the HTTPS listener, once started
    web_terminals: Any  # the web UI's open terminals (teleport_proxy.webterminal.WebTerminals)
    agentless: Any  # agentless OpenSSH nodes (teleport_proxy.forwarder.Forwarder), once started
    clusters: Any  # trusted clusters: remote sites and tunnel agents (teleport_proxy.clusters.Clusters)

    def public_web_addr(self) -> str: ...

    def public_ssh_addr(self) -> str: ...

    def public_tunnel_addr(self) -> str: ...

    def web_keypair(self) -> tuple[str, str]: ...

    def lock_reason(self, user: UserCert, login: str = "", node: str = "") -> str:
        """The message of the lock in force for ``user`` (with ``login``, to ``node``), or ""."""

    def roleset(self, user: UserCert) -> RoleSet:
        """The user's roles as held now; ``AccessDenied`` when one no longer exists."""

    async def visible_nodes(self, user: UserCert) -> list[NodeInfo]:
        """The nodes ``user``'s roles allow."""

    async def route(self, user: UserCert, login: str, target: str, port: int = 0) -> NodeInfo:
        """The node ``target`` names among those ``user`` may see (checked for ``login`` when given)."""

    async def audit_denial(self, user: str, reason: str, remote: str, **fields: Any) -> None:
        """Audit a refusal (an ``auth`` failure event, T3007W)."""

    def spawn_audit(self, user: str, reason: str, remote: str, **fields: Any) -> None:
        """:meth:`audit_denial` without waiting for it (from any thread)."""

    async def login_limited(self, client_ip: str) -> JSONResponse | None:
        """None when ``client_ip`` may try a web login now; else the 429 to answer."""
