"""Load ``teleport.yaml`` plus command-line flags into a :class:`TeleportConfig`.

Flags override the file as in Teleport (``--roles``, ``--token``, ``--ca-pin``,
``--auth-server``, ``--nodename``, ``--labels``, ``--diag-addr``, ``--insecure``,
``--debug``); an error in a flag's value names the flag.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from teleport_core.config.limits import ConnectionLimits, parse_connection_limits
from teleport_core.config.model import LOG_FIELDS, JoinParams, LogConfig, ServiceSection, StorageConfig, TeleportConfig
from teleport_core.config.reader import SectionReader, show
from teleport_core.errors import ConfigError, UnknownNameError
from teleport_core.pki.secret import Secret
from teleport_core.plugins import KNOWN_PROVIDERS, STANDARD_ROLES, Plugins, blame, install_hint
from teleport_core.refs import resolve
from teleport_core.suggest import did_you_mean

DEFAULT_CONFIG = Path("/etc/teleport.yaml")
DEFAULT_DATA_DIR = Path("/var/lib/teleport")
VERSIONS = ("v1", "v2", "v3")
SEVERITIES = ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR")
CA_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
AUTH_PORT, PROXY_WEB_PORT = 3025, 3080
_LABEL = re.compile(r"^[A-Za-z0-9/._*-]+$")


@attrs.frozen
class Flags:
    """``teleport start`` flags that override the file (None: not given)."""

    roles: str | None = None
    token: str | None = None
    ca_pins: tuple[str, ...] = ()
    auth_servers: tuple[str, ...] = ()
    nodename: str | None = None
    labels: str | None = None
    diag_addr: str | None = None
    insecure: bool = False
    debug: bool = False


def read_yaml(path: Path) -> Any:
    """Parse ``path`` with ``yaml.safe_load``; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "config file is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(str(path), f"invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(str(path), "invalid YAML: nested too deeply") from None


