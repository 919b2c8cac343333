"""The auth API, trusted clusters: the leaf's ``trusted_cluster`` (and its handshake with the root), the
root's ``remote_cluster`` records, the tunnel's heartbeats and the other cluster's CAs.

The handshake (see docs/trusted-clusters.md): the leaf's auth, when a ``trusted_cluster`` is created
enabled, posts ``{token, leaf_name, cas}`` to ``https://<web_proxy_addr>/v1/webapi/trustedclusters/validate``;
the root proxy forwards it to its auth's ``POST /v1/trustedclusters/validate`` (:meth:`validate_trust`),
which consumes the single-use token, records the remote_cluster, stores the leaf's CAs and answers
with its own. The leaf checks ``ca_pin`` and stores the root's CAs with the role map.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import attrs
import httpx
from pydantic import ConfigDict, Field
from starlette.requests import Request

from teleport_auth.api.core import SMALL_BODY, APIBase, BadRequest, Operation, body, endpoint
from teleport_auth.authority import CAType, CertAuthority
from teleport_auth.trusted import (
    REMOTE_HEARTBEAT_PERIOD,
    BadCA,
    RemoteCA,
    ca_exchange_form,
    ca_from_exchange,
)
from teleport_core.api.schema import Body, JSONObject, Name, Reply, TokenText, Word
from teleport_core.errors import AccessDenied, AlreadyExists, NotFound, TeleportError
from teleport_core.net.limits import rate_limited
from teleport_core.pki.pins import CAPinMismatch, check_ca_pin
from teleport_core.pki.secret import Secret
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.trust import (
    InvalidTrust,
    RemoteCluster,
    TrustedCluster,
    check_cluster_name,
    parse_trusted_cluster,
    remote_cluster_to_dict,
    trusted_cluster_to_dict,
)

#: the root proxy's route the leaf's auth posts the handshake to
VALIDATE_WEB_PATH = "/v1/webapi/trustedclusters/validate"
#: how long the leaf waits for the root's answer
HANDSHAKE_TIMEOUT = 30.0
#: the largest answer of a root the leaf reads
MAX_ANSWER = 256 * 1024
#: the audit event of another cluster's CA keys replaced through the trust (ours: T7003I, refusals T7003W)
CA_UPDATE_EVENT = "trusted_cluster.ca_update"


class HandshakeFailed(TeleportError):
    """The root refused the handshake or could not be reached (400 on the leaf, audited)."""


class TrustedClusterDocument(Body):
    """A trusted_cluster resource (``kind: trusted_cluster``, ``version: v2``), checked in full by
    :func:`teleport_core.policy.trust.parse_trusted_cluster`."""

    model_config = ConfigDict(extra="allow")

    kind: Word = "trusted_cluster"
    version: Word = "v2"
    metadata: JSONObject
    spec: JSONObject


class TrustValidateBody(Body):
    """The handshake a leaf's auth sends (through the root proxy): the root's trusted_cluster token, the
    leaf's cluster name and its host and user CAs' public parts."""

    token: TokenText
    leaf_name: Name
    cas: Annotated[list[JSONObject], Field(min_length=2, max_length=2)]


class ExternalCAsBody(Body):
    """The CAs of the cluster at the other end of a proxy's tunnel (the CA exchange, in the handshake
    form): the proxy names that cluster, auth checks that the CAs are its CAs."""

    cluster: Name
    cas: Annotated[list[JSONObject], Field(min_length=1, max_length=2)]


class ExternalCAsReply(Reply):
    cluster: str
    updated: list[str]


class TrustResourceReply(Reply):
    kind: str
    version: str
    metadata: dict[str, Any]


class TrustValidateReply(Reply):
    root_name: str
    cas: list[dict[str, Any]]


class RemoteCAReply(Reply):
    type: str
    cluster_name: str
    ssh_public_keys: list[str]
    tls_certs: list[str]
    enabled: bool
    role_map: list[dict[str, Any]]


class DeletedClusterReply(Reply):
    deleted: str


def _ca_type(text: str) -> CAType:
    if text not in ("host", "user"):
        raise NotFound(f'unknown certificate authority type "{text}": expected user or host')
    return CAType(text)


class TrustedClustersAPI(APIBase):
    """Trusted cluster routes."""

    # -- the leaf: trusted_cluster -------------------------------------------------------------------

    @endpoint("list", "trusted_cluster")
    async def list_trusted_clusters(self, request: Request, identity: Identity | None) -> Any:
        """The roots this cluster trusts (the token masked): the leaf proxy dials each enabled one's tunnel_addr."""
        return [trusted_cluster_to_dict(tc, show_token=False) for tc in await self.service.trust.list_trusted()]

    @endpoint("read", "trusted_cluster", name_param="name")
    async def get_trusted_cluster(self, request: Request, identity: Identity | None) -> Any:
        tc = await self.service.trust.get_trusted(request.path_params["name"])
        return trusted_cluster_to_dict(tc, show_token=False)

    @endpoint(None, None, name_param="name")
    async def upsert_trusted_cluster(self, request: Request, identity: Identity | None) -> Any:
        """``tctl create trusted_cluster``: trust a root (the handshake, when enabled and not done yet),
        or change ``enabled`` / ``role_map`` of an existing trust."""
        assert identity is not None
        svc = self.service
        name = request.path_params["name"]
        try:
            tc = parse_trusted_cluster(body(request, TrustedClusterDocument).model_dump(exclude_unset=True))
        except InvalidTrust as exc:
            raise BadRequest(str(exc)) from None
        if tc.name != name:
            raise BadRequest(f"metadata.name {json.dumps(tc.name)} does not match the URL")
        if tc.name == svc.cluster_name:
            raise BadRequest(f"metadata.name: {json.dumps(tc.name)} is this cluster's own name")
        try:
            existing: TrustedCluster | None = await svc.trust.get_trusted(name)
        except NotFound:
            existing = None
        await self.authorize(request, identity, "update" if existing else "create", "trusted_cluster", name)
        if existing is None and any(rc.name == name for rc in await svc.trust.list_remote()):
            raise AlreadyExists(f"{json.dumps(name)} is a leaf (remote_cluster) of this cluster")
        stored = {remote.ca.kind: remote for kind in CAType for remote in await svc.trust.remote_cas(kind, name)}
        try:
            if tc.enabled and len(stored) < 2:
                await self._handshake(tc)
            else:
                for remote in stored.values():
                    role_map = tc.role_map if remote.ca.kind is CAType.USER else ()
                    await svc.trust.put_remote_ca(attrs.evolve(remote, enabled=tc.enabled, role_map=role_map))
        except TeleportError as exc:
            await svc.emit(self.event("trusted_cluster.create", "failure", name=name, user=identity.name,
                                      error=str(exc)))
            raise
        await svc.trust.put_trusted(tc)
        await svc.emit(self.event("trusted_cluster.create", name=name, user=identity.name, enabled=tc.enabled,
                                  role_map=[m.to_dict() for m in tc.role_map]))
        return trusted_cluster_to_dict(tc, show_token=False)

    async def _handshake(self, tc: TrustedCluster) -> None:
        """Send this cluster's CAs with the token to the root proxy; check and store the root's CAs."""
        svc = self.service
        await svc.reload_cas()
        payload = {"token": tc.token, "leaf_name": svc.cluster_name,
                   "cas": [ca_exchange_form(svc.host_ca), ca_exchange_form(svc.user_ca)]}
        url = f"https://{tc.web_proxy_addr}{VALIDATE_WEB_PATH}"
        # with ca_pin the root is authenticated by its host CA's pin (checked below), as a joining
        # node's is; without it, the root proxy's web certificate must be publicly trusted
        try:
            async with httpx.AsyncClient(verify=not tc.ca_pin, timeout=HANDSHAKE_TIMEOUT) as client:
                response = await client.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise HandshakeFailed(f"could not reach the root proxy at {tc.web_proxy_addr}: {exc}") from None
        if len(response.content) > MAX_ANSWER:
            raise HandshakeFailed("the root proxy's answer is too large")
        try:
            answer = response.json()
        except ValueError:
            raise HandshakeFailed(f"the root proxy answered {response.status_code} without JSON") from None
        if response.status_code != 200:
            error = answer.get("error", "") if isinstance(answer, dict) else ""
            refusal = f"the root cluster refused the trust: {str(error)[:300] or response.status_code}"
            raise (AccessDenied(refusal) if response.status_code in (401, 403) else HandshakeFailed(refusal))
        if not isinstance(answer, dict) or answer.get("root_name") != tc.name:
            got = answer.get("root_name") if isinstance(answer, dict) else None
            raise HandshakeFailed(f"the root cluster is named {json.dumps(got)[:80]}, not {json.dumps(tc.name)}")
        cas = answer.get("cas")
        if not isinstance(cas, list) or len(cas) != 2 or not all(isinstance(c, dict) for c in cas):
            raise HandshakeFailed("the root's answer lacks its host and user CAs")
        try:
            parsed = {ca.kind: ca for ca in (ca_from_exchange(c, tc.name, f"cas[{i}]") for i, c in enumerate(cas))}
        except BadCA as exc:
            raise HandshakeFailed(f"the root sent a bad CA: {exc}") from None
        if set(parsed) != {CAType.HOST, CAType.USER}:
            raise HandshakeFailed("the root's answer lacks its host and user CAs")
        if tc.ca_pin:
            host = parsed[CAType.HOST]
            if not any(_pin_ok(tc.ca_pin, cert) for cert in host.tls_certs):
                raise AccessDenied(f"the root cluster's host CA does not match ca_pin {tc.ca_pin}")
        await svc.trust.put_remote_ca(RemoteCA(parsed[CAType.HOST], True))
        await svc.trust.put_remote_ca(RemoteCA(parsed[CAType.USER], True, tc.role_map))

    @endpoint("delete", "trusted_cluster", name_param="name")
    async def delete_trusted_cluster(self, request: Request, identity: Identity | None) -> Any:
        """``tctl rm trusted_cluster/NAME``: forget the root and its CAs (nothing it signed is accepted)."""
        svc = self.service
        name = request.path_params["name"]
        await svc.trust.get_trusted(name)
        await svc.trust.delete_remote_cas(name)
        await svc.trust.delete_trusted(name)
        await svc.emit(self.event("trusted_cluster.delete", name=name, user=identity.name if identity else ""))
        return {"deleted": name}

    # -- the root: the handshake ---------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def validate_trust(self, request: Request, identity: Identity | None) -> Any:
        """A leaf asks to be trusted (forwarded by the root proxy): the token admits it once."""
        svc = self.service
        remote = request.client.host if request.client else ""
        limited = await rate_limited(svc.register_rate, remote, "trusted cluster handshake",
                                     lambda reason: self.audit_denial(request, None, reason))
        if limited is not None:
            return limited
        wanted = body(request, TrustValidateBody)
        try:
            answer = await self._validate(wanted)
        except TeleportError as exc:
            await svc.emit(self.event("trusted_cluster.create", "failure", name=wanted.leaf_name, error=str(exc),
                                      **{"addr.remote": remote}))
            raise
        svc.register_rate.refund(remote)
        await svc.emit(self.event("trusted_cluster.create", name=wanted.leaf_name, role="root",
                                  labels=answer.pop("_labels"), **{"addr.remote": remote}))
        return answer

    async def _invalid_validate_trust(self, request: Request, fields: dict[str, str], reason: str) -> None:
        """A handshake body the model refused is a refused handshake too."""
        remote = request.client.host if request.client else ""
        await self.service.emit(self.event("trusted_cluster.create", "failure", name=fields.get("leaf_name", ""),
                                           error=reason, **{"addr.remote": remote}))

    async def _validate(self, wanted: TrustValidateBody) -> dict[str, Any]:
        svc = self.service
        try:
            leaf = check_cluster_name(wanted.leaf_name, "leaf_name")
            cas = [ca_from_exchange(c, leaf, f"cas[{i}]") for i, c in enumerate(wanted.cas)]
        except (InvalidTrust, BadCA) as exc:
            raise BadRequest(str(exc)) from None
        if {ca.kind for ca in cas} != {CAType.HOST, CAType.USER}:
            raise BadRequest("cas: expected the leaf's host CA and user CA")
        token = await svc.tokens.consume_trusted(Secret(wanted.token))  # single use, before any name is told
        if leaf == svc.cluster_name:
            raise AccessDenied(f"leaf_name: {json.dumps(leaf)} is this (root) cluster's own name")
        if any(tc.name == leaf for tc in await svc.trust.list_trusted()):
            raise AccessDenied(f"leaf_name: {json.dumps(leaf)} is a root this cluster trusts")
        now = dt.datetime.now(dt.UTC)
        await svc.trust.create_remote(RemoteCluster(leaf, token.labels, None, now))
        for ca in cas:
            await svc.trust.put_remote_ca(RemoteCA(ca, True))
        await svc.reload_cas()
        return {"root_name": svc.cluster_name, "cas": [ca_exchange_form(svc.host_ca), ca_exchange_form(svc.user_ca)],
                "_labels": dict(token.labels)}

    # -- the root: remote_cluster --------------------------------------------------------------------

    @endpoint("list", "remote_cluster")
    async def list_remote_clusters(self, request: Request, identity: Identity | None) -> Any:
        """The leaves that joined (``tctl get rc``): labels, online/offline from the tunnel's heartbeats."""
        now = dt.datetime.now(dt.UTC)
        found = await self.service.trust.list_remote()
        return [remote_cluster_to_dict(rc, now, REMOTE_HEARTBEAT_PERIOD) for rc in found]

    @endpoint("read", "remote_cluster", name_param="name")
    async def get_remote_cluster(self, request: Request, identity: Identity | None) -> Any:
        rc = await self.service.trust.get_remote(request.path_params["name"])
        return remote_cluster_to_dict(rc, dt.datetime.now(dt.UTC), REMOTE_HEARTBEAT_PERIOD)

    @endpoint("update", "remote_cluster", name_param="name")
    async def heartbeat_remote_cluster(self, request: Request, identity: Identity | None) -> Any:
        """The root proxy, for a leaf's open tunnel (every :data:`REMOTE_HEARTBEAT_PERIOD`)."""
        now = dt.datetime.now(dt.UTC)
        rc = await self.service.trust.heartbeat(request.path_params["name"], now)
        return remote_cluster_to_dict(rc, now, REMOTE_HEARTBEAT_PERIOD)

    @endpoint("delete", "remote_cluster", name_param="name")
    async def delete_remote_cluster(self, request: Request, identity: Identity | None) -> Any:
        """``tctl rm rc/NAME``: forget the leaf and its CAs (its proxy's tunnel is refused from then on)."""
        svc = self.service
        name = request.path_params["name"]
        await svc.trust.get_remote(name)
        await svc.trust.delete_remote_cas(name)
        await svc.trust.delete_remote(name)
        await svc.emit(self.event("trusted_cluster.delete", name=name, role="root",
                                  user=identity.name if identity else ""))
        return {"deleted": name}

    # -- the other cluster's CAs ---------------------------------------------------------------------

    @endpoint(None, None)
    async def rotate_external_cas(self, request: Request, identity: Identity | None) -> Any:
        """CA rotation across the trust (Teleport's ``RotateExternalCertAuthority``): a proxy of this
        cluster hands over the CAs the other end of its tunnel sent (a leaf's proxy: its root's; the
        root's proxy: that leaf's). Only their keys replace the stored copy's; ``enabled`` and
        ``role_map`` stay this cluster's. Refusals are audited (T7003W)."""
        assert identity is not None
        wanted = body(request, ExternalCAsBody)
        try:
            side, changed = await self._rotate_external(identity, wanted)
        except TeleportError as exc:
            await self._ca_update_refused(request, identity, wanted.cluster, str(exc))
            raise
        remote = request.client.host if request.client else ""
        for ca in changed:
            await self.service.emit(self.event(
                CA_UPDATE_EVENT, name=wanted.cluster, role=side, ca_type=ca.ca.kind.value, user=identity.name,
                ssh_public_keys=[k.ssh_public_key_line for k in ca.ca.trusted], **{"addr.remote": remote}))
        return {"cluster": wanted.cluster, "updated": [ca.ca.kind.value for ca in changed]}

    async def _rotate_external(self, identity: Identity, wanted: ExternalCAsBody) -> tuple[str, list[RemoteCA]]:
        svc = self.service
        if identity.kind is not IdentityKind.HOST or "Proxy" not in identity.roles:
            raise AccessDenied(f"access denied to {identity.kind.value} {json.dumps(identity.name)}: only a proxy "
                               "of this cluster hands over another cluster's CAs")
        cluster = wanted.cluster
        if cluster == svc.cluster_name:
            raise AccessDenied(f"cluster {json.dumps(cluster)} is this cluster: its CAs change only by its own "
                               "rotation (tctl auth rotate)")
        side = await self._trust_side(cluster)
        try:
            cas = [ca_from_exchange(c, cluster, f"cas[{i}]") for i, c in enumerate(wanted.cas)]
        except BadCA as exc:
            raise BadRequest(str(exc)) from None
        if len({ca.kind for ca in cas}) != len(cas):
            raise BadRequest("cas: at most one host CA and one user CA")
        changed = []
        for ca in cas:
            new = await svc.trust.rotate_remote_ca(ca)
            if new is not None:
                changed.append(new)
        return side, changed

    async def _trust_side(self, cluster: str) -> str:
        """This cluster's role in its trust with ``cluster``: ``leaf`` when ``cluster`` is a root it
        trusts (enabled), ``root`` when ``cluster`` is one of its leaves; AccessDenied otherwise."""
        svc = self.service
        try:
            tc = await svc.trust.get_trusted(cluster)
        except NotFound:
            pass
        else:
            if not tc.enabled:
                raise AccessDenied(f"the trust in root cluster {json.dumps(cluster)} is disabled (enabled: false)")
            return "leaf"
        try:
            await svc.trust.get_remote(cluster)
        except NotFound:
            raise AccessDenied(f"cluster {json.dumps(cluster)} is neither a root this cluster trusts nor one of "
                               "its leaves") from None
        return "root"

    async def _ca_update_refused(self, request: Request, identity: Identity | None, cluster: str,
                                 reason: str) -> None:
        remote = request.client.host if request.client else ""
        await self.service.emit(self.event(CA_UPDATE_EVENT, "failure", name=cluster, error=reason,
                                           user=identity.name if identity else "", **{"addr.remote": remote}))

    async def _invalid_rotate_external_cas(self, request: Request, fields: dict[str, str], reason: str) -> None:
        """A body the model refused is a refused CA update too."""
        await self._ca_update_refused(request, self.identify(request), fields.get("cluster", ""), reason)

    @endpoint("read", "cert_authority")
    async def list_remote_cas(self, request: Request, identity: Identity | None) -> Any:
        """Every other cluster's CA of this type: a leaf node checks root users with the user CAs
        (``enabled``, ``role_map``); a root proxy checks leaf proxies with the host CAs."""
        kind = _ca_type(request.path_params["ca_type"])
        return [remote.public() for remote in await self.service.trust.remote_cas(kind)]

    @endpoint("read", "cert_authority")
    async def get_remote_ca(self, request: Request, identity: Identity | None) -> Any:
        kind = _ca_type(request.path_params["ca_type"])
        name = request.path_params["name"]
        found = await self.service.trust.remote_cas(kind, name)
        if not found:
            raise NotFound(f"no {kind.value} CA of cluster {json.dumps(name)}")
        return found[0].public()


