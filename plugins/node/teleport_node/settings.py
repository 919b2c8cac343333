"""The ``ssh_service`` section of ``teleport.yaml``."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import attrs

from teleport_core.config.limits import ConnectionLimits, parse_connection_limits
from teleport_core.config.reader import SectionReader
from teleport_core.config.values import NetAddr

if TYPE_CHECKING:
    from teleport_core.config.model import TeleportConfig

SAMPLE = """\
# The SSH listener (Teleport's default port is 3022).
listen_addr: 0.0.0.0:3022
# Addresses clients use to reach this node (added to its host certificate).
# public_addr: node.example.com:3022
# Static labels, shown by `tsh ls` and matched by roles' node_labels.
labels:
  env: dev
# Dynamic labels: the output of a command, refreshed every period.
commands:
  - name: arch
    command: [uname, -m]
    period: 1h0m0s
# Limits of the SSH listener (default: teleport.connection_limits, else the built-in ones).
# connection_limits:
#   max_connections: 15000
#   max_users: 250
#   max_startups: "64:30:256"      # unauthenticated: start:rate:full (OpenSSH's MaxStartups)
#   per_source_max_startups: 32    # unauthenticated, per client address
#   login_grace_time: 30s
"""

_LABEL_NAME = re.compile(r"^[A-Za-z0-9/._:*-]{1,63}$")
MIN_PERIOD = dt.timedelta(seconds=1)


@attrs.frozen
class CommandLabel:
    """A dynamic label: ``name`` = the trimmed output of ``command`` (argv), re-run every ``period``."""

    name: str
    command: tuple[str, ...]
    period: dt.timedelta


@attrs.frozen
class NodeSettings:
    listen_addr: NetAddr
    public_addrs: tuple[NetAddr, ...]
    labels: dict[str, str]
    commands: tuple[CommandLabel, ...]
    connection_limits: ConnectionLimits | None = None  # None: teleport.connection_limits


def parse_settings(reader: SectionReader) -> NodeSettings:
    """Read ``ssh_service``; every error names its key path."""
    listen = reader.addr("listen_addr", "0.0.0.0:3022", default_port=3022)
    public = reader.addrs("public_addr", default_port=3022)
    labels = reader.labels("labels")
    for name in labels:
        if not _LABEL_NAME.match(name):
            raise reader.error(f"labels.{name}", "invalid label name: letters, digits and / . _ : * - only")
    commands = []
    for item in reader.sections("commands"):
        name = item.string("name")
        if not _LABEL_NAME.match(name):
            raise item.error("name", f"invalid label name {name!r}")
        if name in labels:
            raise item.error("name", f"label {name!r} is also a static label")
        argv = item.strings("command", single_ok=False)
        if not argv:
            raise item.error("command", "required: expected the command as a list, e.g. [uname, -m]")
        period = item.duration("period", "1h")
        if period < MIN_PERIOD:
            raise item.error("period", "must be at least 1s")
        item.finish()
        commands.append(CommandLabel(name, argv, period))
    limits = parse_connection_limits(reader)
    return NodeSettings(listen, public, labels, tuple(commands), limits)


def listeners(config: TeleportConfig, settings: NodeSettings) -> dict[str, NetAddr]:
    """What ``teleport start`` checks can be bound before any service starts: the SSH port, or
    nothing for a node reached through a reverse tunnel (``teleport.proxy_server``)."""
    return {} if config.proxy_server is not None else {"ssh_service.listen_addr": settings.listen_addr}
