"""teleport_node.spawn: a session's process started without fork() of the node (glibc posix_spawn),
with what sshd gives it: the login's ids and nothing of root's, a new session with the PTY as its
controlling terminal, ``-bash`` for a login shell, exactly the given environment and directory, no
descriptor of the node's, default signals. Real processes; the login tests need root."""

from __future__ import annotations

import os
import pty
import pwd
import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from teleport_node import spawn

from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.skipif(not spawn.AVAILABLE, reason="glibc posix_spawn with addchdir_np is not available")


@pytest.fixture
def login(os_user: str) -> spawn.Login:
    if os.geteuid() != 0:
        missing("starting a process as another login needs root")
    entry = pwd.getpwnam(os_user)
    return spawn.Login(entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(os_user, entry.pw_gid)))


def run(argv: list[str], executable: str, *, login: spawn.Login | None, cwd: str = "/",
        env: dict[str, str] | None = None) -> tuple[str, int]:
    """Spawn on pipes, read its output to the end; (output, exit code)."""
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        process = spawn.spawn(argv, executable, env=env if env is not None else {"PATH": "/usr/bin:/bin"}, cwd=cwd,
                              stdio=(null, out_w, out_w), login=login)
    finally:
        os.close(out_w)
        os.close(null)
    chunks = []
    while chunk := os.read(out_r, 65536):
        chunks.append(chunk)
    os.close(out_r)
    return b"".join(chunks).decode(), exit_code(process)


def exit_code(process: spawn.Spawned) -> int:
    wait_for(lambda: process.poll() is not None, what="the process's exit", timeout=30)
    assert process.returncode is not None
    return int(process.returncode)


def status(text: str) -> dict[str, str]:
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines()) if value}


def test_the_login_gets_its_ids_and_groups_and_keeps_nothing_of_root(login: spawn.Login) -> None:
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    out, code = run(["sh", "-c", "cat /proc/self/status"], "/bin/sh", login=login)
    assert code == 0, out
    got = status(out)
    assert got["Uid"].split() == [str(login.uid)] * 4  # real, effective, saved, filesystem
    assert got["Gid"].split() == [str(login.gid)] * 4
    assert sorted(map(int, got["Groups"].split())) == sorted(set(login.groups))
    assert int(got["CapPrm"], 16) == 0 and int(got["CapEff"], 16) == 0
    # the node itself (this thread and so the process's other threads) is still root
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before


def test_the_login_cannot_become_root_again(login: spawn.Login) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        missing("setpriv (util-linux)")
    out, code = run([setpriv, "--reuid=0", "--regid=0", "--clear-groups", "id", "-u"], setpriv, login=login)
    assert code != 0 and out != "0\n", out
    out, code = run(["sh", "-c", "cat /root/.bashrc /etc/shadow"], "/bin/sh", login=login)
    assert code != 0 and "Permission denied" in out


def test_environment_directory_descriptors_and_signals_are_the_given_ones(login: spawn.Login) -> None:
    home = pwd.getpwuid(login.uid).pw_dir
    leak = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leak, True)  # even a descriptor the node left inheritable stays out
    try:
        script = "env; pwd; ls /proc/$$/fd; grep -E '^Sig(Ign|Blk)' /proc/self/status"
        out, code = run(["bash", "-c", script], "/bin/bash", login=login, cwd=home,
                        env={"PATH": "/usr/bin:/bin", "TELEPORT_SESSION": "s-1", "HOME": home})
    finally:
        os.close(leak)
    assert code == 0, out
    lines = out.splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_")} == {
        "PATH": "/usr/bin:/bin", "TELEPORT_SESSION": "s-1", "HOME": home}
    assert home in lines
    fds = {int(line) for line in lines if line.isdigit()}
    assert fds <= {0, 1, 2, 255} and leak not in fds
    got = status("\n".join(line for line in lines if line.startswith("Sig")))
    assert int(got["SigIgn"], 16) == 0 and int(got["SigBlk"], 16) == 0  # the node ignores SIGPIPE; the child not


def test_a_directory_the_login_cannot_enter_gives_the_root_directory(login: spawn.Login) -> None:
    if os.stat("/root").st_mode & 0o001:
        missing("/root is searchable by others here")
    out, code = run(["sh", "-c", "pwd"], "/bin/sh", login=login, cwd="/root")
    assert (out, code) == ("/\n", 0)


def test_a_pty_session_is_a_login_shell_with_its_controlling_terminal(login: spawn.Login) -> None:
    master, slave = pty.openpty()
    tty = os.ttyname(slave)
    spawn.give_tty(tty, login)
    assert os.stat(tty).st_uid == login.uid and os.stat(tty).st_mode & 0o777 == 0o620
    home = pwd.getpwuid(login.uid).pw_dir
    try:
        process = spawn.spawn(["-bash"], "/bin/bash", env={"HOME": home, "TERM": "dumb", "PATH": "/usr/bin:/bin"},
                              cwd=home, tty=tty, login=login)
    finally:
        os.close(slave)
    script = ('echo "argv0=$0 sid=$(ps -o sid= -p $$ | tr -d " ") pid=$$ '
              'ctty=$(ps -o tty= -p $$) tty=$(tty) uid=$(id -u)"; shopt -q login_shell && echo LOGIN; exit 5\n')
    os.write(master, script.encode())
    output = b"".join(read_until_exit(master))
    os.close(master)
    assert exit_code(process) == 5
    text = output.decode(errors="replace")
    line = next(line for line in text.splitlines() if line.startswith("argv0="))
    fields = dict(item.split("=", 1) for item in line.split())
    assert fields["argv0"] == "-bash" and fields["sid"] == fields["pid"] == str(process.pid)
    assert "/dev/" + fields["ctty"] == tty == fields["tty"] and fields["uid"] == str(login.uid)
    assert "LOGIN" in text.splitlines()


def read_until_exit(master: int) -> Iterator[bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the slave's last holder exited
            return
        if not chunk:
            return
        yield chunk


def test_as_the_node_itself_and_the_exit_status_of_a_signal() -> None:
    out, code = run(["sh", "-c", "id -u; kill -TERM $$"], "/bin/sh", login=None)
    assert out == f"{os.getuid()}\n" and code == -signal.SIGTERM


def test_a_missing_program_is_an_error_in_the_node() -> None:
    with pytest.raises(FileNotFoundError):
        spawn.spawn(["nope"], "/nonexistent/shell", env={}, cwd="/", stdio=(0, 1, 2))
