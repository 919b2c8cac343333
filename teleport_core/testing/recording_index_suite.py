"""Conformance suite for the recordings index a cluster-state backend keeps.

A backend that keeps one (:meth:`~teleport_core.state.backend.Backend.recording_index` returns a
:class:`~teleport_core.state.recording_index.RecordingIndex`) subclasses
:class:`RecordingIndexConformance` in a class named ``Test...`` and defines the fixture the
backend suite takes, ``teleport_backend_config`` (the raw ``teleport.storage`` mapping of a fresh,
empty backend)::

    class TestSqliteIndex(RecordingIndexConformance):
        @pytest.fixture
        def teleport_backend_config(self, tmp_path):
            return {"type": "sqlite"}

A backend that keeps none runs :class:`NoRecordingIndexConformance` instead: it checks that the
backend says so with :class:`~teleport_core.state.recording_index.SearchUnsupported` and a
reason. The backend is opened exactly as ``teleport start`` opens it (installed plugins,
``data_dir`` = ``tmp_path``). Tests use plain ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.recording_index import RecordingIndex, SearchUnsupported, search_phrase


def _run(config: dict[str, Any], data_dir: Path, body: Callable[[RecordingIndex], Awaitable[None]]) -> None:
    async def main() -> None:
        plugins = make_plugins()
        backend = await open_backend(plugins, storage_config(plugins, dict(config)), data_dir)
        try:
            await body(backend.recording_index())
        finally:
            await backend.close()

    asyncio.run(main())


class RecordingIndexConformance:
    """Behaviour every recordings index must have. Define ``teleport_backend_config``."""

    def run(self, config: dict[str, Any], tmp_path: Path, body: Callable[[RecordingIndex], Awaitable[None]]) -> None:
        _run(config, tmp_path, body)

    def test_finds_the_recordings_that_show_a_phrase(self, teleport_backend_config: dict[str, Any],
                                                     tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            assert await index.count() == 0
            await index.put("s1", "alice@host:~$ echo needle-42\nneedle-42\n")
            await index.put("s2", "alice@host:~$ ls /etc/passwd\n/etc/passwd\n")
            assert await index.search(search_phrase("needle-42"), 10) == ["s1"]
            assert await index.search(search_phrase("NEEDLE"), 10) == ["s1"], "case-insensitive"
            assert await index.search(search_phrase("passw"), 10) == ["s2"], "anywhere in a word"
            assert await index.search(search_phrase("needle-43"), 10) == []
            assert await index.indexed("s1") and not await index.indexed("s3")
            assert await index.count() == 2

        self.run(teleport_backend_config, tmp_path, body)

    def test_newest_first_and_limit(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            for number in range(5):
                await index.put(f"s{number}", f"common text {number}")
            assert await index.search("common text", 3) == ["s4", "s3", "s2"]

        self.run(teleport_backend_config, tmp_path, body)

    def test_put_replaces_and_delete_forgets(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            await index.put("s1", "first words")
            await index.put("s1", "second words", truncated=True)
            assert await index.search("first", 10) == []
            assert await index.search("second", 10) == ["s1"]
            assert await index.count() == 1
            await index.delete("s1")
            await index.delete("never-indexed")
            assert await index.search("second", 10) == []
            assert not await index.indexed("s1")

        self.run(teleport_backend_config, tmp_path, body)

    def test_query_syntax_is_plain_text(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        """Operators, quotes, wildcards and column filters in the search text are text, never syntax."""
        async def body(index: RecordingIndex) -> None:
            await index.put("literal", 'grep -E "a|b" x AND y NEAR(z) body:*')
            await index.put("words", "x\ny\nz\nalpha beta")
            for text in ('"a|b"', "x AND y", "NEAR(z)", "body:*", '-E "a'):
                assert await index.search(search_phrase(text), 10) == ["literal"], text
            for text in ("x OR y", "alpha NOT beta", "alp*", '"alpha" "beta"', "^alpha", "body:alpha", "(((", '"""'):
                assert await index.search(search_phrase(text), 10) == [], text

        self.run(teleport_backend_config, tmp_path, body)

    def test_snippets_show_where_the_text_is(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            await index.put("s1", "lorem ipsum " * 40 + "the Needle-7 is here" + " dolor sit" * 40)
            await index.put("s2", "no match")
            found = await index.snippets("needle-7", ["s1", "s2", "s3"])
            assert set(found) == {"s1"}
            snippet = found["s1"]
            assert "Needle-7" in snippet.text and len(snippet.text) <= 200
            assert [snippet.text[a:b].lower() for a, b in snippet.highlights] == ["needle-7"]

        self.run(teleport_backend_config, tmp_path, body)

    def test_index_outlives_the_process(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def write(index: RecordingIndex) -> None:
            await index.put("kept", "persisted words")

        async def read(index: RecordingIndex) -> None:
            assert await index.search("persisted", 10) == ["kept"]

        self.run(teleport_backend_config, tmp_path, write)
        self.run(teleport_backend_config, tmp_path, read)

    def test_unicode_and_controls(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            await index.put("u", "Grüße aus Köln \U0001f600 tab\there \ue000marker\ue001")
            assert await index.search(search_phrase("GRÜSSE"), 10) in ([], ["u"])  # folding beyond case varies
            assert await index.search(search_phrase("köln"), 10) == ["u"]
            assert await index.search(search_phrase("\U0001f600 tab"), 10) == ["u"]
            assert await index.search(search_phrase("marker"), 10) == ["u"]

        self.run(teleport_backend_config, tmp_path, body)


class NoRecordingIndexConformance:
    """A backend that keeps no recordings index says so, with a reason. Define
    ``teleport_backend_config``; ``reason_contains``: a word the reason must name."""

    reason_contains = ""

    def test_says_it_cannot_search(self, teleport_backend_config: dict[str, Any], tmp_path: Path) -> None:
        async def body(index: RecordingIndex) -> None:
            raise AssertionError("recording_index() returned an index")

        with pytest.raises(SearchUnsupported) as caught:
            _run(teleport_backend_config, tmp_path, body)
        message = str(caught.value)
        assert message.startswith("recordings cannot be searched"), message
        assert self.reason_contains.lower() in message.lower(), message
