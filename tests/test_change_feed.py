"""The change feed auth workers catch up with before trusting a cache
(:mod:`teleport_core.state.change_feed`): every commit, by any connection, reaches the
invalidators of its prefix at the next catch-up, and only theirs; rows it never read (pruned)
invalidate everything."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from teleport_core.state.backend import Item
from teleport_core.state.backends.sqlite import SqliteBackend, open_backend
from teleport_core.state.change_feed import ChangeFeed, open_change_feed


def test_each_commit_invalidates_its_prefix_at_the_next_catch_up(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await open_backend(None, tmp_path)
        assert isinstance(backend, SqliteBackend)
        try:
            feed = open_change_feed(backend)
            assert isinstance(feed, ChangeFeed)
            hits: list[str] = []
            feed.watch(b"/locks/", lambda: hits.append("locks"))
            feed.watch(b"/roles/", lambda: hits.append("roles"))
            feed.catch_up()
            assert hits == []  # nothing committed since the feed opened
            await backend.put(Item(b"/locks/one", b"{}"))
            feed.catch_up()
            assert hits == ["locks"]
            feed.catch_up()
            assert hits == ["locks"]  # applied once
            await backend.put(Item(b"/nodes/n1", b"{}"))
            feed.catch_up()
            assert hits == ["locks"]  # not under a watched prefix
            await backend.put(Item(b"/roles/r", b"{}"))
            await backend.delete(b"/locks/one")
            feed.catch_up()
            assert sorted(hits) == ["locks", "locks", "roles"]
            # another connection (as another process) commits, and the rows are pruned before the feed reads them
            other = sqlite3.connect(backend.db_path, isolation_level=None)
            try:
                await backend.put(Item(b"/nodes/n2", b"{}"))
                other.execute("DELETE FROM events")
            finally:
                other.close()
            await backend.put(Item(b"/nodes/n3", b"{}"))
            hits.clear()
            feed.catch_up()
            assert sorted(hits) == ["locks", "roles"]  # a gap: everything is assumed changed
            feed.close()
        finally:
            await backend.close()

    asyncio.run(body())
