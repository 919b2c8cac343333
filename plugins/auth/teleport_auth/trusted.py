"""Trusted clusters in cluster state: the leaf's trust in a root, the root's record of its leaves, and
the other cluster's CAs.

* ``/trusted_clusters/<root>``: a leaf's ``trusted_cluster`` resource (with its token);
* ``/remote_clusters/<leaf>``: a root's ``remote_cluster`` record (labels, last tunnel heartbeat);
* ``/authorities/{host,user}/<other cluster>``: the other cluster's CAs, public parts only, in the
  storage form of :class:`~teleport_auth.authority.CertAuthority` plus ``remote: true``, ``enabled``
  (false: nothing they signed is accepted) and, on the leaf's copy of the root user CA, ``role_map``.
  Nodes follow them as they follow the local CAs (``/v1/changes`` kind ``cert_authority``).

CA rotation across the trust (:meth:`TrustStore.rotate_remote_ca`): the proxies exchange their
clusters' CAs over the tunnel and hand them to auth, which replaces only the stored copy's keys.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from teleport_auth.authority import CAKeys, CAType, CertAuthority, ca_key
from teleport_core.errors import AccessDenied, AlreadyExists, CompareFailed, NotFound, TeleportError
from teleport_core.logs import get_logger
from teleport_core.policy.rolemap import RoleMapping, parse_role_map, role_map_to_list
from teleport_core.policy.trust import (
    RemoteCluster,
    TrustedCluster,
    parse_remote_cluster_storage,
    parse_trusted_cluster,
    remote_cluster_storage,
    trusted_cluster_to_dict,
)
from teleport_core.state.backend import Backend, Item, range_end

TRUSTED_PREFIX = b"/trusted_clusters/"
REMOTE_PREFIX = b"/remote_clusters/"
AUTHORITIES_PREFIX = b"/authorities/"
#: the period of a leaf tunnel's heartbeats to the root's auth; offline after 3 missed
REMOTE_HEARTBEAT_PERIOD = dt.timedelta(seconds=30)
#: at most this many key sets per CA in a handshake (active + additional trusted during a rotation)
MAX_KEYSETS = 2


class BadCA(TeleportError):
    """A CA sent in a handshake that is not one (400)."""


def _key(prefix: bytes, name: str) -> bytes:
    if not name or "/" in name:
        raise NotFound(f"invalid name {json.dumps(name)}")
    return prefix + name.encode()


@attrs.frozen
class RemoteCA:
    """Another cluster's CA as stored here: public keys, whether it is trusted now, and (the leaf's copy
    of the root user CA) how its users' roles map to local roles."""

    ca: CertAuthority
    enabled: bool = True
    role_map: tuple[RoleMapping, ...] = ()

    def to_json(self) -> bytes:
        doc = json.loads(self.ca.without_secrets().to_json())
        doc.update({"remote": True, "enabled": self.enabled, "role_map": role_map_to_list(self.role_map)})
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RemoteCA:
        doc = json.loads(data)
        return cls(CertAuthority.from_json(data), bool(doc.get("enabled", False)),
                   parse_role_map(doc.get("role_map"), "role_map"))

    def public(self) -> dict[str, Any]:
        """What the API serves: the CA's public parts, enabled, role_map."""
        return {"type": self.ca.kind.value, "cluster_name": self.ca.cluster_name,
                "ssh_public_keys": [k.ssh_public_key_line for k in self.ca.trusted],
                "tls_certs": [k.tls_cert_pem.decode() for k in self.ca.trusted],
                "enabled": self.enabled, "role_map": role_map_to_list(self.role_map)}


def ca_exchange_form(ca: CertAuthority) -> dict[str, Any]:
    """A CA's public parts as the handshake carries them."""
    return {"type": ca.kind.value, "cluster": ca.cluster_name,
            "ssh_public_keys": [k.ssh_public_key_line for k in ca.trusted],
            "tls_certs": [k.tls_cert_pem.decode() for k in ca.trusted]}


