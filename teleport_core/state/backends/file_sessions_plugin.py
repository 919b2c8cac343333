"""Registers session-recording storage on local disk (``file://`` URIs)."""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import SessionStorageSpec


@hookimpl
def teleport_session_storages() -> list[SessionStorageSpec]:
    return [
        SessionStorageSpec(
            scheme="file",
            factory="teleport_core.state.backends.file_sessions:open_storage",
            check_uri="teleport_core.state.backends.file_sessions:parse_uri",
            description="recordings as files on local disk, written atomically (temp, fsync, rename)",
        )
    ]
