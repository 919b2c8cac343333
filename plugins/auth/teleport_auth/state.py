"""What the parts of the auth service share, as they see it.

:class:`~teleport_auth.service.AuthService` opens the backend and the audit spool, loads the CAs
and builds the stores, then hands itself to the parts it wires (the API in
:mod:`teleport_auth.api`, :mod:`teleport_auth.recordings`, :func:`teleport_auth.ha.join_auth_servers`)
as an :class:`AuthState`. The parts import this module, never :mod:`teleport_auth.service`, so the
service's modules form no import circle (``tests/test_layout.py`` checks that).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from teleport_auth.access_requests import AccessRequestStore, Announcer
from teleport_auth.authority import CertAuthority
from teleport_auth.authz import RoleAuthorizer
from teleport_auth.hosts import HostNames, HostRecord, HostRegistry
from teleport_auth.locks import LockStore
from teleport_auth.presence import Presence
from teleport_auth.rolestore import RoleStore
from teleport_auth.rotation import Rotator
from teleport_auth.settings import AuthSettings
from teleport_auth.tokens import TokenStore, UserTokenStore
from teleport_auth.trusted import TrustStore
from teleport_auth.users import UserStore
from teleport_core.files import write_private
from teleport_core.net.limits import RateLimiter
from teleport_core.service import ServiceContext
from teleport_core.state.audit import AuditEvent, AuditLog
from teleport_core.state.backend import Backend


def host_uuid(data_dir: Path) -> str:
    """This server's host UUID, created once and kept in ``data_dir/host_uuid``."""
    path = data_dir / "host_uuid"
    if path.exists():
        return path.read_text().strip()
    value = str(uuidlib.uuid4())
    write_private(path, value + "\n")
    return value


class AuthState(Protocol):
    """The auth service's shared state and the actions the parts call on it."""

    ctx: ServiceContext  # config, data_dir, resources (session storage), plugin hook, metrics
    settings: AuthSettings
    log: structlog.stdlib.BoundLogger
    cluster_name: str
    host_uuid: str  # "" until the service has read it (after ha.join_auth_servers)
    backend: Backend  # cluster state
    audit: AuditLog  # the sinks (searched by the API; written through emit)
    register_rate: RateLimiter  # host registrations per client address
    user_ca: CertAuthority
    host_ca: CertAuthority
    roles: RoleStore
    users: UserStore
    tokens: TokenStore
    user_tokens: UserTokenStore
    presence: Presence
    authorizer: RoleAuthorizer
    locks: LockStore
    access_requests: AccessRequestStore
    announcer: Announcer  # teleport_access_request_changed, after each stored change
    hosts: HostRegistry
    trust: TrustStore  # trusted clusters: the leaf's trusted_cluster, the root's remote_cluster, remote CAs
    rotation: Rotator
    stopping: asyncio.Event  # set when the service stops: long polls answer at once

    async def emit(self, event: AuditEvent) -> None:
        """Write an audit event (durable before it returns); ``AuditUnavailable`` when it cannot."""

    async def check_audit(self) -> None:
        """``AuditUnavailable`` while the audit log cannot record (state-changing calls are refused)."""

    def refused(self, peer: str, reason: str) -> None:
        """Audit a caller refused before any identity was known (rate limited per source)."""

    async def register_host(self, nodename: str, role: str, public_key: str, names: HostNames, *,
                            token_roles: Sequence[str] = (), uuid: str = "",
                            need_token_role: bool = True) -> dict[str, Any]:
        """Record a joining host and issue its certificates (the answer of ``/v1/register``)."""

    def issue_host_identity(self, record: HostRecord, role: str, public_key: str) -> dict[str, Any]:
        """Host certificates for ``role`` of a registered host, and the trust bundle."""

    def host_ca_pems(self) -> list[str]:
        """The host CA's trusted TLS certificates (PEM)."""

    async def reload_cas(self) -> None:
        """Re-read both CAs from cluster state."""

    async def fresh_cas(self) -> None:
        """Apply the CA changes other auth worker processes committed (before identifying a caller)."""
