"""The plugin manager: built by :func:`make_plugins`, never at import time.

Plugins are modules registered under the ``teleport`` entry-point group. Only installed and
enabled ones load (``TELEPORT_DISABLE_PLUGINS=a,b`` blocks by entry-point or distribution
name; ``TELEPORT_PLUGINS=mod1,mod2`` adds modules that are not installed as distributions,
for development and tests). A plugin that fails to import, implements an unknown hook or
has a bad hook signature is recorded as broken with its distribution name and version;
:meth:`Plugins.raise_if_broken` turns that into one error line per plugin.

``TELEPORT_TRACE_HOOKS=1`` logs every hook call (component ``hooks``): the hook, the plugins
whose implementations run, the arguments, and each result or exception (as
``DATASETTE_TRACE_PLUGINS`` does). Arguments are shown by ``repr``, which never shows a
:class:`~teleport_core.pki.secret.Secret`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import reprlib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import pluggy

from teleport_core import hookspecs
from teleport_core.discovery import entry_points as find_entry_points
from teleport_core.discovery import normalize
from teleport_core.errors import PluginError, TeleportError, UnknownNameError
from teleport_core.specs import AuditSinkSpec, BackendSpec, CliCommand, ServiceSpec, SessionStorageSpec
from teleport_core.suggest import did_you_mean

ENTRY_POINT_GROUP = "teleport"
PROJECT = "teleport"
DISABLE_ENV = "TELEPORT_DISABLE_PLUGINS"
EXTRA_ENV = "TELEPORT_PLUGINS"
TRACE_ENV = "TELEPORT_TRACE_HOOKS"

# Where well-known names come from, so an error can say what to install.
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("service", "auth_service"): "teleport-auth",
    ("service", "proxy_service"): "teleport-proxy",
    ("service", "ssh_service"): "teleport-node",
    ("backend", "etcd"): "teleport-storage-etcd",
    ("audit sink", "file"): "teleport-audit-json",
    ("audit sink", "stdout"): "teleport-audit-json",
    ("session storage", "s3"): "teleport-storage-s3",
    ("tctl", "users"): "teleport-auth",
    ("tctl", "nodes"): "teleport-auth",
    ("tctl", "tokens"): "teleport-auth",
    ("tctl", "auth"): "teleport-auth",
    ("tctl", "status"): "teleport-auth",
    ("tctl", "create"): "teleport-auth",
    ("tctl", "get"): "teleport-auth",
    ("tctl", "rm"): "teleport-auth",
    ("tctl", "audit"): "teleport-audit-json",
}
# Teleport's --roles names for the standard sections.
STANDARD_ROLES: dict[str, str] = {"auth": "auth_service", "proxy": "proxy_service", "node": "ssh_service"}

S = TypeVar("S")


@attrs.define
class PluginInfo:
    """One plugin as ``teleport plugins`` lists it."""

    name: str
    distribution: str
    version: str
    status: str = "loaded"  # loaded | disabled | broken
    error: str = ""
    hooks: list[str] = attrs.field(factory=list)
    builtin: bool = False
    location: str = ""  # where an installed plugin's metadata was found (its *.dist-info or *.egg-info)

    @property
    def label(self) -> str:
        return f'plugin "{self.distribution}" {self.version} (entry point "{self.name}")'

    @property
    def fix(self) -> str:
        """How to run without this plugin: uninstall or block it (or drop it from ``$TELEPORT_PLUGINS``)."""
        if self.distribution.startswith(f"{EXTRA_ENV}:"):
            return f"remove {self.name} from {EXTRA_ENV}, or set {DISABLE_ENV}={self.name}"
        if self.distribution.startswith("(object)"):
            return ""
        if self.location.endswith(".egg-info"):  # perhaps what `pip install -e .` left in a source folder
            return (f"pip uninstall {self.distribution} (if pip says it is not installed, delete the leftover "
                    f"{self.location}), or set {DISABLE_ENV}={self.name}")
        return f"pip uninstall {self.distribution}, or set {DISABLE_ENV}={self.name}"

    @property
    def problem(self) -> str:
        """The one line that reports this plugin broken, with what to do about it."""
        fix = f" (to go on without it: {self.fix})" if self.fix else ""
        return f"{self.label} is broken: {self.error}{fix}"


class Plugins:
    """The loaded plugins and what they provide. Build with :func:`make_plugins`."""

    def __init__(self, pm: pluggy.PluginManager, infos: Sequence[PluginInfo]) -> None:
        self.pm = pm
        self.infos = list(infos)
        self._by_name = {info.name: info for info in self.infos}
        self._cache: dict[str, Any] = {}

    @property
    def hook(self) -> Any:
        """``plugins.hook.teleport_xxx(...)``: call a hook on every loaded plugin."""
        return self.pm.hook

    @property
    def broken(self) -> list[PluginInfo]:
        return [info for info in self.infos if info.status == "broken"]

    def raise_if_broken(self) -> None:
        """Raise one :class:`PluginError` naming every broken plugin, one line each."""
        if self.broken:
            raise PluginError("\n".join(info.problem for info in self.broken))

    def info_for(self, plugin_name: str) -> PluginInfo:
        """The plugin registered as ``plugin_name`` (one registered behind our back gets a bare record)."""
        found = self._by_name.get(plugin_name)
        return found if found is not None else PluginInfo(plugin_name, plugin_name, "-")

    # -- what plugins provide ---------------------------------------------------------------------

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[PluginInfo, Any]]:
        """Call ``hook_name`` on each plugin separately: ``[(plugin, item), ...]`` for every
        item of every returned list. A plugin whose hook raises is reported by name."""
        out: list[tuple[PluginInfo, Any]] = []
        caller = getattr(self.pm.hook, hook_name)
        tracer = _tracer()
        for impl in caller.get_hookimpls():  # registration order (tryfirst/trylast sorted in)
            info = self.info_for(impl.plugin_name)
            args = {name: kwargs[name] for name in impl.argnames}
            try:
                result = impl.function(**args)
            except Exception as exc:
                if tracer:
                    tracer.info("hook raised", hook=hook_name, plugin=impl.plugin_name, args=_shown(args),
                                error=f"{type(exc).__name__}: {exc}")
                raise PluginError(f"{info.label}: hook {hook_name} failed: {type(exc).__name__}: {exc}") from exc
            if tracer:
                tracer.info("hook called", hook=hook_name, plugin=impl.plugin_name, args=_shown(args),
                            result=_shown(result))
            for item in result or ():
                out.append((info, item))
        return out

    def call_one(self, plugin_name: str, hook_name: str, **kwargs: Any) -> tuple[bool, Any]:
        """Call ``hook_name`` on one plugin only: ``(True, result)``, or ``(False, None)`` when
        that plugin does not implement it. A failure inside is reported as the plugin's."""
        tracer = _tracer()
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            args = {name: kwargs[name] for name in impl.argnames}
            with blame(self.info_for(plugin_name), f"hook {hook_name}"):
                result = impl.function(**args)
            if tracer:
                tracer.info("hook called", hook=hook_name, plugin=plugin_name, args=_shown(args),
                            result=_shown(result))
            return True, result
        return False, None

    def _unique(self, kind: str, hook_name: str, key: Callable[[Any], Iterable[str]]) -> dict[str, Any]:
        if hook_name in self._cache:
            return self._cache[hook_name]  # type: ignore[no-any-return]
        found: dict[str, tuple[PluginInfo, Any]] = {}
        for info, item in self.collect(hook_name):
            for name in key(item):
                if name in found:
                    other = found[name][0]
                    raise PluginError(
                        f'{kind} "{name}" is provided by both {other.label} and {info.label}; '
                        f"uninstall one or block it with {DISABLE_ENV}"
                    )
                found[name] = (info, item)
        self._cache[hook_name] = found
        return found

    def services(self) -> dict[str, tuple[PluginInfo, ServiceSpec]]:
        """Section name -> (plugin, spec)."""
        return self._unique("service", "teleport_services", lambda s: [s.section])

    def backends(self) -> dict[str, tuple[PluginInfo, BackendSpec]]:
        """Backend name or alias -> (plugin, spec)."""
        return self._unique("backend", "teleport_storage_backends", lambda s: [s.name, *s.aliases])

    def session_storages(self) -> dict[str, tuple[PluginInfo, SessionStorageSpec]]:
        return self._unique("session storage", "teleport_session_storages", lambda s: [s.scheme])

    def audit_sinks(self) -> dict[str, tuple[PluginInfo, AuditSinkSpec]]:
        return self._unique("audit sink", "teleport_audit_sinks", lambda s: [s.scheme])

    def cli_commands(self, tool: str, reserved: Iterable[str] = ()) -> dict[str, tuple[PluginInfo, CliCommand]]:
        """Subcommands plugins add to ``tool``; clashing with ``reserved`` (the tool's own) is an error."""
        commands: dict[str, tuple[PluginInfo, CliCommand]] = {}
        reserved = set(reserved)
        for info, command in self.collect("teleport_cli_commands", tool=tool):
            if command.name in reserved:
                raise PluginError(f'{info.label} adds "{tool} {command.name}", a built-in command')
            if command.name in commands:
                other = commands[command.name][0]
                raise PluginError(f'"{tool} {command.name}" is added by both {other.label} and {info.label}')
            commands[command.name] = (info, command)
        return commands

    def lookup(self, kind: str, name: str, table: dict[str, tuple[PluginInfo, S]]) -> S:
        """The spec called ``name`` or an :class:`UnknownNameError` listing the installed
        choices and, for a well-known name, the package to install (or the broken plugin that
        provides it)."""
        return self.entry(kind, name, table)[1]

    def entry(self, kind: str, name: str, table: dict[str, tuple[PluginInfo, S]]) -> tuple[PluginInfo, S]:
        """:meth:`lookup`, with the plugin that provides the spec."""
        if name in table:
            return table[name]
        choices = ", ".join(sorted(table)) or "none"
        package = KNOWN_PROVIDERS.get((kind, name))
        for info in self.broken:
            if package and normalize(info.distribution) == package:
                raise UnknownNameError(f'{kind} "{name}" is provided by {info.problem}')
        maybe = ("; broken plugins, which may provide it: " + "; ".join(i.problem for i in self.broken)
                 if self.broken else "")
        if package:
            raise UnknownNameError(
                f'{kind} "{name}" is not available: {install_hint(package)} (installed: {choices}){maybe}')
        hint = did_you_mean(name, list(table)).replace("; valid keys:", "; installed:")
        raise UnknownNameError(f'unknown {kind} "{name}"{hint or f"; installed: {choices}"}{maybe}')

    def backend(self, name: str) -> BackendSpec:
        return self.lookup("backend", name, self.backends())

    def session_storage(self, scheme: str) -> SessionStorageSpec:
        return self.lookup("session storage", scheme, self.session_storages())

    def audit_sink(self, scheme: str) -> AuditSinkSpec:
        return self.lookup("audit sink", scheme, self.audit_sinks())

    def describe(self) -> list[dict[str, Any]]:
        """What ``teleport plugins --format=json`` prints: one object per plugin."""
        provided: dict[str, dict[str, list[str]]] = {i.name: {} for i in self.infos}
        groups: dict[str, Callable[[], dict[str, tuple[PluginInfo, Any]]]] = {
            "services": self.services,
            "backends": self.backends,
            "session_storages": self.session_storages,
            "audit_sinks": self.audit_sinks,
        }
        for key, getter in groups.items():
            for name, (info, _) in sorted(getter().items()):
                provided[info.name].setdefault(key, []).append(name)
        for tool in ("teleport", "tctl", "tsh"):
            for name, (info, _) in sorted(self.cli_commands(tool).items()):
                provided[info.name].setdefault("commands", []).append(f"{tool} {name}")
        out = []
        for info in self.infos:
            entry: dict[str, Any] = {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "status": info.status,
                "builtin": info.builtin,
                "location": info.location,
                "hooks": sorted(info.hooks),
            }
            for key in ("services", "backends", "session_storages", "audit_sinks", "commands"):
                entry[key] = provided[info.name].get(key, [])
            if info.error:
                entry["error"] = info.error
                entry["fix"] = info.fix
            out.append(entry)
        return out


