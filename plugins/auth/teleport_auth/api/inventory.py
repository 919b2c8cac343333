"""The auth API, inventory: node and proxy heartbeats and listings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from teleport_auth.api.core import (
    PROXIES_END,
    PROXIES_PREFIX,
    PROXY_TTL,
    APIBase,
    BadRequest,
    Operation,
    body,
    endpoint,
)
from teleport_auth.presence import NODE_TTL, NodeHeartbeat
from teleport_core.api.schema import Body, Labels, Name, OptionalName, Reply, Text
from teleport_core.errors import (
    AccessDenied,
    NotFound,
)
from teleport_core.metrics import metrics_for
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.state.backend import Item
from teleport_core.state.nodes import NodeInfo


class NodeHeartbeatBody(Body):
    """A node's heartbeat: its recorded nodename, address, static and command labels, whether tunnelled."""

    nodename: Name
    addr: Text = ""
    labels: Labels = {}
    cmd_labels: Labels = {}
    tunnel: bool = False
    uuid: OptionalName = Field("", description="ignored: the path names the node")


class ProxyHeartbeatBody(Body):
    """A proxy's heartbeat: its recorded nodename and the addresses clients use."""

    nodename: Name
    public_addr: Text
    ssh_public_addr: Text = ""
    uuid: OptionalName = Field("", description="ignored: the path names the proxy")


class NodeReply(Reply):
    uuid: str
    nodename: str
    addr: str
    labels: dict[str, str]
    tunnel: bool
    sub_kind: str = "teleport"


class KeepAliveReply(Reply):
    uuid: str
    expires: str


class DeletedNodeReply(Reply):
    deleted: str
    nodename: str


class ProxyReply(Reply):
    uuid: str
    nodename: str
    public_addr: str
    ssh_public_addr: str = ""


class InventoryAPI(APIBase):
    """Node and proxy routes."""

    # -- nodes ------------------------------------------------------------------------------------------------

    @endpoint("list", "node")
    async def list_nodes(self, request: Request, identity: Identity | None) -> Any:
        assert identity is not None
        nodes = await self.service.presence.list_nodes()
        if identity.kind is IdentityKind.USER:
            roleset = await self.service.authorizer.roleset_for(identity)
            nodes = [n for n in nodes if roleset.node_visible(n.labels)]
        return [node_dict(n) for n in nodes]

    @endpoint("update", "node", name_param="uuid")
    async def upsert_node(self, request: Request, identity: Identity | None) -> Any:
        beat = body(request, NodeHeartbeatBody)
        uuid = request.path_params["uuid"]
        heartbeat = NodeHeartbeat(uuid=uuid, nodename=beat.nodename, addr=beat.addr, labels=beat.labels,
                                  cmd_labels=beat.cmd_labels, tunnel=beat.tunnel)
        assert identity is not None
        await self.check_heartbeat(request, identity, "Node", uuid, heartbeat.nodename)
        try:
            stored = await self.service.presence.upsert_node(heartbeat)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self.count_heartbeat("node", uuid, NODE_TTL)
        return node_dict(stored.info())

    @endpoint("update", "node", name_param="uuid")
    async def keep_alive_node(self, request: Request, identity: Identity | None) -> Any:
        """A node's keepalive: no body, its entry's expiry moved (one backend key). The endpoint's
        host policy lets a node keep alive only its own entry, which only a full heartbeat (with
        :meth:`check_heartbeat`) creates; NotFound tells it to announce itself again."""
        uuid = request.path_params["uuid"]
        assert identity is not None
        await self.check_keepalive(request, identity, "node")
        try:
            expires = await self.service.presence.keep_alive_node(uuid)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self.count_heartbeat("node", uuid, NODE_TTL, keepalive=True)
        return keepalive_reply(uuid, expires)

    def count_heartbeat(self, kind: str, uuid: str, ttl: dt.timedelta, *, keepalive: bool = False) -> None:
        """Count an accepted announce (or keepalive) of a ``kind`` host; it is connected for ``ttl``."""
        counters: dict[tuple[str, bool], tuple[Any, Any]] = self.__dict__.setdefault("_heartbeat_counters", {})
        found = counters.get((kind, keepalive))
        if found is None:  # the labelled counter and the connected hosts, looked up once per kind
            metrics = metrics_for(self.service.ctx.metrics)
            counter = (metrics.keepalives_received if keepalive else metrics.heartbeats_received).labels(type=kind)
            found = counters[(kind, keepalive)] = (counter, metrics.connected)
        found[0].inc()
        found[1].seen(kind, uuid, ttl.total_seconds())

    async def check_keepalive(self, request: Request, identity: Identity, kind: str) -> None:
        """Only hosts keep entries alive (users, whatever their roles, do not); the host policy
        already limited a node or proxy to its own entry. A refusal is audited (T3007W)."""
        if identity.kind is not IdentityKind.HOST:
            reason = (f"access denied to {identity.kind.value} {json.dumps(identity.name)}: only hosts send "
                      f"keepalives, and only for their own {kind} entry")
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)

    async def check_heartbeat(self, request: Request, identity: Identity, role: str, uuid: str, nodename: str) -> None:
        """A heartbeat comes from a host and names a registered host with ``role`` and its
        recorded nodename (auth servers, which record every host, are trusted; users, whatever
        their roles, do not heartbeat); a refusal is audited (T3007W)."""
        from teleport_auth.hosts import UnknownHost

        if identity.kind is IdentityKind.HOST and "Auth" in identity.roles:
            return
        problem = ""
        try:
            if identity.kind is not IdentityKind.HOST:
                raise UnknownHost(f"only hosts send heartbeats, and only their own {role.lower()} entry")
            record = await self.service.hosts.get(uuid)
            if role not in record.roles:
                problem = f"host {uuid} is not registered with role {role}"
            elif nodename != record.nodename:
                problem = (f"host {uuid} is registered as {json.dumps(record.nodename)}, "
                           f"not {json.dumps(nodename)}: a host heartbeats under its own nodename")
        except UnknownHost as exc:
            problem = str(exc)
        if problem:
            reason = f"access denied to {identity.kind.value} {json.dumps(identity.name)}: {problem}"
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)

    @endpoint("delete", "node", name_param="uuid")
    async def delete_node(self, request: Request, identity: Identity | None) -> Any:
        """``tctl rm node/<uuid>``: the node's inventory entry and its host record go, which
        frees its nodename; the host must join again with a token (see teleport_auth.hosts)."""
        svc = self.service
        uuid = request.path_params["uuid"]
        removed = await svc.hosts.remove(uuid)
        try:
            await svc.presence.delete_node(uuid)
        except NotFound:
            if removed is None:
                raise
        return {"deleted": uuid, "nodename": removed.nodename if removed else ""}

    # -- proxies ------------------------------------------------------------------------------------------

    @endpoint("update", "proxy", name_param="uuid")
    async def upsert_proxy(self, request: Request, identity: Identity | None) -> Any:
        """A proxy's heartbeat: the addresses clients use (invite URLs name the proxy)."""
        beat = body(request, ProxyHeartbeatBody)
        uuid = request.path_params["uuid"]
        entry = {"uuid": uuid, "nodename": beat.nodename, "public_addr": beat.public_addr,
                 "ssh_public_addr": beat.ssh_public_addr}
        assert identity is not None
        await self.check_heartbeat(request, identity, "Proxy", uuid, entry["nodename"])
        expires = dt.datetime.now(dt.UTC) + PROXY_TTL
        await self.service.backend.put(Item(PROXIES_PREFIX + uuid.encode(), json.dumps(entry).encode(), expires))
        self._proxy_public = entry["public_addr"]
        self.count_heartbeat("proxy", uuid, PROXY_TTL)
        return entry

    @endpoint("update", "proxy", name_param="uuid")
    async def keep_alive_proxy(self, request: Request, identity: Identity | None) -> Any:
        """A proxy's keepalive: no body, its entry's expiry moved (its own entry only, by the host
        policy); NotFound tells it to announce itself again."""
        uuid = request.path_params["uuid"]
        assert identity is not None
        await self.check_keepalive(request, identity, "proxy")
        expires = dt.datetime.now(dt.UTC) + PROXY_TTL
        try:
            item = await self.service.backend.keep_alive(PROXIES_PREFIX + uuid.encode(), expires)
        except NotFound:
            raise NotFound(f"proxy {json.dumps(uuid)} is offline or does not exist: announce it") from None
        self.count_heartbeat("proxy", uuid, PROXY_TTL, keepalive=True)
        return keepalive_reply(uuid, item.expires or expires)

    @endpoint("list", "proxy")
    async def list_proxies(self, request: Request, identity: Identity | None) -> Any:
        return [json.loads(item.value) for item in await self.service.backend.get_range(PROXIES_PREFIX, PROXIES_END)]


