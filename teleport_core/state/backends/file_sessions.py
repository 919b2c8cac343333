"""Session recordings as files on local disk: ``file:///var/lib/teleport/log/records``.

Each recording is ``<dir>/<session_id>.cast``. An upload is copied to a temp file in the
same directory, fsynced, renamed over the final name, and the directory is fsynced, so a
crash leaves either the old recording, the new one, or a stale temp file that list and
download ignore. A writer holds an exclusive ``flock`` on its temp file; temp files nobody
holds (left by a crashed process) are removed when the storage is opened. The directory is
created 0700 and every recording is 0600. All file I/O runs in a worker thread and streams
in chunks: recordings can be GiBs.

Chunks of a recording in progress (sync recording modes) are ``<dir>/<session_id>.chunks/
<index, nine digits>.chunk`` (0600 in a 0700 directory), each written to a temp file, fsynced
and hard-linked to its name (a chunk is never replaced: a second writer of the same index finds
it and compares); :meth:`FileSessionStorage.complete` concatenates them into the recording.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from teleport_core.errors import AlreadyExists, ConfigError, NotFound, TeleportError
from teleport_core.state.sessions import (
    ChunkInfo,
    InvalidSessionID,
    RecordingInfo,
    SessionStorage,
    check_session_id,
    chunk_name,
)

CONFIG_KEY = "teleport.storage.audit_sessions_uri"
SUFFIX = ".cast"
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".tmp"
CHUNK = 1 << 20
CHUNKS_SUFFIX = ".chunks"
CHUNK_SUFFIX = ".chunk"
DIR_MODE = 0o700
FILE_MODE = 0o600


def parse_uri(uri: str) -> Path:
    """The directory a ``file:///abs/dir`` URI names; ``ConfigError`` for anything else."""
    parts = urlsplit(uri)
    example = "expected file:///absolute/directory (three slashes)"
    if parts.scheme != "file":
        raise ConfigError(CONFIG_KEY, f"{example}, got scheme {parts.scheme!r} in {uri!r}")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            CONFIG_KEY, f"{example}: host {parts.netloc!r} in {uri!r} is not allowed, recordings are local"
        )
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise ConfigError(CONFIG_KEY, f"{example}: {uri!r} has a query or fragment, which file URIs do not take")
    path = unquote(parts.path)
    if "\x00" in path:
        raise ConfigError(CONFIG_KEY, f"{example}: {uri!r} contains a NUL byte")
    if not path.startswith("/"):
        raise ConfigError(CONFIG_KEY, f"{example}: the path {path!r} in {uri!r} is relative")
    return Path(path)


async def open_storage(uri: str, data_dir: Path) -> FileSessionStorage:
    """Factory of the ``file`` scheme: open (creating if needed) the directory ``uri`` names."""
    directory = parse_uri(uri)
    try:
        await asyncio.to_thread(_prepare_dir, directory)
    except OSError as exc:
        raise ConfigError(CONFIG_KEY, f"cannot use {directory} for recordings: {exc}") from exc
    return FileSessionStorage(directory)


def _prepare_dir(directory: Path) -> None:
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=DIR_MODE)
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(CONFIG_KEY, f"{directory} is not a directory")
    if info.st_mode & 0o022:
        raise ConfigError(
            CONFIG_KEY,
            f"{directory} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run chmod 700 on it or choose a directory only teleport can write",
        )
    _remove_stale_temps(directory)


