"""Presence keepalives on the real SQLite backend: one key's expiry moves, the announced value
stays; a node that stops keeping alive drops out after its TTL (a short one here)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from teleport_auth.presence import NODES_PREFIX, InvalidNode, NodeHeartbeat, Presence

from teleport_core.errors import NotFound

UUID = "00000001-0000-4000-8000-000000000000"


def beat(**kw: Any) -> NodeHeartbeat:
    return NodeHeartbeat(UUID, "node1", "10.0.0.1:3022", {"env": "prod"}, {"uptime": "1d"}, **kw)


def test_keep_alive_moves_the_expiry_and_keeps_the_announced_value(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        presence = Presence(backend, now=clock)
        with pytest.raises(NotFound, match="announce it"):
            await presence.keep_alive_node(UUID)  # never announced
        stored = await presence.upsert_node(beat())
        raw = (await backend.get(NODES_PREFIX + UUID.encode())).value
        clock.advance(minutes=9)
        expires = await presence.keep_alive_node(UUID)
        assert expires == clock.now + dt.timedelta(minutes=10)
        item = await backend.get(NODES_PREFIX + UUID.encode())
        assert item.value == raw and item.expires == expires  # the value is the announce's, untouched
        clock.advance(minutes=5)  # past the announce's expiry, within the keepalive's
        got = await presence.get_node(UUID)
        assert got.expires == expires and got.info() == stored.info()
        assert [n.nodename for n in await presence.list_nodes()] == ["node1"]
        clock.advance(minutes=6)  # past the keepalive's: offline, and the keepalive says announce
        assert await presence.list_nodes() == []
        with pytest.raises(NotFound):
            await presence.get_node(UUID)

    with_backend(body)


def test_a_node_that_stops_keeping_alive_drops_out_after_its_ttl(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        presence = Presence(backend)  # the real clock: the backend hides what expired
        ttl = dt.timedelta(seconds=1)
        await presence.upsert_node(beat(), ttl=ttl)
        await presence.keep_alive_node(UUID, ttl=ttl)
        assert [n.nodename for n in await presence.list_nodes()] == ["node1"]
        await asyncio.sleep(1.5)  # stopped: no keepalive for longer than the TTL
        assert await presence.list_nodes() == []
        with pytest.raises(NotFound):
            await presence.keep_alive_node(UUID, ttl=ttl)  # the node must announce again
        await presence.upsert_node(beat(), ttl=dt.timedelta(minutes=1))
        assert [n.nodename for n in await presence.list_nodes()] == ["node1"]

    with_backend(body)


@pytest.mark.parametrize("uuid", ["", "a/b", "a b", "x" * 256, "a,b"])
def test_keep_alive_refuses_a_malformed_uuid(with_backend: Any, uuid: str) -> None:
    async def body(backend: Any) -> None:
        with pytest.raises(InvalidNode, match="invalid node uuid"):
            await Presence(backend).keep_alive_node(uuid)

    with_backend(body)
