"""Reverse tunnels through the proxy's web port (TLS routing, ALPN ``teleport-reversetunnel``).

The proxy runs with ``proxy_listener_mode: multiplex``: it opens no tunnel port, so the node (a
real ``teleport start`` process with ``proxy_server`` = the web address) can only come in through
the web port. Users reach it with ``tsh ssh``. Attackers speaking ALPN ``teleport-reversetunnel``
(garbage, certificates of another CA or cluster, a made-up data token) are refused and audited as
on the tunnel port, and the web port's other routes keep working."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh
from proxy_helpers import CLUSTER, LOGIN, PROXY_TOKEN, Env
from test_reverse_tunnel import (
    NODENAME,
    Cluster,
    _paramiko_key,
    check_session_addresses,
    listening_ports,
    running,
    signed_up_alice,
)

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.config.values import NetAddr
from teleport_core.net.tunnelagent import ALPN_REVERSE_TUNNEL, DATA_MAGIC, dial
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class MultiplexCluster(Cluster):
    """The same cluster, its proxy in multiplex mode: no tunnel port."""

    def start_proxy(self) -> None:
        p = self.ports
        config = {
            "teleport": {"data_dir": str(self.root / "proxy"), "nodename": "proxy-1", "auth_server": self.auth_addr,
                         "auth_token": PROXY_TOKEN, "ca_pin": self.pin()},
            "auth_service": {"enabled": False}, "ssh_service": {"enabled": False},
            "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{p['web']}",
                              "listen_addr": f"127.0.0.1:{p['ssh']}", "proxy_listener_mode": "multiplex"},
        }
        self.proxy_handle = start_cluster(config, make_plugins(), timeout=60).__enter__()
        self.env = Env(self.root, self.auth, self.proxy_handle)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(tmp_path_factory, MultiplexCluster) as c:
        yield c


@pytest.fixture(scope="module")
def alice(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return signed_up_alice(cluster, tmp_path_factory)


def web_addr(cluster: Cluster) -> NetAddr:
    return NetAddr("127.0.0.1", cluster.ports["web"])


def denials(cluster: Cluster) -> list[str]:
    return [e.get("error", "") for e in cluster.env.call("search_events")["events"]
            if e["code"] == "T3007W" and e.get("kind") == "reverse_tunnel"]


def tunnel_login(cluster: Cluster, username: str, key: paramiko.PKey) -> None:
    """An SSH login to the tunnel server through the web port (TLS, ALPN teleport-reversetunnel)."""
    transport = paramiko.Transport(dial(web_addr(cluster), tls=True, insecure=True).sock)
    try:
        transport.start_client(timeout=10)
        transport.auth_publickey(username, key)
    finally:
        transport.close()


def host_cert(cluster: Cluster, signer: Any, authority: str, role: str = "Node") -> paramiko.PKey:
    """A host certificate naming the real node, signed by ``signer`` for cluster ``authority``."""
    subject = ed25519.Ed25519PrivateKey.generate()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    uuid = cluster.node_uuid
    cert = (ssh.SSHCertificateBuilder().public_key(subject.public_key()).serial(1)
            .type(ssh.SSHCertificateType.HOST).key_id(f"{uuid}.{authority}".encode())
            .valid_principals([uuid.encode(), f"{uuid}.{authority}".encode()])
            .valid_after(now - 60).valid_before(now + 3600)
            .add_extension(b"x-teleport-role", role.encode())
            .add_extension(b"x-teleport-authority", authority.encode()).sign(signer))
    return _paramiko_key(subject, cert.public_bytes().decode())


def test_the_node_tunnels_through_the_web_port_only(cluster: Cluster, alice: Path) -> None:
    proxy = cluster.proxy
    assert proxy.tunnel.sock is None  # multiplex: no tunnel port
    assert cluster.ports["tunnel"] not in listening_ports(os.getpid())
    assert cluster.node is not None and listening_ports(cluster.node.pid) == []
    with cluster.env.web_client() as web:  # what the node asked: no tunnel address, TLS routing
        found = web.get("/webapi/find").json()["proxy"]
    assert found["tls_routing_enabled"] is True
    assert found["ssh"]["tunnel_listen_addr"] == "" and found["ssh"]["ssh_tunnel_public_addr"] == ""
    assert proxy.tunnel.connected(cluster.node_uuid)
    assert ALPN_REVERSE_TUNNEL in cluster.node_log()  # its "reverse tunnel connected" line


def test_tsh_ssh_reaches_the_node_behind_the_web_port_tunnel(cluster: Cluster, alice: Path) -> None:
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "echo", "through-the-web-port", timeout=180)
    assert result.returncode == 0, result.stderr + cluster.node_log()[-3000:]
    assert result.stdout == "through-the-web-port\n"
    data = os.urandom(1 << 20).hex()  # 2 MiB through TLS, the bridge and the user's SSH, and back
    echoed = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "cat", stdin=data, timeout=180)
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == data

    def audited() -> bool:
        events = cluster.env.call("search_events")["events"]
        return any(e["event"] == "reverse_tunnel.connect" and e["host_id"] == cluster.node_uuid for e in events) \
            and any(e["event"] == "session.start" and e.get("server_id") == cluster.node_uuid for e in events)

    assert wait_for(what="the tunnel and session events", check=audited)


def test_the_nodes_session_audits_the_tls_connections_addresses(
        cluster: Cluster, alice: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The node serves the session on a socketpair bridged to its TLS connection to the web port:
    its events and SSH_CONNECTION still carry that connection's real addresses, as on port 3024."""
    check_session_addresses(cluster, alice, tmp_path_factory, cluster.ports["web"])