def _remove_stale_temps(directory: Path) -> None:
    """Delete temp files left by crashed uploads (those no live writer holds a lock on)."""
    for entry in os.scandir(directory):
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone already, or a symlink: not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # an upload in progress (in this or another process)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _locked_temp(directory: Path) -> tuple[int, str]:
    """Create a 0600 temp file in ``directory`` and hold an exclusive lock on it.

    The lock tells a concurrent cleanup that the file is live; if a cleanup removed the
    file between creation and locking, try again with a new one.
    """
    while True:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(name, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                os.fchmod(fd, FILE_MODE)
                return fd, name
        except FileNotFoundError:
            pass
        os.close(fd)


class FileSessionStorage(SessionStorage):
    """Recordings in one local directory. Open with :func:`open_storage`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._closed = False

    def _path(self, session_id: str) -> Path:
        if self._closed:
            raise TeleportError(f"session storage {self.directory} is closed")
        return self.directory / (check_session_id(session_id) + SUFFIX)

    async def upload(self, session_id: str, source: Path) -> None:
        await asyncio.to_thread(self._upload, self._path(session_id), Path(source))

    def _upload(self, final: Path, source: Path) -> None:
        with open(source, "rb") as src:
            fd, temp = _locked_temp(self.directory)
            try:
                with os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                    dst.flush()
                    os.fsync(dst.fileno())
                    os.rename(temp, final)  # still holding the lock, so no cleanup races us
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
        _fsync_dir(self.directory)

    async def download(self, session_id: str, dest: Path) -> None:
        await asyncio.to_thread(self._download, self._path(session_id), session_id, Path(dest))

    def _download(self, path: Path, session_id: str, dest: Path) -> None:
        try:
            src_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"no recording of session {session_id} in {self.directory}") from None
        except OSError as exc:  # ELOOP: a symlink planted under a recording's name
            raise TeleportError(f"cannot read recording {path}: {exc}") from exc
        with open(src_fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise TeleportError(f"recording {path} is not a regular file")
            # Write next to dest and rename, so a reader of dest never sees a partial copy.
            fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(temp, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise

    async def list(self) -> builtins.list[RecordingInfo]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[RecordingInfo]:
        if self._closed:
            raise TeleportError(f"session storage {self.directory} is closed")
        found: builtins.list[RecordingInfo] = []
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(SUFFIX):
                continue
            session_id = entry.name[: -len(SUFFIX)]
            try:
                check_session_id(session_id)
                info = entry.stat(follow_symlinks=False)
            except (InvalidSessionID, FileNotFoundError):
                continue
            if stat.S_ISREG(info.st_mode):
                modified = dt.datetime.fromtimestamp(info.st_mtime, dt.UTC)
                found.append(RecordingInfo(session_id, info.st_size, modified))
        return found

    async def stat(self, session_id: str) -> RecordingInfo | None:
        return await asyncio.to_thread(self._stat, self._path(session_id))

    def _stat(self, path: Path) -> RecordingInfo | None:
        try:
            info = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return RecordingInfo(path.name[: -len(SUFFIX)], info.st_size, dt.datetime.fromtimestamp(info.st_mtime, dt.UTC))

    async def close(self) -> None:
        self._closed = True

    # -- chunks (sync recording modes) -------------------------------------------------------------

    streaming = True

    def _chunks_dir(self, session_id: str) -> Path:
        if self._closed:
            raise TeleportError(f"session storage {self.directory} is closed")
        return self.directory / (check_session_id(session_id) + CHUNKS_SUFFIX)

    async def put_chunk(self, session_id: str, index: int, data: bytes) -> bool:
        directory = self._chunks_dir(session_id)
        return await asyncio.to_thread(self._put_chunk, directory, chunk_name(index), bytes(data))

    def _put_chunk(self, directory: Path, name: str, data: bytes) -> bool:
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            raise TeleportError(f"{directory} is not a directory")
        final = directory / (name + CHUNK_SUFFIX)
        fd, temp = tempfile.mkstemp(prefix=".chunk-", suffix=TEMP_SUFFIX, dir=directory)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temp, final)  # never over an existing chunk
            except FileExistsError:
                if self._read(final) != data:
                    raise AlreadyExists(f"chunk {name} of this recording is stored with other bytes: "
                                        "chunks are never replaced") from None
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_dir(directory)
        return True

    @staticmethod
    def _read(path: Path) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as src:
            return src.read()

    async def list_chunks(self, session_id: str) -> builtins.list[ChunkInfo]:
        return await asyncio.to_thread(self._list_chunks, self._chunks_dir(session_id))

    @staticmethod
    def _list_chunks(directory: Path) -> builtins.list[ChunkInfo]:
        found: builtins.list[ChunkInfo] = []
        try:
            entries = builtins.list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for entry in entries:
            stem = entry.name[: -len(CHUNK_SUFFIX)]
            if entry.name.endswith(CHUNK_SUFFIX) and len(stem) == 9 and stem.isdigit():
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    found.append(ChunkInfo(int(stem), info.st_size))
        return sorted(found, key=lambda c: c.index)

    async def stat_chunk(self, session_id: str, index: int) -> ChunkInfo | None:
        path = self._chunks_dir(session_id) / (chunk_name(index) + CHUNK_SUFFIX)
        try:
            info = await asyncio.to_thread(os.stat, path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return ChunkInfo(index, info.st_size) if stat.S_ISREG(info.st_mode) else None

    async def read_chunk(self, session_id: str, index: int) -> bytes:
        path = self._chunks_dir(session_id) / (chunk_name(index) + CHUNK_SUFFIX)
        try:
            return await asyncio.to_thread(self._read, path)
        except FileNotFoundError:
            raise NotFound(f"no chunk {index} of session {session_id} in {self.directory}") from None

    async def delete_chunks(self, session_id: str) -> None:
        directory = self._chunks_dir(session_id)
        await asyncio.to_thread(shutil.rmtree, directory, True)
