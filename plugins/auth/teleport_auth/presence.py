"""The node inventory: heartbeats with an expiry, so nodes that stop heartbeating drop out.

Backend keys: ``/nodes/<host uuid>`` -> ``{"uuid", "nodename", "addr", "labels",
"cmd_labels", "tunnel", "expires"}`` with the backend expiry set to ``expires``. A node
announces itself by upserting its entry, then keeps it alive (Teleport: every minute, with a
10-minute TTL): :meth:`Presence.keep_alive_node` moves the expiry of that one key, no value
written, so a keepalive costs one lease renewal (the value's ``expires`` keeps the announce's;
the backend's expiry is the one read back).
:meth:`Presence.list_nodes` is one range read; expired entries are skipped by the backend
and, for an injected clock, by the value's ``expires``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from teleport_core.errors import NotFound, TeleportError
from teleport_core.state.backend import Backend, Item, range_end, utcnow
from teleport_core.state.nodes import OPENSSH, SUB_KINDS, NodeInfo

NODES_PREFIX = b"/nodes/"
PROXIES_PREFIX = b"/proxies/"  # a proxy's heartbeat (api/inventory.py), with a 10-minute expiry
NODE_TTL = dt.timedelta(minutes=10)
_BAD_ID = re.compile(r"[\x00-\x20\x7f/,]")


class InvalidNode(TeleportError):
    """A heartbeat is malformed."""


def _ro(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class NodeHeartbeat:
    """What a node announces. ``cmd_labels`` (dynamic labels) override static ``labels``."""

    uuid: str
    nodename: str
    addr: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)
    cmd_labels: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)
    tunnel: bool = False
    expires: dt.datetime | None = None
    sub_kind: str = "teleport"  # "openssh": an agentless sshd created with tctl create (no heartbeat, no expiry)

    def info(self) -> NodeInfo:
        return NodeInfo(self.uuid, self.nodename, self.addr, {**self.labels, **self.cmd_labels}, self.tunnel,
                        self.sub_kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "nodename": self.nodename,
            "addr": self.addr,
            "labels": dict(self.labels),
            "cmd_labels": dict(self.cmd_labels),
            "tunnel": self.tunnel,
            "expires": self.expires.astimezone(dt.UTC).isoformat() if self.expires else None,
            "sub_kind": self.sub_kind,
        }


def _check(heartbeat: NodeHeartbeat) -> None:
    if not heartbeat.uuid or len(heartbeat.uuid) > 255 or _BAD_ID.search(heartbeat.uuid):
        raise InvalidNode(f"invalid node uuid {json.dumps(heartbeat.uuid)}")
    if not heartbeat.nodename:
        raise InvalidNode("a node needs a nodename")
    if heartbeat.sub_kind not in SUB_KINDS:
        raise InvalidNode(f"sub_kind: expected one of {', '.join(SUB_KINDS)}, got {json.dumps(heartbeat.sub_kind)}")
    if heartbeat.sub_kind == OPENSSH and (heartbeat.tunnel or not heartbeat.addr):
        raise InvalidNode(f"node {json.dumps(heartbeat.nodename)}: an openssh node needs spec.addr (host:port of its "
                          "sshd) and no reverse tunnel")
    if not heartbeat.addr and not heartbeat.tunnel:
        raise InvalidNode(f"node {json.dumps(heartbeat.nodename)} has neither an address nor a reverse tunnel")
    for labels in (heartbeat.labels, heartbeat.cmd_labels):
        for key, value in labels.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise InvalidNode(f"node {json.dumps(heartbeat.nodename)}: labels must map names to strings")


def _decode(data: dict[str, Any]) -> NodeInfo:
    labels = data["labels"]
    cmd = data["cmd_labels"]
    return NodeInfo(data["uuid"], data["nodename"], data["addr"], {**labels, **cmd} if cmd else labels, data["tunnel"],
                    data.get("sub_kind", "teleport"))


class Presence:
    """Node heartbeats in the backend. ``now`` is injectable; it must not run behind the real time."""

    def __init__(self, backend: Backend, *, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.backend = backend
        self._now = now

    @staticmethod
    def _key(uuid: str) -> bytes:
        return NODES_PREFIX + uuid.encode()

    async def upsert_node(self, heartbeat: NodeHeartbeat, ttl: dt.timedelta = NODE_TTL) -> NodeHeartbeat:
        """Store a heartbeat; without ``expires`` it expires ``ttl`` from now. Returns what was stored."""
        _check(heartbeat)
        if heartbeat.expires is None and heartbeat.sub_kind != OPENSSH:  # an agentless node never heartbeats
            heartbeat = attrs.evolve(heartbeat, expires=self._now() + ttl)
        value = json.dumps(heartbeat.to_dict(), separators=(",", ":")).encode()
        await self.backend.put(Item(self._key(heartbeat.uuid), value, expires=heartbeat.expires))
        return heartbeat

    async def keep_alive_node(self, uuid: str, ttl: dt.timedelta = NODE_TTL) -> dt.datetime:
        """Move a live node's expiry to ``ttl`` from now (one key touched); the new expiry.

        ``NotFound`` when there is no live entry (never announced, expired or removed): the node
        announces itself again."""
        if not uuid or len(uuid) > 255 or _BAD_ID.search(uuid):
            raise InvalidNode(f"invalid node uuid {json.dumps(uuid)}")
        expires = self._now() + ttl
        try:
            item = await self.backend.keep_alive(self._key(uuid), expires)
        except NotFound:
            raise NotFound(f"node {json.dumps(uuid)} is offline or does not exist: announce it") from None
        return item.expires or expires

    def _live(self, item: Item, now: dt.datetime) -> bool:
        return item.expires is None or item.expires > now

    async def get_node(self, uuid: str) -> NodeHeartbeat:
        """The node's last heartbeat; ``NotFound`` when it is unknown or expired."""
        try:
            item = await self.backend.get(self._key(uuid))
        except NotFound:
            item = None
        if item is None or not self._live(item, self._now()):
            raise NotFound(f"node {json.dumps(uuid)} is offline or does not exist")
        data = json.loads(item.value)
        expires = item.expires  # moved by keepalives; the value's is the announce's
        return NodeHeartbeat(
            data["uuid"], data["nodename"], data["addr"], data["labels"], data["cmd_labels"], data["tunnel"], expires,
            data.get("sub_kind", "teleport"),
        )

    async def list_nodes(self) -> list[NodeInfo]:
        """Every live node, by UUID: one range read."""
        now = self._now()
        items = await self.backend.get_range(NODES_PREFIX, range_end(NODES_PREFIX))
        loads = json.loads
        return [_decode(loads(item.value)) for item in items if item.expires is None or item.expires > now]

    async def delete_node(self, uuid: str) -> None:
        """Remove a node (``tctl rm node/<uuid>``); ``NotFound`` when absent."""
        try:
            await self.backend.delete(self._key(uuid))
        except NotFound:
            raise NotFound(f"node {json.dumps(uuid)} not found") from None


