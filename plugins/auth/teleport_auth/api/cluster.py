"""The auth API, cluster: ping, status, the certificate authorities and their rotation."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import APIBase, Operation, body, endpoint
from teleport_auth.authority import ca_pin, ca_pins, export_known_hosts
from teleport_auth.ha import live_auth_servers
from teleport_auth.rotation import RotateRequest, rotation_status
from teleport_core import __version__
from teleport_core.api.schema import Body, Duration, Reply, Word
from teleport_core.errors import NotFound
from teleport_core.policy.access import Identity


class RotateBody(Body):
    """``tctl auth rotate``: the phase to move to (default ``init``), ``manual`` or ``auto``, the grace period."""

    phase: Word = Field("", description="init, update_clients, update_servers, standby or rollback")
    mode: Word = Field("", description="manual or auto")
    grace_period: Duration = ""


class AuthSettings(Reply):
    type: str
    second_factor: str


class PingReply(Reply):
    cluster_name: str
    server_version: str
    host_ca_pems: list[str]
    auth: AuthSettings
    session_recording: str
    proxy_public_addr: str


class RotationState(Reply):
    """A CA's rotation: its phase, mode, state (``standby`` or ``in_progress``) and schedule."""

    phase: str
    mode: str
    state: str
    schedule: dict[str, str] | None = None


class AuthServerEntry(Reply):
    """A live auth server of the cluster and where it writes audit events and recordings."""

    host_uuid: str
    nodename: str
    addr: str
    audit_events_uri: list[str]
    audit_sessions_uri: str


class StatusReply(Reply):
    cluster_name: str
    version: str
    ca_pin: str
    ca_pins: list[str]
    cas: dict[str, RotationState]
    auth_servers: list[AuthServerEntry] = []


class CAReply(Reply):
    type: str
    cluster_name: str
    ssh_public_keys: list[str]
    tls_certs: list[str]
    known_hosts: str
    rotation: RotationState


class RotatedCA(RotationState):
    type: str
    previous_phase: str


class RotateReply(Reply):
    rotated: list[RotatedCA]
    ca_pin: str


class ClusterAPI(APIBase):
    """Cluster routes."""

    # -- cluster -----------------------------------------------------------------------------------------

    @endpoint(None, None, anonymous=True)
    async def ping(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        return {
            "cluster_name": svc.cluster_name,
            "server_version": __version__,
            "host_ca_pems": svc.host_ca_pems(),
            "auth": {"type": "local", "second_factor": svc.settings.second_factor},
            "session_recording": svc.settings.session_recording,
            "proxy_public_addr": self.proxy_addr(),
        }


    @endpoint("read", "cluster_name")
    async def status(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        await svc.reload_cas()
        return {
            "cluster_name": svc.cluster_name,
            "version": __version__,
            "ca_pin": ca_pin(svc.host_ca),
            "ca_pins": ca_pins(svc.host_ca),  # every trusted host CA: two during a rotation
            "cas": {ca.kind.value: rotation_status(ca.rotation) for ca in (svc.user_ca, svc.host_ca)},
            # the live auth servers, for callers who may list them (list on auth_server)
            "auth_servers": [{"host_uuid": a.host_uuid, "nodename": a.nodename, "addr": a.addr,
                              "audit_events_uri": [d.uri for d in a.events], "audit_sessions_uri": a.sessions.uri}
                             for a in await live_auth_servers(svc.backend)]
            if identity is not None and (await self.decision(identity, "list", "auth_server")).allowed else [],
        }

    @endpoint("read", "cert_authority")
    async def get_ca(self, request: Request, identity: Identity | None) -> Any:
        svc = self.service
        kind = request.path_params["ca_type"]
        if kind not in ("user", "host"):
            raise NotFound(f'unknown certificate authority type "{kind}": expected user or host')
        ca = svc.user_ca if kind == "user" else svc.host_ca
        return {
            "type": kind,
            "cluster_name": svc.cluster_name,
            "ssh_public_keys": [k.ssh_public_key_line for k in ca.trusted],
            "tls_certs": [k.tls_cert_pem.decode() for k in ca.trusted],
            "known_hosts": export_known_hosts(ca) if kind == "host" else "",
            "rotation": rotation_status(ca.rotation),
        }

    @endpoint("update", "cert_authority")
    async def rotate_ca(self, request: Request, identity: Identity | None) -> Any:
        """``tctl auth rotate``: move the user, host or both (``all``) CAs to a rotation phase."""
        assert identity is not None
        svc = self.service
        wanted = body(request, RotateBody)
        rotate = RotateRequest.parse(request.path_params["ca_type"], phase=wanted.phase, mode=wanted.mode,
                                     grace_period=wanted.grace_period)
        changes = await svc.rotation.rotate(rotate, actor=identity.name)
        return {"rotated": [change.to_dict() for change in changes], "ca_pin": ca_pin(svc.host_ca)}


ROUTES: list[Operation] = [
    Operation("/v1/ping", "GET", "ping",
              "Cluster name, version, host CA certificates, auth settings (no certificate needed)",
              response=PingReply, anonymous=True, errors=()),
    Operation("/v1/status", "GET", "status", "Cluster status: CA pin and the rotation state of each CA",
              response=StatusReply),
    Operation("/v1/cas/{ca_type}", "GET", "get_ca", "Public keys and certificates of the user or host CA",
              response=CAReply),
    Operation("/v1/cas/{ca_type}/rotate", "POST", "rotate_ca",
              "Rotate the user, host or all CAs: phase, mode (manual or auto), grace_period (tctl auth rotate)",
              body=RotateBody, response=RotateReply),
]

