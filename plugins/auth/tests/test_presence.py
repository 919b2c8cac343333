"""The node inventory: heartbeats, expiry, and listing 10,000 nodes with one range read."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from teleport_auth.presence import InvalidNode, NodeHeartbeat, Presence

from teleport_core.errors import NotFound
from teleport_core.state.nodes import NodeInfo


def beat(i: int, **kw: Any) -> NodeHeartbeat:
    fields: dict[str, Any] = {
        "addr": f"10.0.{i // 256}.{i % 256}:3022",
        "labels": {"env": "prod", "n": str(i)},
        "cmd_labels": {"uptime": "1d"},
    }
    fields.update(kw)
    return NodeHeartbeat(f"{i:08d}-0000-4000-8000-000000000000", f"node{i}", **fields)


def test_upsert_get_list_delete(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        presence = Presence(backend, now=clock)
        stored = await presence.upsert_node(beat(1, labels={"env": "dev", "uptime": "static"}))
        assert stored.expires == clock.now + dt.timedelta(minutes=10)
        await presence.upsert_node(beat(2, addr="", tunnel=True, cmd_labels={}))
        nodes = await presence.list_nodes()
        assert nodes == [
            NodeInfo(beat(1).uuid, "node1", "10.0.0.1:3022", {"env": "dev", "uptime": "1d"}),  # cmd labels win
            NodeInfo(beat(2).uuid, "node2", "", {"env": "prod", "n": "2"}, tunnel=True),
        ]
        got = await presence.get_node(beat(1).uuid)
        assert got == stored and got.info() == nodes[0]
        # a heartbeat replaces the entry
        await presence.upsert_node(beat(1, addr="10.9.9.9:3022"))
        assert (await presence.get_node(beat(1).uuid)).addr == "10.9.9.9:3022"
        await presence.delete_node(beat(1).uuid)
        assert [n.nodename for n in await presence.list_nodes()] == ["node2"]
        with pytest.raises(NotFound, match="is offline or does not exist"):
            await presence.get_node(beat(1).uuid)
        with pytest.raises(NotFound, match=f'^node "{beat(1).uuid}" not found$'):
            await presence.delete_node(beat(1).uuid)

    with_backend(body)


def test_expired_heartbeats_drop_out(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        presence = Presence(backend, now=clock)
        await presence.upsert_node(beat(1))  # 10 minutes
        await presence.upsert_node(beat(2), ttl=dt.timedelta(minutes=1))
        await presence.upsert_node(beat(3, expires=clock.now + dt.timedelta(minutes=30)))
        assert len(await presence.list_nodes()) == 3
        clock.advance(minutes=1)
        assert [n.nodename for n in await presence.list_nodes()] == ["node1", "node3"]
        with pytest.raises(NotFound):
            await presence.get_node(beat(2).uuid)
        clock.advance(minutes=9)
        assert [n.nodename for n in await presence.list_nodes()] == ["node3"]
        await presence.upsert_node(beat(1))  # heartbeating again brings it back
        assert [n.nodename for n in await presence.list_nodes()] == ["node1", "node3"]

    with_backend(body)


@pytest.mark.parametrize(
    ("heartbeat", "message"),
    [
        (NodeHeartbeat("", "n", "a:1"), 'invalid node uuid ""'),
        (NodeHeartbeat("a/b", "n", "a:1"), 'invalid node uuid "a/b"'),
        (NodeHeartbeat("u", "", "a:1"), "a node needs a nodename"),
        (NodeHeartbeat("u", "n"), 'node "n" has neither an address nor a reverse tunnel'),
        (NodeHeartbeat("u", "n", "a:1", {"": "x"}), 'node "n": labels must map names to strings'),
    ],
)
def test_invalid_heartbeats(with_backend: Any, heartbeat: NodeHeartbeat, message: str) -> None:
    async def body(backend: Any) -> None:
        with pytest.raises(InvalidNode) as info:
            await Presence(backend).upsert_node(heartbeat)
        assert str(info.value) == message

    with_backend(body)


def test_ten_thousand_nodes(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        presence = Presence(backend)
        for start in range(0, 10_000, 1000):
            await asyncio.gather(*(presence.upsert_node(beat(i)) for i in range(start, start + 1000)))
        nodes = await presence.list_nodes()
        assert len(nodes) == 10_000
        assert len({n.uuid for n in nodes}) == 10_000
        assert nodes[1234] == beat(1234).info()

    with_backend(body)
