"""Joining the cluster and keeping a server's identity: what node and proxy services share.

:func:`obtain_identity` returns the identity stored in ``data_dir/keys/<role>`` or, on first
start, joins with the configured token: it checks the CA pin (refusing on mismatch, warning
when none is set, as Teleport does), generates the key pair locally, and stores the issued
host certificates (0600). While no auth server answers it retries with backoff and says so in
the log; a refused token or a pin mismatch stops it with the server's message.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from teleport_core.api.client import ConnectionProblem, register
from teleport_core.config.model import TeleportConfig
from teleport_core.errors import TeleportError
from teleport_core.files import write_private
from teleport_core.pki.identity import LocalIdentity

SYSTEM_ROLES = {"node": "Node", "proxy": "Proxy", "auth": "Auth"}
FIRST_RETRY, MAX_RETRY = 1.0, 30.0


@attrs.frozen
class LocalAuth:
    """An auth service running in this process (``ctx.resources.shared["auth"]``): its API
    address, and ``register(body)``, which joins without a token (the process trusts itself)."""

    addr: str
    register: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    host_uuid: str = ""  # the host UUID every service of this process gets


def local_auth(shared: dict[str, Any]) -> LocalAuth | None:
    found = shared.get("auth")
    return found if isinstance(found, LocalAuth) else None


def auth_addresses(config: TeleportConfig, shared: dict[str, Any] | None = None) -> list[str]:
    """Where the auth API is: ``teleport.auth_server(s)``, else the auth service in this process,
    else the proxy at ``teleport.proxy_server`` (its web port passes the auth API through)."""
    addrs = [f"{a.connect_host}:{a.port}" for a in config.auth_servers]
    local = local_auth(shared or {})
    if not addrs and local is not None:
        addrs = [local.addr]
    if not addrs and config.proxy_server is not None:
        # through the proxy's web port: it passes TLS named teleport.cluster.local through to auth
        addrs = [f"{config.proxy_server.connect_host}:{config.proxy_server.port}"]
    if not addrs:
        raise JoinError("no auth server to join: set teleport.auth_server (or --auth-server), "
                        "or enable auth_service in this process")
    return addrs


class JoinError(TeleportError):
    """Joining is impossible as configured (no token, no auth server): retrying will not help."""


@attrs.frozen
class JoinRequest:
    """Who is joining: ``role`` (``node`` or ``proxy``) and the names its certificates should carry."""

    role: str
    nodename: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    additional_principals: tuple[str, ...] = ()


def identity_dir(config: TeleportConfig, role: str) -> Path:
    return config.data_dir / "keys" / role


async def obtain_identity(config: TeleportConfig, request: JoinRequest, log: Any,
                          shared: dict[str, Any] | None = None) -> LocalIdentity:
    """The stored identity for ``request.role``, or a new one from joining (see module docstring).

    With ``shared`` holding an auth service of this process (``ctx.resources.shared``) and no
    auth server configured, the server joins through it, without a token.
    """
    folder = identity_dir(config, request.role)
    local = local_auth(shared or {}) if not config.auth_servers else None
    if (folder / "identity").exists() or (folder / "key").exists():
        identity = LocalIdentity.load(folder)
        if local is None or not local.host_uuid or identity.host_uuid == local.host_uuid:
            log.info("using stored identity", host_uuid=identity.host_uuid, path=str(folder))
            return identity
        # beside our auth service but under another host UUID (stored before a process was one
        # host): auth has no record of it and would refuse its heartbeats; join again, locally
        log.warning("the stored identity is not this process's host; joining again through the local auth service",
                    stored_host_uuid=identity.host_uuid, host_uuid=local.host_uuid, path=str(folder))
    sibling = None if local is not None else sibling_identity(config, request.role)
    token = config.join_token
    if token is None and local is None and sibling is None:
        raise JoinError(f"this {request.role} has not joined the cluster yet and no join token is set "
                        "(teleport.auth_token or --token)")
    from teleport_core.pki import keys

    key = keys.generate_private_key("ed25519")  # generated here: the private key never leaves this host
    body = {
        "token": token.reveal() if token is not None else "",
        "role": SYSTEM_ROLES[request.role],
        "nodename": request.nodename,
        "public_key": keys.public_key_openssh(key),
        "dns_names": list(request.dns_names),
        "ip_addresses": list(request.ip_addresses),
        "additional_principals": list(request.additional_principals),
    }
    if local is not None:
        answer, pinned = await local.register(body), True
    elif sibling is not None:
        # another role of this process joined already: this one joins as the same host (same
        # UUID and nodename), proving it with that role's certificate instead of a token
        answer, pinned = await _register_as(sibling, auth_addresses(config), body), True
    else:
        if not config.ca_pins:
            log.warning("joining without a CA pin: the auth server's identity is not checked; "
                        "pass --ca-pin (tctl status prints it)")
        joined = await _register_with_retries(auth_addresses(config), body, config.ca_pins, log)
        answer, pinned = joined.answer, joined.pinned
    identity = LocalIdentity(
        key_pem=keys.private_key_pem(key),
        tls_cert_pem=answer["tls_cert"].encode(),
        tls_ca_pems=tuple(pem.encode() for pem in answer["host_ca_pems"]),
        ssh_cert=answer["ssh_cert"],
        known_hosts=tuple(answer["known_hosts"]),
        host_uuid=answer["host_uuid"],
    )
    identity.save(folder)
    trust = {"user_ca_pems": answer.get("user_ca_pems", []), "user_ca_ssh_keys": answer.get("user_ca_ssh_keys", []),
             "cluster_name": answer.get("cluster_name", "")}


    write_private(folder / "cluster.json", json.dumps(trust, indent=2) + "\n")
    log.info("joined the cluster", role=request.role, host_uuid=identity.host_uuid,
             cluster=answer.get("cluster_name"), pinned=pinned, local=local is not None)
    return identity


def sibling_identity(config: TeleportConfig, role: str) -> LocalIdentity | None:
    """The stored identity of another role of this process (``data_dir/keys/<role>``), if any."""
    for other in ("node", "proxy"):
        folder = identity_dir(config, other)
        if other != role and ((folder / "identity").exists() or (folder / "key").exists()):
            return LocalIdentity.load(folder)
    return None


async def _register_as(identity: LocalIdentity, addrs: Sequence[str], body: dict[str, Any]) -> dict[str, Any]:
    from teleport_core.api.client import AuthClient, Credentials

    async with AuthClient(addrs, credentials=Credentials(identity.client_context(), identity)) as client:
        answer = await client.call("POST", "/v1/register", {**body, "token": ""})
    return dict(answer)


async def _register_with_retries(addrs: Sequence[str], body: dict[str, Any], pins: Sequence[str], log: Any) -> Any:
    delay = FIRST_RETRY
    attempt = 0
    while True:
        addr = addrs[attempt % len(addrs)]
        attempt += 1
        try:
            return await register(addr, body, list(pins))
        except ConnectionProblem as exc:
            log.warning("auth server unreachable, will retry", auth_server=addr, error=str(exc),
                        retry_in=f"{delay:.1f}s", attempt=attempt)
        await asyncio.sleep(delay)
        delay = min(MAX_RETRY, delay * 2) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
