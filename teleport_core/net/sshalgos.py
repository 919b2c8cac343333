"""The SSH algorithms every transport of ours offers (node, proxy, reverse tunnels, ``tsh``), in
one ordered list per family, and :func:`configure`, which sets them on a paramiko transport.

The names are the standard ones (RFC 8731 ``curve25519-sha256``, RFC 9142, the OpenSSH
extensions) for what the installed paramiko implements: an algorithm paramiko lacks is left out,
never emulated. paramiko knows X25519 key exchange only by its original libssh name
``curve25519-sha256@libssh.org``; RFC 8731's ``curve25519-sha256`` is the identical algorithm
under its standardised name (RFC 8731 section 3.1), so it is registered, on each transport we
configure, as the same paramiko class. Hardening guides list only the RFC name, and an OpenSSH
client restricted to it would otherwise find no common key exchange.

Left out on purpose: SHA-1 and MD5 MACs, CBC and 3DES ciphers, SHA-1 key exchanges and
``diffie-hellman-group-exchange-sha256`` (a server needs a moduli file for it). paramiko has no
``chacha20-poly1305@openssh.com``, no ``umac-*`` MACs, no ``sntrup761x25519-sha512`` and no
``diffie-hellman-group18-sha512``: docs/security.md ("Hardened OpenSSH clients") says which
client settings work.

On a server the client's order wins (RFC 4253 section 7.1): the order here matters for ``tsh``
and our other clients, and for which algorithms a server offers at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: key exchange, most preferred first
KEX: tuple[str, ...] = (
    "mlkem768x25519-sha256",  # hybrid post-quantum (paramiko 4+; OpenSSH 9.9+)
    "curve25519-sha256",  # RFC 8731
    "curve25519-sha256@libssh.org",  # the same, its pre-RFC name
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",  # RFC 8268
    "diffie-hellman-group14-sha256",
)
#: the alias RFC 8731 gave X25519 key exchange -> the name paramiko registers it under
KEX_ALIASES: dict[str, str] = {"curve25519-sha256": "curve25519-sha256@libssh.org"}
#: ciphers: AES-GCM first (authenticated encryption, and the fastest in paramiko), then AES-CTR
CIPHERS: tuple[str, ...] = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
#: only authenticated encryption (the node's data path: see teleport_node.sshserver)
AEAD_CIPHERS: tuple[str, ...] = tuple(c for c in CIPHERS if "-gcm@" in c)
#: MACs (unused with AES-GCM, which authenticates itself): encrypt-then-MAC first
MACS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)


def register_aliases(transport: Any) -> None:
    """Make the :data:`KEX_ALIASES` known to this ``transport`` only (its own copy of paramiko's
    table: the class's stays untouched)."""
    table = dict(transport._kex_info)
    for alias, name in KEX_ALIASES.items():
        if name in table:
            table.setdefault(alias, table[name])
    transport._kex_info = table


def available(transport: Any) -> dict[str, tuple[str, ...]]:
    """What :func:`configure` would offer on ``transport``: family -> names, in order."""
    register_aliases(transport)
    return {"kex": tuple(k for k in KEX if k in transport._kex_info),
            "ciphers": tuple(c for c in CIPHERS if c in transport._cipher_info),
            "macs": tuple(m for m in MACS if m in transport._mac_info)}


def configure(transport: Any, *, ciphers: Sequence[str] = CIPHERS, key_types: Sequence[str] | None = None) -> None:
    """Offer our algorithms on a paramiko ``transport`` (before ``start_client``/``start_server``):
    :data:`KEX`, ``ciphers`` (a subset of :data:`CIPHERS`), :data:`MACS`, and ``key_types`` (the
    host key algorithms: the certificate types a client accepts, or a server's own key) when given.
    Names the installed paramiko lacks are skipped."""
    offered = available(transport)
    options = transport.get_security_options()
    options.kex = list(offered["kex"])
    options.ciphers = [c for c in offered["ciphers"] if c in ciphers]
    options.digests = list(offered["macs"])
    if key_types is not None:
        options.key_types = list(key_types)
