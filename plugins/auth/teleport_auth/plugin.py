"""Hook implementations of teleport-auth (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built (every ``tsh``/``tctl`` run):
it imports nothing heavy; the service, API and commands load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teleport_core import hookimpl
from teleport_core.specs import CliCommand, ServiceSpec

if TYPE_CHECKING:
    from teleport_core.config.reader import SectionReader

SECTION = "auth_service"


@hookimpl
def teleport_services() -> list[ServiceSpec]:
    from teleport_auth.settings import SAMPLE

    return [
        ServiceSpec(
            section=SECTION,
            role="auth",
            factory="teleport_auth.service:AuthService",
            description="auth service: certificate authorities, users, roles, join tokens",
            sample=SAMPLE,
        )
    ]


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    if section != SECTION:
        return None
    import socket

    from teleport_auth.settings import parse_settings

    return parse_settings(reader, socket.gethostname())


@hookimpl
def teleport_cli_commands(tool: str) -> list[CliCommand] | None:
    if tool != "tctl":
        return None
    return [
        CliCommand("status", "cluster status: CA pin and rotation state", "teleport_auth.tctl:status"),
        CliCommand("users", "manage users: add, ls, rm, update, reset", "teleport_auth.tctl_users:users"),
        CliCommand("nodes", "add (join token and command) and list nodes", "teleport_auth.tctl_nodes:nodes"),
        CliCommand("tokens", "manage join tokens: ls, add, rm", "teleport_auth.tctl_nodes:tokens"),
        CliCommand("create", "create or update resources from YAML (tctl create -f FILE)",
                   "teleport_auth.tctl_resources:create"),
        CliCommand("get", "print resources as YAML, JSON or text (roles, users, locks, nodes, tokens, CAs, all)",
                   "teleport_auth.tctl_resources:get"),
        CliCommand("edit", "edit a role or user in $EDITOR (applied only if unchanged meanwhile)",
                   "teleport_auth.tctl_edit:edit"),
        CliCommand("rm", "delete a resource (role/NAME, user/NAME, lock/NAME, node/UUID, token/VALUE, "
                         "access_request/ID)",
                   "teleport_auth.tctl_resources:rm"),
        CliCommand("lock", "lock a user, role, login or node: refused everywhere, sessions ended",
                   "teleport_auth.tctl_locks:lock"),
        CliCommand("auth", "CAs: export, sign credentials for a user or an OpenSSH server, rotate",
                   "teleport_auth.tctl_auth:auth"),
        CliCommand("top", "live view of a process's diagnostics (/metrics): tctl top [DIAG_ADDR] [REFRESH]",
                   "teleport_auth.tctl_top:top"),
        CliCommand("requests", "access requests: ls, get, approve, deny, rm",
                   "teleport_auth.tctl_requests:requests"),
        CliCommand("request", "the same as requests (Teleport's alias)", "teleport_auth.tctl_requests:requests"),
        CliCommand("recordings", "list recorded sessions, or (--refused) recordings auth refused; reindex for search",
                   "teleport_auth.tctl_recordings:recordings"),
    ]
