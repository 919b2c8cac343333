"""Agentless OpenSSH nodes, end to end: Debian's real ``sshd`` registered with ``tctl create``
(``sub_kind: openssh``; host certificate from ``tctl auth sign --host --format=openssh``), reached
through the proxy, which terminates SSH for it, checks the user as a node does, records the
session and dials sshd with a per-session certificate from auth. Clients: ``tsh ssh`` and
OpenSSH ``ssh -J`` / ``scp -J`` / ``sftp -J``. One cluster and one sshd for the module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml
from proxy_helpers import CLUSTER, LOGIN, Env, free_port, profile_ssh_config
from test_tsh_play_forward import on_a_terminal

from teleport_core.api.client import AuthClient, load_tls
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.policy.locks import LockTarget, lock_to_dict, new_lock
from teleport_core.state.nodes import NodeInfo
from teleport_core.testing import openssh
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.sockets import echo_server, exchange
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a long enough password 123"
NODE_UUID = "5f0f1c1e-6a53-4a55-9d8a-0c0ffee00001"
NODENAME = "plain-sshd"


def tctl(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(config), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with agentless_cluster(tmp_path_factory.mktemp("agentless"), "proxy") as e:
        yield e


@contextlib.contextmanager
def agentless_cluster(root: Path, recording: str) -> Iterator[Env]:
    """A cluster recording in ``recording`` mode with one of our nodes and a real sshd registered
    as the agentless node ``NODENAME`` (also used by test_agentless_sync.py)."""
    if not (Path(openssh.SSHD).exists() and shutil.which("ssh") and shutil.which("scp") and shutil.which("sftp")):
        missing("OpenSSH sshd, ssh, scp and sftp are needed (apt-get install openssh-server openssh-client)")
    config = {
        "teleport": {"data_dir": str(root / "auth"), "nodename": "agentless-proxy"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0", "session_recording": recording,
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        # one of our nodes beside the agentless one: what `proxy` mode does for it (docs/sessions.md)
        "ssh_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "plain"}},
    }
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        config_file = root / "teleport.yaml"
        config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                          "listen_addr": e.auth_addr}}))
        for name, labels, options in (("dev", {"env": "plain"}, {"port_forwarding": True}),
                                      ("nofwd", {"env": "plain"}, {"port_forwarding": False}),
                                      ("prod", {"env": "prod"}, {})):
            e.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": name},
                                   "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": labels,
                                                      "rules": [{"resources": ["node"], "verbs": ["list", "read"]}]},
                                            "options": options}})
        e.signup("alice", ["dev", "auditor"], [LOGIN], PASSWORD)
        e.signup("nofwd", ["nofwd"], [LOGIN], PASSWORD)
        e.signup("prodder", ["prod"], [LOGIN], PASSWORD)
        # the manual steps of docs/sessions.md: a host certificate for sshd, the user CA trusted, tctl create
        folder = root / "sshd"
        folder.mkdir()
        key = folder / "host"
        port = free_port()
        signed = tctl(config_file, "auth", "sign", f"--host={NODENAME},127.0.0.1,{NODE_UUID}", "--format=openssh",
                      f"--out={key}")
        assert signed.returncode == 0, signed.stderr
        exported = tctl(config_file, "auth", "export", "--type=user")
        assert exported.returncode == 0, exported.stderr
        ca_lines = [" ".join(line.split()[1:]) if line.startswith("cert-authority") else line
                    for line in exported.stdout.splitlines() if line.strip()]
        (folder / "user_ca.pub").write_text("".join(line + "\n" for line in ca_lines))
        proc, _ = openssh.start_sshd(folder, host_key=key, host_cert=Path(f"{key}-cert.pub"),
                                     user_ca=folder / "user_ca.pub", port=port,
                                     extra=["LogLevel VERBOSE", "Subsystem sftp internal-sftp",
                                            "AllowTcpForwarding yes", "AcceptEnv LANG LC_*"])
        resource = {"kind": "node", "sub_kind": "openssh", "version": "v2",
                    "metadata": {"name": NODE_UUID, "labels": {"env": "plain"}},
                    "spec": {"addr": f"127.0.0.1:{port}", "hostname": NODENAME}}
        (root / "node.yaml").write_text(yaml.safe_dump(resource))
        created = tctl(config_file, "create", str(root / "node.yaml"))
        assert created.returncode == 0, created.stderr
        assert created.stdout == f'node "{NODE_UUID}" has been created\n'
        e.config_file = config_file  # type: ignore[attr-defined]
        e.sshd_port = port  # type: ignore[attr-defined]
        e.sshd_folder = folder  # type: ignore[attr-defined]
        try:
            yield e
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "alice")


def events(env: Env, **query: Any) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            page = await admin.search_events(limit=5000, **query)
        return list(page["events"])

    return asyncio.run(body())


def ssh_argv(config: Path, env: Env, user: str, *rest: str, tool: str = "ssh") -> list[str]:
    return [tool, "-F", str(config), "-J", f"{user}@127.0.0.1:{env.ssh_port}", *rest]


def run(argv: list[str], home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc_env = {**os.environ, "TELEPORT_HOME": str(home)}
    proc_env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=proc_env, check=False)


def uploaded(env: Env, home: Path, sid: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        listing = env.tsh(home, "recordings", "ls", "--format=json")
        assert listing.returncode == 0, listing.stderr
        return next((s for s in json.loads(listing.stdout) if s["sid"] == sid and s["recorded"]), None)

    return wait_for(find, "the recording uploaded by the proxy", timeout=60)


def test_the_node_is_listed_without_a_heartbeat(env: Env, alice: Path) -> None:
    listed = env.tsh(alice, "ls", "--format=json")
    assert listed.returncode == 0, listed.stderr
    node = next(n for n in json.loads(listed.stdout) if n["metadata"]["name"] == NODE_UUID)
    assert node["sub_kind"] == "openssh" and node["spec"]["hostname"] == NODENAME
    shown = tctl(env.config_file, "nodes", "ls")  # type: ignore[attr-defined]
    assert shown.returncode == 0 and NODENAME in shown.stdout, shown.stderr
    got = yaml.safe_load(tctl(env.config_file, "get", f"node/{NODE_UUID}").stdout)  # type: ignore[attr-defined]
    assert got["sub_kind"] == "openssh" and got["spec"]["addr"].startswith("127.0.0.1:")


def test_tsh_ssh_is_recorded_at_the_proxy_and_plays(env: Env, alice: Path, tmp_path: Path) -> None:
    result = env.tsh(alice, "ssh", "-t", f"{LOGIN}@{NODENAME}", stdin="echo typed-$((6*7))-here\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "typed-42-here" in result.stdout
    start = wait_for(lambda: [e for e in events(env, type="session.start") if e.get("server_id") == NODE_UUID
                              and e.get("interactive") is not False], "the session.start", timeout=30)[-1]
    proxy_uuid = env.proxy.identity.host_uuid
    assert start["forwarded_by"] == proxy_uuid and start["server_sub_kind"] == "openssh"
    assert start["server_hostname"] == NODENAME and start["user"] == "alice" and start["login"] == LOGIN
    assert start["session_recording"] == "proxy"
    sid = start["sid"]
    record = uploaded(env, alice, sid)
    assert record["server_hostname"] == NODENAME and record["end_reason"] == "exit"
    played = env.tsh(alice, "play", sid)
    assert played.returncode == 0 and "typed-42-here" in played.stdout, played.stderr
    cast = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "play", "--format=cast", sid],
                          capture_output=True, timeout=60, check=False, env={**os.environ, "TELEPORT_HOME": str(alice)})
    assert cast.returncode == 0
    path = tmp_path / "session.cast"
    path.write_bytes(cast.stdout)
    reference = on_a_terminal(["asciinema", "cat", str(path)], stdout_too=False)
    assert b"typed-42-here" in reference
    # the per-session certificate auth minted for the proxy: principals [login], audited
    certs = wait_for(lambda: [e for e in events(env, type="cert.create") if e.get("cert_type") == "openssh_session"],
                     "the session certificate's cert.create", timeout=30)
    assert certs[-1]["login"] == LOGIN and certs[-1]["identity"]["logins"] == [LOGIN]
    assert certs[-1]["forwarded_by"].startswith(proxy_uuid)


def test_in_proxy_mode_our_own_node_records_its_sessions(env: Env, alice: Path) -> None:
    ran = env.tsh(alice, "ssh", f"{LOGIN}@agentless-proxy", "echo", "own-node-$((6*7))")
    assert ran.returncode == 0 and ran.stdout == "own-node-42\n", ran.stderr
    start = wait_for(lambda: [e for e in events(env, type="session.start")
                              if e.get("server_hostname") == "agentless-proxy"], "our node's session.start",
                     timeout=30)[-1]
    assert start["session_recording"] == "proxy" and "forwarded_by" not in start  # the node's own account
    assert start["server_id"] == env.proxy.identity.host_uuid  # one process: one host UUID
    record = uploaded(env, alice, start["sid"])
    assert record["server_hostname"] == "agentless-proxy"
    played = env.tsh(alice, "play", start["sid"])
    assert played.returncode == 0 and "own-node-42" in played.stdout


def test_a_live_session_has_a_tracker_until_it_ends(env: Env, alice: Path) -> None:
    proc_env = {**os.environ, "TELEPORT_HOME": str(alice)}
    proc_env.pop("SSH_AUTH_SOCK", None)
    argv = [sys.executable, "-m", "teleport_core.cli.tsh", "ssh", "-t", f"{LOGIN}@{NODENAME}"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=proc_env) as proc:
        assert proc.stdin is not None
        try:
            live = wait_for(lambda: [t for t in env.call("list_session_trackers")
                                     if t["spec"]["server_id"] == NODE_UUID], "the session's tracker", timeout=30)
            spec = live[0]["spec"]
            assert spec["hostname"] == NODENAME and spec["login"] == LOGIN and spec["interactive"] is True
            assert [p["user"] for p in spec["participants"]] == ["alice"]
        finally:
            proc.stdin.write(b"exit\n")
            proc.stdin.close()
            proc.wait(30)
    wait_for(lambda: not [t for t in env.call("list_session_trackers") if t["spec"]["server_id"] == NODE_UUID],
             "the tracker removed at the end", timeout=30)


def test_openssh_jump_exec_scp_and_sftp(env: Env, alice: Path, tmp_path: Path) -> None:
    config = profile_ssh_config(alice, tmp_path / "ssh_config")
    # strict host key checking against the cluster's host CA: the proxy presents the node's identity
    ok = run(ssh_argv(config, env, "alice", f"{LOGIN}@{NODENAME}.{CLUSTER}", "echo exec-$((6*7)); exit 3"), alice)
    assert ok.returncode == 3 and ok.stdout == "exec-42\n", ok.stderr
    assert wait_for(lambda: [e for e in events(env, type="exec") if e.get("server_id") == NODE_UUID
                             and e["command"] == "echo exec-$((6*7)); exit 3" and e["exitCode"] == "3"],
                    "the exec event", timeout=30)
    source = tmp_path / "up.txt"
    source.write_text("scp through the proxy\n")
    remote = tmp_path / "remote.txt"
    # the proxy:host:port subsystem (what tsh uses without TLS routing), here as OpenSSH's ProxyCommand
    hop = f"ssh -F {config} -p {env.ssh_port} alice@127.0.0.1 -s proxy:%h:%p@{CLUSTER}"
    sub = run(["ssh", "-F", str(config), "-o", f"ProxyCommand={hop}", f"{LOGIN}@{NODENAME}.{CLUSTER}",
               "echo subsystem-$((6*7))"], alice)
    assert sub.returncode == 0 and sub.stdout == "subsystem-42\n", sub.stderr
    # -O: the scp protocol over exec (audited as scp); without it OpenSSH's scp speaks sftp
    up = run(ssh_argv(config, env, "alice", "-O", str(source), f"{LOGIN}@{NODENAME}.{CLUSTER}:{remote}",
                      tool="scp"), alice)
    assert up.returncode == 0, up.stderr
    assert remote.read_text() == "scp through the proxy\n"
    got = tmp_path / "back.txt"
    sftp = run(ssh_argv(config, env, "alice", "-b", "-", f"{LOGIN}@{NODENAME}.{CLUSTER}", tool="sftp"),
               alice, stdin=f"get {remote} {got}\n")
    assert sftp.returncode == 0, sftp.stderr
    assert got.read_text() == "scp through the proxy\n"
    assert wait_for(lambda: [e for e in events(env, type="scp") if e.get("server_id") == NODE_UUID
                             and e["action"] == "upload"], "the scp event", timeout=30)


def test_local_port_forwarding_as_the_role_allows(env: Env, alice: Path, tmp_path: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    config = profile_ssh_config(alice, tmp_path / "ssh_config")
    with echo_server() as target:
        local = free_port()
        argv = ssh_argv(config, env, "alice", "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{target}",
                        f"{LOGIN}@{NODENAME}.{CLUSTER}")
        proc_env = {**os.environ}
        proc_env.pop("SSH_AUTH_SOCK", None)
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=proc_env) as proc:
            try:
                def answered() -> bytes | None:
                    try:
                        with socket.create_connection(("127.0.0.1", local), timeout=5) as sock:
                            return exchange(sock, b"forwarded") or None
                    except OSError:
                        return None

                assert wait_for(answered, "the forwarded port", timeout=30) == b"forwarded"
            finally:
                proc.terminate()
        # a role without port_forwarding: refused and audited, the shell still works
        nofwd = env.logged_in(tmp_path_factory, "nofwd")
        config2 = profile_ssh_config(nofwd, tmp_path / "ssh_config2")
        refused = run(ssh_argv(config2, env, "nofwd", "-o", "ExitOnForwardFailure=yes", "-W", f"127.0.0.1:{target}",
                               f"{LOGIN}@{NODENAME}.{CLUSTER}"), nofwd)
        assert refused.returncode != 0
    denied = wait_for(lambda: [e for e in events(env, type="port") if e.get("user") == "nofwd"
                               and e["code"] == "T3003E"], "the refused forward", timeout=30)
    assert "port forwarding is not allowed" in denied[-1]["error"]


def test_refusals_are_audited(env: Env, alice: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    wrong = env.tsh(alice, "ssh", f"nobody-else@{NODENAME}", "true")
    assert wrong.returncode != 0
    prodder = env.logged_in(tmp_path_factory, "prodder")  # a role without the node's labels
    hidden = env.tsh(prodder, "ssh", f"{LOGIN}@{NODENAME}", "true")
    assert hidden.returncode != 0 and "does not exist" in hidden.stderr
    lock = new_lock(LockTarget(user="alice"), "agentless drill")
    env.call("upsert_lock", lock_to_dict(lock))
    try:
        wait_for(lambda: env.proxy.locks, "the proxy to see the lock", timeout=30)
        locked = env.tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "true")
        assert locked.returncode != 0 and "agentless drill" in locked.stderr
    finally:
        env.call("delete_lock", lock.name)
    def refusals() -> str:
        errors = " | ".join(str(e.get("error")) for e in events(env, type="auth")
                            if e.get("target") in (NODE_UUID, NODENAME) or "agentless drill" in str(e.get("error")))
        wanted = ("nobody-else", "agentless drill", f"target host {NODENAME} is offline or does not exist")
        return errors if all(w in errors for w in wanted) else ""

    errors = wait_for(refusals, "audited refusals (wrong login, lock, a role without the labels)", timeout=30)
    assert "not in the set of valid principals" in errors


def _forwarder_handshake(env: Env, key: paramiko.PKey, login: str) -> bool:
    """Authenticate to the proxy's SSH server for the node directly (no outer proxy hop): True if accepted."""
    node = NodeInfo(NODE_UUID, NODENAME, "127.0.0.1:1", {"env": "plain"}, sub_kind="openssh")
    sock = env.proxy.agentless.dial(node, "127.0.0.1:40000")
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=30)
        try:
            transport.auth_publickey(login, key)
        except paramiko.AuthenticationException:
            return False
        return transport.is_authenticated()
    finally:
        transport.close()


