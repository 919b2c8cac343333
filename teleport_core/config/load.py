"""Load ``teleport.yaml`` plus command-line flags into a :class:`TeleportConfig`.

Flags override the file as in Teleport (``--roles``, ``--token``, ``--ca-pin``,
``--auth-server``, ``--proxy``, ``--nodename``, ``--labels``, ``--listen-ip``,
``--advertise-ip``, ``--data-dir``, ``--diag-addr``, ``--insecure``, ``--debug``);
``--config-string`` (base64 YAML, or ``TELEPORT_CONFIG``) replaces the file. An error in a
flag's value names the flag.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
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
from teleport_core.config.values import NetAddr, parse_addr
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
    proxy_server: str | None = None  # --proxy
    listen_ip: str | None = None  # --listen-ip: the IP every service's *listen_addr binds, ports kept
    advertise_ip: str | None = None  # --advertise-ip: host[:port] other servers reach this one at
    data_dir: str | None = None  # --data-dir
    config_string: str | None = None  # --config-string / TELEPORT_CONFIG: base64-encoded YAML
    config_string_origin: str = "--config-string"  # or "TELEPORT_CONFIG", for its errors


def read_yaml(path: Path) -> Any:
    """Parse ``path`` with ``yaml.safe_load``; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "config file is not UTF-8 text") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; errors name ``where`` (a file or a flag), line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(where, f"invalid YAML at {at}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(where, "invalid YAML: nested too deeply") from None


def decode_config_string(value: str, origin: str = "--config-string") -> Any:
    """Teleport's ``--config-string`` (``TELEPORT_CONFIG``): base64 of a whole ``teleport.yaml``."""
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(origin, "expected a base64-encoded teleport.yaml (base64 -w0 teleport.yaml)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(origin, "the decoded config is not UTF-8 text") from None
    if not text.strip():
        raise ConfigError(origin, "the decoded config is empty")
    return parse_yaml(text, origin)


def parse_listen_ip(value: str) -> str:
    """``--listen-ip``: an IPv4 or IPv6 address (as Teleport's, not a host name)."""
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        raise ConfigError("--listen-ip", f"expected an IP address like 10.0.0.5 or ::, got {show(value)}") from None


def parse_advertise_ip(value: str, where: str) -> str:
    """``advertise_ip``: ``host`` or ``host:port`` (Teleport's ``ParseAdvertiseAddr``)."""
    text = value.strip()
    try:
        if text.count(":") > 1 and not text.startswith("["):
            text = f"[{ipaddress.ip_address(text)}]"  # a bare IPv6 address
        addr = parse_addr(text, default_port=0)
    except ValueError as exc:
        raise ConfigError(where, f"expected an IP address or host[:port], got {show(value)} ({exc})") from None
    if addr.host in ("", "0.0.0.0", "::"):  # noqa: S104
        raise ConfigError(where, f"expected an address other servers can reach, got {show(value)}")
    return str(addr) if addr.port else str(addr).rsplit(":", 1)[0]  # "host", "[v6]" or with the port


class ListenIPReader(SectionReader):
    """A service section read under ``--listen-ip``: every ``*listen_addr`` key (given or
    defaulted) binds that IP and keeps its port, as Teleport's ``applyListenIP``."""

    def __init__(self, data: Any, path: str, *, origins: Mapping[str, str], listen_ip: str) -> None:
        super().__init__(data, path, origins=origins)
        self.listen_ip = listen_ip

    def addr(self, key: str, *args: Any, **kwargs: Any) -> Any:
        value = super().addr(key, *args, **kwargs)
        if key.endswith("listen_addr") and isinstance(value, NetAddr):
            return attrs.evolve(value, host=self.listen_ip)
        return value


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
    if flags.auth_servers or flags.proxy_server is not None:
        for key in ("auth_server", "auth_servers", "proxy_server"):
            teleport.pop(key, None)
    if flags.proxy_server is not None:
        put("proxy_server", flags.proxy_server, "--proxy")
    if flags.auth_servers:
        if len(flags.auth_servers) == 1 and flags.proxy_server is None:
            put("auth_server", flags.auth_servers[0], "--auth-server")
        else:  # with --proxy: a tunnelled node that calls auth directly (auth_server excludes proxy_server)
            put("auth_servers", list(flags.auth_servers), "--auth-server")
    if flags.data_dir is not None:
        put("data_dir", str(Path(flags.data_dir).expanduser().absolute()) if flags.data_dir else "", "--data-dir")
    if flags.advertise_ip is not None:
        put("advertise_ip", flags.advertise_ip, "--advertise-ip")
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
    advertise = r.string("advertise_ip", "")
    out["advertise_ip"] = parse_advertise_ip(advertise, r.error("advertise_ip", "").path) if advertise else ""
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
    listen_ip = parse_listen_ip(flags.listen_ip) if flags.listen_ip is not None else None
    for name in names:
        reader = (SectionReader(data.get(name), name, origins=origins) if listen_ip is None
                  else ListenIPReader(data.get(name), name, origins=origins, listen_ip=listen_ip))
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
    """Read ``path`` (default ``/etc/teleport.yaml`` when it exists, else built-in defaults);
    ``flags.config_string`` instead of any file (naming both is an error)."""
    if flags is not None and flags.config_string is not None:
        if path is not None:
            raise ConfigError(flags.config_string_origin, "give either --config or --config-string (TELEPORT_CONFIG), "
                              "not both")
        return parse_config(decode_config_string(flags.config_string, flags.config_string_origin), plugins, flags)
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    data = read_yaml(path) if path is not None else None
    return parse_config(data, plugins, flags, path)