def parse_labels_flag(text: str) -> dict[str, str]:
    """``--labels=env=prod,role=db`` -> ``{"env": "prod", "role": "db"}``."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not _LABEL.match(key.strip()) or not value.strip():
            raise ConfigError("--labels", f"expected key=value[,key=value...], got {show(text)}")
        labels[key.strip()] = value.strip()
    return labels


def _token(value: str) -> Secret:
    """A join token, or the contents of the file it names (keeps tokens out of argv)."""
    path = Path(value)
    if path.is_absolute() and path.is_file():
        return Secret(path.read_text(encoding="utf-8").strip())
    return Secret(value)


def _apply_flags(data: dict[str, Any], flags: Flags, origins: dict[str, str]) -> None:
    """Write flag values into the raw config, remembering which flag set which key."""
    teleport = data.setdefault("teleport", None) or {}
    if not isinstance(teleport, dict):
        return  # the reader reports the bad type
    data["teleport"] = teleport

    def put(key: str, value: Any, flag: str) -> None:
        teleport[key] = value
        origins[f"teleport.{key}"] = flag

    if flags.token is not None:
        put("auth_token", flags.token, "--token")
        teleport.pop("join_params", None)
    if flags.ca_pins:
        put("ca_pin", list(flags.ca_pins), "--ca-pin")
    if flags.auth_servers:
        for key in ("auth_server", "auth_servers", "proxy_server"):
            teleport.pop(key, None)
        if len(flags.auth_servers) == 1:
            put("auth_server", flags.auth_servers[0], "--auth-server")
        else:
            put("auth_servers", list(flags.auth_servers), "--auth-server")
    if flags.nodename is not None:
        put("nodename", flags.nodename, "--nodename")
    if flags.diag_addr is not None:
        put("diag_addr", flags.diag_addr, "--diag-addr")
    if flags.debug:
        log = teleport.setdefault("log", None) or {}
        if isinstance(log, dict):
            log["severity"] = "DEBUG"
            teleport["log"] = log
    if flags.labels is not None:
        section = data.get("ssh_service") or {}
        if isinstance(section, dict):
            merged = dict(section.get("labels") or {})
            merged.update(parse_labels_flag(flags.labels))
            section["labels"] = merged
            data["ssh_service"] = section


def _roles(flags: Flags, plugins: Plugins) -> dict[str, bool] | None:
    """``--roles=node,proxy`` -> section -> enabled, for every known section."""
    if flags.roles is None:
        return None
    role_to_section = dict(STANDARD_ROLES)
    for section, (_, spec) in plugins.services().items():
        role_to_section[spec.role] = section
    wanted = [r.strip() for r in flags.roles.split(",") if r.strip()]
    if not wanted:
        raise ConfigError("--roles", f"expected a comma-separated list of {', '.join(sorted(role_to_section))}")
    for role in wanted:
        if role not in role_to_section:
            hint = did_you_mean(role, list(role_to_section)).replace("valid keys", "valid roles")
            raise ConfigError("--roles", f"unknown role {show(role)}{hint}")
    chosen = {role_to_section[r] for r in wanted}
    return {section: section in chosen for section in role_to_section.values()}


def _parse_teleport(r: SectionReader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["nodename"] = r.string("nodename", socket.gethostname())
    out["data_dir"] = r.path_value("data_dir", DEFAULT_DATA_DIR)
    token = r.secret("auth_token")
    out["auth_token"] = _token(token.reveal()) if token else None
    jp = r.section("join_params")
    method = jp.string("method", "token", choices=("token",))
    token_name = jp.secret("token_name")
    jp.finish()
    out["join_params"] = JoinParams(method, _token(token_name.reveal()) if token_name else None)
    if out["auth_token"] and token_name:
        raise r.error("join_params", "set either auth_token or join_params, not both")
    pins = r.strings("ca_pin")
    for index, pin in enumerate(pins):
        if not CA_PIN.match(pin):
            key = "ca_pin" if r.data.get("ca_pin") == pin else f"ca_pin[{index}]"
            raise r.error(key, f'expected "sha256:" followed by 64 lowercase hex digits, got {show(pin)}')
    out["ca_pins"] = pins
    if r.has("auth_server") and r.has("auth_servers"):
        raise r.error("auth_servers", "set either auth_server or auth_servers, not both")
    if r.has("auth_server"):
        out["auth_servers"] = (r.addr("auth_server", default_port=AUTH_PORT),)
    else:
        out["auth_servers"] = r.addrs("auth_servers", default_port=AUTH_PORT)
    out["proxy_server"] = r.addr("proxy_server", None, default_port=PROXY_WEB_PORT)
    if out["proxy_server"] and r.has("auth_server"):
        raise r.error("proxy_server", "set either auth_server or proxy_server, not both")
    out["diag_addr"] = r.addr("diag_addr", None)
    out["advertise_ip"] = r.string("advertise_ip", "")
    out["connection_limits"] = parse_connection_limits(r, default=ConnectionLimits())
    log = r.section("log")
    output = log.string("output", "stderr")
    severity = log.string("severity", "INFO").upper()
    if severity not in SEVERITIES:
        raise log.error("severity", f"expected one of {', '.join(SEVERITIES)}, got {show(severity)}")
    fmt = log.section("format")
    log_format = fmt.string("output", "text", choices=("text", "json"))
    extra = fmt.strings("extra_fields")
    for index, name in enumerate(extra):
        if name not in LOG_FIELDS:
            valid = ", ".join(LOG_FIELDS)
            raise fmt.error(f"extra_fields[{index}]", f"unknown field {show(name)}; valid fields: {valid}")
    fmt.finish()
    log.finish()
    out["log"] = LogConfig(output, "WARN" if severity == "WARNING" else severity, log_format, extra)
    return out


def backend_options(r: SectionReader, plugins: Plugins) -> tuple[str, Any]:
    """``type`` and the backend's own keys of ``teleport.storage``, read by its plugin's
    ``parse_options``: a failure inside it (other than the ``ConfigError`` it raises on purpose)
    is reported as that plugin's."""
    kind = r.string("type", "sqlite")
    try:
        info, spec = plugins.entry("backend", kind, plugins.backends())
    except UnknownNameError as exc:
        raise r.error("type", str(exc)) from None
    if spec.parse_options is None:
        return kind, None
    with blame(info, f'reading the options of backend "{kind}" ({r.path})'):
        return kind, resolve(spec.parse_options)(r)


def _parse_storage(r: SectionReader, plugins: Plugins, data_dir: Path) -> StorageConfig:
    kind, options = backend_options(r, plugins)
    events = r.strings("audit_events_uri") or (f"file://{data_dir / 'log'}",)
    sessions = r.string("audit_sessions_uri", f"file://{data_dir / 'log' / 'records'}")
    for key, uri in [*((f"audit_events_uri[{i}]", u) for i, u in enumerate(events)), ("audit_sessions_uri", sessions)]:
        if "://" not in uri:
            raise r.error(key, f"expected a URI like file:///var/lib/teleport/log, got {show(uri)}")
    r.finish()
    return StorageConfig(kind, options, events, sessions)


