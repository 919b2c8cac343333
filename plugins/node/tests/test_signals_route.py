"""Client signals to a running command (RFC 4254 6.9) and ``exit-signal`` back (6.10), and the
``teleport-route-to-cluster`` check of user certificates.

A real node process, a real auth server, paramiko as the client (OpenSSH's ``ssh`` sends no
``signal`` request) and the OpenSSH client for the exit status a user sees.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives.serialization import ssh
from node_helpers import CLUSTER, Auth, Node, run, ssh_argv
from paramiko.common import MSG_CHANNEL_REQUEST, cMSG_CHANNEL_REQUEST
from test_refusals import refused

from teleport_core.files import write_private, write_public
from teleport_core.pki import keys


def craft(tmp: Path, name: str, auth: Auth, *, extensions: dict[str, str]) -> Path:
    """A user certificate for login ``root`` from the cluster's user CA with ``extensions``."""
    signer = auth.handle.process.services["auth_service"].user_ca.ssh_signer()
    key = keys.generate_private_key("ed25519")
    write_private(tmp / name, keys.private_key_openssh(key))
    now = int(time.time())
    builder = (ssh.SSHCertificateBuilder().public_key(key.public_key())  # type: ignore[arg-type]
               .serial(7).type(ssh.SSHCertificateType.USER).key_id(name.encode())
               .valid_principals([b"root"]).valid_after(now - 60).valid_before(now + 3600)
               .add_extension(b"permit-pty", b"")
               .add_extension(b"teleport-roles", json.dumps({"roles": ["access"]}).encode())
               .add_extension(b"teleport-traits", json.dumps({"logins": ["root"]}).encode()))
    for ext_name, value in sorted(extensions.items()):
        builder = builder.add_extension(ext_name.encode(), value.encode())
    write_public(tmp / f"{name}-cert.pub", builder.sign(signer).public_bytes() + b"\n")
    return tmp / name


class Client:
    """A paramiko client that can send ``signal`` and records ``exit-signal`` (paramiko has neither)."""

    def __init__(self, node: Node, key: Path) -> None:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
        pkey.load_certificate(str(key) + "-cert.pub")
        self.client = paramiko.SSHClient()
        self.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        self.client.connect("127.0.0.1", node.port, username="root", pkey=pkey, allow_agent=False,
                            look_for_keys=False)
        transport = self.client.get_transport()
        assert transport is not None
        self.transport = transport
        self.exit_signals: dict[int, str] = {}
        self.signalled = threading.Event()
        transport._channel_handler_table = {**paramiko.Transport._channel_handler_table,
                                            MSG_CHANNEL_REQUEST: self._request}

    def _request(self, channel: paramiko.Channel, message: paramiko.Message) -> None:
        start = message.packet.tell()
        if message.get_text() == "exit-signal":
            message.get_boolean()
            self.exit_signals[channel.get_id()] = message.get_text()
            self.signalled.set()
            return
        message.packet.seek(start)
        channel._handle_request(message)

    def signal(self, channel: paramiko.Channel, name: str) -> None:
        message = paramiko.Message()
        message.add_byte(cMSG_CHANNEL_REQUEST)
        message.add_int(channel.remote_chanid)
        message.add_string("signal")
        message.add_boolean(False)
        message.add_string(name)
        self.transport._send_user_message(message)

    def close(self) -> None:
        self.client.close()


def read_until(channel: paramiko.Channel, marker: bytes, timeout: float = 120) -> bytes:
    channel.settimeout(timeout)
    out = b""
    while marker not in out:
        chunk = channel.recv(4096)
        assert chunk, f"channel closed before {marker!r}: {out!r}"
        out += chunk
    return out


def no_process(pattern: str) -> bool:
    """No process on this machine has ``pattern`` in its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmdline:
            return False
    return True


def test_signal_reaches_the_process_group_and_exit_signal_comes_back(auth: Auth, node: Node,
                                                                     tmp_path: Path) -> None:
    key = auth.user(tmp_path, "sigrid", ["access"], ["root"])
    client = Client(node, key)
    try:
        channel = client.transport.open_session()
        channel.exec_command("echo started; sleep 123.25; echo not-reached")
        read_until(channel, b"started")
        client.signal(channel, "BOGUS")  # not an RFC 4254 signal: refused, nothing happens
        client.signal(channel, "TERM")
        assert client.signalled.wait(120)
        assert client.exit_signals[channel.get_id()] == "TERM"
        rest = b""
        while chunk := channel.recv(4096):
            rest += chunk
        assert b"not-reached" not in rest
        deadline = time.monotonic() + 60
        while not no_process("sleep 123.25"):  # the whole process group got the signal
            assert time.monotonic() < deadline, "the sleep of the session survived the signal"
            time.sleep(0.1)
        # a plain command on the same connection still reports its exit status
        plain = client.transport.open_session()
        plain.exec_command("exit 3")
        assert plain.recv_exit_status() == 3
        # KILL and INT too, on a shell with a PTY
        shell = client.transport.open_session()
        shell.get_pty()
        shell.exec_command("echo ready; sleep 124.5")
        read_until(shell, b"ready")
        client.signalled.clear()
        client.signal(shell, "KILL")
        assert client.signalled.wait(120)
        assert client.exit_signals[shell.get_id()] == "KILL"
    finally:
        client.close()
    events = []
    deadline = time.monotonic() + 30
    while not events:
        events = [e for e in auth.events(type="exec") if "sleep 123.25" in e.get("command", "")]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert events[-1]["exitCode"] == "255" and events[-1]["code"] == "T3002E"


def test_openssh_client_sees_a_command_killed_by_a_signal(auth: Auth, node: Node, tmp_path: Path) -> None:
    key = auth.user(tmp_path, "sigmund", ["access"], ["root"])
    hosts = auth.known_hosts()
    killed = run(ssh_argv(tmp_path, node.port, key, "root", "kill -INT $$", known_hosts=hosts))
    assert killed.returncode == 255, killed.stderr  # as with OpenSSH sshd: no exit status, a signal
    plain = run(ssh_argv(tmp_path, node.port, key, "root", "exit 7", known_hosts=hosts))
    assert plain.returncode == 7, plain.stderr


def test_certificate_routed_to_another_cluster_is_refused(auth: Auth, node: Node, tmp_path: Path) -> None:
    other = craft(tmp_path, "rita", auth, extensions={"teleport-route-to-cluster": "leaf.example.com"})
    refused(auth, node, tmp_path, other, "root", user="rita", reason='certificate is for cluster "leaf.example.com"')
    # the same certificate routed to this cluster (or without the extension) gets in
    for name, extensions in (("rosa", {"teleport-route-to-cluster": CLUSTER}), ("ruth", {})):
        ok = craft(tmp_path, name, auth, extensions=extensions)
        result = run(ssh_argv(tmp_path, node.port, ok, "root", "echo in", known_hosts=auth.known_hosts()))
        assert result.returncode == 0 and result.stdout.strip() == "in", result.stderr
