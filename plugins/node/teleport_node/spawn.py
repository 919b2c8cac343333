"""Start a session's process without ``fork()`` of the node: glibc's ``posix_spawn`` (a
``clone(CLONE_VM | CLONE_VFORK)``: no copy of the node's page tables, about 0.3 ms of the node's
CPU instead of 3-5.5 ms for a fork of a 60-200 MiB process).

What the child needs before ``exec``, and how it gets it here:

* its user (setgroups, setgid, setuid), when a root node runs a session as another login:
  ``posix_spawn`` has no such attribute, and CPython 3.11's ``subprocess`` forks whenever
  ``user``/``group``/``extra_groups`` are given. Linux keeps credentials per thread (glibc's
  ``setuid()`` broadcasts the change to every thread; the raw system calls do not), so a
  short-lived thread of the node drops its own credentials with ``setgroups``/``setresgid``/
  ``setresuid`` (all three ids: no saved root uid is left) and calls ``posix_spawn``; the child is
  created with that thread's credentials, and the thread ends. The rest of the node keeps root.
* a new session whose controlling terminal is the PTY: ``POSIX_SPAWN_SETSID``, then the slave
  opened by path (no ``O_NOCTTY``; a session leader without a terminal acquires the first it
  opens) onto 0 and duplicated onto 1 and 2. The slave is given to the login first (owner, group
  ``tty``, mode 0620, as sshd does), since the child opens it as the login.
* ``argv[0]`` (``-bash`` for a login shell) apart from the file executed, the environment, the
  working directory (``addchdir_np``, as the login, so a home the login cannot enter falls back to
  ``/`` as with sshd), the node's other descriptors closed (``addclosefrom_np``; they are
  close-on-exec anyway), SIGPIPE/SIGXFSZ (and glibc's two internal signals) back to their defaults
  and an empty signal mask.

:data:`AVAILABLE` is False where this cannot run (not glibc 2.34+, an architecture whose system
call numbers are not listed below): ``sshserver`` then starts sessions with ``subprocess`` as before.
Changing a thread's effective uid makes the process non-dumpable (no core dumps, ``/proc/<pid>``
readable by root only) as the kernel does for any uid change; a root node was neither readable nor
traceable by others before that either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import os
import platform
import signal
import stat
import threading
from collections.abc import Mapping, Sequence

import attrs

#: (setgroups, setresuid, setresgid) system call numbers
SYSCALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
_OPAQUE = 1024  # bytes for posix_spawn_file_actions_t (80 on x86_64) and posix_spawnattr_t (336)


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None or platform.machine() not in SYSCALLS:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    needed = ("posix_spawn", "posix_spawn_file_actions_addchdir_np", "posix_spawn_file_actions_addclosefrom_np",
              "posix_spawnattr_setflags", "syscall", "sigemptyset", "sigaddset")
    if not all(hasattr(libc, fn) for fn in needed):
        return None
    libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    libc.posix_spawn_file_actions_addopen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                                      ctypes.c_uint]
    libc.posix_spawn_file_actions_adddup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    libc.posix_spawn_file_actions_addchdir_np.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    libc.posix_spawn_file_actions_addclosefrom_np.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    libc.syscall.restype = ctypes.c_long
    return libc


_libc = _load()
AVAILABLE = _libc is not None


@attrs.define
class Spawned:
    """The session's process, as much of ``subprocess.Popen`` as the session uses."""

    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        """Reap the process if it has exited: its exit code, ``-signal`` if killed, or None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


@attrs.frozen
class Login:
    """Whom the process runs as: uid, primary gid and every group (``os.getgrouplist``)."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def _check(result: int) -> None:
    if result != 0:  # posix_spawn_* return the error number
        raise OSError(result, os.strerror(result))


def _cstrings(items: Sequence[str | bytes]) -> ctypes.Array[ctypes.c_char_p]:
    encoded = [os.fsencode(item) for item in items]
    return (ctypes.c_char_p * (len(encoded) + 1))(*encoded, None)


