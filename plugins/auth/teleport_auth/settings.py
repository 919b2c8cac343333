"""The ``auth_service`` section of ``teleport.yaml``."""

from __future__ import annotations

import datetime as dt

import attrs

from teleport_auth.tokens import TokenInfo, parse_static_tokens
from teleport_core.config.limits import ConnectionLimits, parse_connection_limits
from teleport_core.config.reader import SectionReader
from teleport_core.config.values import NetAddr
from teleport_core.net.workers import MAX_WORKERS

SAMPLE = """\
# Name of the cluster; it cannot change once the cluster is created.
cluster_name: $cluster_name
# The auth API (mutual TLS): nodes, proxies and tctl connect here.
listen_addr: 0.0.0.0:3025
# Static join tokens ("roles:token"); prefer short-lived ones from `tctl nodes add`.
# tokens: ["node:replace-with-a-long-random-token"]
authentication:
  type: local
  second_factor: otp        # off or otp (TOTP)
session_recording: node     # node, node-sync (streamed to auth live), proxy, proxy-sync or off
# Key types of new CAs (used once, when the cluster is created): ed25519 (SSH Ed25519, TLS
# ECDSA P-256), ecdsa (both ECDSA P-256) or rsa2048 (both RSA-2048, for old clients).
ca_key_algorithm: ed25519
# A web UI session with no request for this long ends (0: never).
web_idle_timeout: 10m
"""

# ca_key_algorithm -> (SSH key algorithm, TLS key algorithm) of new CAs
CA_KEY_ALGORITHMS = {
    "ed25519": ("ed25519", "ecdsa-p256"),
    "ecdsa": ("ecdsa-p256", "ecdsa-p256"),
    "rsa2048": ("rsa2048", "rsa2048"),
}


@attrs.frozen(repr=False)
class AuthSettings:
    cluster_name: str
    listen_addr: NetAddr
    public_addrs: tuple[NetAddr, ...]
    static_tokens: tuple[TokenInfo, ...]
    second_factor: str
    session_recording: str
    proxy_public_addr: NetAddr | None
    ca_key_algorithm: str = "ed25519"
    connection_limits: ConnectionLimits | None = None  # None: teleport.connection_limits
    #: a web session with no request for this long ends (Teleport's name and default; 0: never)
    web_idle_timeout: dt.timedelta = dt.timedelta(minutes=10)
    #: auth API processes sharing listen_addr (teleport_auth.workers; 1: this process only)
    workers: int = 1

    def __repr__(self) -> str:  # static tokens are secrets
        return f"AuthSettings(cluster_name={self.cluster_name!r}, listen_addr={self.listen_addr})"


def parse_settings(reader: SectionReader, nodename: str) -> AuthSettings:
    """Read ``auth_service``; every error names its key path."""
    cluster = reader.string("cluster_name", nodename)
    from teleport_auth.authority import validate_cluster_name

    try:
        validate_cluster_name(cluster)
    except ValueError as exc:
        raise reader.error("cluster_name", str(exc)) from None
    listen = reader.addr("listen_addr", "0.0.0.0:3025")
    public = reader.addrs("public_addr", default_port=3025)
    tokens = reader.strings("tokens", single_ok=False)
    static = tuple(parse_static_tokens(tokens, f"{reader.path}.tokens"))
    authn = reader.section("authentication")
    authn.string("type", "local", choices=("local",))
    second_factor = authn.string("second_factor", "otp", choices=("off", "otp"))
    authn.finish()
    recording = reader.string("session_recording", "node", choices=("node", "node-sync", "proxy", "proxy-sync", "off"))
    proxy = reader.addr("proxy_public_addr", None, default_port=3080)
    algorithm = reader.string("ca_key_algorithm", "ed25519", choices=tuple(CA_KEY_ALGORITHMS))
    limits = parse_connection_limits(reader)
    idle = reader.duration("web_idle_timeout", "10m")
    if idle < dt.timedelta(0):
        raise reader.error("web_idle_timeout", "must not be negative")
    workers = reader.integer("workers", 1)
    if not 1 <= workers <= MAX_WORKERS:
        raise reader.error("workers", f"expected 1 to {MAX_WORKERS} auth processes, got {workers}")
    return AuthSettings(cluster, listen, public, static, second_factor, recording, proxy, algorithm, limits,
                        web_idle_timeout=idle, workers=workers)