def _alice_key(home: Path) -> paramiko.PKey:
    import io

    folder = home / "profiles" / "127.0.0.1"
    key = paramiko.Ed25519Key.from_private_key(io.StringIO((folder / "id").read_text()))
    key.load_certificate(str(folder / "id-cert.pub"))
    return key


def _read_until(channel: paramiko.Channel, text: bytes, timeout: float = 30) -> bytes:
    out = b""
    channel.settimeout(timeout)
    while text not in out:
        chunk = channel.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_pty_window_changes_env_signals_and_exit_status_reach_sshd(env: Env, alice: Path) -> None:
    """A client speaking straight to the node's SSH server at the proxy: the PTY size and its
    changes, LANG, the exit status, and (for a login other than root: sshd delivers no signal to
    a root session) a signal all reach the real sshd and back."""
    node = NodeInfo(NODE_UUID, NODENAME, f"127.0.0.1:{env.sshd_port}", {"env": "plain"},  # type: ignore[attr-defined]
                    sub_kind="openssh")
    transport = paramiko.Transport(env.proxy.agentless.dial(node, "127.0.0.1:40001"))
    try:
        transport.start_client(timeout=30)
        transport.auth_publickey(LOGIN, _alice_key(alice))
        shell = transport.open_session(timeout=30)
        shell.update_environment({"LANG": "C.UTF-8"})
        shell.get_pty("xterm", 80, 24)
        shell.invoke_shell()
        shell.sendall(b"stty size; echo lang=$LANG\n")
        assert b"lang=C.UTF-8" in _read_until(shell, b"lang=C.UTF-8")
        shell.resize_pty(width=132, height=43)
        shell.sendall(b"echo size=$(stty size)\n")
        assert b"size=43 132" in _read_until(shell, b"size=43 132")
        shell.sendall(b"exit 5\n")
        assert shell.recv_exit_status() == 5
        if LOGIN == "root":  # sshd refuses signals to root sessions ("requires privilege separation")
            return
        job = transport.open_session(timeout=30)
        job.exec_command("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done")
        assert b"ready" in _read_until(job, b"ready")
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
        message.add_int(job.remote_chanid)
        message.add_string("signal")
        message.add_boolean(False)
        message.add_string("TERM")
        transport._send_user_message(message)
        assert b"got-term" in _read_until(job, b"got-term")
        assert job.recv_exit_status() == 7
    finally:
        transport.close()


