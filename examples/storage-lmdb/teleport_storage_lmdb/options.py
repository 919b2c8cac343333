"""The ``lmdb`` keys of ``teleport.storage``, read at config load (no ``lmdb`` import here)."""

from __future__ import annotations

import pathlib

import attrs

from teleport_core.config.reader import SectionReader

DEFAULT_DIR = "lmdb"
DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB: LMDB's file is sparse, this is the most it may grow to
MIN_MAP_SIZE = 1 << 20


@attrs.frozen
class LmdbOptions:
    """``path``: the environment's directory (default ``<data_dir>/lmdb``; a relative path is taken
    relative to ``data_dir``). ``map_size``: the largest the database may grow, in bytes."""

    path: pathlib.Path | None = None
    map_size: int = DEFAULT_MAP_SIZE


def parse_options(reader: SectionReader) -> LmdbOptions:
    """Read ``teleport.storage.path`` and ``teleport.storage.map_size``."""
    return LmdbOptions(
        path=reader.path_value("path", None),
        map_size=reader.integer("map_size", DEFAULT_MAP_SIZE, minimum=MIN_MAP_SIZE),
    )
