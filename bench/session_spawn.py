"""The cost of starting one session's process, in this process grown to a node's size: the
``subprocess.Popen`` the node used (fork: PTY ``preexec_fn``, the login's uid/gid/groups) against
``teleport_node.spawn`` (glibc posix_spawn), with pipes and with a PTY. Run as root.

    python bench/session_spawn.py [--mib 90] [--count 40] [--rounds 3] [--login teleport-test]

Prints the parent's CPU (``process_time``: the node's, GIL held for a fork) and wall per start.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import pwd
import subprocess
import termios
import time
from collections.abc import Callable
from typing import Any

from teleport_node import spawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=90)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--login", default="teleport-test")
    args = parser.parse_args()
    ballast = [bytearray(4096) for _ in range(args.mib * 256)]  # touched pages, as a node's heap
    entry = pwd.getpwnam(args.login)
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    drop: dict[str, Any] = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}
    login = spawn.Login(entry.pw_uid, entry.pw_gid, tuple(groups))
    env = {"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin"}

    def ctty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def popen_pipes() -> tuple[Any, int]:
        fd = os.open(os.devnull, os.O_RDWR)
        return subprocess.Popen(["true"], executable="/bin/true", stdin=fd, stdout=fd, stderr=fd, cwd=entry.pw_dir,
                                env=env, start_new_session=True, close_fds=True, **drop), fd

    def spawn_pipes() -> tuple[Any, int]:
        fd = os.open(os.devnull, os.O_RDWR)
        return spawn.spawn(["true"], "/bin/true", env=env, cwd=entry.pw_dir, stdio=(fd, fd, fd), login=login), fd

    def popen_pty() -> tuple[Any, int]:
        master, slave = pty.openpty()
        try:
            return subprocess.Popen(["true"], executable="/bin/true", stdin=slave, stdout=slave, stderr=slave,
                                    cwd=entry.pw_dir, env=env, start_new_session=True, preexec_fn=ctty,
                                    close_fds=True, **drop), master
        finally:
            os.close(slave)

    def spawn_pty() -> tuple[Any, int]:
        master, slave = pty.openpty()
        tty = os.ttyname(slave)
        try:
            spawn.give_tty(tty, login)
            return spawn.spawn(["true"], "/bin/true", env=env, cwd=entry.pw_dir, tty=tty, login=login), master
        finally:
            os.close(slave)

    def measure(start: Callable[[], tuple[Any, int]]) -> str:
        started = []
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.count):
            started.append(start())
        cpu, wall = (time.process_time() - cpu) / args.count, (time.perf_counter() - wall) / args.count
        for process, fd in started:
            os.close(fd)
            while process.poll() is None:
                time.sleep(0.001)
        return f"{start.__name__} CPU {cpu * 1000:.2f} ms wall {wall * 1000:.2f} ms"

    for _ in range(args.rounds):
        print(f"{args.mib} MiB:", "   ".join(measure(fn) for fn in (popen_pipes, spawn_pipes, popen_pty, spawn_pty)))
    del ballast


if __name__ == "__main__":
    main()
