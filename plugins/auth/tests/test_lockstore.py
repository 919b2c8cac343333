"""LockStore on the real SQLite backend: the snapshot is reused while a watcher keeps it valid,
and a lock written by another auth server sharing the backend takes effect; expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from teleport_auth.locks import LockStore

from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.locks import LockTarget, new_lock


def test_snapshot_follows_another_auth_servers_writes(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store, other_server = LockStore(backend), LockStore(backend)
        reads = 0
        original = store.list

        async def counting_list() -> Any:
            nonlocal reads
            reads += 1
            return await original()

        store.list = counting_list  # type: ignore[method-assign]
        joe = Identity("joe", IdentityKind.USER, roles=("access",))
        task = asyncio.create_task(store.watch(retry_delay=0.01))
        try:
            for _ in range(500):
                if store._watching:
                    break
                await asyncio.sleep(0.01)
            assert await store.in_force(joe) is None
            assert await store.in_force(joe) is None
            assert reads == 1  # no backend read per check while the watcher keeps the snapshot valid
            lock = new_lock(LockTarget(role="access"), "incident")
            await other_server.upsert(lock)
            for _ in range(500):
                if await store.in_force(joe) is not None:
                    break
                await asyncio.sleep(0.01)
            found = await store.in_force(joe)
            assert found is not None and found.name == lock.name and found.message == "incident"
            host = Identity("host-1.example.com", IdentityKind.HOST, roles=("Node",), cluster="example.com")
            assert await store.in_force(host) is None  # a role lock does not touch hosts
            await other_server.delete(lock.name)
            for _ in range(500):
                if await store.in_force(joe) is None:
                    break
                await asyncio.sleep(0.01)
            assert await store.in_force(joe) is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with_backend(body)


def test_expired_and_node_locks(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = LockStore(backend)
        now = dt.datetime.now(dt.UTC)
        await store.upsert(new_lock(LockTarget(user="joe"), expires=now + dt.timedelta(seconds=1)))
        await store.upsert(new_lock(LockTarget(node="host-1"), "retired"))
        joe = Identity("joe", IdentityKind.USER)
        host = Identity("host-1.example.com", IdentityKind.HOST, roles=("Node",), cluster="example.com")
        assert await store.in_force(joe) is not None
        found = await store.in_force(host)
        assert found is not None and found.message == "retired"
        for _ in range(200):  # lock times are whole seconds, the expiry rounded up
            if await store.in_force(joe) is None:
                break
            await asyncio.sleep(0.05)
        assert await store.in_force(joe) is None  # expired: never matches, and no longer listed
        assert [lock.target.node for lock in await store.list()] == ["host-1"]

    with_backend(body)
