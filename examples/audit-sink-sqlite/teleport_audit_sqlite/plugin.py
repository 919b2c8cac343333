"""Hook implementations, imported by every teleport command: keep imports light."""

from teleport_core import hookimpl
from teleport_core.specs import AuditSinkSpec


@hookimpl
def teleport_audit_sinks() -> list[AuditSinkSpec]:
    return [
        AuditSinkSpec(
            scheme="sqlite",
            factory="teleport_audit_sqlite.sink:open_sink",  # imported only when the sink is opened
            description="audit events in an SQLite database file",
        )
    ]
