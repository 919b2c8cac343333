"""A test plugin: ``teleport.storage.type: metered-sqlite`` is the SQLite backend inside
:class:`~teleport_core.state.metered.MeteredBackend`, so the backend conformance suite runs
through the metrics wrapper (tests/test_metrics.py). Loaded through ``TELEPORT_PLUGINS``."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from teleport_core import hookimpl
from teleport_core.metrics import metrics_for
from teleport_core.specs import BackendSpec
from teleport_core.state.backends import sqlite
from teleport_core.state.metered import MeteredBackend

REGISTRY = CollectorRegistry()


async def open_metered(options: sqlite.SqliteOptions | None, data_dir: Path) -> MeteredBackend:
    return MeteredBackend(await sqlite.open_backend(options, data_dir), metrics_for(REGISTRY))


@hookimpl
def teleport_storage_backends() -> list[BackendSpec]:
    return [BackendSpec(name="metered-sqlite", factory="tests.plugins.metered_sqlite:open_metered",
                        parse_options="teleport_core.state.backends.sqlite:parse_options",
                        description="SQLite through the metrics wrapper (a test plugin)")]
