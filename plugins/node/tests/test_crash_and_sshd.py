"""A node killed with SIGKILL mid-session completes and uploads the recording when it starts
again; and the reverse compatibility: OpenSSH ``sshd`` trusting the user CA accepts our certs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from node_helpers import Auth, Node, free_port, run, ssh_argv, wait_port

pytestmark = pytest.mark.e2e


def test_kill_9_during_a_session_then_restart_uploads_the_recording(auth: Auth, tmp_path: Path) -> None:
    node = Node(auth, tmp_path / "crash", nodename="crashnode").start()
    key = auth.user(tmp_path, "kate", ["access"], ["root"])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    argv = ssh_argv(tmp_path, node.port, key, "root", "-tt", host_alias="crashnode.node.test")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"echo before-crash-$((40+2))\n")
    proc.stdin.flush()
    seen = b""
    while b"before-crash-42" not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "session ended early"
        seen += chunk
    spool = tmp_path / "crash" / "data" / "log" / "upload" / "sessions"
    deadline = time.monotonic() + 10
    while not any(b"before-crash-42" in p.read_bytes() for p in spool.glob("*.raw.part")):
        assert time.monotonic() < deadline, "recording not flushed to the spool"
        time.sleep(0.1)
    [part] = list(spool.glob("*.raw.part"))
    sid = part.name.removesuffix(".raw.part")
    node.kill()
    proc.kill()
    proc.wait(10)
    node.start()
    try:
        deadline = time.monotonic() + 60
        while not [e for e in auth.events(type="session.upload") if e.get("sid") == sid]:
            assert time.monotonic() < deadline, "recording not uploaded after restart"
            time.sleep(0.2)
        dest = tmp_path / "crash.cast"

        async def download() -> None:
            storage = await auth.handle.process.services["auth_service"].ctx.resources.session_storage()
            await storage.download(sid, dest)

        auth.handle.call(download)
        cat = run(["script", "-qec", f"asciinema cat {dest}", "/dev/null"], stdin=subprocess.DEVNULL)
        assert cat.returncode == 0, cat.stderr
        assert "before-crash-42" in cat.stdout
        assert not list(spool.iterdir())
    finally:
        node.stop()


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.mark.skipif(not os.path.exists(SSHD), reason="needs OpenSSH sshd (apt-get install openssh-server)")
def test_openssh_sshd_trusting_the_user_ca_accepts_our_certificates(auth: Auth, tmp_path: Path) -> None:
    from teleport_core.files import write_private
    from teleport_core.pki import keys

    ca = auth.run(lambda admin: admin.get_cert_authority("user"))
    (tmp_path / "user_ca.pub").write_text("\n".join(ca["ssh_public_keys"]) + "\n")
    host_key = keys.generate_private_key("ed25519")
    write_private(tmp_path / "host_key", keys.private_key_openssh(host_key))
    port = free_port()
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {keys.public_key_openssh(host_key)}\n")
    config = tmp_path / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {tmp_path / 'host_key'}
TrustedUserCAKeys {tmp_path / 'user_ca.pub'}
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {tmp_path / 'sshd.pid'}
""")
    os.makedirs("/run/sshd", exist_ok=True)
    with open(tmp_path / "sshd.log", "wb") as log:
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, proc=sshd)
        key = auth.user(tmp_path, "sam", ["access"], ["root"])
        result = run(ssh_argv(tmp_path, port, key, "root", "echo via-sshd", host_alias=None))
        assert result.returncode == 0, result.stderr + (tmp_path / "sshd.log").read_text()
        assert result.stdout == "via-sshd\n"
        denied = run(ssh_argv(tmp_path, port, key, "daemon", "true", host_alias=None))
        assert denied.returncode == 255
    finally:
        sshd.terminate()
        sshd.wait(10)
