"""End to end: a node behind a reverse tunnel. Auth and proxy run in this process (the proxy on
fixed free ports so it can be restarted); the node is a real ``teleport start`` process with
``teleport.proxy_server`` set, so it opens no listening port and dials the proxy's tunnel port.
Users reach it with ``tsh ssh`` and OpenSSH ``ssh -J`` (strict host checking on both hops)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh
from proxy_helpers import CLUSTER, LOGIN, NODE_TOKEN, PROXY_TOKEN, SSHD, Env, free_port, profile_ssh_config

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import ClusterHandle, start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

TELEPORT = str(Path(sys.executable).with_name("teleport"))
NODENAME = "hidden-node"
PASSWORD = "tunnel password 0123456789"




def listening_ports(pid: int) -> list[int]:
    """TCP ports process ``pid`` listens on (its socket inodes in LISTEN state, from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class Cluster:
    """Auth (in process), a restartable proxy (in process, fixed ports) and the tunnelled node."""

    def __init__(self, root: Path, auth: ClusterHandle) -> None:
        self.root = root
        self.auth = auth
        self.auth_addr = auth.process.services["auth_service"].address
        self.ports = {"web": free_port(), "ssh": free_port(), "tunnel": free_port()}
        self.proxy_handle: ClusterHandle | None = None
        self.env: Env
        self.node: subprocess.Popen[bytes] | None = None
        self.node_uuid = ""

    def pin(self) -> str:
        async def body() -> str:
            async with AuthClient(self.auth_addr, [load_identity_dir(self.root / "auth" / "keys" / "auth")]) as c:
                return str((await c.status())["ca_pin"])

        return asyncio.run(body())

    def start_proxy(self) -> None:
        p = self.ports
        config = {
            "teleport": {"data_dir": str(self.root / "proxy"), "nodename": "proxy-1", "auth_server": self.auth_addr,
                         "auth_token": PROXY_TOKEN, "ca_pin": self.pin()},
            "auth_service": {"enabled": False}, "ssh_service": {"enabled": False},
            "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{p['web']}",
                              "listen_addr": f"127.0.0.1:{p['ssh']}",
                              "tunnel_listen_addr": f"127.0.0.1:{p['tunnel']}"},
        }
        self.proxy_handle = start_cluster(config, make_plugins(), timeout=60).__enter__()
        self.env = Env(self.root, self.auth, self.proxy_handle)

    def stop_proxy(self) -> None:
        assert self.proxy_handle is not None
        self.proxy_handle.__exit__(None, None, None)
        self.proxy_handle = None

    @property
    def proxy(self) -> Any:
        return self.env.proxy

    def start_node(self) -> None:
        folder = self.root / "node"
        folder.mkdir(exist_ok=True)
        config = folder / "teleport.yaml"
        config.write_text(yaml.safe_dump({
            "version": "v3",
            "teleport": {"data_dir": str(folder / "data"), "nodename": NODENAME,
                         "proxy_server": f"127.0.0.1:{self.ports['web']}", "auth_token": NODE_TOKEN,
                         "ca_pin": self.pin(), "log": {"output": str(folder / "node.log"), "severity": "DEBUG"}},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"enabled": True, "labels": {"env": "test", "where": "behind-nat"}},
        }))
        with open(folder / "stderr.log", "ab") as stderr:
            # --insecure: the proxy's HTTPS certificate (asked for the tunnel address) is self-signed
            self.node = subprocess.Popen([TELEPORT, "start", "-c", str(config), "--insecure"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        node = wait_for(what="the node to register", check=lambda: next(
            (n for n in self.env.call("get_nodes") if n["nodename"] == NODENAME), None), timeout=240)
        self.node_uuid = node["uuid"]
        self.wait_tunnel()

    def wait_tunnel(self, timeout: float = 120.0) -> None:
        def up() -> bool:
            if self.node is not None and self.node.poll() is not None:
                raise RuntimeError(f"the node exited with {self.node.returncode}: {self.node_log()}")
            return bool(self.proxy.tunnel.connected(self.node_uuid))

        wait_for(up, "the reverse tunnel", timeout)

    def node_log(self) -> str:
        folder = self.root / "node"
        return "".join(p.read_text() for p in (folder / "node.log", folder / "stderr.log") if p.exists())

    def stop_node(self) -> None:
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
            try:
                self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait(10)


@contextlib.contextmanager
def running(tmp_path_factory: pytest.TempPathFactory, cluster_class: type[Cluster] = Cluster) -> Iterator[Any]:
    """Auth in this process, the proxy (``cluster_class.start_proxy``), a role ``dev`` and the tunnelled node."""
    if not Path(SSHD).exists():
        missing("OpenSSH sshd is not installed (apt-get install openssh-server)")
    root = tmp_path_factory.mktemp("tunnel")
    auth_config = {
        "teleport": {"data_dir": str(root / "auth"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                         "tokens": [f"proxy:{PROXY_TOKEN}", f"node:{NODE_TOKEN}"],
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False},
    }
    with start_cluster(auth_config, make_plugins(), timeout=60) as auth:
        c = cluster_class(root, auth)
        c.start_proxy()
        try:
            c.env.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "dev"},
                                       "spec": {"allow": {"logins": ["{{internal.logins}}"],
                                                          "node_labels": {"env": "test"}}}})
            c.start_node()
            yield c
        finally:
            c.stop_node()
            if c.proxy_handle is not None:
                c.stop_proxy()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(tmp_path_factory) as c:
        yield c


