"""The embedded SQLite backend: the conformance suite plus SQLite-specific checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from teleport_core.errors import (
    AlreadyExists,
    ConfigError,
    DataDirLocked,
    NotFound,
    TeleportError,
)
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend as open_configured
from teleport_core.resources import storage_config
from teleport_core.state.backend import Action, Item, range_end, utcnow
from teleport_core.state.backends.sqlite import DB_NAME, SqliteBackend, SqliteOptions, open_backend
from teleport_core.testing.backend_suite import BackendConformance


class TestSqliteBackend(BackendConformance):
    @pytest.fixture
    def teleport_backend_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"type": "sqlite"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _open(raw: dict[str, Any], data_dir: Path) -> SqliteBackend:
    plugins = make_plugins()
    backend = await open_configured(plugins, storage_config(plugins, raw), data_dir)
    assert isinstance(backend, SqliteBackend)
    return backend


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:

        async def main() -> None:
            b = await open_backend(None, tmp_path)
            try:
                await b.put(Item(b"/k", b"v"))
                directory = tmp_path / "backend"
                assert _mode(directory) == 0o700
                files = sorted(p.name for p in directory.iterdir())
                assert {DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"} <= set(files)
                for name in files:
                    assert _mode(directory / name) == 0o600, name
            finally:
                await b.close()

        asyncio.run(main())
    finally:
        os.umask(old)


def test_wal_and_full_sync(tmp_path: Path) -> None:
    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            await b.put(Item(b"/k", b"v"))
            synchronous = await b._write(lambda tx: tx.conn.execute("PRAGMA synchronous").fetchone()[0])
            assert synchronous == 2  # FULL
        finally:
            await b.close()

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "backend" / DB_NAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        assert conn.execute("SELECT value FROM kv WHERE key = ?", (b"/k",)).fetchone()[0] == b"v"
        assert conn.execute("SELECT typeof(key) FROM kv").fetchone()[0] == "blob"
    finally:
        conn.close()


def test_dir_alias_and_path(tmp_path: Path) -> None:
    plugins = make_plugins()
    absolute = tmp_path / "elsewhere" / "db"
    parsed = storage_config(plugins, {"type": "dir", "path": str(absolute)})
    assert parsed.type == "dir" and parsed.options == SqliteOptions(path=absolute)

    async def main() -> None:
        b = await _open({"type": "dir", "path": str(absolute)}, tmp_path / "data")
        try:
            await b.put(Item(b"/k", b"v"))
            assert b.db_path == absolute / DB_NAME
        finally:
            await b.close()
        relative = await _open({"type": "sqlite", "path": "state"}, tmp_path / "data")
        try:
            assert relative.directory == tmp_path / "data" / "state"
            await relative.put(Item(b"/k", b"v"))
        finally:
            await relative.close()

    asyncio.run(main())
    assert (absolute / DB_NAME).is_file()
    assert not (tmp_path / "data" / "backend").exists()
    assert (tmp_path / "data" / "state" / DB_NAME).is_file()


def test_bad_path_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        storage_config(make_plugins(), {"type": "sqlite", "path": 5})
    assert str(caught.value).startswith("teleport.storage.path: expected a file path")


def test_revisions_are_increasing_integers_across_reopen(tmp_path: Path) -> None:
    async def first() -> int:
        b = await open_backend(None, tmp_path)
        try:
            revisions = [int((await b.put(Item(f"/k{i}".encode(), b"v"))).revision) for i in range(5)]
            assert revisions == sorted(revisions) and len(set(revisions)) == 5
            top = await b.put(Item(b"/top", b"v"))
            await b.delete(b"/top")  # the highest revision no longer has a row
            return int(top.revision)
        finally:
            await b.close()

    async def second(top: int) -> None:
        b = await open_backend(None, tmp_path)
        try:
            again = await b.put(Item(b"/top", b"again"))
            assert int(again.revision) > top + 1  # the delete took a revision too
            assert int(await b.atomic_write([], [Action.put(Item(b"/x", b"y"))])) == int(again.revision) + 1
        finally:
            await b.close()

    top = asyncio.run(first())
    asyncio.run(second(top))


def test_second_open_is_refused_while_open(tmp_path: Path) -> None:
    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            with pytest.raises(DataDirLocked, match="in use"):
                await open_backend(None, tmp_path)
            await b.put(Item(b"/k", b"v"))  # the first one is unharmed
        finally:
            await b.close()
        reopened = await open_backend(None, tmp_path)  # closing released the lock
        await reopened.close()

    asyncio.run(main())


def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    async def main() -> None:
        b = await open_backend(None, tmp_path)
        await b.put(Item(b"/k", b"v"))
        await asyncio.gather(b.close(), b.close(), b.close())  # each returns once it is closed
        reopened = await open_backend(None, tmp_path)  # so the lock is free again
        assert (await reopened.get(b"/k")).value == b"v"
        await reopened.close()
        with pytest.raises(TeleportError, match="closed"):
            await b.put(Item(b"/k", b"v"))
        with pytest.raises(TeleportError, match="closed"):
            await b.get(b"/k")
        with pytest.raises(TeleportError, match="closed"):
            b.watch([b""])

    asyncio.run(main())


def test_bad_arguments(tmp_path: Path) -> None:
    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            with pytest.raises(ValueError, match="timezone"):
                await b.put(Item(b"/k", b"v", dt.datetime(2030, 1, 1)))
            with pytest.raises(TypeError):
                await b.put(Item("/k", b"v"))  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await b.put(Item(b"/k", "v"))  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await b.put(Item(b"", b"v"))
            with pytest.raises(ValueError):
                await b.atomic_write([], [])
            with pytest.raises(ValueError):
                b.watch([b""], queue_size=0)
            assert await b.get_range(b"", b"") == []
        finally:
            await b.close()

    asyncio.run(main())


def test_refused_writes_in_a_group_commit_leave_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            await b.put(Item(b"/taken", b"first"))
            results = await asyncio.gather(
                *(
                    b.create(Item(b"/taken", b"x")) if i % 2 else b.put(Item(f"/ok/{i:02d}".encode(), b"v"))
                    for i in range(40)
                ),
                return_exceptions=True,
            )
            assert sum(isinstance(r, AlreadyExists) for r in results) == 20
            written = [r for r in results if isinstance(r, Item)]
            assert len(written) == 20 and len({r.revision for r in written}) == 20
            assert len(await b.get_range(b"/ok/", range_end(b"/ok/"))) == 20
            assert (await b.get(b"/taken")).value == b"first"
        finally:
            await b.close()

    asyncio.run(main())


def test_expired_rows_are_deleted_after_reopen(tmp_path: Path) -> None:
    """The reaper picks up rows that expired while the backend was closed."""
    db = tmp_path / "backend" / DB_NAME

    def rows() -> list[tuple[bytes]]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT key FROM kv ORDER BY key").fetchall()
        finally:
            conn.close()

    async def write() -> dt.datetime:
        b = await open_backend(None, tmp_path)
        try:
            stored = await b.put(Item(b"/lease", b"x", utcnow() + dt.timedelta(seconds=0.5)))
            await b.put(Item(b"/keep", b"y"))
            assert stored.expires is not None
            return stored.expires
        finally:
            await b.close()

    async def reopen(expires: dt.datetime) -> None:
        while utcnow() <= expires:
            await asyncio.sleep(0.1)
        assert rows() == [(b"/keep",), (b"/lease",)]  # nobody reaped it while closed
        b = await open_backend(None, tmp_path)
        try:
            for _ in range(150):
                if rows() == [(b"/keep",)]:
                    break
                await asyncio.sleep(0.1)
            assert rows() == [(b"/keep",)]
            assert (await b.get(b"/keep")).value == b"y"
        finally:
            await b.close()

    asyncio.run(reopen(asyncio.run(write())))


def test_unsupported_schema_version_is_refused(tmp_path: Path) -> None:
    async def create() -> None:
        b = await open_backend(None, tmp_path)
        await b.close()

    asyncio.run(create())
    conn = sqlite3.connect(tmp_path / "backend" / DB_NAME)
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(TeleportError, match="schema version 99"):
        asyncio.run(open_backend(None, tmp_path))


def test_expired_rows_not_yet_reaped_are_invisible(tmp_path: Path) -> None:
    """Reads filter on expiry themselves; they do not rely on the reaper having run."""

    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            past = (time.time_ns() // 1000) - 1_000_000

            def plant(tx: Any) -> None:  # behind the reaper's back: it does not know this row
                for key in (b"/s/stale", b"/s/stale2"):
                    tx.conn.execute("INSERT INTO kv VALUES (?, ?, ?, ?)", (key, b"old", past, tx.revision()))

            await b._write(plant)
            await b.put(Item(b"/s/live", b"live"))
            with pytest.raises(NotFound):
                await b.get(b"/s/stale")
            assert [i.key for i in await b.get_range(b"/s/", range_end(b"/s/"))] == [b"/s/live"]
            with pytest.raises(NotFound):
                await b.update(Item(b"/s/stale", b"new"))
            created = await b.create(Item(b"/s/stale", b"new"))
            assert (await b.get(b"/s/stale")) == created
            assert await b.delete_range(b"/s/", range_end(b"/s/")) == 2  # /s/stale2 does not count
        finally:
            await b.close()

    asyncio.run(main())


_OTHER_PROCESS = """
import asyncio, datetime as dt, sys
from pathlib import Path
from teleport_core.state.backend import Item
from teleport_core.state.backends.sqlite import open_backend

