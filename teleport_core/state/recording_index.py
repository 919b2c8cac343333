"""The full-text index of session recordings: which recordings show a piece of text.

A cluster-state backend announces whether it keeps one: :meth:`Backend.recording_index
<teleport_core.state.backend.Backend.recording_index>` returns its :class:`RecordingIndex`, or
raises :class:`SearchUnsupported` naming why (the default for a backend that does not override
it; the etcd backend says etcd has no full-text search). The index lives with cluster state so
every auth server sharing a backend searches alike. The embedded SQLite backend keeps it with
FTS5 (:mod:`teleport_core.state.backends.sqlite_index`).

The index stores text, never decides access: auth indexes a recording when it is stored (its
text from :mod:`teleport_core.recording.text`), and filters what a search finds with the
caller's roles. Queries are plain text: :func:`search_phrase` checks a user's text (length, NUL,
at least :data:`MIN_QUERY` characters) and an index searches it as a phrase, case-insensitively,
anywhere in the text (a substring), never as query syntax. A backend author runs
:mod:`teleport_core.testing.recording_index_suite` against theirs.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs

from teleport_core.errors import TeleportError

#: the longest search text (characters)
MAX_QUERY = 256
#: the shortest search text (characters): shorter text matches too much to be useful
MIN_QUERY = 3
#: the longest snippet (characters) a search returns per recording
SNIPPET_CHARS = 160


class SearchUnsupported(TeleportError):
    """This cluster-state backend keeps no full-text index of recordings; ``str()`` says why."""


class BadSearch(TeleportError):
    """The search text cannot be searched (too long, too short, NUL); ``str()`` says what is wrong."""


def search_phrase(text: str) -> str:
    """The user's search text as the index takes it (surrounding blanks trimmed), or
    :class:`BadSearch` saying what is wrong. Operators, quotes and wildcards are kept as text."""
    phrase = text.strip()
    if "\x00" in phrase:
        raise BadSearch("search: the text contains a NUL character")
    if len(phrase) > MAX_QUERY:
        raise BadSearch(f"search: at most {MAX_QUERY} characters, got {len(phrase)}")
    if len(phrase) < MIN_QUERY:
        raise BadSearch(f"search: at least {MIN_QUERY} characters (blanks at the ends do not count), "
                        f"got {len(phrase)}")
    return phrase


@attrs.frozen
class Snippet:
    """Where a recording shows the searched text: ``text`` (up to :data:`SNIPPET_CHARS`
    characters around the first match, plain text) and the ``[start, end)`` character ranges of the
    matches in it."""

    text: str
    highlights: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"snippet": self.text, "highlights": [list(pair) for pair in self.highlights]}


class RecordingIndex(abc.ABC):
    """The text of session recordings, by session ID, searchable as phrases.

    Every method is a coroutine; slow work runs off the event loop. ``phrase`` is always what
    :func:`search_phrase` returned.
    """

    @abc.abstractmethod
    async def put(self, sid: str, text: str, *, truncated: bool = False) -> None:
        """Index ``text`` as what recording ``sid`` shows (replacing what was indexed for it);
        ``truncated``: the text is the first part only (the extractor's cap)."""

    @abc.abstractmethod
    async def delete(self, sid: str) -> None:
        """Forget ``sid`` (nothing when it is not indexed)."""

    @abc.abstractmethod
    async def indexed(self, sid: str) -> bool:
        """Whether ``sid`` is indexed."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many recordings are indexed."""

    @abc.abstractmethod
    async def search(self, phrase: str, limit: int) -> list[str]:
        """The session IDs whose text contains ``phrase`` (case-insensitive), the most recently
        indexed first, at most ``limit``."""

    @abc.abstractmethod
    async def snippets(self, phrase: str, sids: Sequence[str]) -> dict[str, Snippet]:
        """A :class:`Snippet` of each of ``sids`` whose text contains ``phrase``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the index holds (the backend that made it calls this when it closes)."""
