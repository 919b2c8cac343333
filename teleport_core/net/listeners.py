"""Where the enabled services will listen, and a check that every address can be bound
before any service starts.

``teleport start`` runs :func:`check_can_listen` right after locking ``data_dir``: a node
whose port is taken fails there, before it joins, so a single-use join token is not spent on a
process that cannot serve. Each service declares its listeners with ``ServiceSpec.listeners``
(``listeners(config, settings) -> {config key: NetAddr}``); without one, every ``NetAddr``
attribute of its settings whose name ends in ``listen_addr`` counts. A port of 0 (any free
port) is not checked. Sockets a reload hands down (:mod:`teleport_core.net.inherit`) are
skipped: the old process holds them on purpose.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Iterable, Mapping
from typing import Any, cast

import attrs

from teleport_core.config.model import TeleportConfig
from teleport_core.config.values import NetAddr
from teleport_core.errors import PluginError, TeleportError
from teleport_core.plugins import PluginInfo, blame
from teleport_core.refs import resolve
from teleport_core.specs import ServiceSpec


class ListenError(TeleportError):
    """An address an enabled service needs cannot be bound; nothing was started."""


@attrs.frozen
class PlannedListener:
    """One address a service will listen on: ``key`` is the config key that sets it."""

    key: str
    addr: NetAddr


def default_listeners(section: str, settings: object) -> dict[str, NetAddr]:
    """Every ``NetAddr`` attribute of an attrs ``settings`` whose name ends in ``listen_addr``."""
    if not attrs.has(type(settings)):
        return {}
    found = {}
    for field in attrs.fields(cast(Any, type(settings))):
        value = getattr(settings, field.name, None)
        if field.name.endswith("listen_addr") and isinstance(value, NetAddr):
            found[f"{section}.{field.name}"] = value
    return found


def planned_listeners(config: TeleportConfig, order: Iterable[tuple[str, PluginInfo, ServiceSpec]]) -> list[
        PlannedListener]:
    """The addresses of ``teleport.diag_addr`` and of every service in ``order`` (from ``start_order``)."""
    planned = [PlannedListener("teleport.diag_addr", config.diag_addr)] if config.diag_addr is not None else []
    for name, info, spec in order:
        settings = config.settings(name)
        if spec.listeners is None:
            found: Mapping[str, NetAddr] = default_listeners(name, settings)
        else:
            with blame(info, f"listing the listen addresses of {name} (ServiceSpec.listeners)"):
                found = resolve(spec.listeners)(config, settings)
            if not isinstance(found, Mapping) or not all(isinstance(a, NetAddr) for a in found.values()):
                raise PluginError(f"{info.label}: ServiceSpec.listeners of {name} must return a mapping of "
                                  f"config keys to NetAddr, got {type(found).__name__}")
        planned.extend(PlannedListener(key, addr) for key, addr in found.items())
    return planned


def _why(exc: OSError, addr: NetAddr) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"address already in use (is another teleport running? `ss -ltnp 'sport = :{addr.port}'` "
                "shows what holds it)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{addr.host} is not an address of this host (check --listen-ip and the listen_addr keys)"
    if exc.errno == errno.EACCES:
        return f"permission denied (port {addr.port} is below 1024: run as root or grant CAP_NET_BIND_SERVICE)"
    return exc.strerror or str(exc)


def check_can_listen(planned: Iterable[PlannedListener], inherited: Collection[str] = ()) -> None:
    """Bind (and close) every planned address; :class:`ListenError` naming the first that fails.

    ``inherited`` holds the addresses (``str(NetAddr)``) of sockets handed down by a reload.
    """
    for item in planned:
        addr = item.addr
        if addr.port == 0 or str(addr) in inherited:
            continue
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the service binds it
                sock.bind((addr.host, addr.port))
                sock.listen(1)
        except socket.gaierror as exc:
            raise ListenError(f"cannot listen on {addr} ({item.key}): {exc.strerror or exc}; "
                              "nothing was started and no join token was used") from None
        except OSError as exc:
            raise ListenError(f"cannot listen on {addr} ({item.key}): {_why(exc, addr)}; "
                              "nothing was started and no join token was used") from None