@pytest.fixture(scope="module")
def alice(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return signed_up_alice(cluster, tmp_path_factory)


def signed_up_alice(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice (role ``dev``) signed up and logged in: her tsh home."""
    cluster.env.signup("alice", ["dev"], [LOGIN], PASSWORD)
    home = tmp_path_factory.mktemp("alice-tsh")
    result = cluster.env.login(home, "alice")
    assert result.returncode == 0, result.stderr
    return home


def ssh_config(alice: Path, tmp_path: Path) -> Path:
    return profile_ssh_config(alice, tmp_path / "ssh_config")


def _established(proc_net_tcp: str) -> set[tuple[str, str]]:
    """The IPv4 connections in ``/proc/net/tcp`` text that are established: (local, remote) ``host:port``."""
    def addr(field: str) -> str:
        ip, port = field.split(":")
        return f"{'.'.join(str(b) for b in reversed(bytes.fromhex(ip)))}:{int(port, 16)}"

    found = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "01" and len(fields[1]) == 13:  # 01: ESTABLISHED; IPv4
            found.add((addr(fields[1]), addr(fields[2])))
    return found


def check_session_addresses(cluster: Cluster, alice: Path, tmp_path_factory: pytest.TempPathFactory,
                            proxy_port: int) -> None:
    """The tunnelled node audits (and puts in ``SSH_CONNECTION``) the addresses of the TCP connection
    it dialed to the proxy's ``proxy_port`` for the session: real ones, alive while the session runs."""
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", 'echo "$SSH_CONNECTION"; cat /proc/net/tcp',
                             timeout=180)
    assert result.returncode == 0, result.stderr + cluster.node_log()[-3000:]
    first, _, table = result.stdout.partition("\n")
    parts = first.split()  # client address and port, server address and port
    assert len(parts) == 4, f"SSH_CONNECTION={first!r}"
    remote_ip, remote_port, local_ip, local_port = parts
    remote, local = f"{remote_ip}:{remote_port}", f"{local_ip}:{local_port}"
    assert remote == f"127.0.0.1:{proxy_port}" and local_ip == "127.0.0.1" and int(local_port) > 0, first
    assert (local, remote) in _established(table)  # the node's own TCP connection, open during the session

    def node_events(kind: str) -> list[dict[str, Any]]:
        return [e for e in cluster.env.call("search_events")["events"]
                if e["event"] == kind and e.get("server_id") == cluster.node_uuid]

    started = wait_for(lambda: [e for e in node_events("session.start") if e.get("addr.local") == local],
                       "the session's session.start")
    assert started[0]["addr.remote"] == remote
    # a refused login (no such OS user on the node) is audited with the same kind of addresses
    cluster.env.signup("tunnel-bob", ["dev"], ["no-such-user-tunnel"], PASSWORD)
    home = tmp_path_factory.mktemp("bob-tsh")
    assert cluster.env.login(home, "tunnel-bob").returncode == 0
    refused = cluster.env.tsh(home, "ssh", f"no-such-user-tunnel@{NODENAME}", "true", timeout=180)
    assert refused.returncode != 0
    failures = wait_for(lambda: [e for e in node_events("auth") if e.get("user") == "tunnel-bob"],
                        "the node's auth failure")
    assert failures[0]["code"] == "T3007W" and failures[0]["addr.remote"] == remote
    host, _, port = failures[0]["addr.local"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0 and failures[0]["addr.local"] != local  # its own connection


def test_tunnelled_node_listens_nowhere_and_heartbeats_the_tunnel_marker(cluster: Cluster, alice: Path) -> None:
    assert cluster.node is not None
    assert listening_ports(cluster.node.pid) == []
    node = next(n for n in cluster.env.call("get_nodes") if n["nodename"] == NODENAME)
    assert node["tunnel"] is True and node["addr"] == ""
    listing = cluster.env.tsh(alice, "ls", timeout=180)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if line.startswith(NODENAME))
    assert "⟵ Tunnel" in line and "where=behind-nat" in line
    with cluster.env.web_client() as web:  # what the node asked to find the tunnel
        ping = web.get("/webapi/find").json()
    assert ping["proxy"]["ssh"]["ssh_tunnel_public_addr"] == f"127.0.0.1:{cluster.ports['tunnel']}"
    assert cluster.proxy.ctx.metrics.get_sample_value("reverse_tunnels_connected") == 1


def test_tsh_ssh_reaches_the_tunnelled_node(cluster: Cluster, alice: Path, tmp_path: Path) -> None:
    ssh_port = tmp_path / "tsh"  # the same profile without TLS routing: the proxy:host:port subsystem
    shutil.copytree(alice, ssh_port)
    meta_path = ssh_port / "profiles" / "127.0.0.1" / "profile.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "tls_routing": False}))
    for home in (alice, ssh_port):
        result = cluster.env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo", "through-the-tunnel", timeout=180)
        assert result.returncode == 0, result.stderr + cluster.node_log()[-3000:]
        assert result.stdout == "through-the-tunnel\n"
    data = "0123456789abcdef" * 256 * 1024  # 4 MiB through the tunnel, and its digest back
    counted = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "sha256sum", stdin=data, timeout=180)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.split()[0] == hashlib.sha256(data.encode()).hexdigest()
    by_uuid = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{cluster.node_uuid}", "exit 3", timeout=180)
    assert by_uuid.returncode == 3, by_uuid.stderr
    by_label = cluster.env.tsh(alice, "ssh", f"{LOGIN}@where=behind-nat", "hostname >/dev/null; echo ok",
                               timeout=180)
    assert by_label.returncode == 0 and by_label.stdout.strip().endswith("ok"), by_label.stderr


