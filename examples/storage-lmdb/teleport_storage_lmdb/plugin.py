"""Hook implementations, imported by every teleport command: keep imports light (no ``lmdb`` here)."""

from teleport_core import hookimpl
from teleport_core.specs import BackendSpec


@hookimpl
def teleport_storage_backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name="lmdb",
            factory="teleport_storage_lmdb.backend:open_backend",  # imported only when the backend is opened
            parse_options="teleport_storage_lmdb.options:parse_options",  # imported at config load
            description="embedded LMDB in data_dir (durable on return); single auth server",
        )
    ]
