"""Registers the embedded SQLite cluster-state backend (``type: sqlite``, alias ``dir``)."""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import BackendSpec


@hookimpl
def teleport_storage_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="sqlite",
            aliases=("dir",),
            factory="teleport_core.state.backends.sqlite:open_backend",
            parse_options="teleport_core.state.backends.sqlite:parse_options",
            description="embedded SQLite in data_dir (WAL, durable on return); single auth server",
        )
    ]