def ca_from_exchange(data: Mapping[str, Any], cluster: str, path: str) -> CertAuthority:
    """A CA from the handshake form, checked: the named cluster's, a CA certificate whose subject
    names that cluster, matching numbers of SSH keys and TLS certificates (1 or 2)."""
    kind = data.get("type")
    if kind not in ("host", "user"):
        raise BadCA(f"{path}.type: expected host or user, got {json.dumps(kind)[:40]}")
    if data.get("cluster") != cluster:
        raise BadCA(f"{path}.cluster: expected {json.dumps(cluster)}, the cluster sending it")
    ssh_keys, certs = data.get("ssh_public_keys"), data.get("tls_certs")
    if not isinstance(ssh_keys, list) or not isinstance(certs, list) or not 1 <= len(ssh_keys) <= MAX_KEYSETS \
            or len(ssh_keys) != len(certs):
        raise BadCA(f"{path}: expected 1 or {MAX_KEYSETS} ssh_public_keys and as many tls_certs")
    sets = []
    for index, (ssh_key, pem) in enumerate(zip(ssh_keys, certs, strict=True)):
        where = f"{path}.tls_certs[{index}]"
        if not isinstance(ssh_key, str) or not isinstance(pem, str):
            raise BadCA(f"{path}: keys and certificates must be strings")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            raise BadCA(f"{where}: not a PEM certificate") from None
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (x509.ExtensionNotFound, ValueError):
            raise BadCA(f"{where}: not a CA certificate") from None
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not constraints.ca or names != [cluster]:
            raise BadCA(f"{where}: not the CA certificate of cluster {json.dumps(cluster)}")
        try:
            sets.append(CAKeys.from_dict({"ssh_public_key": ssh_key, "tls_cert": pem}))
        except (ValueError, TypeError, KeyError) as exc:
            raise BadCA(f"{path}.ssh_public_keys[{index}]: {exc}") from None
    return CertAuthority(CAType(kind), cluster, sets[0], sets[1] if len(sets) > 1 else None)


