"""The ``proxy_service`` section of ``teleport.yaml``."""

from __future__ import annotations

from pathlib import Path

import attrs

from teleport_core.config.limits import ConnectionLimits, parse_connection_limits
from teleport_core.config.reader import SectionReader
from teleport_core.config.values import NetAddr

SAMPLE = """\
# HTTPS: web API, login (tsh login), invite pages.
web_listen_addr: 0.0.0.0:3080
# SSH: clients (tsh, ssh -J) connect here and are forwarded to nodes.
listen_addr: 0.0.0.0:3023
# Reverse tunnels: nodes behind firewalls (teleport.proxy_server set) dial out to this port.
tunnel_listen_addr: 0.0.0.0:3024
# Addresses clients use to reach this proxy (default: the listen address, or this host's name);
# invite and reset links name the first.
$public_addr_setting
# ssh_public_addr: proxy.example.com:3023
# tunnel_public_addr: proxy.example.com:3024
# multiplex: no tunnel port; nodes and leaf clusters reach the reverse tunnel server on the web
# port (TLS, ALPN teleport-reversetunnel). separate (default): the tunnel port too.
# proxy_listener_mode: separate
# Certificate (full chain) and key for HTTPS; without them a self-signed certificate is used
# and clients need --insecure.
# https_keypairs:
#   - key_file: /etc/teleport/proxy.key
#     cert_file: /etc/teleport/proxy.crt
# Limits of the SSH and tunnel listeners and web logins (default: teleport.connection_limits).
# connection_limits:
#   max_connections: 15000
#   max_users: 250
#   rates:                         # web logins per client address (token bucket)
#     - period: 1m
#       average: 20
#       burst: 40
#   max_startups: "64:30:256"
#   per_source_max_startups: 32
#   login_grace_time: 30s
"""


@attrs.frozen
class KeyPair:
    key_file: Path
    cert_file: Path


@attrs.frozen
class ProxySettings:
    web_listen_addr: NetAddr
    listen_addr: NetAddr
    public_addrs: tuple[NetAddr, ...]
    ssh_public_addrs: tuple[NetAddr, ...]
    https_keypairs: tuple[KeyPair, ...]
    tunnel_listen_addr: NetAddr = attrs.field(factory=lambda: NetAddr("0.0.0.0", 3024))  # noqa: S104
    tunnel_public_addrs: tuple[NetAddr, ...] = ()
    connection_limits: ConnectionLimits | None = None  # None: teleport.connection_limits
    proxy_listener_mode: str = "separate"  # "multiplex": no tunnel port (tunnels on the web port only)


def parse_settings(reader: SectionReader) -> ProxySettings:
    """Read ``proxy_service``; every error names its key path."""
    web = reader.addr("web_listen_addr", "0.0.0.0:3080", default_port=3080)
    ssh = reader.addr("listen_addr", "0.0.0.0:3023", default_port=3023)
    public = reader.addrs("public_addr", default_port=3080)
    ssh_public = reader.addrs("ssh_public_addr", default_port=3023)
    tunnel = reader.addr("tunnel_listen_addr", "0.0.0.0:3024", default_port=3024)
    tunnel_public = reader.addrs("tunnel_public_addr", default_port=3024)
    pairs = []
    for item in reader.sections("https_keypairs"):
        pairs.append(KeyPair(item.path_value("key_file"), item.path_value("cert_file")))
        item.finish()
    limits = parse_connection_limits(reader)
    mode = reader.string("proxy_listener_mode", "separate", choices=("separate", "multiplex"))
    return ProxySettings(web, ssh, public, ssh_public, tuple(pairs), tunnel, tunnel_public, limits, mode)
