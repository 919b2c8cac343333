"""Open the backend, session storage and audit sinks that ``teleport.storage`` names.

These are the only way the kernel (and the conformance suites) open storage, so a backend
that passes its suite behaves the same under ``teleport start``.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from teleport_core.config.load import backend_options
from teleport_core.config.model import StorageConfig, TeleportConfig
from teleport_core.config.reader import SectionReader
from teleport_core.errors import ConfigError, TeleportError, UnknownNameError
from teleport_core.metrics import metrics_for
from teleport_core.plugins import PluginInfo, Plugins, blame
from teleport_core.refs import resolve
from teleport_core.service import Resources
from teleport_core.specs import AuditSinkSpec, SessionStorageSpec
from teleport_core.state.audit import AuditLog, AuditSink
from teleport_core.state.backend import Backend
from teleport_core.state.metered import MeteredBackend
from teleport_core.state.sessions import SessionStorage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector


async def _call(info: PluginInfo, what: str, factory: Any, *args: Any) -> Any:
    """Call a plugin's factory; a failure inside is reported as that plugin's (:func:`blame`)."""
    with blame(info, what):
        result = resolve(factory)(*args)
        return await result if inspect.isawaitable(result) else result


def scheme_of(uri: str) -> str:
    return urlsplit(uri).scheme


def storage_config(plugins: Plugins, raw: dict[str, Any], path: str = "teleport.storage") -> StorageConfig:
    """Parse a ``teleport.storage`` mapping on its own (used by tests and tools)."""
    reader = SectionReader(raw, path)
    kind, options = backend_options(reader, plugins)
    reader.strings("audit_events_uri")
    reader.raw("audit_sessions_uri")
    reader.finish()
    return StorageConfig(kind, options)


def _session_storage(plugins: Plugins, uri: str) -> tuple[PluginInfo, SessionStorageSpec]:
    try:
        return plugins.entry("session storage", scheme_of(uri), plugins.session_storages())
    except UnknownNameError as exc:
        raise ConfigError("teleport.storage.audit_sessions_uri", str(exc)) from None


def _audit_sink(plugins: Plugins, uri: str, key: str) -> tuple[PluginInfo, AuditSinkSpec]:
    try:
        return plugins.entry("audit sink", scheme_of(uri), plugins.audit_sinks())
    except UnknownNameError as exc:
        raise ConfigError(key, str(exc)) from None


def check_storage_uris(plugins: Plugins, storage: StorageConfig) -> None:
    """Validate ``audit_events_uri`` and ``audit_sessions_uri`` (defaults included) through the
    plugins that serve their schemes, opening nothing (``teleport configure --test``)."""
    for index, uri in enumerate(storage.audit_events_uri):
        key = f"teleport.storage.audit_events_uri[{index}]"
        info, spec = _audit_sink(plugins, uri, key)
        if spec.check_uri is not None:
            with blame(info, f"checking {uri} ({key})"):
                resolve(spec.check_uri)(uri)
    uri = storage.audit_sessions_uri
    info, session_spec = _session_storage(plugins, uri)
    if session_spec.check_uri is not None:
        with blame(info, f"checking {uri} (teleport.storage.audit_sessions_uri)"):
            resolve(session_spec.check_uri)(uri)


async def open_backend(plugins: Plugins, storage: StorageConfig, data_dir: Path) -> Backend:
    """The backend of ``storage.type``; an unreachable server raises with its address."""
    info, spec = plugins.entry("backend", storage.type, plugins.backends())
    backend = await _call(info, f'opening backend "{storage.type}" (teleport.storage.type)', spec.factory,
                          storage.options, data_dir)
    if not isinstance(backend, Backend):
        raise TeleportError(f"backend {storage.type!r} factory returned {type(backend).__name__}, not a Backend")
    return backend


async def open_session_storage(plugins: Plugins, uri: str, data_dir: Path) -> SessionStorage:
    info, spec = _session_storage(plugins, uri)
    storage = await _call(info, f"opening {uri} (teleport.storage.audit_sessions_uri)", spec.factory, uri, data_dir)
    if not isinstance(storage, SessionStorage):
        raise TeleportError(f"session storage {uri!r} factory returned {type(storage).__name__}")
    return storage


async def open_audit_sink(plugins: Plugins, uri: str, data_dir: Path, key: str = "") -> AuditSink:
    key = key or "teleport.storage.audit_events_uri"
    info, spec = _audit_sink(plugins, uri, key)
    sink = await _call(info, f"opening {uri} ({key})", spec.factory, uri, data_dir)
    if not isinstance(sink, AuditSink):
        raise TeleportError(f"audit sink {uri!r} factory returned {type(sink).__name__}")
    return sink


async def open_audit_log(plugins: Plugins, uris: tuple[str, ...], data_dir: Path) -> AuditLog:
    sinks = []
    try:
        for index, uri in enumerate(uris):
            sinks.append(await open_audit_sink(plugins, uri, data_dir, f"teleport.storage.audit_events_uri[{index}]"))
    except BaseException:
        for sink in sinks:
            await sink.close()
        raise
    return AuditLog(sinks, uris)


class ProcessResources(Resources):
    """Opens each resource once, on first use, and closes them all at shutdown. With
    ``metrics`` (the process's registry) the backend's requests are counted and timed there
    (:class:`~teleport_core.state.metered.MeteredBackend`, whatever the backend)."""

    def __init__(self, config: TeleportConfig, plugins: Plugins, metrics: CollectorRegistry | None = None) -> None:
        self.config = config
        self.plugins = plugins
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._backend: Backend | None = None
        self._sessions: SessionStorage | None = None
        self._audit: AuditLog | None = None
        self._collectors: list[Collector] = []
        self.shared: dict[str, Any] = {}

    async def backend(self) -> Backend:
        async with self._lock:
            if self._backend is None:
                backend = await open_backend(self.plugins, self.config.storage, self.config.data_dir)
                if self.metrics is not None:
                    self._collectors = list(backend.collectors())  # the backend's own figures
                    for collector in self._collectors:
                        self.metrics.register(collector)
                    backend = MeteredBackend(backend, metrics_for(self.metrics))
                self._backend = backend
            return self._backend

    async def session_storage(self) -> SessionStorage:
        async with self._lock:
            if self._sessions is None:
                uri = self.config.storage.audit_sessions_uri
                self._sessions = await open_session_storage(self.plugins, uri, self.config.data_dir)
            return self._sessions

    async def audit_log(self) -> AuditLog:
        async with self._lock:
            if self._audit is None:
                uris = self.config.storage.audit_events_uri
                self._audit = await open_audit_log(self.plugins, uris, self.config.data_dir)
            return self._audit

    async def close(self) -> None:
        for resource in (self._audit, self._sessions, self._backend):
            if resource is not None:
                await resource.close()
        self._audit = self._sessions = self._backend = None
        if self.metrics is not None:
            for collector in self._collectors:
                self.metrics.unregister(collector)
        self._collectors = []
