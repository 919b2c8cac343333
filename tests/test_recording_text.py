"""What a recording shows as text (teleport_core.recording.text) and the SQLite recordings index
(teleport_core.state.backends.sqlite_index) against its conformance suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from teleport_core.recording.text import MAX_LINE, TextExtractor, cast_text
from teleport_core.state.recording_index import MAX_QUERY, BadSearch, search_phrase
from teleport_core.testing.recording_index_suite import RecordingIndexConformance


class TestSqliteRecordingIndex(RecordingIndexConformance):
    @pytest.fixture
    def teleport_backend_config(self) -> dict[str, Any]:
        return {"type": "sqlite"}


def shown(*pieces: str, **options: int) -> str:
    extractor = TextExtractor(**options)
    for piece in pieces:
        extractor.feed(piece)
    return extractor.text()


def test_escape_sequences_are_dropped() -> None:
    assert shown("\x1b[1;32muser@host\x1b[0m:~$ ls\r\n") == "user@host:~$ ls"
    assert shown("\x1b]0;window title\x07prompt$ \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\r\n") == "prompt$ link"
    assert shown("\x1b[?2004hbracketed\x1b[?2004l\x1b(B\x1b=ok") == "bracketedok"
    assert shown("\x1bP1$r0m\x1b\\dcs gone") == "dcs gone"
    assert shown("c1\x9b31mred\x9d0;t\x07 done") == "c1red done"


def test_sequences_split_across_events() -> None:
    assert shown("before \x1b", "[3", "1mred\x1b]0;ti", "tle\x07 after") == "before red after"
    assert shown("a\x1b]0;x\x1b", "\\b") == "ab"


def test_carriage_returns_backspaces_and_erases() -> None:
    assert shown("progress 10%\rprogress 100%\r\n") == "progress 100%"
    assert shown("abc\b\bX\r\n") == "aXc"
    assert shown("typo\b \bed\r\n") == "typed"  # a shell erasing a character
    assert shown("old text\r\x1b[Knew\r\n") == "new"
    assert shown("abc\x1b[2D\x1b[1PZ") == "aZ"
    assert shown("a\x1b[3Cb\tc") == "a   b   c"


def test_vertical_moves_end_lines() -> None:
    assert shown("\x1b[2J\x1b[Htop line\x1b[2;1Hsecond\x1b[3;5Hthird") == "top line\nsecond\nthird"
    assert shown("one\n\n\n\ntwo") == "one\n\ntwo"


def test_caps_bound_the_text() -> None:
    extractor = TextExtractor(max_text=100)
    for _ in range(1000):
        extractor.feed("0123456789" * 3 + "\r\n")
        if extractor.full:
            break
    text = extractor.text()
    assert extractor.truncated and len(text) <= 100
    long_line = shown("x" * (MAX_LINE * 2 + 5))
    assert [len(line) for line in long_line.split("\n")] == [MAX_LINE, MAX_LINE, 5]


def write_cast(path: Path, events: list[Any], header: Any = None) -> Path:
    lines = [json.dumps(header or {"version": 2, "width": 80, "height": 24})]
    lines += [json.dumps(event) if not isinstance(event, str) else event for event in events]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cast_text_reads_output_events_only(tmp_path: Path) -> None:
    path = write_cast(tmp_path / "s.cast", [[0.1, "o", "$ echo hi\r\n"], [0.2, "i", "secret input"],
                                            [0.3, "r", "100x30"], "not json", [0.4, "o", 5], [0.5],
                                            [0.6, "o", "hi\r\n"]])
    assert cast_text(path) == ("$ echo hi\nhi", False)
    text, truncated = cast_text(path, max_text=5)
    assert truncated and len(text) <= 5


def test_cast_text_refuses_what_is_not_asciicast(tmp_path: Path) -> None:
    (tmp_path / "x.cast").write_text("hello\n")
    with pytest.raises(ValueError, match="not an asciicast v2 recording"):
        cast_text(tmp_path / "x.cast")
    write_cast(tmp_path / "v1.cast", [], header={"version": 1})
    with pytest.raises(ValueError, match='"version": 2'):
        cast_text(tmp_path / "v1.cast")


def test_search_text_checks() -> None:
    assert search_phrase("  needle  ") == "needle"
    assert search_phrase('a "b" OR c*') == 'a "b" OR c*'
    for bad, message in (("x" * (MAX_QUERY + 1), "at most"), ("ab", "at least"), ("   ", "at least"),
                         ("nee\x00dle", "NUL")):
        with pytest.raises(BadSearch, match=message):
            search_phrase(bad)


def test_oversized_event_lines_are_skipped(tmp_path: Path) -> None:
    """An event line over the bound is skipped whole (memory stays bounded); the next one is read."""
    import io

    from teleport_core.recording.text import output_events

    lines = [json.dumps({"version": 2}), json.dumps([0.1, "o", "x" * 5000]), json.dumps([0.2, "o", "after"])]
    source = io.BytesIO(("\n".join(lines) + "\n").encode())
    assert list(output_events(source, max_line=1024)) == ["after"]


def test_any_output_gives_plain_bounded_text() -> None:
    """Whatever a session prints (hostile escape sequences included), the text has no control
    character but newlines, no line longer than the line cap and no more than the text cap."""
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    alphabet = st.sampled_from(["\x1b", "[", "]", "P", "\\", "\x07", "\r", "\n", "\b", "\t", "\x9b", "\x9d", "1",
                                ";", "?", "m", "K", "H", "J", "C", "D", "a", "é", "\x00", "\x7f", " "])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet=alphabet, max_size=60), max_size=8))
    def check(pieces: list[str]) -> None:
        extractor = TextExtractor(max_text=200, max_line=40)
        for piece in pieces:
            extractor.feed(piece)
        text = extractor.text()
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text), repr(text)
        assert len(text) <= 200 and all(len(line) <= 40 for line in text.split("\n"))

    check()