@contextlib.contextmanager
def blame(info: PluginInfo, what: str) -> Iterator[None]:
    """Report a failure inside as ``info``'s: one :class:`PluginError` line naming the plugin,
    ``what`` it was doing (say which config key selected it), the module and line that raised,
    and how to go on without it. Errors a plugin raises on purpose (:class:`TeleportError`, e.g.
    a ``ConfigError`` naming its key, or an unreachable server) pass through unchanged."""
    fix = f" (to go on without it: {info.fix})" if info.fix else ""
    try:
        yield
    except PluginError as exc:
        if info.label in str(exc):
            raise
        raise PluginError(f"{info.label}: {what}: {exc}{fix}") from exc
    except TeleportError:
        raise
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise PluginError(f"{info.label}: {what} failed{where}: {type(exc).__name__}: {exc}{fix}") from exc


def _tracer() -> Any:
    """The ``hooks`` logger when ``TELEPORT_TRACE_HOOKS`` is set, else None."""
    if os.environ.get(TRACE_ENV, "").lower() in ("", "0", "false", "no"):
        return None
    from teleport_core.logs import get_logger  # late: the logging module needs the config model

    return get_logger("hooks")


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 200, 300, 20, 20


def _shown(value: Any) -> str:
    """``repr`` cut to a log line's size."""
    return _REPR.repr(value)


