"""SQLite backend: keepalives committed in one batch with other writes (one UPDATE each, no SAVEPOINT).

A keepalive that finds no live item writes nothing and gives its revision back; the others in the
same group commit (keepalives, puts, a refused create that rolls back its own SAVEPOINT) are
unaffected, every success has its own revision, and each waiter gets its own outcome.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from teleport_core.errors import AlreadyExists, NotFound
from teleport_core.state.backend import Item, OpType, utcnow
from teleport_core.state.backends.sqlite import open_backend


def test_concurrent_keepalives_share_commits_and_keep_their_outcomes(tmp_path: Path) -> None:
    async def body() -> None:
        backend = await open_backend(None, tmp_path)
        try:
            soon = utcnow() + dt.timedelta(seconds=1)
            later = utcnow() + dt.timedelta(hours=1)
            for i in range(40):
                await backend.put(Item(f"/nodes/live-{i}".encode(), f"node {i}".encode(), later))
            await backend.put(Item(b"/nodes/lapsed", b"gone soon", soon))
            await backend.put(Item(b"/taken", b"x"))
            while utcnow() <= soon:
                await asyncio.sleep(0.05)
            watcher = backend.watch([b"/nodes/"])
            assert (await anext(watcher)).type is OpType.INIT

            renewed = later + dt.timedelta(hours=1)
            calls = [backend.keep_alive(f"/nodes/live-{i}".encode(), renewed) for i in range(40)]
            calls += [backend.keep_alive(b"/nodes/absent", renewed), backend.keep_alive(b"/nodes/lapsed", renewed),
                      backend.create(Item(b"/taken", b"y")), backend.put(Item(b"/other", b"z"))]
            results = await asyncio.gather(*calls, return_exceptions=True)

            kept = results[:40]
            assert all(isinstance(r, Item) for r in kept), kept
            for i, item in enumerate(kept):
                assert isinstance(item, Item)
                assert item.value == f"node {i}".encode() and item.expires == renewed
            assert isinstance(results[40], NotFound) and isinstance(results[41], NotFound)
            assert isinstance(results[42], AlreadyExists)
            assert isinstance(results[43], Item)
            revisions = [int(r.revision) for r in [*kept, results[43]] if isinstance(r, Item)]
            assert len(set(revisions)) == len(revisions) == 41

            for i in range(40):  # what was stored: the value kept, the expiry moved, the revision returned
                got = await backend.get(f"/nodes/live-{i}".encode())
                assert got.value == f"node {i}".encode() and got.expires == renewed
                assert got.revision == kept[i].revision  # type: ignore[union-attr]
            with pytest.raises(NotFound):  # a failed keepalive left nothing behind
                await backend.get(b"/nodes/absent")
            with pytest.raises(NotFound):
                await backend.get(b"/nodes/lapsed")
            assert (await backend.get(b"/taken")).value == b"x"

            seen: dict[bytes, Item] = {}  # watchers get each keepalive as a PUT with the value
            while len(seen) < 40:
                event = await asyncio.wait_for(anext(watcher), 10)
                if event.type is OpType.PUT:
                    seen[event.item.key] = event.item
            assert seen[b"/nodes/live-7"].value == b"node 7" and seen[b"/nodes/live-7"].expires == renewed
            await watcher.close()

            after = await backend.put(Item(b"/other", b"w"))  # revisions go on increasing past them
            assert int(after.revision) > max(revisions)
        finally:
            await backend.close()

        reopened = await open_backend(None, tmp_path)  # committed: the new expiry survives a restart
        try:
            assert (await reopened.get(b"/nodes/live-3")).expires == renewed
        finally:
            await reopened.close()

    asyncio.run(body())
