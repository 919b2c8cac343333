"""Local-disk session recordings (``file://``): the conformance suite plus file-specific checks."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from teleport_core.errors import ConfigError, TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_session_storage
from teleport_core.state.backends.file_sessions import FileSessionStorage, open_storage
from teleport_core.testing.session_suite import SessionStorageConformance

KEY = "teleport.storage.audit_sessions_uri"


class TestFileSessions(SessionStorageConformance):
    @pytest.fixture
    def teleport_sessions_uri(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/records"


def _open(uri: str, data_dir: Path) -> FileSessionStorage:
    return asyncio.run(open_storage(uri, data_dir))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        storage = _open(f"file://{tmp_path}/a/b/records", tmp_path)
    finally:
        os.umask(old)
    source = tmp_path / "src"
    source.write_bytes(b"recording")
    source.chmod(0o644)
    asyncio.run(storage.upload("s1", source))
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(tmp_path / "a" / "b" / "records") == 0o700
    assert _mode(tmp_path / "a" / "b" / "records" / "s1.cast") == 0o600
    dest = tmp_path / "dest"
    asyncio.run(storage.download("s1", dest))
    assert _mode(dest) == 0o600


def test_localhost_uri_is_accepted(tmp_path: Path) -> None:
    storage = _open(f"file://localhost{tmp_path}/rec", tmp_path)
    assert storage.directory == tmp_path / "rec"
    assert (tmp_path / "rec").is_dir()


def test_stale_temp_file_is_ignored_and_cleaned_on_open(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/records"
    storage = _open(uri, tmp_path)
    source, dest = tmp_path / "src", tmp_path / "dest"
    source.write_bytes(b"whole recording")
    asyncio.run(storage.upload("s1", source))
    # What a crash mid-upload leaves: a partial temp file that no live writer holds.
    stale = storage.directory / ".upload-crashed.tmp"
    stale.write_bytes(b"half a rec")
    assert [i.session_id for i in asyncio.run(storage.list())] == ["s1"]
    asyncio.run(storage.download("s1", dest))
    assert dest.read_bytes() == b"whole recording"
    _open(uri, tmp_path)
    assert not stale.exists()
    assert sorted(p.name for p in storage.directory.iterdir()) == ["s1.cast"]


def test_open_keeps_temp_file_of_live_upload(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/records"
    storage = _open(uri, tmp_path)
    live = storage.directory / ".upload-live.tmp"
    fd = os.open(live, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _open(uri, tmp_path)  # e.g. tctl opening the storage while teleport uploads
        assert live.exists()
    finally:
        os.close(fd)
    _open(uri, tmp_path)
    assert not live.exists()


def test_failed_upload_leaves_previous_recording_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _open(f"file://{tmp_path}/records", tmp_path)
    source = tmp_path / "src"
    source.write_bytes(b"first")
    asyncio.run(storage.upload("s1", source))

    def copy_then_fail(src: BinaryIO, dst: BinaryIO, length: int = 0) -> None:
        dst.write(src.read(3))
        raise OSError(28, "No space left on device")

    source.write_bytes(b"second, never stored")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copyfileobj", copy_then_fail)
        with pytest.raises(OSError, match="No space left"):
            asyncio.run(storage.upload("s1", source))
    with pytest.raises(FileNotFoundError):
        asyncio.run(storage.upload("s1", tmp_path / "missing"))
    assert sorted(p.name for p in storage.directory.iterdir()) == ["s1.cast"]
    assert (storage.directory / "s1.cast").read_bytes() == b"first"


def test_symlink_under_recording_name_is_not_followed(tmp_path: Path) -> None:
    storage = _open(f"file://{tmp_path}/records", tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not a recording")
    (storage.directory / "planted.cast").symlink_to(secret)
    assert asyncio.run(storage.list()) == []
    with pytest.raises(TeleportError, match="cannot read recording"):
        asyncio.run(storage.download("planted", tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_closed_storage_refuses_use(tmp_path: Path) -> None:
    storage = _open(f"file://{tmp_path}/records", tmp_path)
    asyncio.run(storage.close())
    with pytest.raises(TeleportError, match="closed"):
        asyncio.run(storage.list())
    with pytest.raises(TeleportError, match="closed"):
        asyncio.run(storage.download("s1", tmp_path / "dest"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file://relative/dir", "host 'relative'"),
        ("file:relative/dir", "is relative"),
        ("file://host/x", "host 'host'"),
        ("file://user@localhost/x", "host 'user@localhost'"),
        ("file:///var/rec?mode=fast", "query or fragment"),
        ("file:///var/rec?", "query or fragment"),
        ("file:///var/rec#frag", "query or fragment"),
        ("file://", "is relative"),
        ("file:///var/rec%00x", "NUL"),
    ],
)
def test_bad_uris_are_config_errors(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _open(uri, tmp_path)
    assert info.value.path == KEY
    assert message in info.value.message
    assert "file:///absolute/directory" in info.value.message


def test_world_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by other users"):
        _open(f"file://{shared}", tmp_path)


def test_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        _open(f"file://{tmp_path}/afile", tmp_path)
    with pytest.raises(ConfigError, match="cannot use"):
        _open(f"file://{tmp_path}/afile/records", tmp_path)


def test_unknown_scheme_lists_installed_schemes(tmp_path: Path) -> None:
    plugins = make_plugins()
    with pytest.raises(ConfigError) as info:
        asyncio.run(open_session_storage(plugins, "bogus://x", tmp_path))
    assert info.value.path == KEY
    assert 'session storage "bogus"' in str(info.value)
    assert "file" in info.value.message.split("installed:")[1]


def test_file_scheme_is_registered_by_the_kernel(tmp_path: Path) -> None:
    storage = asyncio.run(open_session_storage(make_plugins(), f"file://{tmp_path}/rec", tmp_path))
    assert isinstance(storage, FileSessionStorage)


def test_the_default_stat_finds_a_recording_through_list(tmp_path: Path) -> None:
    """``SessionStorage.stat``'s default (for storages that do not implement it) answers from ``list()``."""
    from teleport_core.state.sessions import InvalidSessionID, RecordingInfo, SessionStorage

    class ListOnly(SessionStorage):
        def __init__(self, inner: FileSessionStorage) -> None:
            self.inner = inner

        async def upload(self, session_id: str, source: Path) -> None:
            await self.inner.upload(session_id, source)

        async def download(self, session_id: str, dest: Path) -> None:
            await self.inner.download(session_id, dest)

        async def list(self) -> list[RecordingInfo]:
            return await self.inner.list()

        async def close(self) -> None:
            await self.inner.close()

    source = tmp_path / "src.cast"
    source.write_bytes(b'{"version": 2}\n')

    async def main() -> None:
        storage = ListOnly(await open_storage(f"file://{tmp_path}/records", tmp_path))
        assert await storage.stat("s-1") is None
        await storage.upload("s-1", source)
        info = await storage.stat("s-1")
        assert info is not None and (info.session_id, info.size) == ("s-1", source.stat().st_size)
        with pytest.raises(InvalidSessionID):
            await storage.stat("../s-1")
        await storage.close()

    asyncio.run(main())
