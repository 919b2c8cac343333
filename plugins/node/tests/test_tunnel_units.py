"""The node's side of a reverse tunnel, without processes: where it dials, which proxy it trusts."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from teleport_node.tunnel import ADDR_ENV, find_tunnel_addr, verify_proxy_cert

from teleport_core.api.join import JoinError, auth_addresses
from teleport_core.config.load import parse_config
from teleport_core.config.values import NetAddr
from teleport_core.errors import AccessDenied, TeleportError
from teleport_core.plugins import make_plugins

CLUSTER = "example.com"
CA = ed25519.Ed25519PrivateKey.generate()
CA_LINE = CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def host_cert(role: str = "Proxy", signer: Any = CA, principals: tuple[str, ...] = ("proxy.example.com",),
              authority: str = CLUSTER) -> tuple[str, bytes]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    cert = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key()).serial(1)
            .type(ssh.SSHCertificateType.HOST).key_id(b"p").valid_principals([p.encode() for p in principals])
            .valid_after(now - 60).valid_before(now + 3600)
            .add_extension(b"x-teleport-role", role.encode())
            .add_extension(b"x-teleport-authority", authority.encode()).sign(signer))
    key_type, blob = cert.public_bytes().decode().split()[:2]
    return key_type, base64.b64decode(blob)


def test_the_node_trusts_only_a_proxy_certificate_of_its_cluster() -> None:
    verify_proxy_cert(*host_cert(), [CA_LINE], "proxy.example.com", CLUSTER)
    verify_proxy_cert(*host_cert(), [CA_LINE], "127.0.0.1", CLUSTER)  # by address: the CA and role decide
    for cert, host in ((host_cert(role="Node"), "proxy.example.com"),
                       (host_cert(authority="other"), "proxy.example.com"),
                       (host_cert(signer=ed25519.Ed25519PrivateKey.generate()), "proxy.example.com"),
                       (host_cert(), "elsewhere.example.com")):
        with pytest.raises(AccessDenied):
            verify_proxy_cert(*cert, [CA_LINE], host, CLUSTER)


def test_the_tunnel_address_can_be_given_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADDR_ENV, "tunnel.example.com")
    assert find_tunnel_addr(NetAddr("proxy.example.com", 3080), insecure=False) == NetAddr("tunnel.example.com", 3024)
    monkeypatch.setenv(ADDR_ENV, "tunnel.example.com:x")
    with pytest.raises(TeleportError, match=f"{ADDR_ENV}: expected host:port"):
        find_tunnel_addr(NetAddr("proxy.example.com", 3080), insecure=False)


def test_a_node_behind_a_tunnel_reaches_auth_through_the_proxy_unless_told_otherwise(tmp_path: Path) -> None:
    config = parse_config({"teleport": {"data_dir": str(tmp_path), "proxy_server": "proxy.example.com"}},
                          make_plugins())
    assert config.proxy_server == NetAddr("proxy.example.com", 3080)
    assert auth_addresses(config) == ["proxy.example.com:3080"]
    config = parse_config({"teleport": {"data_dir": str(tmp_path), "proxy_server": "proxy.example.com",
                                        "auth_servers": ["auth-a", "auth-b:3999"]}}, make_plugins())
    assert auth_addresses(config) == ["auth-a:3025", "auth-b:3999"]
    with pytest.raises(JoinError, match="no auth server to join"):
        auth_addresses(parse_config({"teleport": {"data_dir": str(tmp_path)}, "auth_service": {"enabled": False}},
                                    make_plugins()))
