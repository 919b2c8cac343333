"""UserStore.get answers from memory while its watcher runs: a write through the store is seen at
once, a write by another auth server on the same backend as soon as its event arrives, a deleted
user is gone at once, and a record that expires makes the cached user stale."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from teleport_auth.users import UserStore

from teleport_core.errors import NotFound
from teleport_core.state.backend import Item


class CountingReads:
    """Counts the range reads a store makes (what the cache saves)."""

    def __init__(self, store: UserStore) -> None:
        self.count = 0
        original = store._records

        async def records(name: str) -> Any:
            self.count += 1
            return await original(name)

        store._records = records  # type: ignore[method-assign]


async def watching(store: UserStore) -> asyncio.Task[None]:
    task = asyncio.create_task(store.watch(retry_delay=0.01))
    for _ in range(500):
        if store.watching:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the user watcher never went live")


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_without_watcher_every_get_reads(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend)
        reads = CountingReads(store)
        await store.create("joe", ["access"])
        for _ in range(3):
            assert (await store.get("joe")).roles == ("access",)
        assert reads.count == 3

    with_backend(body)


def test_cached_while_watching_and_local_writes_are_seen_at_once(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend)
        reads = CountingReads(store)
        await store.create("joe", ["access"], {"logins": ["root"]})
        task = await watching(store)
        try:
            for _ in range(3):
                assert (await store.get("joe")).roles == ("access",)
            assert reads.count == 1  # read once, then from memory
            await store.update("joe", roles=["editor"])
            assert (await store.get("joe")).roles == ("editor",)  # no wait for the watcher's event
            await store.delete("joe")
            with pytest.raises(NotFound):
                await store.get("joe")
        finally:
            await stopped(task)
        assert not store.watching

    with_backend(body)


def test_a_write_by_another_auth_server_reaches_the_cache(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend)
        other_server = UserStore(backend)  # its writes never call our invalidate: only the watcher tells
        await other_server.create("joe", ["access"])
        task = await watching(store)
        try:
            assert (await store.get("joe")).roles == ("access",)
            await other_server.update("joe", roles=["editor"])
            for _ in range(500):
                if (await store.get("joe")).roles == ("editor",):
                    break
                await asyncio.sleep(0.01)
            assert (await store.get("joe")).roles == ("editor",)
            await other_server.delete("joe")
            for _ in range(500):
                try:
                    await store.get("joe")
                except NotFound:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(NotFound):
                await store.get("joe")
        finally:
            await stopped(task)

    with_backend(body)


def test_an_expiring_record_makes_the_cached_user_stale(with_backend: Any, clock: Any) -> None:
    async def body(backend: Any) -> None:
        store = UserStore(backend, now=clock)
        reads = CountingReads(store)
        await store.create("joe", ["access"])
        until = clock() + dt.timedelta(minutes=30)
        await backend.put(Item(b"/users/joe/lock", b'{"until": "%s", "reason": "r"}' % until.isoformat().encode(),
                               expires=until))
        task = await watching(store)
        try:
            assert (await store.get("joe")).status.locked_until is not None
            await store.get("joe")
            assert reads.count == 1
            clock.advance(minutes=31)  # the lock record's expiry passed
            await store.get("joe")
            assert reads.count == 2  # read again, not served past its expiry
        finally:
            await stopped(task)

    with_backend(body)


def test_a_read_overtaken_by_a_write_is_not_cached(with_backend: Any) -> None:
    """A get whose read started before a write does not install what it read."""

    async def body(backend: Any) -> None:
        store = UserStore(backend)
        await store.create("joe", ["access"])
        task = await watching(store)
        try:
            original = store._records
            written = False

            async def records_then_write(name: str) -> Any:
                nonlocal written
                found = await original(name)
                if not written:
                    written = True
                    await store.update("joe", roles=["editor"])  # lands while the read is in flight
                return found

            store._records = records_then_write  # type: ignore[method-assign]
            assert (await store.get("joe")).roles == ("access",)  # what it read
            store._records = original  # type: ignore[method-assign]
            assert (await store.get("joe")).roles == ("editor",)  # not the stale read
        finally:
            await stopped(task)

    with_backend(body)