def _pin_ok(pin: str, cert: Any) -> bool:
    try:
        check_ca_pin([pin], cert)
    except CAPinMismatch:
        return False
    return True


def exchange_cas(host: CertAuthority, user: CertAuthority) -> list[dict[str, Any]]:
    return [ca_exchange_form(host), ca_exchange_form(user)]


ROUTES: list[Operation] = [
    Operation("/v1/trusted_clusters", "GET", "list_trusted_clusters",
              "The root clusters this (leaf) cluster trusts (tokens masked)", response=list[TrustResourceReply]),
    Operation("/v1/trusted_clusters/{name}", "GET", "get_trusted_cluster", "One trusted_cluster (token masked)",
              response=TrustResourceReply),
    Operation("/v1/trusted_clusters/{name}", "PUT", "upsert_trusted_cluster",
              "Create or update a trusted_cluster: the handshake with the root when enabled and not done yet",
              body=TrustedClusterDocument, response=TrustResourceReply, max_body=SMALL_BODY,
              errors=("401", "403", "404", "409")),
    Operation("/v1/trusted_clusters/{name}", "DELETE", "delete_trusted_cluster",
              "Remove a trusted_cluster and the root's CAs", response=DeletedClusterReply),
    Operation("/v1/trustedclusters/validate", "POST", "validate_trust",
              "The trusted clusters handshake (forwarded by the root proxy): token, leaf_name, the leaf's CAs",
              body=TrustValidateBody, response=TrustValidateReply, anonymous=True, max_body=SMALL_BODY,
              errors=("403", "409", "429")),
    Operation("/v1/remote_clusters", "GET", "list_remote_clusters",
              "The leaf clusters that joined this (root) cluster, with status", response=list[TrustResourceReply]),
    Operation("/v1/remote_clusters/{name}", "GET", "get_remote_cluster", "One remote_cluster",
              response=TrustResourceReply),
    Operation("/v1/remote_clusters/{name}/heartbeat", "PUT", "heartbeat_remote_cluster",
              "A leaf's tunnel is up (the root proxy's keepalive)", response=TrustResourceReply),
    Operation("/v1/remote_clusters/{name}", "DELETE", "delete_remote_cluster",
              "Remove a remote_cluster and its CAs", response=DeletedClusterReply),
    Operation("/v1/remote_cas/rotate/external", "POST", "rotate_external_cas",
              "CA rotation across a trust: a proxy hands over the CAs its tunnel's other end sent (proxies only)",
              body=ExternalCAsBody, response=ExternalCAsReply, max_body=SMALL_BODY,
              errors=("400", "403", "409")),
    Operation("/v1/remote_cas/{ca_type}", "GET", "list_remote_cas",
              "Other clusters' CAs of this type (public parts, enabled, role_map)", response=list[RemoteCAReply]),
    Operation("/v1/remote_cas/{ca_type}/{name}", "GET", "get_remote_ca",
              "One other cluster's CA of this type", response=RemoteCAReply),
]