def _parse_sections(
    data: Mapping[str, Any], plugins: Plugins, flags: Flags, origins: dict[str, str]
) -> dict[str, ServiceSection]:
    installed = plugins.services()
    names = list(STANDARD_ROLES.values()) + [s for s in installed if s not in STANDARD_ROLES.values()]
    roles = _roles(flags, plugins)
    sections: dict[str, ServiceSection] = {}
    for name in names:
        reader = SectionReader(data.get(name), name, origins=origins)
        enabled = reader.boolean("enabled", True)
        if roles is not None:
            enabled = roles.get(name, False)
        configured = name in data
        if name not in installed:
            if enabled:
                package = KNOWN_PROVIDERS.get(("service", name))
                hint = install_hint(package) if package else "install a plugin that provides it"
                how = " (enabled by --roles)" if roles is not None else ""
                raise ConfigError("", f"{name} is enabled but no installed plugin provides it: {hint}{how}")
            sections[name] = ServiceSection(name, _role_of(name), False, configured)
            continue
        info, spec = installed[name]
        settings = plugins.hook.teleport_config_section(section=name, reader=reader)
        reader.finish()
        sections[name] = ServiceSection(name, spec.role, enabled, configured, settings, info.distribution)
    return sections


def _parse_plugin_sections(r: SectionReader, plugins: Plugins, origins: dict[str, str]) -> dict[str, Any]:
    """The ``plugins:`` section, keyed by plugin name (``teleport plugins`` lists them, as
    datasette's ``plugins:`` is keyed): each plugin's ``teleport_config_section`` reads its own
    mapping under section ``plugins.<name>``. A plugin with no mapping here is asked too (with an
    empty one) so its defaults apply; one that returns None takes no configuration."""
    loaded = {info.name: info for info in plugins.infos if info.status == "loaded"}
    for name in r.data:
        if name in loaded:
            continue
        known = {info.name: info for info in plugins.infos}
        if name in known:
            info = known[name]
            raise r.error(name, f"{info.label} is {info.status}" + (f": {info.error}" if info.error else ""))
        hint = did_you_mean(name, list(loaded)).replace("; valid keys:", "; installed plugins:")
        raise r.error(name, f"no installed plugin is called {name!r}{hint or f'; installed plugins: {sorted(loaded)}'}")
    out: dict[str, Any] = {}
    for name in loaded:
        section = f"plugins.{name}"
        reader = r.section(name)
        implemented, settings = plugins.call_one(name, "teleport_config_section", section=section, reader=reader)
        if settings is None:
            if name in r.data:
                why = "its plugin reads no plugins: section" if implemented else "its plugin takes no configuration"
                raise r.error(name, f"{why} (it implements no teleport_config_section for {section!r})")
            continue
        reader.finish()
        out[name] = settings
    r.finish()
    return out


def _role_of(section: str) -> str:
    return {v: k for k, v in STANDARD_ROLES.items()}.get(section, section)


def parse_config(
    data: Any, plugins: Plugins, flags: Flags | None = None, source: Path | None = None
) -> TeleportConfig:
    """Validate parsed YAML (plus flags) into a :class:`TeleportConfig`."""
    flags = flags or Flags()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(source or "config"), f"expected a mapping of sections, got {show(data)}")
    data = copy.deepcopy(dict(data))
    origins: dict[str, str] = {}
    _apply_flags(data, flags, origins)
    top = SectionReader(data, "", origins=origins)
    version = top.string("version", "v1", choices=VERSIONS)
    teleport = SectionReader(data.get("teleport"), "teleport", origins=origins)
    top.read.add("teleport")
    fields = _parse_teleport(teleport)
    storage = _parse_storage(teleport.section("storage"), plugins, fields["data_dir"])
    teleport.finish()
    sections = _parse_sections(data, plugins, flags, origins)
    top.read.update(sections)
    plugin_settings = _parse_plugin_sections(top.section("plugins"), plugins, origins)
    for key in data:
        if key.endswith("_service") and key not in sections:
            # match on the name before "_service": kube_service is not a typo of auth_service
            hint = did_you_mean(key.removesuffix("_service"), [s.removesuffix("_service") for s in sections])
            if hint.startswith(" (did you mean"):
                raise ConfigError(key, f'unknown key (did you mean "{hint.split(chr(34))[1]}_service"?)')
            raise ConfigError(key, f"no installed plugin provides this section (sections: {', '.join(sections)})")
    top.finish()
    config = TeleportConfig(
        version=version,
        storage=storage,
        services=sections,
        insecure=flags.insecure,
        source=source,
        plugin_settings=plugin_settings,
        **fields,
    )
    plugins.hook.teleport_config_loaded(config=config)
    return config


def load_config(path: Path | None, plugins: Plugins, flags: Flags | None = None) -> TeleportConfig:
    """Read ``path`` (default ``/etc/teleport.yaml`` when it exists, else built-in defaults)."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    data = read_yaml(path) if path is not None else None
    return parse_config(data, plugins, flags, path)
