"""The docs say what the code does: the plugin guide quotes the example files, the audit-event page lists every code."""

from __future__ import annotations

import re
from pathlib import Path

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
    from teleport_core.state.audit import CODES

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


def test_the_test_extra_has_what_the_conformance_suites_import():
    """writing-plugins.md: the suites need ``pip install "teleport-core[test]"``; that extra (with the
    kernel's own dependencies) declares every third-party module ``teleport_core.testing`` imports."""
    import ast
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()
                for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]}
    distribution = {"yaml": "pyyaml", "prometheus_client": "prometheus-client"}
    imported = set()
    import teleport_core.testing

    assert teleport_core.testing.__file__ is not None
    for path in Path(teleport_core.testing.__file__).parent.glob("*.py"):  # as installed
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"teleport_core"}
    assert {"pytest", "attrs"} <= third_party  # what the audit, session and backend suites use
    assert {distribution.get(name, name) for name in third_party} <= declared