def give_tty(tty: str, login: Login) -> None:
    """The PTY slave belongs to the login, group ``tty``, mode 0620 (sshd's ``pty_setowner``)."""
    try:
        tty_gid = grp.getgrnam("tty").gr_gid
    except KeyError:
        tty_gid = login.gid
    os.chown(tty, login.uid, tty_gid)
    os.chmod(tty, stat.S_IRUSR | stat.S_IWUSR | stat.S_IWGRP)


def spawn(argv: Sequence[str], executable: str, *, env: Mapping[str, str], cwd: str,
          stdio: tuple[int, int, int] | None = None, tty: str | None = None, login: Login | None = None) -> Spawned:
    """Start ``executable`` with ``argv`` in a new session: on ``stdio`` (three descriptors) or on
    the PTY slave ``tty`` (its controlling terminal), as ``login`` when given (else as the node)."""
    libc = _libc
    assert libc is not None, "spawn.AVAILABLE is False"
    assert (stdio is None) != (tty is None)
    actions, attr = ctypes.create_string_buffer(_OPAQUE), ctypes.create_string_buffer(_OPAQUE)
    sigset = ctypes.create_string_buffer(128)
    _check(libc.posix_spawn_file_actions_init(actions))
    _check(libc.posix_spawnattr_init(attr))
    c_argv, c_env = _cstrings(argv), _cstrings([f"{k}={v}" for k, v in env.items()])
    try:
        if tty is not None:
            _check(libc.posix_spawn_file_actions_addopen(actions, 0, os.fsencode(tty), os.O_RDWR, 0))
            _check(libc.posix_spawn_file_actions_adddup2(actions, 0, 1))
            _check(libc.posix_spawn_file_actions_adddup2(actions, 0, 2))
        else:
            assert stdio is not None
            for target, fd in enumerate(stdio):
                _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target))
        _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3))
        _check(libc.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        libc.sigemptyset(sigset)
        _check(libc.posix_spawnattr_setsigmask(attr, sigset))
        # what subprocess's restore_signals resets, and glibc's internal signals (32, 33), which its
        # posix_spawn would otherwise leave ignored in the new program
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            libc.sigaddset(sigset, int(signum))
        word = ctypes.c_ulong.from_buffer(sigset)  # glibc's sigaddset refuses its internal signals
        word.value |= sum(1 << (signum - 1) for signum in range(32, signal.SIGRTMIN))
        _check(libc.posix_spawnattr_setsigdefault(attr, sigset))
        outcome: list[int | BaseException] = []

        def run() -> None:
            try:
                if login is not None:
                    _become(libc, login)
                # the working directory is entered as the login (sshd: a home it cannot enter gives "/")
                where = cwd if os.access(cwd, os.X_OK) else "/"
                _check(libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(where)))
                pid = ctypes.c_int(0)
                _check(libc.posix_spawn(ctypes.byref(pid), os.fsencode(executable), actions, attr, c_argv, c_env))
                outcome.append(pid.value)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        if login is None:
            run()
        else:  # a thread of its own, whose credentials end with it
            thread = threading.Thread(target=run, name="session-spawn")
            thread.start()
            thread.join()
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return Spawned(result)


def _become(libc: ctypes.CDLL, login: Login) -> None:
    """This thread (only) becomes ``login``: groups, then gid, then uid, real, effective and saved."""
    setgroups, setresuid, setresgid = SYSCALLS[platform.machine()]
    groups = (ctypes.c_uint * max(len(login.groups), 1))(*login.groups)
    calls: tuple[tuple[int, tuple[object, ...]], ...] = (
        (setgroups, (ctypes.c_long(len(login.groups)), groups)),
        (setresgid, (ctypes.c_long(login.gid),) * 3),
        (setresuid, (ctypes.c_long(login.uid),) * 3))
    for number, args in calls:
        if libc.syscall(ctypes.c_long(number), *args) != 0:
            code = ctypes.get_errno() or errno.EPERM
            raise OSError(code, f"cannot become uid {login.uid}: {os.strerror(code)}")
