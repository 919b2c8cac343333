"""``teleport install systemd``: the systemd unit, in Teleport's shape.

:func:`render_unit` is the one source of the text: ``examples/systemd/teleport.service`` is its
output with the defaults, and a test keeps the two the same.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import attrs

from teleport_core.errors import ConfigError

DEFAULT_TELEPORT_PATH = "/usr/local/bin/teleport"
DEFAULT_CONFIG = "/etc/teleport.yaml"
DEFAULT_PID_FILE = "/run/teleport.pid"
DEFAULT_ENV_FILE = "/etc/default/teleport"
DEFAULT_FD_LIMIT = 524288

UNIT = """\
[Unit]
Description=Teleport Service
After=network.target

[Service]
Type=simple
Restart=on-failure
RestartSec=5
EnvironmentFile=-$env_file
ExecStart=$teleport_path start --config $config --pid-file=$pid_file
# SIGHUP: a graceful reload (a new process takes over the listening sockets, the old one drains)
ExecReload=/bin/kill -HUP $$MAINPID
PIDFile=$pid_file
# a stop sends SIGTERM to every process of the unit: a draining old process too
KillMode=control-group
LimitNOFILE=$fd_limit

[Install]
WantedBy=multi-user.target
"""


@attrs.frozen
class UnitOptions:
    """What ``teleport install systemd`` takes (Teleport's flags and defaults)."""

    teleport_path: str = DEFAULT_TELEPORT_PATH
    config: str = DEFAULT_CONFIG
    pid_file: str = DEFAULT_PID_FILE
    env_file: str = DEFAULT_ENV_FILE
    fd_limit: int = DEFAULT_FD_LIMIT


def _absolute(flag: str, value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value) or "$" in value or "%" in value:
        raise ConfigError(flag, f"expected an absolute path without spaces, $ or %, got {value!r}")
    return value


def render_unit(options: UnitOptions) -> str:
    """The unit file for ``options``; :class:`ConfigError` naming the flag for a bad value."""
    if options.fd_limit < 1:
        raise ConfigError("--fd-limit", f"expected a positive number, got {options.fd_limit}")
    values = {
        "teleport_path": _absolute("--teleport-path", options.teleport_path),
        "config": _absolute("--config", options.config),
        "pid_file": _absolute("--pid-file", options.pid_file),
        "env_file": _absolute("--env-file", options.env_file),
        "fd_limit": str(options.fd_limit),
    }
    return string.Template(UNIT).substitute(values)


def output_path(value: str) -> Path | None:
    """``--output``: ``stdout`` (None), ``file:///path`` or a path, as Teleport's ``-o``."""
    if value == "stdout":
        return None
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    if not value:
        raise ConfigError("--output", "expected stdout, file:///path or a path")
    return Path(value)


def running_teleport() -> str:
    """The ``teleport`` script beside the running interpreter (where pip put it)."""
    return str(Path(sys.executable).with_name("teleport"))
