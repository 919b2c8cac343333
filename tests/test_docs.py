"""The plugin guide shows the example plugin's files exactly as they are."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

GUIDE = ROOT / "docs" / "writing-plugins.md"
BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```\n", re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(GUIDE.read_text())


def test_guide_quotes_example_files():
    assert len(blocks()) >= 4


@pytest.mark.parametrize(("path", "text"), blocks(), ids=[p for p, _ in blocks()])
def test_guide_block_matches_file(path, text):
    assert (ROOT / path).read_text() == text + "\n"
