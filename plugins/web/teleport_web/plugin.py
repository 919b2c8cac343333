"""Hook implementation of teleport-web (registered under the ``teleport`` entry-point group).

Imported whenever the plugin manager is built: keep its imports light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from teleport_core import hookimpl

if TYPE_CHECKING:
    from teleport_core.webui import WebProxy


@hookimpl
def teleport_web_routes(proxy: WebProxy) -> list[Any]:
    """Every page of :mod:`teleport_web.pages`, the static files and the ``/`` redirect."""
    from teleport_web.framework import Web

    return Web(proxy).routes()
