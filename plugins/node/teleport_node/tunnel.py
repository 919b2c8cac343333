"""The node's side of a reverse tunnel: a node with ``teleport.proxy_server`` set opens no
listening port; it dials the proxy's tunnel port (3024) and the proxy reaches it through that
(the agent is :class:`teleport_core.net.tunnelagent.TunnelAgent`, shared with leaf proxies).

The agent finds the tunnel address with the proxy's ``/webapi/find`` (``ssh_tunnel_public_addr``;
``TELEPORT_TUNNEL_PUBLIC_ADDR`` overrides it, as in Teleport), logs in over SSH with the node's
host certificate (user = host UUID), after checking the proxy's own host certificate against
the cluster's host CA (role ``Proxy``), and opens the control channel. It pings every
:data:`PING_INTERVAL` and reconnects, with exponential backoff and jitter, when the
connection ends or the proxy stops answering. For each session the proxy sends ``dial`` with
a one-time token: the node opens a new TCP connection to the tunnel port, sends the token and
serves SSH on it exactly as on a connection to its listener (the user's certificate and the
node's roles are checked there, end to end; the proxy only relays the encrypted stream). The
session's audited addresses (``addr.local``, ``addr.remote``, ``SSH_CONNECTION``) are that TCP
connection's, also through the web port, where the SSH server reads a socketpair.
Through the proxy's web port (TLS routing): the node dials its ``proxy_server`` (the web address)
in TLS with ALPN ``teleport-reversetunnel`` when ``/webapi/find`` reports no tunnel address (a
proxy with ``proxy_listener_mode: multiplex`` has no tunnel port; Teleport's agents dial the web
address whenever the proxy says ``tls_routing_enabled``), or when the tunnel address it reports
(or ``TELEPORT_TUNNEL_PUBLIC_ADDR``) is the web address itself (``proxy_server`` or the reported
``web_public_addr``). The web certificate is checked as for ``/webapi/find`` (``--insecure``
skips it); the proxy is authenticated by its SSH host certificate inside, as on the tunnel port.

See ``teleport_proxy.tunnel`` for the proxy's side.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from teleport_core.config.values import NetAddr, parse_addr
from teleport_core.errors import TeleportError
from teleport_core.net import tunnelagent
from teleport_core.net.tunnelagent import (  # noqa: F401 - re-exported (tests, callers)
    CONNECT_TIMEOUT,
    CONTROL_CHANNEL,
    DATA_MAGIC,
    TOKEN_BYTES,
    client_key,
    verify_proxy_cert,
)
from teleport_core.pki.identity import LocalIdentity

ADDR_ENV = "TELEPORT_TUNNEL_PUBLIC_ADDR"
# a refused tunnel port: the address came from the proxy's /webapi/find or from ADDR_ENV
REFUSED_HINT = (f"with proxy_listener_mode: multiplex it has none: set {ADDR_ENV} (or the proxy's "
                "tunnel_public_addr) to its web address, or unset it")


def find_tunnel_addr(proxy_server: NetAddr, insecure: bool) -> NetAddr:
    """The proxy's tunnel address (see :func:`find_tunnel`)."""
    return find_tunnel(proxy_server, insecure)[0]


def find_tunnel(proxy_server: NetAddr, insecure: bool) -> tuple[NetAddr, bool]:
    """Where to dial the reverse tunnel, and whether that is the proxy's web port (TLS, ALPN):
    ``$TELEPORT_TUNNEL_PUBLIC_ADDR``, else what ``/webapi/find`` says, with an unspecified host
    (``0.0.0.0``) replaced by the proxy's; no tunnel address with ``tls_routing_enabled``: the web
    address (``proxy_server``)."""
    explicit = os.environ.get(ADDR_ENV, "").strip()
    if explicit:
        try:
            addr = parse_addr(explicit, 3024)
        except ValueError as exc:
            raise TeleportError(f"{ADDR_ENV}: expected host:port, got {explicit!r} ({exc})") from None
        return addr, addr == proxy_server
    from teleport_core.tsh.web import call

    found = call(str(proxy_server), "GET", "/webapi/find", insecure=insecure, timeout=CONNECT_TIMEOUT)
    proxy = (found.get("proxy") or {}) if isinstance(found, dict) else {}
    proxy = proxy if isinstance(proxy, dict) else {}
    ssh_settings = proxy.get("ssh") or {}
    ssh_settings = ssh_settings if isinstance(ssh_settings, dict) else {}
    text = ssh_settings.get("ssh_tunnel_public_addr") or ssh_settings.get("tunnel_listen_addr") or ""
    if not text:
        if proxy.get("tls_routing_enabled") is True:
            return proxy_server, True  # the tunnel server is on the web port only
        raise TeleportError(f"the proxy at {proxy_server} reports no reverse tunnel address")
    try:
        addr = parse_addr(str(text), 3024)
    except ValueError as exc:
        raise TeleportError(f"the proxy at {proxy_server} reports a bad tunnel address {text!r}: {exc}") from None
    if addr.host in ("", "0.0.0.0", "::"):  # noqa: S104
        addr = NetAddr(proxy_server.host, addr.port)
    return addr, addr == proxy_server or str(addr) == str(proxy.get("web_public_addr") or "")


class TunnelAgent(tunnelagent.TunnelAgent):
    """Keeps this node's reverse tunnel to its proxy open (user = the host UUID)."""

    def __init__(self, *, proxy_server: NetAddr, insecure: bool, cluster: str,
                 identity: Callable[[], LocalIdentity], host_ca_keys: Callable[[], list[str]],
                 serve: Callable[[socket.socket, tuple[str, int], tuple[str, int]], None], log: Any) -> None:
        self.proxy_server = proxy_server
        web_port: dict[NetAddr, bool] = {}  # find's answer for the address it gave (one agent thread)

        def tunnel_addr() -> NetAddr:
            addr, tls = find_tunnel(proxy_server, insecure)
            web_port.clear()
            web_port[addr] = tls
            return addr

        super().__init__(tunnel_addr=tunnel_addr, cluster=cluster,
                         login=lambda ident: ident.host_uuid, identity=identity, host_ca_keys=host_ca_keys,
                         serve=lambda conn, message: serve(conn.sock, conn.remote, conn.local), log=log,
                         name="teleport-node-tunnel", describe=str(proxy_server),
                         tls_routing=lambda addr: web_port.get(addr, False), insecure=insecure,
                         refused_hint=REFUSED_HINT)