def parse_node_resource(doc: Mapping[str, Any], label: str) -> NodeHeartbeat:
    """A ``kind: node`` resource of ``tctl create`` (Teleport's form): only ``sub_kind: openssh``,
    a plain sshd registered by hand (our node service registers itself when it joins).

    ``metadata.name`` (the node's UUID: what tsh and the host certificate name it by),
    ``metadata.labels``, ``spec.addr`` (``host:port`` of its sshd) and ``spec.hostname``."""
    if doc.get("sub_kind") != OPENSSH:
        raise InvalidNode(f"{label}: sub_kind: tctl create makes only agentless nodes (sub_kind: {OPENSSH}); "
                          f"got {json.dumps(doc.get('sub_kind'))} (a Teleport node registers itself when it joins)")
    if doc.get("version", "v2") != "v2":
        raise InvalidNode(f"{label}: version: expected v2, got {json.dumps(doc.get('version'))}")
    metadata, spec = doc.get("metadata"), doc.get("spec")
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        raise InvalidNode(f"{label}: metadata and spec: required mappings")
    name, addr, hostname = metadata.get("name"), spec.get("addr"), spec.get("hostname")
    labels = metadata.get("labels") or {}
    for key, value in (("metadata.name", name), ("spec.addr", addr), ("spec.hostname", hostname)):
        if not isinstance(value, str) or not value:
            raise InvalidNode(f"{label}: {key}: required (a string)")
    assert isinstance(addr, str)
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidNode(f"{label}: spec.addr: expected host:port of the sshd, got {json.dumps(addr)}")
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidNode(f"{label}: metadata.labels: must map names to strings")
    unknown = sorted(set(spec) - {"addr", "hostname", "use_tunnel", "public_addrs"})
    if unknown or spec.get("use_tunnel"):
        raise InvalidNode(f"{label}: spec: unsupported {', '.join(unknown) or 'use_tunnel'} for an openssh node")
    beat = NodeHeartbeat(uuid=str(name), nodename=str(hostname), addr=addr, labels=dict(labels), sub_kind=OPENSSH)
    try:
        _check(beat)
    except InvalidNode as exc:
        raise InvalidNode(f"{label}: {exc}") from None
    return beat
