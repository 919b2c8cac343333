"""Hook implementations of teleport-proxy (registered under the ``teleport`` entry-point group).

This module is imported whenever the plugin manager is built: keep its imports light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teleport_core import hookimpl
from teleport_core.specs import ServiceSpec

if TYPE_CHECKING:
    from teleport_core.config.reader import SectionReader

SECTION = "proxy_service"


@hookimpl
def teleport_services() -> list[ServiceSpec]:
    from teleport_proxy.settings import SAMPLE

    return [
        ServiceSpec(
            section=SECTION,
            role="proxy",
            factory="teleport_proxy.service:ProxyService",
            after=("auth_service",),
            description="proxy service: web API and login (HTTPS), SSH proxy to nodes",
            sample=SAMPLE,
        )
    ]


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    if section != SECTION:
        return None
    from teleport_proxy.settings import parse_settings

    return parse_settings(reader)