async def main():
    b = await open_backend(None, Path(sys.argv[1]))
    try:
        for i in range(5):
            print((await b.put(Item(b"/locks/other-%d" % i, b"v%d" % i))).revision, flush=True)
        await b.delete(b"/locks/other-0")
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        await b.put(Item(b"/locks/expiring", b"x", soon))
    finally:
        await b.close()

asyncio.run(main())
"""


def test_writes_of_another_process_reach_the_watchers(tmp_path: Path) -> None:
    """Both processes of a graceful reload open the database: a write in one reaches the other's
    watchers (through the events table), revisions stay unique, and an item the other process
    wrote expires here (after it exited) with a DELETE event."""
    import subprocess
    import sys

    async def main() -> None:
        b = await open_backend(None, tmp_path)
        try:
            watcher = b.watch([b"/locks/"])
            assert (await asyncio.wait_for(watcher.__anext__(), 10)).type.value == "init"
            mine = await b.put(Item(b"/locks/mine", b"here"))
            other = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path)],
                capture_output=True, text=True, timeout=60, check=False)
            assert other.returncode == 0, other.stderr
            theirs = [int(line) for line in other.stdout.split()]
            after = await b.put(Item(b"/locks/after", b"later"))
            revisions = [int(mine.revision), *theirs, int(after.revision)]
            assert revisions == sorted(set(revisions))  # unique and increasing across both
            seen: list[tuple[str, bytes, bytes]] = []
            async with asyncio.timeout(20):
                while (ev := await watcher.__anext__()).item.key != b"/locks/expiring" or ev.type.value != "delete":
                    seen.append((ev.type.value, ev.item.key, ev.item.value))
            assert ("put", b"/locks/mine", b"here") in seen
            assert [s for s in seen if s[1].startswith(b"/locks/other-")] == [
                *(("put", b"/locks/other-%d" % i, b"v%d" % i) for i in range(5)), ("delete", b"/locks/other-0", b"")]
            assert ("put", b"/locks/expiring", b"x") in seen and ("put", b"/locks/after", b"later") in seen
            await watcher.close()
        finally:
            await b.close()

    asyncio.run(main())
