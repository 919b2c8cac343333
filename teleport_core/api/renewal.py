"""Host certificate renewal during a host CA rotation, for every service that joined (node, proxy).

A host CA rotation (``tctl auth rotate --type=host``) moves through ``init``,
``update_clients``, ``update_servers`` and ``standby`` (see ``teleport_auth.rotation``).
:class:`HostCertRenewer` follows the host CA at auth (``AuthClient.follow("cert_authority",
renewer.check, log)``) and, whenever the host CA's rotation state or trusted certificates
change, gets new certificates for a new key from ``POST /v1/certs/host``
(:meth:`AuthClient.renew_host_certs`), which signs with the keys servers' certificates come
from in the phase of the moment (the old keys until ``update_servers``, the new ones from then
on). It then, without a restart:

1. stores the new identity in ``data_dir/keys/<role>`` (the identity bundle is replaced
   atomically, files 0600), so a restart presents the same certificates;
2. switches the auth client to the new TLS certificate and the host CA certificates trusted now
   (both old and new ones during the rotation, so auth's own renewed certificate verifies);
3. calls ``on_renewed(identity)``, where the service swaps what it presents: the node and the
   proxy their SSH host certificate (new connections get it; open sessions are not touched).

At start it renews only when needed: a rotation is in progress, or its TLS certificate is not
signed by a host CA trusted now. A host that was down for a whole rotation (through
``standby``) holds a certificate auth no longer accepts and must join again with a token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from teleport_core.api.client import AuthClient, Credentials
from teleport_core.files import write_private
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

OnRenewed = Callable[[LocalIdentity], Awaitable[None]]


def issued_by_any(cert_pem: bytes, ca_pems: Sequence[str]) -> bool:
    """Whether the X.509 certificate ``cert_pem`` was signed by one of the CA certificates."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return False
    for pem in ca_pems:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pem.encode()))
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return True
    return False


class HostCertRenewer:
    """Keeps one host identity signed by the host CA keys of the current rotation phase."""

    def __init__(self, auth: AuthClient, identity: LocalIdentity, directory: Path, nodename: str, log: Any, *,
                 on_renewed: OnRenewed, dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = (),
                 additional_principals: Sequence[str] = ()) -> None:
        self.auth = auth
        self.identity = identity
        self.directory = directory
        self.nodename = nodename
        self.log = log
        self.on_renewed = on_renewed
        self.dns_names = tuple(dns_names)
        self.ip_addresses = tuple(ip_addresses)
        self.additional_principals = tuple(additional_principals)
        self.renewals = 0
        self.phase = ""
        self._seen: str | None = None

    @staticmethod
    def _state(host_ca: dict[str, Any]) -> str:
        rotation = host_ca.get("rotation") or {}
        return json.dumps({"phase": rotation.get("phase"), "started": rotation.get("started"),
                           "last_rotated": rotation.get("last_rotated"), "tls": sorted(host_ca["tls_certs"])},
                          sort_keys=True)

    async def check(self) -> None:
        """Renew if the host CA changed since the last look (the reload of ``follow``)."""
        host_ca = await self.auth.get_cert_authority("host")
        state = self._state(host_ca)
        if state == self._seen:
            return
        self.phase = str((host_ca.get("rotation") or {}).get("phase", ""))
        if self._seen is None and not self._needs_renewal(host_ca):
            self._seen = state
            return
        await self.renew()
        self._seen = state

    def _needs_renewal(self, host_ca: dict[str, Any]) -> bool:
        trusted = [str(pem) for pem in host_ca["tls_certs"]]
        in_rotation = self.phase not in ("", "standby")
        current = issued_by_any(self.identity.tls_cert_pem, trusted)
        same_trust = sorted(p.decode().strip() for p in self.identity.tls_ca_pems) == sorted(
            p.strip() for p in trusted)
        return in_rotation or not current or not same_trust

    async def renew(self) -> LocalIdentity:
        """New key and certificates from auth; stored, used by the auth client, handed to ``on_renewed``."""
        key = keys.generate_private_key("ed25519")
        answer = await self.auth.renew_host_certs(
            keys.public_key_openssh(key), self.nodename, dns_names=self.dns_names, ip_addresses=self.ip_addresses,
            additional_principals=self.additional_principals)
        identity = LocalIdentity(
            key_pem=keys.private_key_pem(key),
            tls_cert_pem=str(answer["tls_cert"]).encode(),
            tls_ca_pems=tuple(str(pem).encode() for pem in answer["host_ca_pems"]),
            ssh_cert=str(answer["ssh_cert"]),
            known_hosts=tuple(str(line) for line in answer["known_hosts"]),
            host_uuid=str(answer["host_uuid"]),
        )
        await asyncio.to_thread(self._store, identity, answer)
        self.identity = identity
        self.auth.set_credentials(Credentials(identity.client_context(), identity))
        await self.on_renewed(identity)
        self.renewals += 1
        rotation = (answer.get("rotation") or {}).get("host") or {}
        self.log.info("renewed the host certificates", host_uuid=identity.host_uuid,
                      host_ca_phase=rotation.get("phase", ""), trusted_host_cas=len(identity.tls_ca_pems))
        return identity

    def _store(self, identity: LocalIdentity, answer: dict[str, Any]) -> None:
        identity.save(self.directory)
        trust = {"user_ca_pems": answer.get("user_ca_pems", []), "user_ca_ssh_keys": answer.get("user_ca_ssh_keys", []),
                 "cluster_name": answer.get("cluster_name", "")}
        write_private(self.directory / "cluster.json", json.dumps(trust, indent=2) + "\n")