def _trace_calls(pm: pluggy.PluginManager, tracer: Any) -> None:
    """Log every call made through ``plugins.hook`` (``collect`` logs its own)."""

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        tracer.info("hook call", hook=hook_name, plugins=[impl.plugin_name for impl in impls],
                    args={name: _shown(value) for name, value in kwargs.items()})

    def after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            tracer.info("hook raised", hook=hook_name, error=f"{type(outcome.exception).__name__}: {outcome.exception}")
        else:
            tracer.info("hook returned", hook=hook_name, result=_shown(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)


def install_hint(package: str) -> str:
    """What to tell a user who needs ``package``: install it, unblock it, or upgrade it."""
    from importlib import metadata

    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        return f"pip install {package}"
    blocked = set(_env_list(DISABLE_ENV))
    if package in blocked or any(
        ep.name in blocked for ep in find_entry_points(ENTRY_POINT_GROUP) if normalize(ep.distribution) == package
    ):
        return f"{package} is installed but disabled by {DISABLE_ENV}"
    return f"{package} {version} is installed but does not provide it; upgrade: pip install -U {package}"


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _hook_names(pm: pluggy.PluginManager, module: object) -> list[str]:
    return sorted(name for name in dir(module) if pm.parse_hookimpl_opts(module, name) is not None)


def _found_in(info: PluginInfo, which: str = "") -> str:
    return f" ({which + ': ' if which else ''}{info.location})" if info.location else ""


def _loaded_twice(first: PluginInfo) -> str:
    """Why a module is refused: ``first`` (an installed plugin) already registered it."""
    text = f"its module is already loaded as {first.label}{_found_in(first)}"
    if first.location.endswith(".egg-info"):  # what `pip install -e .` leaves in the source folder
        return (f"{text}; that .egg-info makes its folder look installed whenever the folder is on "
                f"sys.path (PYTHONPATH=., python -m pytest): if {first.distribution} is not installed "
                f"(pip uninstall leaves the .egg-info behind), delete it: rm -r {first.location}")
    return f"{text}; load it one way: drop it from {EXTRA_ENV}, or pip uninstall {first.distribution}"


def _register(pm: pluggy.PluginManager, info: PluginInfo, load: Callable[[], Any],
              infos: Sequence[PluginInfo] = ()) -> None:
    """Import and register one plugin, recording any failure on ``info`` in one line."""
    try:
        module = load()
    except Exception as exc:
        info.status, info.error = "broken", f"failed to import: {type(exc).__name__}: {exc}"
        return
    registered = pm.get_name(module)
    if registered is not None:  # the same module through an entry point and $TELEPORT_PLUGINS
        first = next((i for i in infos if i.name == registered), PluginInfo(registered, registered, "-"))
        info.hooks = _hook_names(pm, module)
        info.status, info.error = "broken", _loaded_twice(first)
        return
    info.hooks = _hook_names(pm, module)
    unknown = [name for name in info.hooks if not hasattr(hookspecs, name)]
    if unknown:
        known = [n for n in dir(hookspecs) if n.startswith("teleport_")]
        name = unknown[0]
        info.status, info.error = "broken", f"implements unknown hook {name}" + did_you_mean(name, known)
        return
    try:
        pm.register(module, name=info.name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        info.status, info.error = "broken", f"cannot register: {exc}"


def make_plugins(
    *,
    entry_points: bool = True,
    extra: Sequence[str] | None = None,
    objects: Sequence[tuple[str, object]] = (),
) -> Plugins:
    """Build a fresh plugin manager with every installed, enabled plugin loaded.

    ``entry_points=False`` skips installed plugins; ``extra`` lists module names to
    register as well (default: ``$TELEPORT_PLUGINS``); ``objects`` registers
    ``(name, plugin)`` pairs directly (for tests of a plugin that is not installed).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(_env_list(DISABLE_ENV))
    infos: list[PluginInfo] = []
    if entry_points:
        for ep in sorted(find_entry_points(ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist_name, version = ep.distribution, ep.version
            info = PluginInfo(ep.name, dist_name, version, builtin=normalize(dist_name) == "teleport-core",
                              location=ep.path)
            infos.append(info)
            if ep.name in blocked or dist_name in blocked:
                info.status = "disabled"
                pm.set_blocked(ep.name)
                continue
            first = next((i for i in infos[:-1] if i.name == ep.name), None)
            if first is not None:
                info.status, info.error = "broken", (
                    f'entry point name "{ep.name}" is used twice: {first.label} has it too'
                    + _found_in(first) + _found_in(info, "and this one"))
                continue
            _register(pm, info, ep.load, infos)
    for module_name in _env_list(EXTRA_ENV) if extra is None else extra:
        info = PluginInfo(module_name, f"{EXTRA_ENV}:{module_name}", "-")
        infos.append(info)
        if module_name in blocked:
            info.status = "disabled"
            continue
        _register(pm, info, lambda name=module_name: importlib.import_module(name), infos)  # type: ignore[misc]
    for name, obj in objects:
        info = PluginInfo(name, f"(object) {name}", "-")
        infos.append(info)
        _register(pm, info, lambda obj=obj: obj, infos)  # type: ignore[misc]
    pm.check_pending()
    tracer = _tracer()
    if tracer:
        _trace_calls(pm, tracer)
    return Plugins(pm, infos)
