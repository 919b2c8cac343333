"""The interface a service plugin implements, and the context the process hands it."""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import structlog
    from prometheus_client import CollectorRegistry

    from teleport_core.config.model import TeleportConfig
    from teleport_core.config.values import NetAddr
    from teleport_core.net.inherit import Listeners
    from teleport_core.plugins import Plugins
    from teleport_core.state.audit import AuditLog
    from teleport_core.state.backend import Backend
    from teleport_core.state.sessions import SessionStorage


class Service(abc.ABC):
    """A long-running service (auth, proxy, node ...) inside ``teleport start``."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open listeners and return once ready to serve; raise to abort start-up.

        Services are started one by one in dependency order; a service that must wait
        (for an unreachable auth server, say) keeps retrying here and logs why.
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close listeners and finish writes; called once, also after a failed ``start``."""

    def diagnostics(self) -> dict[str, Any]:
        """State for the SIGUSR1 dump (connections, sessions, queue depths ...)."""
        return {}

    async def stop_accepting(self) -> None:
        """A graceful reload or ``SIGQUIT``: stop taking new connections (close the listeners this
        service got from ``ctx.listen``, without ``shutdown()``: the new process serves on them),
        keep serving the live ones. The default does nothing (the kernel closes its own copies
        of the listeners)."""
        return None

    async def drain(self) -> None:
        """After :meth:`stop_accepting`: return once the live work (sessions, tunnels, requests
        in flight) has ended by itself; :meth:`stop` follows. May be cancelled (``SIGTERM``
        during a drain). The default returns at once."""
        return None


class Resources(abc.ABC):
    """Process-wide resources opened on first use and shared by every service.

    ``shared`` holds objects a service publishes for the others in the same process, under
    well-known names (the auth service publishes ``"auth"``, a
    :class:`teleport_core.api.join.LocalAuth`, so a node or proxy beside it joins without a token).
    """

    shared: dict[str, Any]

    @abc.abstractmethod
    async def backend(self) -> Backend:
        """The cluster-state backend of ``teleport.storage.type``."""

    @abc.abstractmethod
    async def session_storage(self) -> SessionStorage:
        """The recording storage of ``teleport.storage.audit_sessions_uri``."""

    @abc.abstractmethod
    async def audit_log(self) -> AuditLog:
        """Every sink of ``teleport.storage.audit_events_uri``."""


@attrs.define
class ServiceContext:
    """What a service factory receives.

    ``settings`` is what the plugin's ``teleport_config_section`` returned for its section.
    A service is ready when its ``start()`` returns, unless it called ``set_ready`` during
    start; ``set_ready(False, reason)`` later marks it degraded (``/readyz`` answers 503).
    ``request_stop(reason)`` asks the process to shut down (a fatal error at run time); it is
    safe to call from any thread.
    """

    name: str
    config: TeleportConfig
    settings: Any
    plugins: Plugins
    resources: Resources
    log: structlog.stdlib.BoundLogger
    metrics: CollectorRegistry
    _health: dict[str, tuple[bool, str]] = attrs.field(alias="health")
    _stopper: Callable[[str], None] | None = attrs.field(default=None, alias="stopper")
    _listeners: Listeners | None = attrs.field(default=None, alias="listeners")

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self._health[self.name] = (ready, reason)

    def listen(self, name: str, addr: NetAddr) -> socket.socket:
        """A listening socket for ``name`` (stable across reloads: ``proxy:web``, ``node`` ...) on
        ``addr``: the one the old process of a graceful reload handed over when it has that name
        and address, else a new one (non-blocking). Use it with a timeout or non-blocking, and
        never ``shutdown()`` it (:mod:`teleport_core.net.inherit`)."""
        if self._listeners is None:
            from teleport_core.net.inherit import bind

            return bind(addr, name)
        return self._listeners.listen(name, addr)

    def request_stop(self, reason: str) -> None:
        if self._stopper is None:
            raise RuntimeError("this context belongs to no running process")
        self._stopper(f"{self.name}: {reason}")
