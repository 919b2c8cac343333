"""Hook implementations of teleport-node (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teleport_core import hookimpl
from teleport_core.specs import ServiceSpec

if TYPE_CHECKING:
    from teleport_core.config.reader import SectionReader

SECTION = "ssh_service"


@hookimpl
def teleport_services() -> list[ServiceSpec]:
    from teleport_node.settings import SAMPLE

    return [
        ServiceSpec(
            section=SECTION,
            role="node",
            factory="teleport_node.service:NodeService",
            after=("auth_service",),
            description="node service: SSH server with certificate auth, RBAC and session recording",
            sample=SAMPLE,
            listeners="teleport_node.settings:listeners",
        )
    ]


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    if section != SECTION:
        return None
    from teleport_node.settings import parse_settings

    return parse_settings(reader)