#: the routes :class:`~teleport_auth.api.hot.HotRoutesApp` dispatches before Starlette's routing
HOT_HANDLERS = frozenset({"keep_alive_node", "keep_alive_proxy"})
_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def keepalive_reply(uuid: str, expires: dt.datetime) -> Response:
    """``{"uuid", "expires"}`` (a :class:`KeepAliveReply`), encoded as JSONResponse would, without
    building an encoder per reply."""
    text = _COMPACT.encode({"uuid": uuid, "expires": expires.astimezone(dt.UTC).isoformat()})
    return Response(text.encode(), media_type="application/json")


def node_dict(node: NodeInfo) -> dict[str, Any]:
    return {"uuid": node.uuid, "nodename": node.nodename, "addr": node.addr, "labels": dict(node.labels),
            "tunnel": node.tunnel, "sub_kind": node.sub_kind}


ROUTES: list[Operation] = [
    Operation("/v1/nodes", "GET", "list_nodes", "Registered nodes the caller may see", response=list[NodeReply]),
    Operation("/v1/nodes/{uuid}", "PUT", "upsert_node",
              "Heartbeat of a node (its own entry only, its recorded nodename)", body=NodeHeartbeatBody,
              response=NodeReply),
    Operation("/v1/nodes/{uuid}/keepalive", "PUT", "keep_alive_node",
              "Keepalive of a node's entry (no body; its own entry only): the expiry moves, NotFound when "
              "the node must announce itself again", response=KeepAliveReply),
    Operation("/v1/nodes/{uuid}", "DELETE", "delete_node", "Remove a node and its host record, freeing its nodename",
              response=DeletedNodeReply),
    Operation("/v1/proxies", "GET", "list_proxies",
              "Proxies that sent a heartbeat recently, with their public addresses", response=list[ProxyReply]),
    Operation("/v1/proxies/{uuid}", "PUT", "upsert_proxy", "Heartbeat of a proxy (its own entry only)",
              body=ProxyHeartbeatBody, response=ProxyReply),
    Operation("/v1/proxies/{uuid}/keepalive", "PUT", "keep_alive_proxy",
              "Keepalive of a proxy's entry (no body; its own entry only): the expiry moves, NotFound when "
              "the proxy must announce itself again", response=KeepAliveReply),
]
