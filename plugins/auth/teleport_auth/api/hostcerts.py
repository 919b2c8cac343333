"""The auth API, host certificates for plain OpenSSH servers (``tctl auth sign --host``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import SMALL_BODY, APIBase, BadRequest, Operation, body, duration, endpoint
from teleport_core.api.schema import Body, Duration, Name, PublicKey, Reply
from teleport_core.pki import keys
from teleport_core.policy.access import Identity

#: the resource kind a caller needs ``create`` on (as in Teleport); no preset role names it, so
#: only a role whose rule says ``*`` (or the auth server's own identity, tctl on the auth host) may
HOST_CERT_KIND = "host_cert"
MAX_PRINCIPALS = 64


class OpenSSHHostCertBody(Body):
    """A host certificate for ``public_key`` valid for exactly ``principals`` (hostnames or addresses)."""

    public_key: PublicKey
    principals: Annotated[list[Name], Field(min_length=1, max_length=MAX_PRINCIPALS)]
    ttl: Duration = ""


class OpenSSHHostCertReply(Reply):
    ssh_cert: str
    principals: list[str]
    valid_before: str
    known_hosts: list[str]
    cluster_name: str


class HostCertsAPI(APIBase):
    """Host certificates for OpenSSH servers."""

    @endpoint("create", HOST_CERT_KIND)
    async def sign_openssh_host(self, request: Request, identity: Identity | None) -> Any:
        from teleport_auth.authority import export_known_hosts
        from teleport_auth.issuer import DEFAULT_HOST_CERT_TTL, issue_openssh_host_cert
        from teleport_auth.rotation import server_signing_ca

        assert identity is not None
        svc = self.service
        wanted = body(request, OpenSSHHostCertBody)
        ttl = duration(wanted.ttl) or DEFAULT_HOST_CERT_TTL
        signer = server_signing_ca(svc.host_ca)  # the keys servers' certificates come from in this phase
        try:
            cert = await asyncio.to_thread(issue_openssh_host_cert, signer, svc.ctx.plugins.hook,
                                           public_key=wanted.public_key, principals=wanted.principals, ttl=ttl)
        except keys.UnsupportedKey as exc:
            raise BadRequest(f"public_key: {exc}") from None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        valid_before = cert.request.valid_before
        await svc.emit(self.event("cert.create", user=identity.name, cert_type="openssh_host",
                                  principals=list(cert.request.principals), expires=valid_before.isoformat()))
        return {"ssh_cert": cert.data.decode().strip(), "principals": list(cert.request.principals),
                "valid_before": valid_before.isoformat(),
                "known_hosts": export_known_hosts(svc.host_ca).splitlines(), "cluster_name": svc.cluster_name}


ROUTES: list[Operation] = [
    Operation("/v1/certs/openssh-host", "POST", "sign_openssh_host",
              "A host certificate for a plain OpenSSH server, valid for exactly the principals given "
              "(tctl auth sign --host; needs create on host_cert)",
              body=OpenSSHHostCertBody, response=OpenSSHHostCertReply, max_body=SMALL_BODY),
]
