"""Run the kernel's backend conformance suite against the LMDB backend, plus its own checks."""

import asyncio
import datetime as dt
import stat

import pytest

from teleport_core.errors import ConfigError, DataDirLocked, TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Item, utcnow
from teleport_core.testing.backend_suite import BackendConformance


class TestLmdbBackend(BackendConformance):
    @pytest.fixture
    def teleport_backend_config(self, tmp_path):
        return {"type": "lmdb", "path": "state"}


def opened(raw, data_dir):
    plugins = make_plugins()
    return open_backend(plugins, storage_config(plugins, raw), data_dir)


def test_files_are_private(tmp_path):
    async def main():
        b = await opened({"type": "lmdb"}, tmp_path)
        try:
            await b.put(Item(b"/k", b"v"))
        finally:
            await b.close()

    asyncio.run(main())
    directory = tmp_path / "lmdb"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {p.name for p in directory.iterdir()} == {"data.mdb", "lock.mdb", "teleport.lock"}
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_second_open_is_refused_while_open(tmp_path):
    async def main():
        b = await opened({"type": "lmdb"}, tmp_path)
        try:
            with pytest.raises(DataDirLocked, match="in use"):
                await opened({"type": "lmdb"}, tmp_path)
            await b.put(Item(b"/k", b"v"))  # the first one is unharmed
        finally:
            await b.close()
        again = await opened({"type": "lmdb"}, tmp_path)  # closing released the lock
        try:
            assert (await again.get(b"/k")).value == b"v"
        finally:
            await again.close()

    asyncio.run(main())


def test_closed_backend_refuses_work(tmp_path):
    async def main():
        b = await opened({"type": "lmdb"}, tmp_path)
        await asyncio.gather(b.close(), b.close())
        for attempt in (b.put(Item(b"/k", b"v")), b.get(b"/k")):
            with pytest.raises(TeleportError, match="closed"):
                await attempt
        with pytest.raises(TeleportError, match="closed"):
            b.watch([b""])

    asyncio.run(main())


def test_full_database_names_the_key_and_keeps_working(tmp_path):
    async def main():
        b = await opened({"type": "lmdb", "map_size": 1 << 20}, tmp_path)
        try:
            kept = await b.put(Item(b"/small", b"v"))
            with pytest.raises(TeleportError, match=r"full \(teleport.storage.map_size"):
                for i in range(64):
                    await b.put(Item(f"/big/{i}".encode(), bytes(64 << 10)))
            assert await b.get(b"/small") == kept  # a refused write leaves the rest
            await b.delete_range(b"/big/", b"/big0")
            assert (await b.put(Item(b"/after", b"x"))).value == b"x"
        finally:
            await b.close()

    asyncio.run(main())


def test_keys_longer_than_lmdb_allows_are_refused(tmp_path):
    async def main():
        b = await opened({"type": "lmdb"}, tmp_path)
        try:
            await b.put(Item(b"/" + b"k" * 502, b"v"))  # 503 bytes: the longest
            with pytest.raises(ValueError, match="1 to 503 bytes"):
                await b.put(Item(b"/" + b"k" * 503, b"v"))
        finally:
            await b.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"map_size": "1GiB"}, "teleport.storage.map_size: expected an integer"),
        ({"map_size": 4096}, "teleport.storage.map_size: expected an integer, got 4096 (must be at least 1048576)"),
        ({"path": 5}, "teleport.storage.path: expected a file path"),
    ],
)
def test_bad_options_name_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        storage_config(make_plugins(), {"type": "lmdb", **raw})
    assert str(caught.value).startswith(message), str(caught.value)


def test_items_that_expired_while_closed_are_deleted_after_reopen(tmp_path):
    def stored_keys(b):  # what is on disk, expired or not
        with b._env.begin() as txn:
            return [key for key, _ in txn.cursor(db=b._kv)], [key for key, _ in txn.cursor(db=b._expiry)]

    async def write():
        b = await opened({"type": "lmdb"}, tmp_path)
        try:
            lease = await b.put(Item(b"/lease", b"x", utcnow() + dt.timedelta(seconds=0.5)))
            await b.put(Item(b"/keep", b"y"))
            return lease.expires
        finally:
            await b.close()

    async def reopen(expires):
        while utcnow() <= expires:
            await asyncio.sleep(0.1)
        b = await opened({"type": "lmdb"}, tmp_path)
        try:
            for _ in range(150):
                if stored_keys(b) == ([b"/keep"], []):
                    break
                await asyncio.sleep(0.1)
            assert stored_keys(b) == ([b"/keep"], [])
            assert (await b.get(b"/keep")).value == b"y"
        finally:
            await b.close()

    asyncio.run(reopen(asyncio.run(write())))
