"""``teleport configure``: a commented sample ``teleport.yaml`` for the installed plugins."""

from __future__ import annotations

import socket
import string
import textwrap
from pathlib import Path

import attrs

from teleport_core import __version__
from teleport_core.plugins import KNOWN_PROVIDERS, STANDARD_ROLES, Plugins

HEADER = """\
# teleport.yaml written by `teleport configure` (teleport-py v$version).
# Reference: docs/config.md. Durations use Go syntax (30s, 30m, 1h0m0s).
# A service section that is left out is enabled, as in Teleport: disable with `enabled: no`.
version: v3
teleport:
  # Name of this host in the cluster (tsh ls, ssh user@nodename).
  nodename: $nodename
  # Keys, certificates, cluster state, audit log and recordings live here.
  data_dir: $data_dir
  log:
    output: stderr          # stderr, stdout or a file path
    severity: INFO          # DEBUG, INFO, WARN, ERROR
    format:
      output: text          # text or json
  # /healthz, /readyz and /metrics (Prometheus). Off unless set.
  # diag_addr: 127.0.0.1:3000
  storage:
    type: sqlite            # embedded (alias "dir"); "etcd" with teleport-storage-etcd for HA
    # audit_events_uri: ['file://$data_dir/log']
    # audit_sessions_uri: 'file://$data_dir/log/records'
"""


@attrs.frozen
class SampleOptions:
    cluster_name: str = ""
    data_dir: Path = Path("/var/lib/teleport")
    nodename: str = ""
    roles: tuple[str, ...] = ()  # empty: every installed service
    public_addr: str = ""  # the proxy's public address (invite links, tsh login), HOST[:PORT]


def render_sample(plugins: Plugins, options: SampleOptions) -> str:
    """The sample config: the ``teleport:`` section plus one section per known service."""
    nodename = options.nodename or socket.gethostname()
    values = {
        "version": __version__,
        "nodename": nodename,
        "data_dir": str(options.data_dir),
        "cluster_name": options.cluster_name or nodename,
        "public_addr_setting": f"public_addr: {options.public_addr}" if options.public_addr
        else "# public_addr: proxy.example.com:3080",
    }
    parts = [string.Template(HEADER).safe_substitute(values)]
    installed = plugins.services()
    names = list(STANDARD_ROLES.values()) + [s for s in installed if s not in STANDARD_ROLES.values()]
    for name in names:
        if name in installed:
            info, spec = installed[name]
            enabled = not options.roles or spec.role in options.roles
            parts.append(f"# {spec.description or name} ({info.distribution} {info.version})")
            parts.append(f"{name}:\n  enabled: {'yes' if enabled else 'no'}")
            if spec.sample:
                body = string.Template(textwrap.dedent(spec.sample).strip("\n")).safe_substitute(values)
                parts.append(textwrap.indent(body, "  "))
        else:
            package = KNOWN_PROVIDERS.get(("service", name), "its plugin")
            parts.append(f"# {name} needs {package}: pip install {package}, then run teleport configure again")
            parts.append(f"{name}:\n  enabled: no")
        parts.append("")
    return "\n".join(parts)
