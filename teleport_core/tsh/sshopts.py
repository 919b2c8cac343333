"""``tsh ssh -o Option=value``: the OpenSSH options that apply to tsh.

As Teleport's tsh: the ``ssh_config`` keywords tsh can honour are applied; other OpenSSH
keywords (``Ciphers``, ``IdentityFile``, ``BatchMode`` ...) are accepted with a warning on
stderr, because tsh decides them itself (the algorithm lists in teleport_core/net/sshalgos.py,
the profile's certificate); an unknown keyword is an error naming the supported ones. Values
that would weaken a check tsh always makes (``StrictHostKeyChecking no``) or ask for what tsh
does not do (``ForwardX11 yes``) are errors. ``Option=value``, ``Option value`` and
``Option = value`` are all accepted; keywords are case-insensitive, as in ``ssh_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from teleport_core.errors import TeleportError


class BadOption(TeleportError):
    """A ``-o`` option tsh cannot accept."""


@attrs.define
class SshOptions:
    """What the ``-o`` options asked for (None: not given)."""

    forward_agent: bool | None = None
    request_tty: str | None = None  # yes, no, force, auto
    server_alive_interval: int = 0
    server_alive_count_max: int = 3
    connect_timeout: int | None = None
    user: str | None = None
    port: int | None = None
    add_keys_to_agent: bool | None = None
    local: list[str] = attrs.field(factory=list)
    remote: list[str] = attrs.field(factory=list)
    dynamic: list[str] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)


def _yes_no(key: str, value: str, allowed: Iterable[str] = ("yes", "no")) -> str:
    word = value.lower()
    if word not in allowed:
        raise BadOption(f"-o {key}: expected {' or '.join(allowed)}, got {value!r}")
    return word


def _number(key: str, value: str, lowest: int = 0, highest: int = 86400) -> int:
    if not (value.isascii() and value.isdigit()) or not lowest <= int(value) <= highest:
        raise BadOption(f"-o {key}: expected a number from {lowest} to {highest}, got {value!r}")
    return int(value)


def _forward_value(key: str, value: str) -> str:
    """``LocalForward``/``RemoteForward`` values are ``[bind:]port host:hostport`` (two words)."""
    words = value.split()
    if len(words) != 2:
        raise BadOption(f"-o {key}: expected '[bind_address:]port host:hostport', got {value!r}")
    return f"{words[0]}:{words[1]}"


def _strict(options: SshOptions, value: str) -> None:
    if _yes_no("StrictHostKeyChecking", value, ("yes", "no", "ask", "accept-new", "off")) != "yes":
        raise BadOption("-o StrictHostKeyChecking: tsh always checks the host certificate against the cluster's host "
                        "CA; only 'yes' is accepted")


def _x11(options: SshOptions, value: str) -> None:
    if _yes_no("ForwardX11", value) == "yes":
        raise BadOption("-o ForwardX11: X11 forwarding is not supported by tsh")


def _exit_on_failure(options: SshOptions, value: str) -> None:
    if _yes_no("ExitOnForwardFailure", value) == "no":
        options.warnings.append("ExitOnForwardFailure no: tsh always stops when the node refuses a -R forward")


def _set(attribute: str, convert: Callable[[str], object]) -> Callable[[SshOptions, str], None]:
    def setter(options: SshOptions, value: str) -> None:
        setattr(options, attribute, convert(value))

    return setter


def _append(attribute: str, convert: Callable[[str], str]) -> Callable[[SshOptions, str], None]:
    def setter(options: SshOptions, value: str) -> None:
        getattr(options, attribute).append(convert(value))

    return setter


#: the keywords tsh applies (canonical spelling -> setter)
SUPPORTED: dict[str, Callable[[SshOptions, str], None]] = {
    "AddKeysToAgent": _set("add_keys_to_agent", lambda v: _yes_no("AddKeysToAgent", v) == "yes"),
    "ConnectTimeout": _set("connect_timeout", lambda v: _number("ConnectTimeout", v, 1)),
    "DynamicForward": _append("dynamic", lambda v: v.strip()),
    "ExitOnForwardFailure": lambda options, value: _exit_on_failure(options, value),
    "ForwardAgent": _set("forward_agent", lambda v: _yes_no("ForwardAgent", v) == "yes"),
    "ForwardX11": _x11,
    "LocalForward": _append("local", lambda v: _forward_value("LocalForward", v)),
    "Port": _set("port", lambda v: _number("Port", v, 1, 65535)),
    "RemoteForward": _append("remote", lambda v: _forward_value("RemoteForward", v)),
    "RequestTTY": _set("request_tty", lambda v: _yes_no("RequestTTY", v, ("yes", "no", "force", "auto"))),
    "ServerAliveCountMax": _set("server_alive_count_max", lambda v: _number("ServerAliveCountMax", v, 1, 1000)),
    "ServerAliveInterval": _set("server_alive_interval", lambda v: _number("ServerAliveInterval", v)),
    "StrictHostKeyChecking": _strict,
    "User": _set("user", lambda v: v),
}
#: OpenSSH keywords tsh decides itself: accepted, with a warning that they have no effect
IGNORED = ("AddressFamily", "BatchMode", "BindAddress", "CertificateFile", "CheckHostIP", "Ciphers", "Compression",
           "ConnectionAttempts", "ControlMaster", "ControlPath", "ControlPersist", "EscapeChar", "GlobalKnownHostsFile",
           "HashKnownHosts", "HostKeyAlgorithms", "HostKeyAlias", "IdentitiesOnly", "IdentityAgent", "IdentityFile",
           "IPQoS", "KexAlgorithms", "LogLevel", "MACs", "PasswordAuthentication", "PreferredAuthentications",
           "PubkeyAuthentication", "RekeyLimit", "SendEnv", "SetEnv", "TCPKeepAlive", "UpdateHostKeys",
           "UserKnownHostsFile", "VisualHostKey")
_BY_LOWER = {name.lower(): name for name in (*SUPPORTED, *IGNORED)}


def split_option(text: str) -> tuple[str, str]:
    """``Key=value`` / ``Key value`` / ``Key = value`` -> (key, value)."""
    stripped = text.strip()
    cut = min((i for i in (stripped.find("="), stripped.find(" "), stripped.find("\t")) if i >= 0), default=-1)
    if cut <= 0:
        raise BadOption(f"-o {text!r}: expected Option=value or 'Option value'")
    key, value = stripped[:cut].strip(), stripped[cut:].lstrip(" \t")
    if value.startswith("="):
        value = value[1:].lstrip(" \t")
    if not value:
        raise BadOption(f"-o {key}: the value is empty")
    return key, value


def parse_options(texts: Iterable[str]) -> SshOptions:
    """Every ``-o`` argument, in order (a later one wins for single-valued options; forwards add up)."""
    options = SshOptions()
    for text in texts:
        key, value = split_option(text)
        name = _BY_LOWER.get(key.lower())
        if name is None:
            raise BadOption(f"unsupported option {key!r} in -o: tsh ssh supports {', '.join(SUPPORTED)}")
        if name in SUPPORTED:
            SUPPORTED[name](options, value)
        else:
            options.warnings.append(f"option {name} is decided by tsh itself and has no effect")
    return options
