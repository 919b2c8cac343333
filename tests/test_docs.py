"""The docs say what the code does: the plugin guide quotes the example files, the audit-event page lists every code."""

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


def test_every_audit_code_is_documented():
    """docs/audit-events.md has a row for every (event, outcome, code) in the one code table."""
    from teleport_core.audit import CODES

    text = (ROOT / "docs" / "audit-events.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_.]+)` \| ([a-z_]+) \| `(T[0-9A-Z]+)` \|", text, re.MULTILINE))
    assert rows == {(event, outcome, code) for (event, outcome), code in CODES.items()}


def test_every_backend_conformance_test_is_listed():
    """docs/storage-backends.md lists each BackendConformance test once, in the suite's order, and nothing else."""
    from teleport_core.testing.backend_suite import BackendConformance

    text = (ROOT / "docs" / "storage-backends.md").read_text()
    listed = re.findall(r"^- `(test_\w+)`: \S", text, re.MULTILINE)
    suite = [name for name in vars(BackendConformance) if name.startswith("test_")]
    assert listed == suite