def test_a_session_a_crash_cut_is_ended_and_its_recording_uploaded(env: Env, alice: Path, tmp_path: Path) -> None:
    """What a proxy crash leaves in its spool (a sidecar, a recording in progress) is ended
    (``session.end``, ``end_reason: node_restart``) and uploaded by the next start, as on our nodes."""
    import uuid as uuidlib

    from teleport_proxy.forwarder import Forwarder

    from teleport_core.recording.spool import Recorder, prepare_spool, release_sidecar, write_sidecar

    spool = prepare_spool(tmp_path / "proxy-sessions")
    sid = str(uuidlib.uuid4())
    started = time.time() - 5
    recorder = Recorder(spool, sid, width=80, height=24, env={"TERM": "xterm"}, started=started)
    recorder.write(b"typed before the crash\r\n")
    recorder.close()  # the file as a crash leaves it: not finalized
    fields = {"cluster_name": CLUSTER, "server_id": NODE_UUID, "server_hostname": NODENAME, "user": "alice",
              "login": LOGIN, "sid": sid, "proto": "ssh", "interactive": True, "session_recording": "proxy"}
    release_sidecar(write_sidecar(spool, sid, started, fields))  # the crash drops the sidecar's lock
    proxy = env.proxy
    forwarder = Forwarder(proxy, spool)
    tasks = asyncio.run_coroutine_threadsafe(forwarder.start(), proxy.loop).result(60)
    try:
        record = uploaded(env, alice, sid)
        assert record["end_reason"] == "node_restart" and record["server_hostname"] == NODENAME
        played = env.tsh(alice, "play", sid)
        assert played.returncode == 0 and "typed before the crash" in played.stdout, played.stderr
        end = wait_for(lambda: [e for e in events(env, type="session.end") if e.get("sid") == sid],
                       "the session.end event", timeout=30)[0]
        assert end["forwarded_by"] == proxy.identity.host_uuid and end["server_id"] == NODE_UUID
        assert not list(spool.glob(sid + "*"))  # sidecar and recording gone once handed over
        upload = wait_for(lambda: [e for e in events(env, type="session.upload") if e.get("sid") == sid],
                          "the session.upload event", timeout=30)[0]
        assert upload["server_id"] == NODE_UUID and upload["forwarded_by"] == proxy.identity.host_uuid
    finally:
        forwarder.stop()
        for task in tasks:
            proxy.loop.call_soon_threadsafe(task.cancel)


