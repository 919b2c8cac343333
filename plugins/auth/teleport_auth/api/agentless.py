"""The auth API, agentless OpenSSH nodes: the certificates a proxy needs to speak for one
(:mod:`teleport_auth.agentless` says what each holds and who may have it)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from pydantic import Field, StringConstraints
from starlette.requests import Request

from teleport_auth.agentless import FORWARD_HOST_CERT_TTL, SESSION_CERT_TTL, node_principals
from teleport_auth.api.core import SMALL_BODY, APIBase, BadRequest, Operation, body, endpoint
from teleport_auth.presence import InvalidNode, NodeHeartbeat, parse_node_resource
from teleport_core.api.schema import NO_CONTROL, Body, Labels, Name, PublicKey, Reply, Text
from teleport_core.errors import AccessDenied, AlreadyExists, AuthenticationFailed, NotFound, TeleportError
from teleport_core.pki import keys
from teleport_core.policy.access import SSH, Identity, IdentityKind
from teleport_core.policy.locks import lock_in_force, lock_message
from teleport_core.state.nodes import OPENSSH, NodeInfo


def parse_node_doc(doc: dict[str, Any], label: str) -> NodeHeartbeat:
    """A ``kind: node`` document of ``tctl create`` (a 400 naming ``label`` when it is wrong)."""
    try:
        return parse_node_resource(doc, label)
    except InvalidNode as exc:
        raise BadRequest(str(exc)) from None


async def check_openssh_nodes(api: APIBase, request: Request, identity: Identity, nodes: list[NodeHeartbeat], *,
                              force: bool) -> list[tuple[NodeHeartbeat, bool]]:
    """Authorize (``create``/``update`` on ``node``) and check each node before anything is written:
    (node, exists). A UUID that is one of our joined hosts is refused (it heartbeats itself)."""
    from teleport_auth.hosts import UnknownHost

    svc = api.service
    planned: list[tuple[NodeHeartbeat, bool]] = []
    seen: set[str] = set()
    for node in nodes:
        if node.uuid in seen:
            raise AlreadyExists(f"node {json.dumps(node.uuid)} appears twice")
        seen.add(node.uuid)
        try:
            await svc.hosts.get(node.uuid)
            joined = True
        except UnknownHost:
            joined = False
        if joined:
            raise AlreadyExists(f"node {json.dumps(node.uuid)} is a Teleport host that joined the cluster; "
                                "an openssh node needs its own UUID")
        try:
            held = await svc.presence.get_node(node.uuid)
        except NotFound:
            held = None
        if held is not None and held.sub_kind != OPENSSH:
            raise AlreadyExists(f"node {json.dumps(node.uuid)} is a Teleport node; pick another UUID")
        if held is not None and not force:
            raise AlreadyExists(f'node "{node.uuid}" already exists; use -f to overwrite it')
        await api.authorize(request, identity, "update" if held else "create", "node", node.uuid)
        planned.append((node, held is not None))
    return planned


async def write_openssh_nodes(api: APIBase, identity: Identity,
                              planned: list[tuple[NodeHeartbeat, bool]]) -> list[dict[str, Any]]:
    """Store the checked nodes (no expiry: they never heartbeat)."""
    out = []
    for node, existed in planned:
        await api.service.presence.upsert_node(node)
        api.service.log.info("agentless node registered", node=node.uuid, hostname=node.nodename, addr=node.addr,
                             user=identity.name, updated=existed)
        out.append({"kind": "node", "name": node.uuid, "created": not existed})
    return out


class OpenSSHJoinBody(Body):
    """``teleport join openssh``: a plain sshd host registers itself with a node join token."""

    token: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=NO_CONTROL)]
    hostname: Name
    address: Text = Field(description="host:port of the sshd")
    labels: Labels = {}
    public_key: PublicKey = Field(description="the sshd host key to certify")


class OpenSSHJoinReply(Reply):
    host_uuid: str
    ssh_cert: str
    principals: list[str]
    user_ca: list[str]
    cluster_name: str


class ForwardHostCertBody(Body):
    """The proxy's forwarding public key and the agentless node it speaks for."""

    node: Name = Field(description="the host UUID of a registered openssh node")
    public_key: PublicKey


class SessionCertBody(Body):
    """A user's SSH certificate (received by the proxy), the login and the agentless node."""

    node: Name
    login: Name
    user_cert: PublicKey = Field(description="the user's SSH certificate line, as the client presented it")
    public_key: PublicKey = Field(description="the key the proxy dials the node with for this session")
    client_ip: Text = ""


class AgentlessCertReply(Reply):
    ssh_cert: str
    principals: list[str]
    valid_before: str


