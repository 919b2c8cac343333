"""The session-recording storage interface (selected by ``audit_sessions_uri`` scheme).

A recording is one finished asciicast v2 file per session ID. Uploads are atomic: a reader
sees the whole recording or none of it. Run :mod:`teleport_core.testing.session_suite`
against yours.

Streaming (``session_recording: node-sync``/``proxy-sync``): while a session runs, its
recording arrives in numbered chunks (byte ranges of the final ``.cast`` file, in order, from
index 0). A storage that supports it sets :attr:`SessionStorage.streaming` and implements
:meth:`~SessionStorage.put_chunk`, :meth:`~SessionStorage.list_chunks`,
:meth:`~SessionStorage.read_chunk` and :meth:`~SessionStorage.delete_chunks` (and, for speed,
:meth:`~SessionStorage.stat_chunk`);
:meth:`~SessionStorage.complete` (generic) concatenates the chunks into the recording, as an
upload would store it, and deletes them. Chunks never show in :meth:`~SessionStorage.list`.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import datetime as dt
import hashlib
import os
import re
import tempfile
from pathlib import Path

import attrs

from teleport_core.errors import AlreadyExists, NotFound, TeleportError

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidSessionID(TeleportError):
    """A session ID that could escape a storage location (``../x``) or is otherwise malformed."""


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if it is safe as a file or object name, else raise."""
    if not _SESSION_ID.match(session_id) or ".." in session_id:
        raise InvalidSessionID(f"invalid session ID {session_id!r}: expected letters, digits, '.', '_', '-'")
    return session_id


#: chunk indexes are 0 .. MAX_CHUNKS - 1 (nine digits in storage names)
MAX_CHUNKS = 1_000_000_000


class StreamingUnsupported(TeleportError):
    """The session storage keeps finished recordings only: no chunks (sync recording modes)."""


def check_chunk_index(index: int) -> int:
    """Return ``index`` if it is a valid chunk index, else raise ``ValueError``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_CHUNKS:
        raise ValueError(f"invalid chunk index {index!r}: expected 0 to {MAX_CHUNKS - 1}")
    return index


def chunk_name(index: int) -> str:
    """A chunk's name in storage: nine digits, so names sort as indexes do."""
    return f"{check_chunk_index(index):09d}"


@attrs.frozen
class RecordingInfo:
    session_id: str
    size: int
    modified: dt.datetime


@attrs.frozen
class ChunkInfo:
    """One stored chunk of a recording in progress: its index and size."""

    index: int
    size: int


@attrs.frozen
class Completed:
    """A recording assembled from its chunks: its size, SHA-256 (hex) and chunk count."""

    size: int
    sha256: str
    chunks: int


class SessionStorage(abc.ABC):
    """Stores finished session recordings."""

    @abc.abstractmethod
    async def upload(self, session_id: str, source: Path) -> None:
        """Store the file at ``source`` as the recording of ``session_id``, atomically.

        Uploading the same session again replaces the recording (an upload retried after a
        crash must succeed).
        """

    @abc.abstractmethod
    async def download(self, session_id: str, dest: Path) -> None:
        """Write the recording of ``session_id`` to ``dest``; ``NotFound`` when there is none."""

    @abc.abstractmethod
    async def list(self) -> list[RecordingInfo]:
        """Every stored recording, in no particular order."""

    async def stat(self, session_id: str) -> RecordingInfo | None:
        """The stored recording of ``session_id`` (size, modified), None when there is none.

        This default lists every recording (slow with many): storages implement it directly
        (a file ``stat``, an S3 ``HEAD``).
        """
        check_session_id(session_id)
        return next((info for info in await self.list() if info.session_id == session_id), None)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources."""

    # -- streaming (sync recording modes) ------------------------------------------------------------

    #: True when the storage implements the chunk methods below
    streaming: bool = False

    async def put_chunk(self, session_id: str, index: int, data: bytes) -> bool:
        """Store chunk ``index`` of ``session_id``'s recording in progress, atomically (a reader
        sees the whole chunk or none). Idempotent: the same bytes again are a no-op (returns False;
        True when stored now); different bytes under a stored index raise ``AlreadyExists`` (a
        chunk is never replaced)."""
        raise StreamingUnsupported(f"{type(self).__name__} does not store recordings in chunks")

    async def list_chunks(self, session_id: str) -> builtins.list[ChunkInfo]:
        """The stored chunks of ``session_id``, by index (empty when there are none)."""
        raise StreamingUnsupported(f"{type(self).__name__} does not store recordings in chunks")

    async def stat_chunk(self, session_id: str, index: int) -> ChunkInfo | None:
        """Chunk ``index`` of ``session_id`` if it is stored (None if not). This default lists every
        chunk: storages implement it directly (a file ``stat``, an S3 ``HEAD``)."""
        return next((c for c in await self.list_chunks(session_id) if c.index == index), None)

    async def read_chunk(self, session_id: str, index: int) -> bytes:
        """The bytes of one chunk; ``NotFound`` when it is not stored."""
        raise StreamingUnsupported(f"{type(self).__name__} does not store recordings in chunks")

    async def delete_chunks(self, session_id: str) -> None:
        """Remove every chunk of ``session_id`` (none stored: a no-op)."""
        raise StreamingUnsupported(f"{type(self).__name__} does not store recordings in chunks")

    async def complete(self, session_id: str, work_dir: Path | None = None) -> Completed:
        """Assemble the chunks of ``session_id`` (0, 1, ... up to the first gap) into its recording,
        stored as :meth:`upload` stores one, then delete them. Idempotent: with no chunks left and
        the recording stored, its size is returned (``sha256`` empty). ``NotFound`` when there is
        neither; ``AlreadyExists`` when a recording is stored and chunks remain that would change it
        (a stored recording is never replaced). ``work_dir``: where the assembled file is written
        first (default the system's temp directory)."""
        check_session_id(session_id)
        chunks = await self.list_chunks(session_id)
        contiguous = [c for n, c in enumerate(chunks) if c.index == n]
        stored = await self.stat(session_id)
        if not contiguous:
            if stored is None:
                raise NotFound(f"no chunks and no recording of session {session_id}")
            return Completed(stored.size, "", 0)
        fd, temp = tempfile.mkstemp(prefix=".complete-", suffix=".cast", dir=work_dir)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in contiguous:
                    data = await self.read_chunk(session_id, chunk.index)
                    digest.update(data)
                    size += len(data)
                    out.write(data)
            if stored is not None and stored.size != size:
                raise AlreadyExists(f"a different recording of session {session_id} is already stored: "
                                    "recordings are never replaced")
            if stored is None:
                await self.upload(session_id, Path(temp))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        await self.delete_chunks(session_id)
        return Completed(size, digest.hexdigest(), len(contiguous))
