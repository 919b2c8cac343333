"""Hook implementations of teleport-storage-s3 (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light (the
factory is a lazy reference; boto3 is imported only when an ``s3://`` storage is opened).
"""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import SessionStorageSpec


@hookimpl
def teleport_session_storages() -> list[SessionStorageSpec]:
    """Announce the ``s3`` session-recording storage."""
    return [
        SessionStorageSpec(
            scheme="s3",
            factory="teleport_storage_s3.storage:open_storage",
            check_uri="teleport_storage_s3.uri:parse_uri",
            description="recordings in S3 or an S3-compatible store: resumable multipart uploads, SSE requested",
        )
    ]
