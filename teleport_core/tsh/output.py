"""``--format=text|json|yaml`` for every tsh command that prints a table or a record.

``text`` is the table people read; ``json`` and ``yaml`` are the same data for scripts (YAML
through PyYAML's safe dumper, keys in the order the command built them)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

FORMATS = ("text", "json", "yaml")


def add_format(parser: argparse.ArgumentParser, formats: Sequence[str] = FORMATS) -> None:
    """``--format`` with ``formats`` (a value outside them is argparse's clear error)."""
    parser.add_argument("--format", choices=tuple(formats), default=formats[0],
                        help=f"output format: {', '.join(formats)} (default {formats[0]})")


def dump(data: Any, fmt: str) -> str:
    """``data`` as a JSON or YAML document (ending in a newline)."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
    return json.dumps(data, indent=2) + "\n"


def emit(data: Any, fmt: str) -> None:
    """Print ``data`` as ``fmt`` (json or yaml) to stdout."""
    sys.stdout.write(dump(data, fmt))
    sys.stdout.flush()


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, truncate: int | None = None) -> list[str]:
    """Teleport's plain table: a header, a dashed rule, left-aligned columns two spaces apart.
    ``truncate`` (a column index) cuts that column's cells so each line fits the terminal, when
    stdout is one (``tsh ls`` without ``-v``, as Teleport's)."""
    cells = [list(r) for r in rows]
    widths = [max([len(head[i]), *(len(r[i]) for r in cells)]) for i in range(len(head))]
    if truncate is not None and sys.stdout.isatty():
        room = shutil.get_terminal_size().columns - sum(w + 2 for i, w in enumerate(widths) if i != truncate)
        room = max(room, len(head[truncate]), 10)
        if widths[truncate] > room:
            widths[truncate] = room
            for r in cells:
                if len(r[truncate]) > room:
                    r[truncate] = r[truncate][: room - 3] + "..."
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
    return lines