def test_openssh_jump_reaches_the_tunnelled_node(cluster: Cluster, alice: Path, tmp_path: Path) -> None:
    config = ssh_config(alice, tmp_path)
    result = subprocess.run(
        ["ssh", "-F", str(config), "-J", f"alice@127.0.0.1:{cluster.ports['ssh']}", f"{LOGIN}@{NODENAME}.{CLUSTER}",
         "echo", "via-jump"],
        capture_output=True, text=True, timeout=180, check=False, env={**os.environ, "SSH_AUTH_SOCK": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via-jump\n"

    def audited() -> bool:  # the proxy's and the node's events reach auth asynchronously
        events = cluster.env.call("search_events")["events"]
        return any(e["event"] == "reverse_tunnel.connect" and e["code"] == "TRT00I"
                   and e["host_id"] == cluster.node_uuid for e in events) and any(
            e["event"] == "session.start" and e.get("server_id") == cluster.node_uuid for e in events)

    assert wait_for(what="the tunnel and session events", check=audited)


def test_the_nodes_session_audits_the_tunnel_connections_addresses(
        cluster: Cluster, alice: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    check_session_addresses(cluster, alice, tmp_path_factory, cluster.ports["tunnel"])


def _tunnel_login(cluster: Cluster, username: str, key: paramiko.PKey) -> None:
    sock = socket.create_connection(("127.0.0.1", cluster.ports["tunnel"]), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        transport.auth_publickey(username, key)
    finally:
        transport.close()


def _paramiko_key(private: Any, cert_line: str) -> paramiko.PKey:
    import io

    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.private_key_openssh(private).decode()))
    pkey.load_certificate(cert_line)
    return pkey


def test_user_and_foreign_certificates_are_refused_on_the_tunnel_port(cluster: Cluster, alice: Path) -> None:
    folder = alice / "profiles" / "127.0.0.1"
    user_key = paramiko.Ed25519Key.from_private_key_file(str(folder / "id"))
    user_key.load_certificate(str(folder / "id-cert.pub"))
    with pytest.raises(paramiko.AuthenticationException):
        _tunnel_login(cluster, "alice", user_key)
    with pytest.raises(paramiko.AuthenticationException):  # the user's cert, claiming to be the node
        _tunnel_login(cluster, cluster.node_uuid, user_key)
    # a host certificate that looks right in every way but is signed by another CA
    rogue_ca = ed25519.Ed25519PrivateKey.generate()
    subject = ed25519.Ed25519PrivateKey.generate()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    cert = (ssh.SSHCertificateBuilder().public_key(subject.public_key()).serial(1)
            .type(ssh.SSHCertificateType.HOST).key_id(f"{cluster.node_uuid}.{CLUSTER}".encode())
            .valid_principals([cluster.node_uuid.encode(), f"{cluster.node_uuid}.{CLUSTER}".encode()])
            .valid_after(now - 60).valid_before(now + 3600)
            .add_extension(b"x-teleport-role", b"Node").add_extension(b"x-teleport-authority", CLUSTER.encode())
            .sign(rogue_ca))
    with pytest.raises(paramiko.AuthenticationException):
        _tunnel_login(cluster, cluster.node_uuid, _paramiko_key(subject, cert.public_bytes().decode()))
    # a data connection with a made-up token gets nothing
    with socket.create_connection(("127.0.0.1", cluster.ports["tunnel"]), timeout=10) as sock:
        sock.sendall(b"TPY-TUNNEL-DATA\n" + os.urandom(32))
        sock.settimeout(10)
        assert sock.recv(100) == b""

    def denials() -> list[str]:
        return [e.get("error", "") for e in cluster.env.call("search_events")["events"]
                if e["code"] == "T3007W" and e.get("kind") == "reverse_tunnel"]

    expected = ["reverse tunnel: a user certificate was offered, only node host certificates are accepted",
                "reverse tunnel: the host certificate is not signed by the cluster's host CA",
                "reverse tunnel: data connection with an unknown or expired token"]
    found = wait_for(what="the denials in the audit log", check=lambda: all(x in denials() for x in expected) and denials())
    assert sum(1 for x in found if "user certificate" in x) >= 2
    # the real node is still reachable
    assert cluster.proxy.tunnel.connected(cluster.node_uuid)


def test_node_reconnects_after_the_proxy_restarts(cluster: Cluster, alice: Path) -> None:
    cluster.stop_proxy()
    disconnected = wait_for(what="the node to notice", check=lambda: "reverse tunnel down, will reconnect" in cluster.node_log())
    assert disconnected
    cluster.start_proxy()
    cluster.wait_tunnel(timeout=180)
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "echo", "back", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "back\n"

    def audited() -> bool:
        events = cluster.env.call("search_events")["events"]
        return any(e["event"] == "reverse_tunnel.disconnect" and e["host_id"] == cluster.node_uuid
                   and e["reason"] == "the proxy is stopping" for e in events) and sum(
            1 for e in events if e["event"] == "reverse_tunnel.connect" and e["host_id"] == cluster.node_uuid) >= 2

    assert wait_for(what="the disconnect and the second connect in the audit log", check=audited)


def test_a_node_whose_tunnel_is_down_is_reported_offline(cluster: Cluster, alice: Path) -> None:
    cluster.stop_node()  # last test: the node's heartbeat stays registered until it expires
    wait_for(what="the tunnel to close", check=lambda: not cluster.proxy.tunnel.connected(cluster.node_uuid))
    result = cluster.env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "true", timeout=180)
    assert result.returncode != 0
    assert f"node {NODENAME} is offline: it has no reverse tunnel to this proxy" in result.stderr, result.stderr

    def audited() -> bool:
        return any(e["event"] == "reverse_tunnel.disconnect" and e["host_id"] == cluster.node_uuid
                   and e["reason"] == "the node closed the tunnel" for e in cluster.env.call("search_events")["events"])

    assert wait_for(what="the disconnect in the audit log", check=audited)