class TrustStore:
    """Trusted clusters (leaf side), remote clusters (root side) and remote CAs, in cluster state."""

    def __init__(self, backend: Backend, cluster_name: str) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self._log = get_logger("auth")

    # -- trusted_cluster (leaf) -----------------------------------------------------------------------

    async def get_trusted(self, name: str) -> TrustedCluster:
        try:
            item = await self.backend.get(_key(TRUSTED_PREFIX, name))
        except NotFound:
            raise NotFound(f"trusted_cluster {json.dumps(name)} not found") from None
        return parse_trusted_cluster(json.loads(item.value))

    async def list_trusted(self) -> list[TrustedCluster]:
        out = []
        for item in await self.backend.get_range(TRUSTED_PREFIX, range_end(TRUSTED_PREFIX)):
            try:
                out.append(parse_trusted_cluster(json.loads(item.value)))
            except (ValueError, TeleportError) as exc:
                self._log.error("unreadable trusted_cluster", key=item.key.decode(errors="replace"), error=str(exc))
        return out

    async def put_trusted(self, tc: TrustedCluster) -> None:
        await self.backend.put(Item(_key(TRUSTED_PREFIX, tc.name), json.dumps(trusted_cluster_to_dict(tc)).encode()))

    async def delete_trusted(self, name: str) -> None:
        try:
            await self.backend.delete(_key(TRUSTED_PREFIX, name))
        except NotFound:
            raise NotFound(f"trusted_cluster {json.dumps(name)} not found") from None

    # -- remote_cluster (root) ------------------------------------------------------------------------

    async def get_remote(self, name: str) -> RemoteCluster:
        try:
            item = await self.backend.get(_key(REMOTE_PREFIX, name))
        except NotFound:
            raise NotFound(f"remote_cluster {json.dumps(name)} not found") from None
        return parse_remote_cluster_storage(json.loads(item.value))

    async def list_remote(self) -> list[RemoteCluster]:
        out = []
        for item in await self.backend.get_range(REMOTE_PREFIX, range_end(REMOTE_PREFIX)):
            try:
                out.append(parse_remote_cluster_storage(json.loads(item.value)))
            except (ValueError, TeleportError) as exc:
                self._log.error("unreadable remote_cluster", key=item.key.decode(errors="replace"), error=str(exc))
        return out

    async def create_remote(self, rc: RemoteCluster) -> None:
        """Record a leaf; :class:`AlreadyExists` when one of that name joined already."""
        try:
            value = json.dumps(remote_cluster_storage(rc)).encode()
            await self.backend.create(Item(_key(REMOTE_PREFIX, rc.name), value))
        except AlreadyExists:
            raise AlreadyExists(f"remote_cluster {json.dumps(rc.name)} already exists") from None

    async def heartbeat(self, name: str, now: dt.datetime) -> RemoteCluster:
        rc = attrs.evolve(await self.get_remote(name), last_heartbeat=now)
        await self.backend.put(Item(_key(REMOTE_PREFIX, name), json.dumps(remote_cluster_storage(rc)).encode()))
        return rc

    async def delete_remote(self, name: str) -> None:
        try:
            await self.backend.delete(_key(REMOTE_PREFIX, name))
        except NotFound:
            raise NotFound(f"remote_cluster {json.dumps(name)} not found") from None

    # -- the other cluster's CAs ----------------------------------------------------------------------

    async def put_remote_ca(self, remote: RemoteCA) -> None:
        if remote.ca.cluster_name == self.cluster_name:  # never overwrite this cluster's own CAs
            raise BadCA(f"cluster {json.dumps(self.cluster_name)} is this cluster")
        await self.backend.put(Item(ca_key(remote.ca.kind, remote.ca.cluster_name), remote.to_json()))

    async def remote_cas(self, kind: CAType, cluster: str = "") -> list[RemoteCA]:
        """The stored remote CAs of ``kind`` (of ``cluster`` only, when given)."""
        prefix = AUTHORITIES_PREFIX + kind.value.encode() + b"/"
        out = []
        for item in await self.backend.get_range(prefix, range_end(prefix)):
            name = item.key[len(prefix):].decode(errors="replace")
            if name == self.cluster_name or (cluster and name != cluster):
                continue
            try:
                if not json.loads(item.value).get("remote"):
                    continue
                out.append(RemoteCA.from_json(item.value))
            except (ValueError, TeleportError) as exc:
                self._log.error("unreadable remote CA", key=item.key.decode(errors="replace"), error=str(exc))
        return out

    async def rotate_remote_ca(self, ca: CertAuthority) -> RemoteCA | None:
        """Replace the keys of the stored copy of ``ca`` (another cluster's, enabled) with ``ca``'s,
        keeping ``enabled`` and ``role_map``, in a conditional write (a concurrent ``enabled: false``
        or ``tctl rm`` wins). The new copy, or None when the keys were the same. AccessDenied when
        there is no enabled copy to update (the trust is disabled or removed)."""
        what = f"the {ca.kind.value} CA of cluster {json.dumps(ca.cluster_name)}"
        if ca.cluster_name == self.cluster_name:
            raise AccessDenied(f"{what} is this cluster's own: only its own rotation changes it")
        for _ in range(5):
            try:
                item = await self.backend.get(ca_key(ca.kind, ca.cluster_name))
            except NotFound:
                raise AccessDenied(f"{what} is not stored here (the trust was removed)") from None
            if not json.loads(item.value).get("remote"):
                raise AccessDenied(f"{what} is not another cluster's CA")
            stored = RemoteCA.from_json(item.value)
            if not stored.enabled:
                raise AccessDenied(f"{what} is not trusted here now (the trust is disabled)")
            new = rotated(stored, ca)
            if new is None:
                return None
            try:
                await self.backend.compare_and_swap(item, Item(item.key, new.to_json()))
            except (CompareFailed, NotFound):
                continue  # changed meanwhile: look again
            return new
        raise CompareFailed(f"{what} kept changing; try again")

    async def set_remote_cas_enabled(self, cluster: str, enabled: bool) -> None:
        for kind in CAType:
            for remote in await self.remote_cas(kind, cluster):
                await self.put_remote_ca(attrs.evolve(remote, enabled=enabled))

    async def delete_remote_cas(self, cluster: str) -> None:
        if cluster == self.cluster_name:
            return
        for kind in CAType:
            try:
                item = await self.backend.get(ca_key(kind, cluster))
            except NotFound:
                continue
            if json.loads(item.value).get("remote"):
                await self.backend.delete(item.key)


def same_keys(a: CertAuthority, b: CertAuthority) -> bool:
    """Whether two CAs trust exactly the same key sets (in any order)."""
    def keyset(ca: CertAuthority) -> set[tuple[str, bytes]]:
        return {(k.ssh_public_key_line, k.tls_cert_pem) for k in ca.trusted}

    return keyset(a) == keyset(b)


def rotated(stored: RemoteCA, ca: CertAuthority) -> RemoteCA | None:
    """The stored copy of another cluster's CA with the keys ``ca`` trusts now (rotation across a
    trust: active and additional trusted), keeping what this cluster decided (``enabled``,
    ``role_map``); None when the keys are the same."""
    if ca.kind is not stored.ca.kind or ca.cluster_name != stored.ca.cluster_name:
        raise BadCA(f"not the {stored.ca.kind.value} CA of cluster {json.dumps(stored.ca.cluster_name)}")
    if same_keys(stored.ca, ca):
        return None
    return attrs.evolve(stored, ca=attrs.evolve(stored.ca, active=ca.active, additional_trusted=ca.additional_trusted))


def role_maps(cas: Sequence[RemoteCA]) -> dict[str, tuple[RoleMapping, ...]]:
    return {remote.ca.cluster_name: remote.role_map for remote in cas}
