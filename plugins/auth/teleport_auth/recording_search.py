"""Recordings searchable by the text they show: indexing at auth, and the search of a listing.

* **Indexing**: when a recording becomes final at auth (an upload stored:
  :meth:`teleport_auth.api.sessions.SessionsAPI.upload_recording`; a streamed recording
  completed), the caller hands it to :func:`index_later`: its text
  (:func:`teleport_core.recording.text.cast_text`, at most ``MAX_TEXT`` characters) goes into the
  backend's recordings index (:meth:`Backend.recording_index
  <teleport_core.state.backend.Backend.recording_index>`) in the background, off the request path,
  :data:`CONCURRENCY` at a time. A backend that keeps no index is skipped (nothing logged beyond
  debug); a failure is logged and counted, and ``tctl recordings reindex`` repairs it.
* **Searching** (``GET /v1/sessions?search=TEXT``): the text is checked
  (:func:`~teleport_core.state.recording_index.search_phrase`: 3 to 256 characters, no NUL) and
  searched as a phrase; at most :data:`MATCH_MAX` matching recordings are considered (the most
  recently indexed), then the listing keeps those in its window that the caller's roles let it
  both ``list`` and ``read`` (a match shows part of the recording's text, so reading is needed too),
  and each entry gets a ``snippet`` of the text around the match.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teleport_core.metrics import metrics_for
from teleport_core.recording.text import cast_text
from teleport_core.state.recording_index import RecordingIndex, SearchUnsupported

if TYPE_CHECKING:
    from teleport_auth.state import AuthState

#: recordings indexed at once per auth server
CONCURRENCY = 2
#: matching recordings a search considers at most (the most recently indexed first)
MATCH_MAX = 10_000


def recording_index(service: AuthState) -> RecordingIndex:
    """The backend's recordings index; :class:`SearchUnsupported` naming why when it keeps none."""
    return service.backend.recording_index()


async def index_file(index: RecordingIndex, sid: str, path: Path) -> tuple[int, bool]:
    """Index the recording at ``path`` as ``sid``: (characters indexed, whether cut at the cap).
    ``ValueError`` when the file is not asciicast v2."""
    text, truncated = await asyncio.to_thread(cast_text, path)
    await index.put(sid, text, truncated=truncated)
    return len(text), truncated


async def index_stored(service: AuthState, sid: str) -> tuple[int, bool]:
    """Index ``sid``'s recording as the session storage has it (``tctl recordings reindex``);
    ``NotFound`` when the storage lacks it, :class:`SearchUnsupported` without an index."""
    index = recording_index(service)
    storage = await service.ctx.resources.session_storage()
    folder = Path(tempfile.mkdtemp(prefix="teleport-index-"))
    try:
        path = folder / f"{sid}.cast"
        await storage.download(sid, path)
        return await index_file(index, sid, path)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


def counted(service: AuthState, ok: bool) -> None:
    """Count an indexing in ``teleport_recordings_indexed_total``."""
    metrics_for(service.ctx.metrics).recordings_indexed.labels(result="ok" if ok else "failed").inc()


class Indexer:
    """The background indexing of one auth service (:func:`indexer_of`)."""

    def __init__(self, service: AuthState) -> None:
        self.service = service
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.tasks: set[asyncio.Task[None]] = set()
        self.failed = 0

    def submit(self, sid: str, path: Path | None = None) -> None:
        """Index ``sid`` in the background: from ``path`` (taken over: it is moved away at once, so
        the caller may delete its folder), or from the session storage when ``path`` is None."""
        try:
            recording_index(self.service)
        except SearchUnsupported as exc:
            self.service.log.debug("recording not indexed", sid=sid, reason=str(exc))
            return
        owned: Path | None = None
        if path is not None:
            folder = Path(tempfile.mkdtemp(prefix="teleport-index-"))
            owned = folder / path.name
            shutil.move(path, owned)
        task = asyncio.get_running_loop().create_task(self._index(sid, owned), name=f"index recording {sid}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _index(self, sid: str, path: Path | None) -> None:
        try:
            async with self.slots:
                if path is None:
                    chars, truncated = await index_stored(self.service, sid)
                else:
                    chars, truncated = await index_file(recording_index(self.service), sid, path)
            self.service.log.debug("recording indexed", sid=sid, chars=chars, truncated=truncated)
            counted(self.service, True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged and counted: tctl recordings reindex repairs it
            self.failed += 1
            counted(self.service, False)
            self.service.log.warning("cannot index a recording for search (tctl recordings reindex retries)",
                                     sid=sid, error=str(exc))
        finally:
            if path is not None:
                await asyncio.to_thread(shutil.rmtree, path.parent, True)

    async def drain(self) -> None:
        """Wait for every indexing in flight (tests; a stopping service)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def indexer_of(service: AuthState) -> Indexer:
    """The indexer of an auth service (made on first use)."""
    indexer: Indexer | None = getattr(service, "_recording_indexer", None)
    if indexer is None:
        indexer = Indexer(service)
        service._recording_indexer = indexer  # type: ignore[attr-defined]
    return indexer


def index_later(service: AuthState, sid: str, path: Path | None = None) -> None:
    """Index a recording that just became final, in the background (see :meth:`Indexer.submit`).
    The one call for every path that makes a recording final (uploads, completed streams)."""
    indexer_of(service).submit(sid, path)


async def snippets_for(service: AuthState, phrase: str, entries: list[dict[str, Any]]) -> None:
    """Add ``snippet`` and ``highlights`` to each listing entry (empty when the index has none)."""
    found = await recording_index(service).snippets(phrase, [entry["sid"] for entry in entries])
    for entry in entries:
        snippet = found.get(entry["sid"])
        entry["snippet"] = snippet.text if snippet else ""
        entry["highlights"] = [list(pair) for pair in snippet.highlights] if snippet else []
