"""The session-recording storage interface (selected by ``audit_sessions_uri`` scheme).

A recording is one finished asciicast v2 file per session ID. Uploads are atomic: a reader
sees the whole recording or none of it. Run :mod:`teleport_core.testing.session_suite`
against yours.
"""

from __future__ import annotations

import abc
import datetime as dt
import re
from pathlib import Path

import attrs

from teleport_core.errors import TeleportError

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidSessionID(TeleportError):
    """A session ID that could escape a storage location (``../x``) or is otherwise malformed."""


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` if it is safe as a file or object name, else raise."""
    if not _SESSION_ID.match(session_id) or ".." in session_id:
        raise InvalidSessionID(f"invalid session ID {session_id!r}: expected letters, digits, '.', '_', '-'")
    return session_id


@attrs.frozen
class RecordingInfo:
    session_id: str
    size: int
    modified: dt.datetime


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
