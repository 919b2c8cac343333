"""A host CA rotation in a running cluster: auth (in process), a node and a proxy (``teleport
start`` processes). The node and the proxy renew their host certificates when the rotation
reaches them, without a restart: from ``update_servers`` on they present certificates from the
new host CA, and after ``standby`` OpenSSH with only the new CA in known_hosts connects.
Sessions keep working in every phase, including one that stays open through all of them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import ssh
from node_helpers import CLUSTER, TELEPORT, Auth, Node, auth_config, free_port, run, ssh_argv, wait_port

from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.processes import stop_process
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(900)

PROXY_TOKEN = "static-proxy-token-0123456789abcd"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Auth]:
    port = free_port()
    config = auth_config(tmp_path / "auth", port)
    config["auth_service"]["tokens"].append(f"proxy:{PROXY_TOKEN}")
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        yield Auth(handle, tmp_path / "auth", port)


class Proxy:
    """A ``teleport start`` process running the proxy service."""

    def __init__(self, auth: Auth, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.ssh_port, self.web_port, self.tunnel_port = free_port(), free_port(), free_port()
        config = folder / "teleport.yaml"
        config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(folder / "data"), "nodename": "proxy1", "auth_server": auth.addr,
                         "auth_token": PROXY_TOKEN, "ca_pin": auth.pin(), "log": {"output": str(folder / "proxy.log")}},
            "auth_service": {"enabled": False}, "ssh_service": {"enabled": False},
            "proxy_service": {"enabled": True, "listen_addr": f"127.0.0.1:{self.ssh_port}",
                              "web_listen_addr": f"127.0.0.1:{self.web_port}",
                              "tunnel_listen_addr": f"127.0.0.1:{self.tunnel_port}"}}))
        with open(folder / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([TELEPORT, "start", "-c", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        wait_port(self.ssh_port, proc=self.proc)

    def stop(self) -> None:
        stop_process(self.proc)


def host_cert_signer(port: int) -> str:
    """The OpenSSH public key line of the CA that signed the host certificate served on ``port``."""
    scan = subprocess.run(["ssh-keyscan", "-c", "-T", "30", "-p", str(port), "127.0.0.1"], capture_output=True,
                          text=True, timeout=90)
    found = [fields[i:i + 2] for fields in (line.split() for line in scan.stdout.splitlines()
                                            if not line.startswith("#"))
             for i, field in enumerate(fields) if field.endswith("-cert-v01@openssh.com")]
    assert found and len(found[0]) == 2, f"no host certificate from port {port}: {scan.stdout!r} {scan.stderr!r}"
    cert = ssh.load_ssh_public_identity(" ".join(found[0]).encode())
    assert isinstance(cert, ssh.SSHCertificate)
    return key_line(cert.signature_key())


def key_line(key: Any) -> str:
    return bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)).decode()


def same_key(line_a: str, line_b: str) -> bool:
    return line_a.split()[:2] == line_b.split()[:2]


def known_hosts_for(ca_line: str) -> str:
    return f"@cert-authority *.{CLUSTER},{CLUSTER} {ca_line.strip()}\n"




def test_node_and_proxy_renew_host_certificates_through_a_host_ca_rotation(cluster: Auth, tmp_path: Path) -> None:
    auth = cluster
    node = Node(auth, tmp_path / "node").start()
    proxy = Proxy(auth, tmp_path / "proxy")
    long_session: subprocess.Popen[str] | None = None
    try:
        key = auth.user(tmp_path, "rory", ["access"], ["root"])
        old_ca = auth.run(lambda c: c.get_cert_authority("host"))["ssh_public_keys"][0]
        old_hosts = tmp_path / "old_known_hosts"
        old_hosts.write_text(known_hosts_for(old_ca))

        def session(hosts: Path, marker: str) -> subprocess.CompletedProcess[str]:
            argv = ssh_argv(tmp_path, node.port, key, "root", f"echo {marker}")
            argv[argv.index(f"UserKnownHostsFile={tmp_path / 'known_hosts'}")] = f"UserKnownHostsFile={hosts}"
            return run(argv, timeout=120)

        def jump(ca_line: str, marker: str) -> subprocess.CompletedProcess[str]:
            """OpenSSH through the proxy (``-J``), trusting only ``ca_line`` for both hops."""
            hosts = tmp_path / f"jump_known_hosts_{marker}"
            hosts.write_text(f"@cert-authority * {ca_line.strip()}\n")
            config = tmp_path / f"ssh_config_{marker}"  # command-line -o options would not reach the jump hop
            config.write_text(f"Host *\n  IdentityFile {key}\n  CertificateFile {key}-cert.pub\n"
                              f"  UserKnownHostsFile {hosts}\n  GlobalKnownHostsFile /dev/null\n"
                              "  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n  IdentityAgent none\n"
                              "  BatchMode yes\n  ConnectTimeout 30\n")
            return run(["ssh", "-F", str(config), "-J", f"rory@127.0.0.1:{proxy.ssh_port}",
                        f"root@node1.{CLUSTER}", f"echo {marker}"], timeout=120)

        def works(hosts: Path, marker: str) -> None:
            result = session(hosts, marker)
            assert result.returncode == 0 and result.stdout.strip() == marker, result.stderr
            ca_line = old_ca if hosts == old_hosts else new_ca
            through = jump(ca_line, f"{marker}-via-proxy")
            assert through.returncode == 0 and through.stdout.strip() == f"{marker}-via-proxy", through.stderr

        new_ca = ""
        works(old_hosts, "before")
        assert same_key(host_cert_signer(node.port), old_ca) and same_key(host_cert_signer(proxy.ssh_port), old_ca)
        # a session open through the whole rotation
        argv = ssh_argv(tmp_path, node.port, key, "root", "read line; echo got-$line")
        argv[argv.index(f"UserKnownHostsFile={tmp_path / 'known_hosts'}")] = f"UserKnownHostsFile={old_hosts}"
        long_session = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)

        auth.run(lambda c: c.rotate_cert_authority("host", phase="init", mode="manual"))
        trusted = auth.run(lambda c: c.get_cert_authority("host"))["ssh_public_keys"]
        new_ca = next(line for line in trusted if not same_key(line, old_ca))
        new_hosts = tmp_path / "new_known_hosts"
        new_hosts.write_text(known_hosts_for(new_ca))

        for phase in ("init", "update_clients"):
            if phase != "init":
                auth.run(lambda c, phase=phase: c.rotate_cert_authority("host", phase=phase, mode="manual"))
            works(old_hosts, phase)  # still the old CA's certificates: clients that know only it connect
            assert same_key(host_cert_signer(node.port), old_ca)

        auth.run(lambda c: c.rotate_cert_authority("host", phase="update_servers", mode="manual"))
        wait_for(lambda: same_key(host_cert_signer(node.port), new_ca), "the node's certificate from the new CA")
        wait_for(lambda: same_key(host_cert_signer(proxy.ssh_port), new_ca), "the proxy's certificate from the new CA")
        works(new_hosts, "update-servers")

        auth.run(lambda c: c.rotate_cert_authority("host", phase="standby", mode="manual"))
        assert auth.run(lambda c: c.get_cert_authority("host"))["ssh_public_keys"] == [new_ca]
        works(new_hosts, "after")
        refused = session(old_hosts, "old-ca")
        assert refused.returncode == 255 and "old-ca" not in refused.stdout
        refused = jump(old_ca, "old-ca-via-proxy")
        assert refused.returncode == 255 and "old-ca" not in refused.stdout
        assert same_key(host_cert_signer(node.port), new_ca)

        # the node still reaches auth with its renewed TLS certificate (the old CA is gone):
        # the session above was audited through it
        wait_for(lambda: any(e.get("initial_command") == ["echo after"] for e in auth.events(type="session.start")),
                 "the session.start of a session after standby at auth")
        stored = LocalIdentity.load(node.data_dir / "data" / "keys" / "node")
        assert len(stored.tls_ca_pems) == 1 and same_key(stored.known_hosts[0].split(" ", 2)[2], new_ca)
        # no restart happened: one process all along, and it logged each renewal
        assert node.proc is not None and node.proc.poll() is None and proxy.proc.poll() is None
        assert node.log().count("renewed the host certificates") >= 2

        # the session opened before the rotation still works
        out, err = long_session.communicate("through\n", timeout=120)
        assert long_session.returncode == 0 and out.strip() == "got-through", err
    finally:
        if long_session is not None and long_session.poll() is None:
            long_session.kill()
        proxy.stop()
        node.stop()


def test_node_trusts_both_user_cas_during_a_user_ca_rotation_and_only_the_new_one_after(
        cluster: Auth, tmp_path: Path) -> None:
    auth = cluster
    node = Node(auth, tmp_path / "node").start()
    try:
        hosts = auth.known_hosts()
        old_dir, new_dir = tmp_path / "old", tmp_path / "new"
        old_dir.mkdir()
        new_dir.mkdir()
        old_key = auth.user(old_dir, "uma", ["access"], ["root"])  # from the user CA before the rotation

        def login(folder: Path, key: Path, marker: str) -> subprocess.CompletedProcess[str]:
            return run(ssh_argv(folder, node.port, key, "root", f"echo {marker}", known_hosts=hosts), timeout=120)

        def ok(folder: Path, key: Path, marker: str) -> None:
            result = login(folder, key, marker)
            assert result.returncode == 0 and result.stdout.strip() == marker, result.stderr

        new_key: Path | None = None
        for phase in ("init", "update_clients", "update_servers"):
            auth.run(lambda c, phase=phase: c.rotate_cert_authority("user", phase=phase, mode="manual"))
            if phase == "update_clients":  # certificates now come from the new user CA
                new_key = auth.user(new_dir, "uma", ["access"], ["root"])
            # the node learns the CA change by long poll: the old certificate works in every phase
            wait_for(lambda phase=phase: login(old_dir, old_key, phase).returncode == 0, f"old cert in {phase}")
            if new_key is not None:
                wait_for(lambda phase=phase, key=new_key: login(new_dir, key, phase).returncode == 0,
                         f"new cert in {phase}")
        assert new_key is not None
        auth.run(lambda c: c.rotate_cert_authority("user", phase="standby", mode="manual"))
        wait_for(lambda: login(old_dir, old_key, "old-after").returncode == 255, "the old user CA dropped")
        ok(new_dir, new_key, "new-after")
        refusals = wait_for(lambda: [e for e in auth.events(type="auth") if e.get("user") == "" and  # audited asynchronously
                                     "unrecognized authority" in e.get("error", "") and e.get("login") == "root"],
                            "the refusal of the old user CA in the audit log")
        assert refusals[-1]["code"] == "T3007W"
        assert node.proc is not None and node.proc.poll() is None
    finally:
        node.stop()


def test_a_node_restarted_during_a_host_ca_rotation_renews_at_start(cluster: Auth, tmp_path: Path) -> None:
    auth = cluster
    node = Node(auth, tmp_path / "node").start()
    try:
        old_ca = auth.run(lambda c: c.get_cert_authority("host"))["ssh_public_keys"][0]
        auth.run(lambda c: c.rotate_cert_authority("host", phase="init", mode="manual"))
        wait_for(lambda: "renewed the host certificates" in node.log(), "the renewal at init (new CA trusted)")
        node.stop()
        for phase in ("update_clients", "update_servers"):  # while the node is down
            auth.run(lambda c, phase=phase: c.rotate_cert_authority("host", phase=phase, mode="manual"))
        new_ca = next(line for line in auth.run(lambda c: c.get_cert_authority("host"))["ssh_public_keys"]
                      if not same_key(line, old_ca))
        node.start()
        # the first connection already gets a certificate from the new CA
        assert same_key(host_cert_signer(node.port), new_ca)
        key = auth.user(tmp_path, "nora", ["access"], ["root"])
        result = run(ssh_argv(tmp_path, node.port, key, "root", "echo restarted",
                              known_hosts=known_hosts_for(new_ca)), timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == "restarted", result.stderr
    finally:
        node.stop()
