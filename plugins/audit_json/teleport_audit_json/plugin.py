"""Hook implementations of teleport-audit-json (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light.
"""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import AuditSinkSpec, CliCommand


@hookimpl
def teleport_audit_sinks() -> list[AuditSinkSpec]:
    return [
        AuditSinkSpec(
            scheme="file",
            factory="teleport_audit_json.filelog:open_sink",
            check_uri="teleport_audit_json.filelog:parse_uri",
            description="JSON lines on disk, <dir>/<server-id>/YYYY-MM-DD.00:00:00.log, searchable",
        ),
        AuditSinkSpec(
            scheme="stdout",
            factory="teleport_audit_json.stdout:open_sink",
            check_uri="teleport_audit_json.stdout:check_uri",
            description="JSON lines on standard output (not searchable)",
        ),
    ]


@hookimpl
def teleport_cli_commands(tool: str) -> list[CliCommand] | None:
    if tool == "tctl":
        return [CliCommand("audit", "search the audit log (audit events)", "teleport_audit_json.cli:audit")]
    return None