class AgentlessAPI(APIBase):
    """Certificates a proxy needs to speak for an agentless node."""

    async def _agentless_node(self, request: Request, identity: Identity | None, uuid: str) -> NodeInfo:
        """The registered openssh node ``uuid``, when the caller is a proxy (refusals audited)."""
        assert identity is not None
        if identity.kind is not IdentityKind.HOST or "Proxy" not in identity.roles:
            reason = (f"access denied to {identity.kind.value} {json.dumps(identity.name)}: only a proxy gets "
                      "certificates for agentless nodes")
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        try:
            held = await self.service.presence.get_node(uuid)
        except NotFound:
            held = None
        if held is None or held.sub_kind != OPENSSH:
            reason = f"node {json.dumps(uuid)} is not a registered openssh node"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        return held.info()

    @endpoint(None, None, anonymous=True)
    async def join_openssh(self, request: Request, identity: Identity | None) -> Any:
        """``teleport join openssh``: spend a ``node`` token, register the host as an agentless node
        (``sub_kind: openssh``, a new UUID) and certify its sshd host key for the node's names (no
        ``x-teleport-role``); the user CA comes back for ``TrustedUserCAKeys``. The hostname must
        be free (no host, no other node holds it: OpenSSH clients trust the name). Every refusal is
        audited (``instance.join`` failure, TJ002E), and failures count against the join rate."""
        import uuid as uuidlib

        from teleport_auth.hosts import HostNames
        from teleport_auth.issuer import DEFAULT_HOST_CERT_TTL, issue_openssh_host_cert
        from teleport_auth.rotation import server_signing_ca
        from teleport_core.net.limits import rate_limited
        from teleport_core.pki.secret import Secret

        wanted = body(request, OpenSSHJoinBody)
        svc = self.service
        remote = request.client.host if request.client else ""
        limited = await rate_limited(svc.register_rate, remote, "join", lambda r: self.audit_denial(request, None, r))
        if limited is not None:
            return limited
        uuid = str(uuidlib.uuid4())
        try:
            beat = parse_node_resource({"kind": "node", "sub_kind": OPENSSH, "version": "v2",
                                        "metadata": {"name": uuid, "labels": dict(wanted.labels)},
                                        "spec": {"addr": wanted.address, "hostname": wanted.hostname}}, "request")
            keys.load_public_key(wanted.public_key)  # a bad key is refused before the token is spent
            await svc.hosts.conflict("", beat.nodename, HostNames(), "Node")
            if any(n.nodename == beat.nodename for n in await svc.presence.list_nodes()):
                raise AlreadyExists(f"a node named {json.dumps(beat.nodename)} is registered already")
            await svc.tokens.consume(Secret(wanted.token), "Node", beat.nodename)
            node = beat.info()
            cert = await asyncio.to_thread(issue_openssh_host_cert, server_signing_ca(svc.host_ca),
                                           svc.ctx.plugins.hook, public_key=wanted.public_key,
                                           principals=node_principals(node, svc.cluster_name),
                                           ttl=DEFAULT_HOST_CERT_TTL)
            await svc.presence.upsert_node(beat)
        except (InvalidNode, ValueError) as exc:
            await self._join_refused(wanted, remote, f"{exc}")
            raise BadRequest(str(exc)) from None
        except TeleportError as exc:
            await self._join_refused(wanted, remote, str(exc))
            raise
        svc.register_rate.refund(remote)
        await svc.emit(self.event("instance.join", node_name=beat.nodename, role="Node", host_id=uuid,
                                  method="token", sub_kind=OPENSSH, **{"addr.remote": remote}))
        return {"host_uuid": uuid, "ssh_cert": cert.data.decode().strip(), "principals": list(cert.request.principals),
                "user_ca": [k.ssh_public_key_line for k in svc.user_ca.trusted], "cluster_name": svc.cluster_name}

    async def _join_refused(self, wanted: OpenSSHJoinBody, remote: str, reason: str) -> None:
        await self.service.emit(self.event("instance.join", "failure", node_name=wanted.hostname, role="Node",
                                           sub_kind=OPENSSH, error=reason, **{"addr.remote": remote}))

    @endpoint(None, None)  # the caller must be a proxy: checked by _agentless_node (audited)
    async def forward_host_cert(self, request: Request, identity: Identity | None) -> Any:
        from teleport_auth.issuer import issue_openssh_host_cert
        from teleport_auth.rotation import server_signing_ca

        wanted = body(request, ForwardHostCertBody)
        node = await self._agentless_node(request, identity, wanted.node)
        svc = self.service
        principals = node_principals(node, svc.cluster_name)
        try:
            cert = await asyncio.to_thread(issue_openssh_host_cert, server_signing_ca(svc.host_ca),
                                           svc.ctx.plugins.hook, public_key=wanted.public_key,
                                           principals=principals, ttl=FORWARD_HOST_CERT_TTL)
        except (keys.UnsupportedKey, ValueError) as exc:
            raise BadRequest(f"public_key: {exc}") from None
        valid_before = cert.request.valid_before
        await svc.emit(self.event("cert.create", user=identity.name if identity else "", cert_type="openssh_forward",
                                  server_id=node.uuid, principals=list(cert.request.principals),
                                  expires=valid_before.isoformat()))
        return {"ssh_cert": cert.data.decode().strip(), "principals": list(cert.request.principals),
                "valid_before": valid_before.isoformat()}

    @endpoint(None, None)
    async def session_cert(self, request: Request, identity: Identity | None) -> Any:
        from teleport_auth.issuer import issue_ssh_user_cert, verify_ssh_cert
        from teleport_core.pki.certs import CertType

        wanted = body(request, SessionCertBody)
        node = await self._agentless_node(request, identity, wanted.node)
        assert identity is not None
        svc = self.service
        user = ""
        try:
            try:
                verified = verify_ssh_cert(wanted.user_cert, svc.user_ca, cert_type=CertType.USER,
                                           principal=wanted.login, client_ip=wanted.client_ip or None)
            except AuthenticationFailed as exc:
                raise AccessDenied(f"the user certificate is not valid: {exc}") from None
            user = verified.identity.name
            cluster = verified.extensions.get("teleport-route-to-cluster", "")
            if cluster and cluster != svc.cluster_name:
                raise AccessDenied(f"the certificate is for cluster {json.dumps(cluster)}")
            try:
                record = await svc.users.get(user)
            except NotFound:
                raise AccessDenied(f"user {json.dumps(user)} does not exist") from None
            roles = tuple(r for r in verified.identity.roles if r in record.roles)  # the roles the user still has
            if not roles:
                raise AccessDenied(f"user {json.dumps(user)} no longer has the roles of the certificate")
            subject = Identity(user, IdentityKind.USER, roles, record.traits, (wanted.login,), svc.cluster_name,
                               issued=verified.identity.issued)
            lock = lock_in_force(await svc.locks.current(), user=user, roles=roles, login=wanted.login,
                                 node=node.uuid, issued=subject.issued)
            if lock is not None:
                raise AccessDenied(lock_message(lock))
            roleset = await svc.authorizer.roleset_for(subject)
            decision = await self.decision(subject, SSH, "node", node.uuid, dict(node.labels), wanted.login)
            if not decision.allowed:
                raise AccessDenied(decision.reason)
        except (AccessDenied, TeleportError) as exc:
            reason = f"agentless session to {node.nodename} as {wanted.login} for {user or 'an unknown user'}: {exc}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason) from None
        try:
            cert = await asyncio.to_thread(
                issue_ssh_user_cert, svc.user_ca, svc.ctx.plugins.hook, public_key=wanted.public_key,
                identity=subject, ttl=SESSION_CERT_TTL, permit_port_forwarding=roleset.port_forwarding,
                permit_agent_forwarding=roleset.forward_agent)
        except (keys.UnsupportedKey, ValueError) as exc:
            raise BadRequest(f"public_key: {exc}") from None
        valid_before = cert.request.valid_before
        await svc.emit(self.event("cert.create", user=user, cert_type="openssh_session", login=wanted.login,
                                  server_id=node.uuid, forwarded_by=identity.name,
                                  identity={"user": user, "roles": list(roles), "logins": [wanted.login],
                                            "expires": valid_before.isoformat()}))
        return {"ssh_cert": cert.data.decode().strip(), "principals": list(cert.request.principals),
                "valid_before": valid_before.isoformat()}


ROUTES: list[Operation] = [
    Operation("/v1/agentless/join", "POST", "join_openssh",
              "teleport join openssh: a plain sshd host registers with a node token; its host certificate and the "
              "user CA", body=OpenSSHJoinBody, response=OpenSSHJoinReply, max_body=SMALL_BODY, anonymous=True,
              errors=("401", "403", "404", "409", "429")),
    Operation("/v1/agentless/host-cert", "POST", "forward_host_cert",
              "A short-lived host certificate for an agentless (openssh) node's principals, for the key the "
              "proxy presents as that node (proxies only)", body=ForwardHostCertBody, response=AgentlessCertReply,
              max_body=SMALL_BODY),
    Operation("/v1/agentless/session-cert", "POST", "session_cert",
              "A user certificate for one session to an agentless node: principals [login], minutes long, from "
              "the user's own verified certificate, current roles and locks (proxies only)", body=SessionCertBody,
              response=AgentlessCertReply, max_body=SMALL_BODY),
]