def test_garbage_under_the_tunnel_alpn_is_refused_and_audited(cluster: Cluster) -> None:
    sock = dial(web_addr(cluster), tls=True, insecure=True).sock
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(64))
        sock.settimeout(15)
        assert sock.recv(100) == b""
    wait_for(what="the denial in the audit log",
             check=lambda: "reverse tunnel: not an SSH or tunnel data connection" in denials(cluster))
    # a client that offers the ALPN but fails the TLS handshake gets nothing either
    context = ssl.create_default_context()  # verifies the self-signed web certificate: refuses it
    context.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
    with socket.create_connection(("127.0.0.1", cluster.ports["web"]), timeout=15) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    assert cluster.proxy.tunnel.connected(cluster.node_uuid)


def test_foreign_certificates_and_tokens_are_refused_through_the_web_port(cluster: Cluster, alice: Path) -> None:
    folder = alice / "profiles" / "127.0.0.1"
    user_key = paramiko.Ed25519Key.from_private_key_file(str(folder / "id"))
    user_key.load_certificate(str(folder / "id-cert.pub"))
    with pytest.raises(paramiko.AuthenticationException):  # the user's cert, claiming to be the node
        tunnel_login(cluster, cluster.node_uuid, user_key)
    rogue_ca = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(paramiko.AuthenticationException):  # right in every way, another CA
        tunnel_login(cluster, cluster.node_uuid, host_cert(cluster, rogue_ca, CLUSTER))
    with pytest.raises(paramiko.AuthenticationException):  # another cluster's host certificate
        tunnel_login(cluster, cluster.node_uuid, host_cert(cluster, rogue_ca, "other.example.com"))
    sock = dial(web_addr(cluster), tls=True, insecure=True).sock  # a data connection, made-up token
    with sock:
        sock.sendall(DATA_MAGIC + os.urandom(32))
        sock.settimeout(15)
        assert sock.recv(100) == b""
    expected = ["reverse tunnel: a user certificate was offered, only node host certificates are accepted",
                "reverse tunnel: the host certificate is not signed by the cluster's host CA",
                "reverse tunnel: the certificate belongs to another cluster ('other.example.com' is not a trusted "
                "leaf cluster of this one)",
                "reverse tunnel: data connection with an unknown or expired token"]
    wait_for(what="the denials in the audit log", check=lambda: all(x in denials(cluster) for x in expected))
    assert cluster.proxy.tunnel.connected(cluster.node_uuid)  # the real node is untouched


def test_the_other_web_port_routes_still_work(cluster: Cluster, alice: Path) -> None:
    with cluster.env.web_client() as web:  # HTTPS
        assert web.get("/webapi/ping").json()["cluster_name"] == CLUSTER

    async def auth_status() -> dict[str, Any]:  # the auth API passed through (SNI teleport.cluster.local)
        async with AuthClient(f"127.0.0.1:{cluster.ports['web']}",
                              [load_identity_dir(cluster.root / "auth" / "keys" / "auth")]) as api:
            return dict(await api.status())

    assert asyncio.run(auth_status())["cluster_name"] == CLUSTER
    # tsh's SSH (ALPN teleport-proxy-ssh) went through the web port in the test above; once more here
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "echo", "still", timeout=180)
    assert result.returncode == 0 and result.stdout == "still\n", result.stderr


def test_the_node_reconnects_through_the_web_port_after_the_proxy_restarts(cluster: Cluster, alice: Path) -> None:
    cluster.stop_proxy()
    wait_for(what="the node to notice", check=lambda: "reverse tunnel down, will reconnect" in cluster.node_log())
    cluster.start_proxy()
    cluster.wait_tunnel(timeout=180)
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "echo", "back", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "back\n"
