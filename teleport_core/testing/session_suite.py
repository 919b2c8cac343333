"""Conformance suite for session-recording storage plugins.

Subclass :class:`SessionStorageConformance` in a class named ``Test...`` and define one
fixture, ``teleport_sessions_uri``, returning a URI of your scheme that names a fresh,
empty location for each test::

    class TestFileSessions(SessionStorageConformance):
        @pytest.fixture
        def teleport_sessions_uri(self, tmp_path):
            return f"file://{tmp_path}/records"

The suite opens the storage exactly as ``teleport start`` does (installed plugins,
:func:`~teleport_core.resources.open_session_storage`, ``data_dir`` = ``tmp_path``), so
the plugin must be installed (``pip install -e .``) or listed in ``$TELEPORT_PLUGINS``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from teleport_core.errors import AlreadyExists, NotFound
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_session_storage
from teleport_core.state.sessions import ChunkInfo, InvalidSessionID, SessionStorage, StreamingUnsupported

MiB = 1 << 20
HEADER = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'


def _cast(text: str) -> bytes:
    """A small asciicast v2 recording printing ``text``."""
    return HEADER + f'[0.5, "o", "{text}\\r\\n"]\n'.encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class SessionStorageConformance:
    """Behaviour every ``SessionStorage`` must have. Define the ``teleport_sessions_uri`` fixture."""

    @pytest.fixture
    def work_dir(self, tmp_path: Path) -> Path:
        """Where tests keep source and downloaded files (apart from the storage location)."""
        path = tmp_path / "conformance-work"
        path.mkdir()
        return path

    @asynccontextmanager
    async def opened(self, uri: str, data_dir: Path) -> AsyncIterator[SessionStorage]:
        """The storage ``uri`` names, opened through the installed plugins and closed on exit."""
        storage = await open_session_storage(make_plugins(), uri, data_dir)
        try:
            yield storage
        finally:
            await storage.close()

    def with_storage(self, uri: str, data_dir: Path, body: Callable[[SessionStorage], Awaitable[None]]) -> None:
        """Run ``body(storage)`` in a fresh event loop, opening and closing the storage around it."""

        async def main() -> None:
            async with self.opened(uri, data_dir) as storage:
                await body(storage)

        asyncio.run(main())

    # -- tests ------------------------------------------------------------------------------------

    def test_new_storage_is_empty(self, teleport_sessions_uri: str, tmp_path: Path) -> None:
        async def body(storage: SessionStorage) -> None:
            assert await storage.list() == []

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    def test_upload_download_round_trip(self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path) -> None:
        source, dest = work_dir / "src", work_dir / "dest"
        source.write_bytes(_cast("hello"))

        async def body(storage: SessionStorage) -> None:
            await storage.upload("sess-1", source)
            await storage.download("sess-1", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert dest.read_bytes() == _cast("hello")
        assert source.read_bytes() == _cast("hello"), "upload must not change its source"

    def test_multi_mib_recording(self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path) -> None:
        source, dest = work_dir / "big", work_dir / "big.out"
        with open(source, "wb") as f:
            f.write(HEADER)
            for _ in range(8):
                f.write(os.urandom(MiB))
        size = source.stat().st_size

        async def body(storage: SessionStorage) -> None:
            await storage.upload("big-session", source)
            [info] = await storage.list()
            assert (info.session_id, info.size) == ("big-session", size)
            await storage.download("big-session", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert dest.stat().st_size == size
        assert _sha256(dest) == _sha256(source)

    def test_reupload_replaces(self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path) -> None:
        first, second, dest = work_dir / "first", work_dir / "second", work_dir / "dest"
        first.write_bytes(_cast("first attempt, longer than the second one"))
        second.write_bytes(_cast("second"))

        async def body(storage: SessionStorage) -> None:
            await storage.upload("sess-r", first)
            await storage.upload("sess-r", second)
            assert [(i.session_id, i.size) for i in await storage.list()] == [("sess-r", len(_cast("second")))]
            await storage.download("sess-r", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert dest.read_bytes() == _cast("second")

    def test_list_shows_every_recording_with_size(
        self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path
    ) -> None:
        expected = {f"sess-{n}": _cast("x" * n) for n in (1, 10, 100)}
        before = dt.datetime.now(dt.UTC)

        async def body(storage: SessionStorage) -> None:
            for session_id, data in expected.items():
                path = work_dir / session_id
                path.write_bytes(data)
                await storage.upload(session_id, path)
            listed = await storage.list()
            assert {i.session_id: i.size for i in listed} == {k: len(v) for k, v in expected.items()}
            assert len(listed) == len(expected)
            for info in listed:
                assert info.modified.tzinfo is not None, "modified must be timezone-aware"
                assert abs(info.modified - before) < dt.timedelta(hours=1), info

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    def test_stat_finds_exactly_the_stored_recording(
        self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path
    ) -> None:
        source = work_dir / "src"
        source.write_bytes(_cast("stat me"))
        before = dt.datetime.now(dt.UTC)

        async def body(storage: SessionStorage) -> None:
            assert await storage.stat("sess-s") is None
            await storage.upload("sess-s", source)
            await storage.upload("sess-other", source)
            info = await storage.stat("sess-s")
            assert info is not None and (info.session_id, info.size) == ("sess-s", len(_cast("stat me")))
            assert info.modified.tzinfo is not None and abs(info.modified - before) < dt.timedelta(hours=1)
            assert await storage.stat("sess-never") is None
            with pytest.raises(InvalidSessionID):
                await storage.stat("../sess-s")

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    def test_missing_session_is_not_found(self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path) -> None:
        dest = work_dir / "never"

        async def body(storage: SessionStorage) -> None:
            with pytest.raises(NotFound):
                await storage.download("no-such-session", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert not dest.exists(), "a failed download must not create its destination"

    @pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "..", "/etc/passwd", ".hidden", "a\x00b"])
    def test_invalid_session_ids_are_refused(
        self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path, bad_id: str
    ) -> None:
        source, dest = work_dir / "src", work_dir / "dest"
        source.write_bytes(_cast("escape"))

        async def body(storage: SessionStorage) -> None:
            with pytest.raises(InvalidSessionID):
                await storage.upload(bad_id, source)
            with pytest.raises(InvalidSessionID):
                await storage.download(bad_id, dest)
            assert await storage.list() == []

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert not dest.exists()
        assert sorted(p.name for p in work_dir.iterdir()) == ["src"], "nothing may be written outside storage"

    def test_concurrent_uploads_of_different_sessions(
        self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path
    ) -> None:
        count = 16
        datas = {f"conc-{n}": _cast(f"session {n} " + "y" * (n * 1000)) for n in range(count)}
        for session_id, data in datas.items():
            (work_dir / session_id).write_bytes(data)

        async def body(storage: SessionStorage) -> None:
            await asyncio.gather(*(storage.upload(sid, work_dir / sid) for sid in datas))
            assert {i.session_id: i.size for i in await storage.list()} == {k: len(v) for k, v in datas.items()}
            await asyncio.gather(*(storage.download(sid, work_dir / f"{sid}.out") for sid in datas))

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        for session_id, data in datas.items():
            assert (work_dir / f"{session_id}.out").read_bytes() == data

    def test_download_into_existing_directory_replaces_file(
        self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path
    ) -> None:
        source = work_dir / "src"
        source.write_bytes(_cast("fresh"))
        parent = work_dir / "nested" / "deeper"
        parent.mkdir(parents=True)
        new_dest, old_dest = parent / "new.cast", parent / "old.cast"
        old_dest.write_bytes(b"stale content that is longer than the recording " * 10)

        async def body(storage: SessionStorage) -> None:
            await storage.upload("sess-d", source)
            await storage.download("sess-d", new_dest)
            await storage.download("sess-d", old_dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        assert new_dest.read_bytes() == _cast("fresh")
        assert old_dest.read_bytes() == _cast("fresh")
        assert sorted(p.name for p in parent.iterdir()) == ["new.cast", "old.cast"], "no temp files left behind"

    def test_recordings_survive_reopening(self, teleport_sessions_uri: str, tmp_path: Path, work_dir: Path) -> None:
        source, dest = work_dir / "src", work_dir / "dest"
        source.write_bytes(_cast("durable"))

        async def first(storage: SessionStorage) -> None:
            await storage.upload("sess-p", source)

        async def second(storage: SessionStorage) -> None:
            assert [i.session_id for i in await storage.list()] == ["sess-p"]
            await storage.download("sess-p", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, first)
        self.with_storage(teleport_sessions_uri, tmp_path, second)
        assert dest.read_bytes() == _cast("durable")

    # -- chunks of recordings in progress (sync recording modes) --------------------------------------

    def test_storage_without_chunks_says_so(self, teleport_sessions_uri: str, tmp_path: Path) -> None:
        async def body(storage: SessionStorage) -> None:
            if storage.streaming:
                return
            with pytest.raises(StreamingUnsupported, match="does not store recordings in chunks"):
                await storage.put_chunk("sess-c", 0, HEADER)

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    def test_chunks_complete_into_the_recording(self, teleport_sessions_uri: str, tmp_path: Path,
                                                work_dir: Path) -> None:
        parts = [HEADER, b'[0.1, "o", "one\\r\\n"]\n', b'[0.2, "o", "two"]\n[0.3, "o", "three"]\n']
        dest = work_dir / "dest"

        async def body(storage: SessionStorage) -> None:
            if not storage.streaming:  # test_storage_without_chunks_says_so checks it
                return
            assert await storage.list_chunks("sess-c") == []
            for index, data in enumerate(parts):
                assert await storage.put_chunk("sess-c", index, data) is True
            assert await storage.list_chunks("sess-c") == [ChunkInfo(n, len(d)) for n, d in enumerate(parts)]
            assert await storage.read_chunk("sess-c", 1) == parts[1]
            assert await storage.stat_chunk("sess-c", 2) == ChunkInfo(2, len(parts[2]))
            assert await storage.stat_chunk("sess-c", 3) is None
            assert await storage.list() == [], "chunks are not recordings"
            assert await storage.stat("sess-c") is None
            done = await storage.complete("sess-c", work_dir)
            whole = b"".join(parts)
            assert (done.size, done.sha256, done.chunks) == (len(whole), hashlib.sha256(whole).hexdigest(), 3)
            assert await storage.list_chunks("sess-c") == []
            assert [(i.session_id, i.size) for i in await storage.list()] == [("sess-c", len(whole))]
            again = await storage.complete("sess-c", work_dir)  # a retried completion
            assert (again.size, again.chunks) == (len(whole), 0)
            await storage.download("sess-c", dest)

        self.with_storage(teleport_sessions_uri, tmp_path, body)
        if dest.exists():
            assert dest.read_bytes() == b"".join(parts)

    def test_chunk_retry_is_not_duplicated_and_never_replaced(self, teleport_sessions_uri: str,
                                                              tmp_path: Path) -> None:
        async def body(storage: SessionStorage) -> None:
            if not storage.streaming:  # test_storage_without_chunks_says_so checks it
                return
            assert await storage.put_chunk("sess-i", 0, HEADER) is True
            assert await storage.put_chunk("sess-i", 0, HEADER) is False, "a retried chunk is a no-op"
            with pytest.raises(AlreadyExists, match="never replaced"):
                await storage.put_chunk("sess-i", 0, HEADER + b"x")
            assert await storage.list_chunks("sess-i") == [ChunkInfo(0, len(HEADER))]
            assert await storage.read_chunk("sess-i", 0) == HEADER

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    def test_complete_stops_at_the_first_gap(self, teleport_sessions_uri: str, tmp_path: Path,
                                             work_dir: Path) -> None:
        async def body(storage: SessionStorage) -> None:
            if not storage.streaming:  # test_storage_without_chunks_says_so checks it
                return
            await storage.put_chunk("sess-g", 0, HEADER)
            await storage.put_chunk("sess-g", 1, b'[1.0, "o", "a"]\n')
            await storage.put_chunk("sess-g", 3, b'[3.0, "o", "lost"]\n')
            done = await storage.complete("sess-g", work_dir)
            assert (done.size, done.chunks) == (len(HEADER) + 16, 2)
            with pytest.raises(NotFound):
                await storage.complete("sess-never", work_dir)
            with pytest.raises(NotFound):
                await storage.read_chunk("sess-never", 0)

        self.with_storage(teleport_sessions_uri, tmp_path, body)

    @pytest.mark.parametrize("bad_id", ["../x", "a/b", ""])
    def test_chunks_refuse_invalid_ids_and_indexes(self, teleport_sessions_uri: str, tmp_path: Path,
                                                   bad_id: str) -> None:
        async def body(storage: SessionStorage) -> None:
            if not storage.streaming:  # test_storage_without_chunks_says_so checks it
                return
            with pytest.raises(InvalidSessionID):
                await storage.put_chunk(bad_id, 0, HEADER)
            with pytest.raises(InvalidSessionID):
                await storage.list_chunks(bad_id)
            for index in (-1, 10**9, True):
                with pytest.raises(ValueError, match="invalid chunk index"):
                    await storage.put_chunk("sess-x", index, HEADER)
            assert await storage.list() == []

        self.with_storage(teleport_sessions_uri, tmp_path, body)