def test_teleport_join_openssh_registers_and_configures_an_sshd(env: Env, alice: Path, tmp_path: Path) -> None:
    """``teleport join openssh`` with a node token: the host's sshd config includes a fragment with a
    host certificate from the cluster and the user CA; the node is listed and reachable through the
    proxy; the token is spent (a second join is refused, audited), and a taken hostname is refused."""
    token = env.call("create_token", ["node"])["token"]
    pin = env.call("status")["ca_pin"]
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text("".join(line + "\n" for line in (
        f"Port {port}", "ListenAddress 127.0.0.1", "AuthorizedKeysFile none", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", f"PidFile {tmp_path / 'sshd.pid'}")))

    def join(name: str, secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.teleport", "join", "openssh",
                               f"--auth-server={env.auth_addr}", f"--token={secret}", f"--ca-pin={pin}",
                               f"--address=127.0.0.1:{port}", f"--hostname={name}", "--labels=env=plain",
                               f"--openssh-config={config}", f"--data-dir={tmp_path / 'data'}"],
                              capture_output=True, text=True, timeout=60, check=False)

    joined = join("joined-sshd", token)
    assert joined.returncode == 0, joined.stderr
    assert "Joined cluster example.com as agentless node joined-sshd" in joined.stdout
    assert config.read_text().startswith(f"Include {tmp_path / 'data' / 'openssh' / 'teleport_sshd_config'}\n")
    again = join("other-sshd", token)
    assert again.returncode == 1 and again.stderr.startswith("ERROR: cannot join:"), again.stderr
    taken = join(NODENAME, env.call("create_token", ["node"])["token"])
    assert taken.returncode == 1 and "is registered already" in taken.stderr, taken.stderr
    with open(tmp_path / "sshd.log", "wb") as log:
        sshd = subprocess.Popen([openssh.SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    try:
        def listening() -> bool:
            if sshd.poll() is not None:
                pytest.fail("sshd exited: " + (tmp_path / "sshd.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, "sshd to listen", timeout=30)
        ran = wait_for(lambda: (r := env.tsh(alice, "ssh", f"{LOGIN}@joined-sshd", "echo", "joined-$((6*7))"))
                       .returncode == 0 and r, "a session through the proxy", timeout=30)
        assert ran.stdout == "joined-42\n"
    finally:
        sshd.terminate()
        sshd.wait(10)
    wait_for(lambda: {e["code"] for e in events(env, type="instance.join") if e.get("sub_kind") == "openssh"}
             == {"TJ002I", "TJ002E"}, "the audited join and refusals", timeout=30)


def test_a_certificate_from_another_ca_is_refused(env: Env, tmp_path: Path) -> None:
    """The attacker talks to the node's SSH server at the proxy with a user certificate signed by a
    CA of their own naming alice and the right login: refused and audited."""
    ca = keys.generate_private_key("ed25519")
    user = keys.generate_private_key("ed25519")
    (tmp_path / "ca").write_bytes(keys.private_key_openssh(ca))
    (tmp_path / "ca").chmod(0o600)
    (tmp_path / "user.pub").write_text(keys.public_key_openssh(user) + "\n")
    subprocess.run(["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "alice", "-n", LOGIN, "-V", "+1h",
                    "-O", "extension:teleport-roles={\"roles\":[\"dev\"]}", str(tmp_path / "user.pub")], check=True)
    import io

    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.private_key_openssh(user).decode()))
    pkey.load_certificate(str(tmp_path / "user-cert.pub"))
    assert not _forwarder_handshake(env, pkey, LOGIN)
    refusals = wait_for(lambda: [e for e in events(env, type="auth") if "unrecognized authority" in str(e.get("error"))
                                 and e.get("target") == NODE_UUID], "the audited refusal", timeout=30)
    assert refusals[-1]["code"] == "T3007W"


def test_only_a_proxy_gets_agentless_certificates(env: Env, alice: Path) -> None:
    """A user (even with a valid certificate) asking auth for a session or host certificate of the
    agentless node is refused (403) and audited; so is a proxy naming a node that is not openssh."""
    folder = alice / "profiles" / "127.0.0.1"
    profile_cert = (folder / "id-cert.pub").read_text().strip()
    key = keys.generate_private_key("ed25519")
    tls = load_tls_from_profile(alice)

    async def ask() -> list[int]:
        statuses = []
        async with AuthClient(env.auth_addr, [tls]) as client:
            for path, body in (("/v1/agentless/session-cert",
                                {"node": NODE_UUID, "login": LOGIN, "user_cert": profile_cert,
                                 "public_key": keys.public_key_openssh(key)}),
                               ("/v1/agentless/host-cert", {"node": NODE_UUID, "public_key": keys.public_key_openssh(key)})):
                response = await client._request("POST", path, json=body)
                statuses.append(response.status_code)
        return statuses

    assert asyncio.run(ask()) == [403, 403]
    proxy = env.proxy

    async def as_proxy() -> int:
        response = await proxy.auth._request("POST", "/v1/agentless/host-cert",
                                             json={"node": proxy.identity.host_uuid,
                                                   "public_key": keys.public_key_openssh(key)})
        return int(response.status_code)

    assert asyncio.run_coroutine_threadsafe(as_proxy(), proxy.loop).result(30) == 403
    wait_for(lambda: len([e for e in events(env, type="auth") if "only a proxy gets certificates" in str(e.get("error"))
                          or "is not a registered openssh node" in str(e.get("error"))]) >= 3,
             "the three audited refusals", timeout=30)


def test_auth_checks_what_a_proxy_forwards(env: Env, alice: Path, tmp_path: Path) -> None:
    """Even a proxy (compromised, or buggy) gets a session certificate only for a user certificate of
    the user CA naming the login: another CA's, or another login, is refused (403, audited); a
    malformed body is a 400 naming the field."""
    proxy = env.proxy
    key = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    real = (alice / "profiles" / "127.0.0.1" / "id-cert.pub").read_text().strip()
    ca = keys.generate_private_key("ed25519")
    (tmp_path / "ca").write_bytes(keys.private_key_openssh(ca))
    (tmp_path / "ca").chmod(0o600)
    (tmp_path / "u.pub").write_text(key + "\n")
    subprocess.run(["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "alice", "-n", LOGIN, "-V", "+1h",
                    str(tmp_path / "u.pub")], check=True)
    forged = (tmp_path / "u-cert.pub").read_text().strip()

    async def ask(body: dict[str, Any]) -> tuple[int, str]:
        response = await proxy.auth._request("POST", "/v1/agentless/session-cert", json=body)
        return int(response.status_code), str(response.json().get("error", ""))

    def asked(**fields: Any) -> tuple[int, str]:
        body = {"node": NODE_UUID, "login": LOGIN, "user_cert": real, "public_key": key, **fields}
        return asyncio.run_coroutine_threadsafe(ask(body), proxy.loop).result(30)

    assert asked()[0] == 200  # what the proxy does for alice's sessions
    status, error = asked(user_cert=forged)
    assert status == 403 and "unrecognized authority" in error
    status, error = asked(login="someone-else")
    assert status == 403 and "not in the set of valid principals" in error
    status, error = asked(public_key="not a key")
    assert status == 400 and "public_key" in error
    status, error = asked(login="")
    assert status == 400 and "login" in error
    def refused() -> list[dict[str, Any]]:
        found = [e for e in events(env, type="auth") if "agentless session to" in str(e.get("error"))]
        return found if len(found) >= 2 else []

    audited = wait_for(refused, "the audited refusals", timeout=30)
    assert {e["code"] for e in audited} == {"T3007W"}


def load_tls_from_profile(home: Path) -> Any:
    """The TLS client context of a tsh profile (its key and user certificate)."""
    from teleport_core.tsh.profile import Profile

    return load_tls(Profile.load(home).identity.client_context())
