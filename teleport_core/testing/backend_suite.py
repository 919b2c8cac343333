"""Conformance suite for cluster-state backends (``teleport.storage.type``).

Subclass :class:`BackendConformance` in a class named ``Test...`` and define one fixture,
``teleport_backend_config``, returning the raw ``teleport.storage`` mapping of a fresh,
empty backend for each test::

    class TestSqlite(BackendConformance):
        @pytest.fixture
        def teleport_backend_config(self, tmp_path):
            return {"type": "sqlite"}

    class TestEtcd(BackendConformance):
        config_typo = ("peer", "peers")

        @pytest.fixture
        def teleport_backend_config(self, tmp_path):
            return {"type": "etcd", "peers": [...], "prefix": f"/test-{uuid.uuid4().hex}"}

The suite opens the backend exactly as ``teleport start`` does (installed plugins,
:func:`~teleport_core.resources.storage_config` and
:func:`~teleport_core.resources.open_backend`, ``data_dir`` = ``tmp_path``), so the plugin
must be installed (``pip install -e .``) or listed in ``$TELEPORT_PLUGINS``. The ``kill -9``
test runs :mod:`teleport_core.testing.backend_child` in a child process with the same
mapping (it must be JSON) and ``data_dir``. Tests use plain ``asyncio.run``; nothing here
asserts on timing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from teleport_core.errors import AlreadyExists, CompareFailed, ConfigError, NotFound, WatcherClosed
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import (
    Action,
    Backend,
    Condition,
    Event,
    Item,
    OpType,
    Watcher,
    range_end,
    utcnow,
)
from teleport_core.testing import backend_child

TEST_TIMEOUT = 60.0  # seconds one test's coroutine may take before it is failed (a hang, not slowness)
EVENT_TIMEOUT = 15.0  # seconds to wait for one watcher event
SECOND = dt.timedelta(seconds=1)


class BackendEnv:
    """One test's backend config and ``data_dir``: opens, runs and closes backends."""

    def __init__(self, config: dict[str, Any], data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir

    async def open(self) -> Backend:
        """A backend opened through the installed plugins (the caller closes it)."""
        plugins = make_plugins()
        return await open_backend(plugins, storage_config(plugins, dict(self.config)), self.data_dir)

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Backend]:
        backend = await self.open()
        try:
            yield backend
        finally:
            await backend.close()

    def run(self, body: Callable[[Backend], Awaitable[None]]) -> None:
        """Run ``body(backend)`` in a fresh event loop with the backend opened around it."""

        async def main() -> None:
            async with self.opened() as backend:
                await body(backend)

        self.run_async(main)

    def run_async(self, body: Callable[[], Awaitable[None]]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(body(), TEST_TIMEOUT)

        asyncio.run(bounded())


async def next_event(watcher: Watcher, timeout: float = EVENT_TIMEOUT) -> Event:
    """The watcher's next event; fails the test when none comes within ``timeout``."""
    try:
        return await asyncio.wait_for(watcher.__anext__(), timeout)
    except TimeoutError:
        pytest.fail(f"no watcher event within {timeout} s")


async def expect_init(watcher: Watcher) -> None:
    event = await next_event(watcher)
    assert event.type is OpType.INIT, f"first event must be INIT, got {event}"


async def sleep_until(when: dt.datetime) -> None:
    """Sleep until the wall clock is past ``when``."""
    while (left := (when - utcnow()).total_seconds()) > 0:
        await asyncio.sleep(left + 0.01)


def keys(items: list[Item]) -> list[bytes]:
    return [item.key for item in items]


def close_enough(a: dt.datetime | None, b: dt.datetime) -> bool:
    """Expiry times round-trip to well within a second (a backend may round them)."""
    return a is not None and abs((a - b).total_seconds()) < 1


class BackendConformance:
    """Behaviour every cluster-state backend must have. Define ``teleport_backend_config``."""

    #: A misspelling of one of the backend's config keys, and the key the error must suggest.
    config_typo: tuple[str, str] = ("pth", "path")
    #: How many acknowledged writes the ``kill -9`` test waits for before killing the writer.
    kill_after_acks: int = 200

    @pytest.fixture
    def backend_env(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> BackendEnv:
        return BackendEnv(teleport_backend_config, tmp_path)

    # -- single-key operations --------------------------------------------------------------------

    def test_new_backend_is_empty(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            assert await b.get_range(b"", b"") == []
            with pytest.raises(NotFound):
                await b.get(b"/nothing")

        backend_env.run(body)

    def test_put_get_roundtrip(self, backend_env: BackendEnv) -> None:
        values = {
            b"/v/empty": b"",
            b"/v/binary": bytes(range(256)) * 4,
            b"/v/big": os.urandom(1 << 20),
            b"/v/\x00\xff\x80key": b"\x00",
        }

        async def body(b: Backend) -> None:
            for key, value in values.items():
                stored = await b.put(Item(key, value))
                assert (stored.key, stored.value, stored.expires) == (key, value, None)
                assert stored.revision
                got = await b.get(key)
                assert got == stored
            expires = utcnow() + dt.timedelta(hours=2)
            stored = await b.put(Item(b"/v/expiring", b"x", expires))
            assert close_enough(stored.expires, expires)
            got = await b.get(b"/v/expiring")
            assert got.expires == stored.expires and got.revision == stored.revision

        backend_env.run(body)

    def test_put_replaces(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            await b.put(Item(b"/k", b"one", utcnow() + dt.timedelta(hours=1)))
            second = await b.put(Item(b"/k", b"two"))
            got = await b.get(b"/k")
            assert got.value == b"two" and got.expires is None and got.revision == second.revision

        backend_env.run(body)

    def test_create(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            first = await b.create(Item(b"/c", b"first"))
            assert first.value == b"first" and first.revision
            with pytest.raises(AlreadyExists):
                await b.create(Item(b"/c", b"second"))
            assert await b.get(b"/c") == first
            await b.delete(b"/c")
            again = await b.create(Item(b"/c", b"third"))
            assert (await b.get(b"/c")).value == b"third" and again.revision != first.revision

        backend_env.run(body)

    def test_update(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            with pytest.raises(NotFound):
                await b.update(Item(b"/u", b"x"))
            with pytest.raises(NotFound):
                await b.get(b"/u")  # a failed update creates nothing
            await b.put(Item(b"/u", b"old"))
            updated = await b.update(Item(b"/u", b"new"))
            assert updated.value == b"new"
            assert await b.get(b"/u") == updated

        backend_env.run(body)

    def test_compare_and_swap(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            with pytest.raises(NotFound):
                await b.compare_and_swap(Item(b"/s", b"a"), Item(b"/s", b"b"))
            with pytest.raises(NotFound):
                await b.get(b"/s")
            original = await b.put(Item(b"/s", b"a"))
            with pytest.raises(CompareFailed):
                await b.compare_and_swap(Item(b"/s", b"wrong"), Item(b"/s", b"b"))
            assert await b.get(b"/s") == original
            swapped = await b.compare_and_swap(Item(b"/s", b"a"), Item(b"/s", b"b"))
            assert swapped.value == b"b" and swapped.revision != original.revision
            assert await b.get(b"/s") == swapped
            with pytest.raises(CompareFailed):  # the old value no longer matches
                await b.compare_and_swap(Item(b"/s", b"a"), Item(b"/s", b"c"))
            with pytest.raises(ValueError):
                await b.compare_and_swap(Item(b"/s", b"b"), Item(b"/other", b"c"))
            assert await b.get(b"/s") == swapped
            with pytest.raises(NotFound):
                await b.get(b"/other")

        backend_env.run(body)

    def test_conditional_update(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            first = await b.put(Item(b"/cu", b"1"))
            second = await b.conditional_update(Item(b"/cu", b"2", revision=first.revision))
            assert second.value == b"2" and second.revision != first.revision
            with pytest.raises(CompareFailed):  # stale revision
                await b.conditional_update(Item(b"/cu", b"3", revision=first.revision))
            assert await b.get(b"/cu") == second
            with pytest.raises(CompareFailed):
                await b.conditional_update(Item(b"/cu", b"3", revision=""))
            with pytest.raises(CompareFailed):  # absent key
                await b.conditional_update(Item(b"/absent", b"x", revision=second.revision))
            with pytest.raises(NotFound):
                await b.get(b"/absent")

        backend_env.run(body)

    def test_delete(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            await b.put(Item(b"/d", b"x"))
            await b.put(Item(b"/d/child", b"y"))
            await b.delete(b"/d")
            with pytest.raises(NotFound):
                await b.get(b"/d")
            assert (await b.get(b"/d/child")).value == b"y"  # delete is not a prefix delete
            with pytest.raises(NotFound):
                await b.delete(b"/d")

        backend_env.run(body)

    def test_conditional_delete(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            first = await b.put(Item(b"/cd", b"1"))
            second = await b.put(Item(b"/cd", b"2"))
            with pytest.raises(CompareFailed):
                await b.conditional_delete(b"/cd", first.revision)
            assert await b.get(b"/cd") == second
            await b.conditional_delete(b"/cd", second.revision)
            with pytest.raises(NotFound):
                await b.get(b"/cd")
            with pytest.raises(CompareFailed):
                await b.conditional_delete(b"/cd", second.revision)

        backend_env.run(body)

    def test_revision_changes_on_every_write(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            later = utcnow() + dt.timedelta(hours=1)
            written = [await b.put(Item(b"/r", b"1"))]
            written.append(await b.put(Item(b"/r", b"1")))  # same value: still a new revision
            written.append(await b.update(Item(b"/r", b"2")))
            written.append(await b.compare_and_swap(Item(b"/r", b"2"), Item(b"/r", b"3")))
            written.append(await b.conditional_update(Item(b"/r", b"4", revision=written[-1].revision)))
            written.append(await b.put(Item(b"/r", b"5", utcnow() + dt.timedelta(minutes=5))))
            written.append(await b.keep_alive(b"/r", later))
            revisions = [item.revision for item in written]
            await b.delete(b"/r")
            written.append(await b.create(Item(b"/r", b"6")))
            revisions.append(written[-1].revision)
            revisions.append(await b.atomic_write([], [Action.put(Item(b"/r", b"7"))]))
            revisions.append((await b.put(Item(b"/other", b"x"))).revision)
            assert all(isinstance(r, str) and r for r in revisions)
            assert len(set(revisions)) == len(revisions), revisions
            current = await b.get(b"/r")
            assert current.revision == revisions[-2] and current.value == b"7"
            with pytest.raises(CompareFailed):  # a refused write changes nothing
                await b.compare_and_swap(Item(b"/r", b"nope"), Item(b"/r", b"8"))
            assert await b.get(b"/r") == current

        backend_env.run(body)

    def test_keep_alive(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            soon = utcnow() + SECOND
            later = utcnow() + dt.timedelta(hours=1)
            original = await b.put(Item(b"/ka/kept", b"kept", soon))
            await b.put(Item(b"/ka/lapsed", b"lapsed", soon))
            kept = await b.keep_alive(b"/ka/kept", later)
            assert kept.value == b"kept" and close_enough(kept.expires, later)
            assert kept.revision != original.revision
            with pytest.raises(NotFound):
                await b.keep_alive(b"/ka/absent", later)
            await sleep_until(soon + 0.2 * SECOND)
            got = await b.get(b"/ka/kept")
            assert got.value == b"kept" and close_enough(got.expires, later)
            with pytest.raises(NotFound):  # too late: the item expired
                await b.keep_alive(b"/ka/lapsed", later)
            with pytest.raises(NotFound):
                await b.get(b"/ka/lapsed")

        backend_env.run(body)

    def test_expired_items_are_invisible(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            soon = utcnow() + SECOND
            later = utcnow() + dt.timedelta(hours=1)
            await b.put(Item(b"/x/gone", b"gone", soon))
            stale = await b.put(Item(b"/x/cond", b"cond", soon))
            await b.put(Item(b"/x/later", b"later", later))
            await b.put(Item(b"/x/forever", b"forever"))
            await b.put(Item(b"/x/past", b"past", utcnow() - SECOND))  # expired on arrival
            with pytest.raises(NotFound):
                await b.get(b"/x/past")
            assert (await b.get(b"/x/gone")).value == b"gone"
            await sleep_until(soon + 0.2 * SECOND)

            for key in (b"/x/gone", b"/x/cond", b"/x/past"):
                with pytest.raises(NotFound):
                    await b.get(key)
            assert keys(await b.get_range(b"/x/", range_end(b"/x/"))) == [b"/x/forever", b"/x/later"]
            with pytest.raises(NotFound):
                await b.update(Item(b"/x/gone", b"new"))
            with pytest.raises(NotFound):
                await b.delete(b"/x/gone")
            with pytest.raises(NotFound):
                await b.compare_and_swap(Item(b"/x/gone", b"gone"), Item(b"/x/gone", b"new"))
            with pytest.raises(CompareFailed):
                await b.conditional_update(Item(b"/x/cond", b"new", revision=stale.revision))
            with pytest.raises(CompareFailed):
                await b.conditional_delete(b"/x/cond", stale.revision)
            with pytest.raises(CompareFailed):
                await b.atomic_write([Condition.exists(b"/x/cond")], [Action.put(Item(b"/x/a", b"a"))])
            with pytest.raises(CompareFailed):
                await b.atomic_write([Condition.value_is(b"/x/cond", b"cond")], [Action.put(Item(b"/x/a", b"a"))])
            await b.atomic_write([Condition.not_exists(b"/x/cond")], [Action.put(Item(b"/x/a", b"a"))])
            created = await b.create(Item(b"/x/gone", b"reborn"))  # create over an expired key
            assert await b.get(b"/x/gone") == created and created.expires is None
            # Only live items count: /x/a, /x/forever, /x/gone, /x/later (not /x/cond or /x/past).
            assert await b.delete_range(b"/x/", range_end(b"/x/")) == 4
            assert await b.get_range(b"/x/", range_end(b"/x/")) == []

        backend_env.run(body)

    # -- ranges -----------------------------------------------------------------------------------

    def test_get_range_prefix(self, backend_env: BackendEnv) -> None:
        names = [b"/r/a/3", b"/r/b/1", b"/r/a", b"/r/a/1", b"/r/ab", b"/r/a/2", b"/r/a0", b"/q"]

        async def body(b: Backend) -> None:
            for name in names:
                await b.put(Item(name, b"value " + name))
            items = await b.get_range(b"/r/a/", range_end(b"/r/a/"))
            assert keys(items) == [b"/r/a/1", b"/r/a/2", b"/r/a/3"]
            assert [i.value for i in items] == [b"value /r/a/1", b"value /r/a/2", b"value /r/a/3"]
            assert all(i.revision for i in items)
            assert keys(await b.get_range(b"/r/", range_end(b"/r/"))) == sorted(n for n in names if n != b"/q")
            assert keys(await b.get_range(b"/r/a", b"/r/a0")) == [b"/r/a", b"/r/a/1", b"/r/a/2", b"/r/a/3"]
            assert keys(await b.get_range(b"/r/a/2", b"")) == [b"/r/a/2", b"/r/a/3", b"/r/a0", b"/r/ab", b"/r/b/1"]
            assert keys(await b.get_range(b"", b"")) == sorted(names)
            assert await b.get_range(b"/r/a/2", b"/r/a/2") == []
            assert await b.get_range(b"/zzz/", range_end(b"/zzz/")) == []
            assert keys(await b.get_range(b"/r/", range_end(b"/r/"), limit=2)) == [b"/r/a", b"/r/a/1"]

        backend_env.run(body)

    def test_get_range_paging(self, backend_env: BackendEnv) -> None:
        expected = [f"/p/key-{i:03d}".encode() for i in range(25)]

        async def body(b: Backend) -> None:
            for key in reversed(expected):
                await b.put(Item(key, key[::-1]))
            await b.put(Item(b"/p0", b"outside"))
            seen: list[bytes] = []
            pages: list[int] = []
            start, end = b"/p/", range_end(b"/p/")
            while True:
                page = await b.get_range(start, end, limit=7)
                if not page:
                    break
                pages.append(len(page))
                assert all(item.value == item.key[::-1] for item in page)
                seen.extend(keys(page))
                start = page[-1].key + b"\x00"  # the smallest key after the last one
            assert seen == expected
            assert pages == [7, 7, 7, 4]
            assert len(await b.get_range(b"/p/", end, limit=1000)) == 25
            assert keys(await b.get_range(b"/p/", end, limit=1)) == [expected[0]]

        backend_env.run(body)

    def test_range_end_edges(self, backend_env: BackendEnv) -> None:
        under_a = [b"/e/a", b"/e/a\x00", b"/e/a\x7f", b"/e/a\x80", b"/e/a\xff", b"/e/a\xff\xff"]
        others = [b"/e/b", b"/e/\xff", b"/e/\xff\x01", b"/e0", b"\xff\x01", b"\xff\xff\xff"]
        assert range_end(b"/e/a\xff") == b"/e/b"
        assert range_end(b"/e/\xff") == b"/e0"
        assert range_end(b"\xff\xff") == b""

        async def body(b: Backend) -> None:
            for key in others + under_a:
                await b.put(Item(key, key))
            assert keys(await b.get_range(b"/e/a", range_end(b"/e/a"))) == under_a  # bytewise order
            assert keys(await b.get_range(b"/e/a\xff", range_end(b"/e/a\xff"))) == [b"/e/a\xff", b"/e/a\xff\xff"]
            assert keys(await b.get_range(b"/e/\xff", range_end(b"/e/\xff"))) == [b"/e/\xff", b"/e/\xff\x01"]
            assert keys(await b.get_range(b"\xff", range_end(b"\xff"))) == [b"\xff\x01", b"\xff\xff\xff"]
            assert keys(await b.get_range(b"", b"")) == sorted(others + under_a)
            assert await b.delete_range(b"/e/a\xff", range_end(b"/e/a\xff")) == 2
            assert keys(await b.get_range(b"/e/a", range_end(b"/e/a"))) == under_a[:4]
            assert await b.delete_range(b"\xff", range_end(b"\xff")) == 2
            assert keys(await b.get_range(b"/e0", b"")) == [b"/e0"]

        backend_env.run(body)

    def test_delete_range(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            for i in range(5):
                await b.put(Item(f"/dr/a/{i}".encode(), b"x"))
            await b.put(Item(b"/dr/a", b"exact"))
            await b.put(Item(b"/dr/b/1", b"y"))
            await b.put(Item(b"/dr0", b"after"))
            assert await b.delete_range(b"/dr/a/", range_end(b"/dr/a/")) == 5
            assert keys(await b.get_range(b"/dr/", range_end(b"/dr/"))) == [b"/dr/a", b"/dr/b/1"]
            assert await b.delete_range(b"/dr/a/", range_end(b"/dr/a/")) == 0
            assert await b.delete_range(b"/dr/", b"") == 3  # no upper bound: /dr0 goes too
            assert await b.get_range(b"", b"") == []

        backend_env.run(body)

    # -- atomic writes ----------------------------------------------------------------------------

    def test_atomic_write_applies_every_action(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            await b.put(Item(b"/aw/old", b"old"))
            keep = await b.put(Item(b"/aw/keep", b"keep"))
            revision = await b.atomic_write(
                [
                    Condition.not_exists(b"/aw/a"),
                    Condition.exists(b"/aw/old"),
                    Condition.revision_is(b"/aw/keep", keep.revision),
                ],
                [Action.put(Item(b"/aw/a", b"a")), Action.put(Item(b"/aw/b", b"b")), Action.delete(b"/aw/old")],
            )
            assert isinstance(revision, str) and revision
            a, bb = await b.get(b"/aw/a"), await b.get(b"/aw/b")
            assert (a.value, bb.value) == (b"a", b"b")
            assert a.revision == bb.revision == revision
            with pytest.raises(NotFound):
                await b.get(b"/aw/old")
            assert await b.get(b"/aw/keep") == keep  # conditions alone write nothing
            with pytest.raises(ValueError):  # a key in two actions
                await b.atomic_write([], [Action.put(Item(b"/aw/a", b"1")), Action.delete(b"/aw/a")])
            assert await b.get(b"/aw/a") == a

        backend_env.run(body)

    def test_atomic_write_is_all_or_nothing(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            x = await b.put(Item(b"/an/x", b"1"))
            for failing in (
                [Condition.exists(b"/an/x"), Condition.value_is(b"/an/x", b"2")],
                [Condition.exists(b"/an/x"), Condition.not_exists(b"/an/x")],
                [Condition.revision_is(b"/an/x", x.revision), Condition.exists(b"/an/missing")],
            ):
                with pytest.raises(CompareFailed):
                    await b.atomic_write(failing, [Action.put(Item(b"/an/y", b"y")), Action.delete(b"/an/x")])
                with pytest.raises(NotFound):
                    await b.get(b"/an/y")
                assert await b.get(b"/an/x") == x

        backend_env.run(body)

    def test_atomic_write_condition_kinds(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            old = await b.put(Item(b"/ac/present", b"v0"))
            present = await b.put(Item(b"/ac/present", b"v"))
            cases = [
                (Condition.exists(b"/ac/present"), True),
                (Condition.exists(b"/ac/absent"), False),
                (Condition.not_exists(b"/ac/absent"), True),
                (Condition.not_exists(b"/ac/present"), False),
                (Condition.revision_is(b"/ac/present", present.revision), True),
                (Condition.revision_is(b"/ac/present", old.revision), False),
                (Condition.revision_is(b"/ac/absent", present.revision), False),
                (Condition.value_is(b"/ac/present", b"v"), True),
                (Condition.value_is(b"/ac/present", b"v0"), False),
                (Condition.value_is(b"/ac/absent", b"v"), False),
                (Condition.value_is(b"/ac/absent", b""), False),
            ]
            for index, (condition, passes) in enumerate(cases):
                target = f"/ac/target-{index}".encode()
                action = Action.put(Item(target, b"written"))
                if passes:
                    revision = await b.atomic_write([condition], [action])
                    assert (await b.get(target)).revision == revision, condition
                else:
                    with pytest.raises(CompareFailed):
                        await b.atomic_write([condition], [action])
                    with pytest.raises(NotFound):
                        await b.get(target)
            assert await b.get(b"/ac/present") == present

        backend_env.run(body)

    # -- watchers ---------------------------------------------------------------------------------

    def test_watch_events_in_order(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            async with b.watch([b"/w/"]) as w:
                await expect_init(w)
                first = await b.put(Item(b"/w/a", b"1"))
                second = await b.put(Item(b"/w/a", b"2"))
                await b.put(Item(b"/w/b", b"3"))
                await b.delete(b"/w/a")
                revision = await b.atomic_write([], [Action.put(Item(b"/w/c", b"4")), Action.delete(b"/w/b")])
                await b.put(Item(b"/w/d/1", b"5"))
                await b.put(Item(b"/w/d/2", b"6"))
                assert await b.delete_range(b"/w/d/", range_end(b"/w/d/")) == 2
                events = [await next_event(w) for _ in range(10)]
                seen = [(e.type.value, e.item.key) for e in events]
                put, delete = OpType.PUT.value, OpType.DELETE.value
                assert seen[:4] == [(put, b"/w/a"), (put, b"/w/a"), (put, b"/w/b"), (delete, b"/w/a")]
                assert sorted(seen[4:6]) == sorted([(put, b"/w/c"), (delete, b"/w/b")])  # one atomic write
                assert seen[6:8] == [(put, b"/w/d/1"), (put, b"/w/d/2")]
                assert sorted(seen[8:]) == [(delete, b"/w/d/1"), (delete, b"/w/d/2")]  # one delete_range
                assert events[0].item == first and events[1].item == second
                atomic_put = next(e for e in events[4:6] if e.type is OpType.PUT)
                assert atomic_put.item.value == b"4" and atomic_put.item.revision == revision

        backend_env.run(body)

    def test_watch_prefixes(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            some = b.watch([b"/wp/a/", b"/wp/c/"])
            every = b.watch([b""])
            try:
                await expect_init(some)
                await expect_init(every)
                written = [b"/wp/a/1", b"/wp/b/1", b"/wp/c/1", b"/wp/a/2", b"/wp/ab", b"/other", b"/wp/c/end"]
                for key in written:
                    await b.put(Item(key, key))
                got = [(await next_event(some)).item.key for _ in range(4)]
                assert got == [b"/wp/a/1", b"/wp/c/1", b"/wp/a/2", b"/wp/c/end"]
                assert [(await next_event(every)).item.key for _ in written] == written
                await b.put(Item(b"/wp/a/last", b"x"))
                assert (await next_event(some)).item.key == b"/wp/a/last"  # nothing else was queued
            finally:
                await some.close()
                await every.close()

        backend_env.run(body)

    def test_watch_close(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            w = b.watch([b"/wc/"])
            await expect_init(w)
            waiting = asyncio.ensure_future(w.__anext__())
            await asyncio.sleep(0.05)
            await w.close()
            with pytest.raises(WatcherClosed):
                await asyncio.wait_for(waiting, EVENT_TIMEOUT)
            await b.put(Item(b"/wc/a", b"x"))
            with pytest.raises(WatcherClosed):
                await w.__anext__()
            await w.close()  # closing twice is fine

            async with b.watch([b"/wc/"]) as scoped:
                await expect_init(scoped)
            with pytest.raises(WatcherClosed):
                await scoped.__anext__()

            iterated: list[Event] = []
            w2 = b.watch([b"/wc/"])
            await b.put(Item(b"/wc/b", b"y"))
            with pytest.raises(WatcherClosed):
                async for event in w2:
                    iterated.append(event)
                    if event.type is OpType.PUT:
                        await w2.close()
            assert [e.type for e in iterated] == [OpType.INIT, OpType.PUT]
            assert (await b.get(b"/wc/b")).value == b"y"  # the backend is unaffected

        backend_env.run(body)

    def test_several_watchers(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            watchers = [b.watch([b"/ws/"]) for _ in range(3)]
            for w in watchers:
                await expect_init(w)
            for i in range(5):
                await b.put(Item(f"/ws/{i}".encode(), b"x"))
            streams = [[(await next_event(w)).item for _ in range(5)] for w in watchers]
            assert streams[0] == streams[1] == streams[2]
            assert keys(streams[0]) == [f"/ws/{i}".encode() for i in range(5)]
            await watchers[0].close()
            await b.delete(b"/ws/0")
            for w in watchers[1:]:
                event = await next_event(w)
                assert (event.type, event.item.key) == (OpType.DELETE, b"/ws/0")
            with pytest.raises(WatcherClosed):
                await watchers[0].__anext__()
            for w in watchers[1:]:
                await w.close()

        backend_env.run(body)

    def test_watch_expired_item_emits_delete(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            async with b.watch([b"/we/"]) as w:
                await expect_init(w)
                stored = await b.put(Item(b"/we/lease", b"x", utcnow() + SECOND))
                await b.put(Item(b"/we/forever", b"y"))
                event = await next_event(w)
                assert (event.type, event.item) == (OpType.PUT, stored)
                assert (await next_event(w)).item.key == b"/we/forever"
                event = await next_event(w)
                assert (event.type, event.item.key) == (OpType.DELETE, b"/we/lease")
                assert stored.expires is not None and utcnow() >= stored.expires - 0.5 * SECOND  # not early
                with pytest.raises(NotFound):
                    await b.get(b"/we/lease")
                assert (await b.get(b"/we/forever")).value == b"y"

        backend_env.run(body)

    def test_slow_watcher_is_closed(self, backend_env: BackendEnv) -> None:
        queue_size, writes = 4, 40

        async def body(b: Backend) -> None:
            slow = b.watch([b"/wo/"], queue_size=queue_size)
            fast = b.watch([b"/wo/"])
            try:
                await expect_init(fast)
                for i in range(writes):
                    await b.put(Item(f"/wo/{i:03d}".encode(), b"x"))
                got = [(await next_event(fast)).item.key for _ in range(writes)]
                assert got == [f"/wo/{i:03d}".encode() for i in range(writes)]  # unaffected
                received: list[Event] = []
                with pytest.raises(WatcherClosed) as closed:
                    for _ in range(writes + 2):
                        received.append(await next_event(slow))
                message = str(closed.value)
                assert "behind" in message and str(queue_size) in message, message
                assert len(received) <= writes  # it did not get everything
                assert received and received[0].type is OpType.INIT
                prefix_of_writes = [f"/wo/{i:03d}".encode() for i in range(len(received) - 1)]
                assert keys([e.item for e in received[1:]]) == prefix_of_writes  # in order, none skipped
                with pytest.raises(WatcherClosed):
                    await slow.__anext__()
                # The backend and the other watcher keep working.
                await b.put(Item(b"/wo/after", b"y"))
                assert (await next_event(fast)).item.key == b"/wo/after"
                assert (await b.get(b"/wo/after")).value == b"y"
                async with b.watch([b"/wo/"], queue_size=queue_size) as fresh:
                    await expect_init(fresh)
                    await b.delete(b"/wo/after")
                    assert (await next_event(fresh)).type is OpType.DELETE
            finally:
                await slow.close()
                await fast.close()

        backend_env.run(body)

    def test_backend_close_closes_watchers(self, backend_env: BackendEnv) -> None:
        async def main() -> None:
            b = await backend_env.open()
            w = b.watch([b""])
            await expect_init(w)
            waiting = asyncio.ensure_future(w.__anext__())
            await asyncio.sleep(0.05)
            await b.close()
            with pytest.raises(WatcherClosed):
                await asyncio.wait_for(waiting, EVENT_TIMEOUT)
            with pytest.raises(WatcherClosed):
                await w.__anext__()
            await b.close()  # idempotent

        backend_env.run_async(main)

    # -- concurrency ------------------------------------------------------------------------------

    def test_concurrent_creates_one_wins(self, backend_env: BackendEnv) -> None:
        async def body(b: Backend) -> None:
            for round_ in range(3):
                key = f"/cc/{round_}".encode()
                results = await asyncio.gather(
                    *(b.create(Item(key, f"writer-{i}".encode())) for i in range(40)), return_exceptions=True
                )
                winners = [r for r in results if isinstance(r, Item)]
                losers = [r for r in results if isinstance(r, AlreadyExists)]
                assert len(winners) == 1 and len(losers) == 39, results
                assert await b.get(key) == winners[0]

        backend_env.run(body)

    def test_concurrent_increments_lose_nothing(self, backend_env: BackendEnv) -> None:
        workers, rounds = 12, 8

        async def by_value(b: Backend) -> None:
            for _ in range(rounds):
                while True:
                    current = await b.get(b"/inc/cas")
                    bumped = str(int(current.value) + 1).encode()
                    try:
                        await b.compare_and_swap(current, Item(b"/inc/cas", bumped))
                        break
                    except CompareFailed:
                        await asyncio.sleep(0)

        async def by_revision(b: Backend) -> None:
            for _ in range(rounds):
                while True:
                    current = await b.get(b"/inc/rev")
                    bumped = str(int(current.value) + 1).encode()
                    try:
                        await b.conditional_update(Item(b"/inc/rev", bumped, revision=current.revision))
                        break
                    except CompareFailed:
                        await asyncio.sleep(0)

        async def body(b: Backend) -> None:
            await b.put(Item(b"/inc/cas", b"0"))
            await b.put(Item(b"/inc/rev", b"0"))
            await asyncio.gather(*(by_value(b) for _ in range(workers)), *(by_revision(b) for _ in range(workers)))
            assert (await b.get(b"/inc/cas")).value == str(workers * rounds).encode()
            assert (await b.get(b"/inc/rev")).value == str(workers * rounds).encode()

        backend_env.run(body)

    # -- persistence ------------------------------------------------------------------------------

    def test_reopen_sees_data(self, backend_env: BackendEnv) -> None:
        later = utcnow() + dt.timedelta(hours=1)
        before: list[Item] = []

        async def write(b: Backend) -> None:
            for i in range(20):
                expires = later if i % 3 == 0 else None
                before.append(await b.put(Item(f"/re/{i:02d}".encode(), f"value {i}".encode(), expires)))
            await b.delete(b"/re/05")
            del before[5]

        async def check(b: Backend) -> None:
            after = await b.get_range(b"/re/", range_end(b"/re/"))
            assert after == before
            with pytest.raises(NotFound):
                await b.get(b"/re/05")
            fresh = await b.put(Item(b"/re/new", b"x"))
            assert fresh.revision not in {item.revision for item in before}
            async with b.watch([b"/re/"]) as w:
                await expect_init(w)
                await b.delete(b"/re/00")
                event = await next_event(w)
                assert (event.type, event.item.key) == (OpType.DELETE, b"/re/00")

        backend_env.run(write)
        backend_env.run(check)

    def test_kill_9_keeps_acknowledged_writes(self, backend_env: BackendEnv) -> None:
        try:
            config_json = json.dumps(backend_env.config)
        except TypeError as exc:
            pytest.fail(f"teleport_backend_config must be JSON for the child process: {exc}")
        command = [
            sys.executable,
            "-m",
            backend_child.__name__,
            "--config",
            config_json,
            "--data-dir",
            str(backend_env.data_dir),
        ]
        with tempfile.TemporaryFile(mode="w+") as errors:  # not a pipe: nobody reads it while the child runs
            acked = self._acks_until_killed(command, errors)

        async def check(b: Backend) -> None:
            prefix = backend_child.KEY_PREFIX
            stored = {item.key: item.value for item in await b.get_range(prefix, range_end(prefix))}
            missing = [key for key in acked if key not in stored]
            assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost, e.g. {missing[:3]}"
            for key, value in stored.items():  # unacknowledged writes may be there, but intact
                assert value == backend_child.value_for(key), key
            await b.put(Item(prefix + b"after", b"x"))  # and the backend is writable again

        backend_env.run(check)

    def _acks_until_killed(self, command: list[str], errors: IO[str]) -> list[bytes]:
        """Run the writer, SIGKILL it after ``kill_after_acks`` acks; every key it acknowledged."""
        lines: queue.Queue[str | None] = queue.Queue()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        acked: list[bytes] = []
        try:
            while len(acked) < self.kill_after_acks:
                try:
                    line = lines.get(timeout=TEST_TIMEOUT)
                except queue.Empty:
                    pytest.fail(f"the writer acknowledged only {len(acked)} writes in {TEST_TIMEOUT} s")
                if line is None:
                    proc.wait(TEST_TIMEOUT)
                    errors.seek(0)
                    stderr = errors.read()[-4000:]
                    pytest.fail(f"the writer exited ({proc.returncode}) after {len(acked)} acks: {stderr}")
                if line.startswith("ack ") and line.endswith("\n"):
                    acked.append(line[4:-1].encode())
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(TEST_TIMEOUT) == -signal.SIGKILL
            reader.join(TEST_TIMEOUT)
            while (line := lines.get_nowait()) is not None:  # acknowledged before the kill, still in the pipe
                if line.startswith("ack ") and line.endswith("\n"):
                    acked.append(line[4:-1].encode())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        return acked

    # -- configuration ----------------------------------------------------------------------------

    def test_misspelled_key_is_rejected(self, backend_env: BackendEnv) -> None:
        typo, meant = self.config_typo
        raw = {**backend_env.config, typo: "x"}
        with pytest.raises(ConfigError) as caught:
            storage_config(make_plugins(), raw)
        message = str(caught.value)
        assert f"teleport.storage.{typo}" in message, message
        assert f'"{meant}"' in message, message

    def test_unknown_type_is_rejected(self, backend_env: BackendEnv) -> None:
        with pytest.raises(ConfigError) as caught:
            storage_config(make_plugins(), {**backend_env.config, "type": "no-such-backend"})
        assert "teleport.storage.type" in str(caught.value)
