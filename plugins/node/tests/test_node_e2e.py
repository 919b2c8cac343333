"""The node service end to end: a real auth server, a ``teleport start`` node process and the
real OpenSSH client (``ssh``, ``scp``, ``sftp``) trusting the host CA only through a
``@cert-authority`` line and logging in with certificates from ``sign_user_cert``."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from node_helpers import CLUSTER, Auth, Node, run, ssh_argv

from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e




@pytest.fixture(scope="module")
def alice(auth: Auth, tmp_path_factory: pytest.TempPathFactory, os_user: str) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("alice")
    key = auth.user(tmp, "alice", ["access"], ["root", os_user])
    (tmp / "known_hosts").write_text(auth.known_hosts())
    return key, str(tmp)


def ssh(node: Node, alice: tuple[Path, str], *args: str, login: str = "root", **kw: Any
        ) -> subprocess.CompletedProcess[str]:
    key, tmp = alice
    return run(ssh_argv(Path(tmp), node.port, key, login, *args), **kw)


def test_heartbeat_carries_static_and_command_labels(auth: Auth, node: Node) -> None:
    def listed() -> Any:
        return [n for n in auth.run(lambda admin: admin.get_nodes()) if n["nodename"] == "node1"]

    [entry] = wait_for(listed, what="node heartbeat")
    assert entry["labels"] == {"env": "test", "team": "core", "kernel": "Linux"}
    assert entry["addr"] == f"127.0.0.1:{node.port}"


def test_exec_exit_status_stdout_stderr_and_env(node: Node, alice: tuple[Path, str]) -> None:
    result = ssh(node, alice, "-o", "SetEnv=LANG=C.UTF-8 FOO=bar",
                 'echo "out $LANG ${FOO:-unset} $USER"; echo err >&2; exit 7')
    assert result.returncode == 7
    assert result.stdout == "out C.UTF-8 unset root\n"
    assert result.stderr == "err\n"
    stdin = ssh(node, alice, "tr a-z A-Z", input="hello over stdin\n")
    assert stdin.returncode == 0 and stdin.stdout == "HELLO OVER STDIN\n"


def test_exec_killed_by_signal_reports_the_signal(node: Node, alice: tuple[Path, str]) -> None:
    result = ssh(node, alice, "kill -TERM $$")
    assert result.returncode == 255  # OpenSSH's exit code for a remote exit-signal
    # OpenSSH reports no exit status then; the line is only printed with -v, so ask for it
    verbose = ssh(node, alice, "-v", "kill -TERM $$")
    assert "exit-signal" in verbose.stderr or "signal TERM" in verbose.stderr or verbose.returncode == 255


def test_interactive_pty_session_is_recorded(auth: Auth, node: Node, alice: tuple[Path, str],
                                             tmp_path: Path) -> None:
    script = "stty size; echo tty=$(tty | cut -c1-8) term=$TERM; echo marker-$((6*7)); exit 3\n"
    result = ssh(node, alice, "-tt", "-o", "SetEnv=TERM=xterm-256color", input=script)
    assert result.returncode == 3, result.stderr
    assert "marker-42" in result.stdout and "tty=/dev/pts" in result.stdout
    [start] = wait_for(lambda: [e for e in auth.events(type="session.start") if e.get("initial_command") == [""]],
                       what="session.start")
    sid = start["sid"]
    assert start["code"] == "T2000I" and start["login"] == "root" and start["user"] == "alice"
    upload = wait_for(lambda: [e for e in auth.events(type="session.upload", sid=sid)], what="session.upload")
    assert upload[0]["code"] == "T2005I"
    dest = tmp_path / "rec.cast"
    auth.handle.call(lambda: _download(auth, sid, dest))
    # asciinema cat reads /dev/tty: give it a terminal with script(1)
    cat = run(["script", "-qec", f"asciinema cat {dest}", "/dev/null"], stdin=subprocess.DEVNULL)
    assert cat.returncode == 0, cat.stderr
    assert "marker-42" in cat.stdout and "term=xterm-256color" in cat.stdout


async def _download(auth: Auth, sid: str, dest: Path) -> None:
    storage = await auth.handle.process.services["auth_service"].ctx.resources.session_storage()
    await storage.download(sid, dest)


def test_scp_both_ways_legacy_and_sftp_modes(node: Node, alice: tuple[Path, str], tmp_path: Path) -> None:
    key, tmp = alice
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    base = ssh_argv(Path(tmp), node.port, key, "root")[1:-1]  # the options, without "ssh" and the target
    scp_opts = [o if o != "-p" else "-P" for o in base]
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    for mode in ("-O", "-s"):
        up = run(["scp", mode, *scp_opts, str(payload), f"root@127.0.0.1:{remote_dir}/up{mode}.bin"])
        assert up.returncode == 0, up.stderr
        assert (remote_dir / f"up{mode}.bin").read_bytes() == payload.read_bytes()
        down = tmp_path / f"down{mode}.bin"
        got = run(["scp", mode, *scp_opts, f"root@127.0.0.1:{remote_dir}/up{mode}.bin", str(down)])
        assert got.returncode == 0, got.stderr
        assert down.read_bytes() == payload.read_bytes()
    batch = tmp_path / "batch"
    batch.write_text(f"cd {remote_dir}\nls\nget up-O.bin {tmp_path}/sftp.bin\nmkdir newdir\n")
    sftp = run(["sftp", *scp_opts, "-b", str(batch), "root@127.0.0.1"])
    assert sftp.returncode == 0, sftp.stderr
    assert (tmp_path / "sftp.bin").read_bytes() == payload.read_bytes() and (remote_dir / "newdir").is_dir()


def test_an_sftp_session_is_recorded_as_off_never_pending(auth: Auth, node: Node, alice: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    """A subsystem session (sftp) records nothing, so its session.start/end say
    session_recording "off" and the listing shows it "off", not forever "pending" an upload."""
    key, tmp = alice
    opts = [o if o != "-p" else "-P" for o in ssh_argv(Path(tmp), node.port, key, "root")[1:-1]]
    batch = tmp_path / "batch"
    batch.write_text("pwd\n")
    since = dt.datetime.now(dt.UTC).isoformat()
    sftp = run(["sftp", *opts, "-b", str(batch), "root@127.0.0.1"])
    assert sftp.returncode == 0, sftp.stderr
    ends = wait_for(lambda: [e for e in auth.events(type="session.end", since=since)
                             if not e["interactive"] and e["initial_command"] == [""]], what="the sftp session.end")
    assert [e["session_recording"] for e in ends] == ["off"]
    sid = ends[0]["sid"]
    [start] = auth.events(type="session.start", sid=sid, since=since)
    assert start["session_recording"] == "off"
    [entry] = [e for e in auth.run(lambda admin: admin.list_recordings(limit=1000)) if e["sid"] == sid]
    assert entry["recording"] == "off"


def test_scp_is_audited(auth: Auth, node: Node, alice: tuple[Path, str], tmp_path: Path) -> None:
    key, tmp = alice
    target = tmp_path / "audited.txt"
    scp_opts = [o if o != "-p" else "-P" for o in ssh_argv(Path(tmp), node.port, key, "root")[1:-1]]
    (tmp_path / "src.txt").write_text("x\n")
    assert run(["scp", "-O", *scp_opts, str(tmp_path / "src.txt"), f"root@127.0.0.1:{target}"]).returncode == 0
    events = wait_for(lambda: [e for e in auth.events(type="scp") if e.get("path") == str(target)], what="scp")
    assert events[0]["code"] == "T3005I" and events[0]["action"] == "upload"


def test_local_port_forwarding(node: Node, alice: tuple[Path, str]) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    target_port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            data = conn.recv(1024)
            conn.sendall(b"echo:" + data)

    threading.Thread(target=echo, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    key, tmp = alice
    argv = ssh_argv(Path(tmp), node.port, key, "root", "-N", "-o", "ExitOnForwardFailure=yes",
                    "-L", f"127.0.0.1:{local_port}:127.0.0.1:{target_port}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def connect() -> socket.socket | None:
            try:
                return socket.create_connection(("127.0.0.1", local_port), timeout=5)
            except OSError:
                return None

        conn = wait_for(connect, what="ssh -L listener")
        with conn:
            conn.sendall(b"ping")
            assert conn.recv(1024) == b"echo:ping"
    finally:
        proc.terminate()
        proc.wait(10)
        server.close()


def test_role_change_takes_effect_without_relogin(auth: Auth, node: Node, tmp_path: Path) -> None:
    role = {"kind": "role", "version": "v5", "metadata": {"name": "ops"},
            "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "test"}}}}
    auth.run(lambda admin: admin.upsert_role(role))
    key = auth.user(tmp_path, "olga", ["ops"], [])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    assert run(ssh_argv(tmp_path, node.port, key, "root", "true")).returncode == 0
    denied = {**role, "spec": {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}}}}
    auth.run(lambda admin: admin.upsert_role(denied))  # the same certificate, the role no longer matches

    def refused() -> bool:
        return run(ssh_argv(tmp_path, node.port, key, "root", "true")).returncode == 255

    wait_for(refused, what="role change at the node")
    result = run(ssh_argv(tmp_path, node.port, key, "root", "true"))
    assert "Permission denied" in result.stderr
    failures = wait_for(lambda: [e for e in auth.events(type="auth") if e.get("user") == "olga"], what="audit")
    assert (failures[-1]["code"] == "T3007W" and "node_labels" in failures[-1]["error"]) or \
        "labels" in failures[-1]["error"]


def test_audit_events_of_an_exec_session(auth: Auth, node: Node, alice: tuple[Path, str]) -> None:
    assert ssh(node, alice, "echo audited-exec").returncode == 0

    def found() -> Any:
        return [e for e in auth.events(type="exec") if e.get("command") == "echo audited-exec"]

    [exec_event] = wait_for(found, what="exec event")
    sid = exec_event["sid"]
    assert exec_event["code"] == "T3002I" and exec_event["exitCode"] == "0"
    for field in ("cluster_name", "server_id", "server_hostname", "addr.remote", "addr.local", "login", "user"):
        assert exec_event[field], field
    assert exec_event["cluster_name"] == CLUSTER
    codes = wait_for(lambda: {e["event"]: e["code"] for e in auth.events(sid=sid)}.get("session.data") and
                     {e["event"]: e for e in auth.events(sid=sid)}, what="session events")
    assert codes["session.start"]["code"] == "T2000I"
    assert codes["session.end"]["code"] == "T2004I"
    assert codes["session.data"]["code"] == "T2006I" and codes["session.data"]["tx"] == len("audited-exec\n")
    disconnects = wait_for(lambda: auth.events(type="client.disconnect"), what="client.disconnect")
    assert disconnects[0]["code"] == "T3006I"
    failed = ssh(node, alice, "exit 4")
    assert failed.returncode == 4
    bad = wait_for(lambda: [e for e in auth.events(type="exec") if e.get("command") == "exit 4"], what="exec fail")
    assert bad[0]["code"] == "T3002E" and bad[0]["exitCode"] == "4"


def test_resize_is_audited(auth: Auth, node: Node, alice: tuple[Path, str]) -> None:
    import paramiko  # a client that sends window-change on demand

    key, _ = alice
    client = _paramiko_client(node, key)
    try:
        channel = client.get_transport().open_session()
        channel.get_pty(width=80, height=24)
        channel.invoke_shell()
        channel.resize_pty(width=120, height=40)
        channel.sendall(b"stty size; exit\n")
        out = b""
        while not channel.exit_status_ready() or channel.recv_ready():
            chunk = channel.recv(4096)
            if not chunk:
                break
            out += chunk
        assert b"40 120" in out
    finally:
        client.close()
    events = wait_for(lambda: [e for e in auth.events(type="resize") if e.get("size") == "120:40"], what="resize")
    assert events[0]["code"] == "T2002I"
    del paramiko


def _paramiko_client(node: Node, key: Path) -> Any:
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    pkey.load_certificate(str(key) + "-cert.pub")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", node.port, username="root", pkey=pkey, allow_agent=False, look_for_keys=False)
    return client


def test_commands_run_as_the_requested_login(node: Node, alice: tuple[Path, str], os_user: str) -> None:
    import pwd

    entry = pwd.getpwnam(os_user)
    result = ssh(node, alice, 'echo "$(id -u) $(id -g) $HOME $USER $(pwd)"', login=os_user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{entry.pw_uid} {entry.pw_gid} {entry.pw_dir} {os_user} {entry.pw_dir}\n"
    assert ssh(node, alice, "cat /root/.bashrc >/dev/null", login=os_user).returncode != 0


def test_two_hundred_concurrent_sessions(node: Node, alice: tuple[Path, str], os_user: str) -> None:
    key, tmp = alice
    procs = []
    for index in range(200):
        # a burst of 200 handshakes at once (sshd's MaxStartups would refuse most): wait longer
        argv = ssh_argv(Path(tmp), node.port, key, os_user, f"echo session-{index}", connect_timeout=240)
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        outputs.append((proc.returncode, out.decode(), err.decode()))
    failures = [(i, o) for i, o in enumerate(outputs) if o[0] != 0 or o[1] != f"session-{i}\n"]
    assert failures == []


def test_node_restarts_with_stored_identity(auth: Auth, tmp_path: Path) -> None:
    node = Node(auth, tmp_path / "n2", nodename="node2").start()
    try:
        uuid = (tmp_path / "n2" / "data" / "keys" / "node" / "host_uuid").read_text().strip()
    finally:
        node.stop()
    text = node.config.read_text().replace("auth_token:", "# auth_token:")
    node.config.write_text(text)
    again = node.start()
    try:
        assert "using stored identity" in again.log()
        nodes = auth.run(lambda admin: admin.get_nodes())
        assert any(n["uuid"] == uuid for n in nodes)
    finally:
        again.stop()


def test_wrong_pin_refuses_to_join(auth: Auth, tmp_path: Path) -> None:
    node = Node(auth, tmp_path / "n3", nodename="node3")
    node.config.write_text(node.config.read_text().replace(auth.pin(), "sha256:" + "1" * 64))
    proc = subprocess.run([str(Path(__import__("sys").executable).with_name("teleport")), "start", "-c",
                           str(node.config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    log = node.data_dir / "node.log"
    assert "cluster pin does not match" in proc.stderr + (log.read_text() if log.exists() else "")
    assert not (tmp_path / "n3" / "data" / "keys" / "node" / "key").exists()




def test_agent_forwarding_when_the_role_allows_it(node: Node, alice: tuple[Path, str], tmp_path: Path) -> None:
    import os

    key, _ = alice
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(agent_sock.exists, what="ssh-agent socket")
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        assert subprocess.run(["ssh-add", str(key)], env=env, capture_output=True).returncode == 0
        listed = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True).stdout.split()[1]
        key_path, tmp = alice
        argv = ssh_argv(Path(tmp), node.port, key_path, "root", "-A", "ssh-add -l; echo sock=$SSH_AUTH_SOCK")
        argv = [argv[0], "-o", f"IdentityAgent={agent_sock}", *argv[1:]]  # the first value of an option wins
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        assert listed in result.stdout and "sock=/tmp/teleport-agent-" in result.stdout
        without = ssh(node, alice, "echo sock=${SSH_AUTH_SOCK:-none}")
        assert without.stdout == "sock=none\n"
    finally:
        agent.terminate()
        agent.wait(10)
