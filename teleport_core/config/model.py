"""The parsed ``teleport.yaml`` (attrs classes; immutable once loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from teleport_core.config.limits import ConnectionLimits
from teleport_core.config.values import NetAddr
from teleport_core.pki.secret import Secret

# ``log.format.extra_fields`` names Teleport accepts; ``component`` is always printed.
LOG_FIELDS = ("timestamp", "level", "component", "caller")


@attrs.frozen
class LogConfig:
    """``teleport.log``: where logs go (``stderr``, ``stdout`` or a file path), the lowest
    severity logged, and ``text`` or ``json`` lines."""

    output: str = "stderr"
    severity: str = "INFO"
    format: str = "text"
    extra_fields: tuple[str, ...] = ()


@attrs.frozen
class StorageConfig:
    """``teleport.storage``: the cluster-state backend and where audit data goes.

    ``options`` is what the backend's ``parse_options`` returned for the other keys.
    """

    type: str = "sqlite"
    options: Any = None
    audit_events_uri: tuple[str, ...] = ()
    audit_sessions_uri: str = ""


@attrs.frozen
class ServiceSection:
    """One service section (``auth_service`` ...). ``configured`` is False when the file
    omits it (Teleport then enables the service by default); ``provider`` is the
    distribution that provides it, None when none is installed."""

    name: str
    role: str
    enabled: bool
    configured: bool
    settings: Any = None
    provider: str | None = None


@attrs.frozen
class JoinParams:
    """``teleport.join_params``: ``method`` is ``token``; ``token_name`` the token (or a file holding it)."""

    method: str = "token"
    token_name: Secret | None = None


@attrs.frozen
class TeleportConfig:
    version: str
    nodename: str
    data_dir: Path
    auth_token: Secret | None = None
    join_params: JoinParams = JoinParams()
    ca_pins: tuple[str, ...] = ()
    auth_servers: tuple[NetAddr, ...] = ()
    proxy_server: NetAddr | None = None
    diag_addr: NetAddr | None = None
    advertise_ip: str = ""
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()
    services: Mapping[str, ServiceSection] = attrs.field(factory=dict)
    # teleport.connection_limits: every service's unless its own section sets connection_limits
    connection_limits: ConnectionLimits = attrs.field(factory=ConnectionLimits)
    insecure: bool = False
    source: Path | None = None
    # the ``plugins:`` section: plugin name -> what its teleport_config_section returned
    plugin_settings: Mapping[str, Any] = attrs.field(factory=dict)

    def enabled_services(self) -> list[ServiceSection]:
        return [s for s in self.services.values() if s.enabled]

    def settings(self, section: str) -> Any:
        """The parsed settings of ``section`` (None when it was not parsed)."""
        found = self.services.get(section)
        return found.settings if found else None

    def plugin(self, name: str) -> Any:
        """The parsed ``plugins.<name>`` settings of a hook-only plugin (None when it has none)."""
        return self.plugin_settings.get(name)

    @property
    def join_token(self) -> Secret | None:
        """The join token from ``auth_token`` or ``join_params.token_name``."""
        return self.auth_token or self.join_params.token_name
