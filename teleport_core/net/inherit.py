"""Listening sockets a new ``teleport start`` inherits from the old one (graceful reload).

On ``SIGHUP``/``SIGUSR2`` the running process starts a new one with the same command line and
hands it every listening socket it has, as Teleport does with ``TELEPORT_OS_FILES``: the file
descriptors stay open across ``exec`` and the environment says which is which::

    TELEPORT_OS_FILES=[{"type": "proxy:web", "address": "0.0.0.0:3080", "fd": 3}, ...]

``type`` is the listener's stable name (``auth``, ``proxy:ssh``, ``proxy:web``,
``proxy:tunnel``, ``node``, ``diag``) and ``address`` the address the config asked for (port
0 included), so a listener is reused only when its config did not change. A service asks for
its socket with ``ctx.listen(name, addr)`` (:meth:`Listeners.listen`): the inherited one when
name and address match, else a newly bound one. Inherited sockets nobody asked for (the new
config dropped or moved that listener) are closed once the new process is ready.

Also in the environment (read and removed at start, so no session a node spawns sees them):
``TELEPORT_READY_FD`` (the write end of a pipe: the new process writes ``ready`` once
``teleport is ready``, or ``error <message>`` when it cannot start), ``TELEPORT_RELOAD_GENERATION``
(0 for the first process, one more per reload) and ``TELEPORT_DATA_DIR_LOCK_FD`` (the held
``data_dir`` lock, see :mod:`teleport_core.datadir`).

Every socket is used non-blocking or with a timeout (``O_NONBLOCK`` is shared by both
processes): a process that loses the race for a connection gets ``EAGAIN`` and waits again.
A process stops accepting by closing its own descriptor, never with ``shutdown()``, which
would stop the other process's listener too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import Callable

import attrs

from teleport_core.config.values import NetAddr
from teleport_core.errors import TeleportError

ENV_FILES = "TELEPORT_OS_FILES"
ENV_READY_FD = "TELEPORT_READY_FD"
ENV_GENERATION = "TELEPORT_RELOAD_GENERATION"
ENV_LOCK_FD = "TELEPORT_DATA_DIR_LOCK_FD"
READY = b"ready\n"
ERROR_PREFIX = b"error "
BACKLOG = 1024


@attrs.define
class Listener:
    """One listening socket: its stable name, the address asked for, the socket."""

    name: str
    address: str
    sock: socket.socket

    @property
    def bound(self) -> NetAddr:
        host, port = self.sock.getsockname()[:2]
        return NetAddr(str(host), int(port))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind(addr: NetAddr, name: str = "") -> socket.socket:
    """A new non-blocking listening TCP socket on ``addr``; a clear error when it cannot bind."""
    sock = socket.socket(_family(addr.host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.host, addr.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        what = f"{name} " if name else ""
        raise TeleportError(f"{what}cannot listen on {addr}: {exc.strerror or exc}") from None
    return sock


class Listeners:
    """The listening sockets of this process: inherited ones (from ``TELEPORT_OS_FILES``) and
    those bound since. :meth:`export` hands them all to a new process."""

    def __init__(self, inherited: list[Listener] | None = None) -> None:
        self.inherited: list[Listener] = list(inherited or [])
        self.active: list[Listener] = []

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Listeners:
        """The sockets ``TELEPORT_OS_FILES`` names (removed from the environment); bad entries
        are an error (a parent of another version would be a bug, not something to guess at)."""
        env = os.environ if environ is None else environ
        text = env.pop(ENV_FILES, "")
        if not text:
            return cls()
        try:
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise ValueError("not a list")
            found = []
            for entry in entries:
                name, address, fd = str(entry["type"]), str(entry["address"]), int(entry["fd"])
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    raise ValueError(f"fd {fd} is not a socket")
                sock = socket.socket(fileno=fd)
                sock.set_inheritable(False)
                found.append(Listener(name, address, sock))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise TeleportError(f"{ENV_FILES} is invalid: {exc}") from None
        return cls(found)

    def listen(self, name: str, addr: NetAddr,
               bind_new: Callable[[NetAddr], socket.socket] | None = None) -> socket.socket:
        """The socket for listener ``name`` on ``addr``: the inherited one when name and address
        match (the old process keeps serving on it until it drains), else a new one
        (``bind_new(addr)``, default :func:`bind`)."""
        address = str(addr)
        for listener in self.inherited:
            if listener.name == name and listener.address == address:
                self.inherited.remove(listener)
                self.active.append(listener)
                return listener.sock
        sock = bind_new(addr) if bind_new is not None else bind(addr, name)
        self.active.append(Listener(name, address, sock))
        return sock

    def close_unused(self) -> list[str]:
        """Close the inherited sockets nobody asked for; their names."""
        names = [f"{item.name}={item.address}" for item in self.inherited]
        for listener in self.inherited:
            listener.sock.close()
        self.inherited.clear()
        return names

    def close_all(self) -> None:
        """Stop accepting here: close this process's descriptors (never ``shutdown()``: the
        socket lives on in the other process)."""
        for listener in [*self.active, *self.inherited]:
            with contextlib.suppress(OSError):
                listener.sock.close()
        self.active.clear()
        self.inherited.clear()

    def export(self) -> tuple[str, list[int]]:
        """``TELEPORT_OS_FILES``'s value and the descriptors to pass."""
        entries, fds = [], []
        for listener in self.active:
            fd = listener.sock.fileno()
            if fd < 0:  # closed already (the service stopped accepting)
                continue
            entries.append({"type": listener.name, "address": listener.address, "fd": fd})
            fds.append(fd)
        return json.dumps(entries), fds


def own_argv() -> list[str]:
    """This process's command line (``/proc/self/cmdline``: ``python -m ...`` included), run by
    this interpreter."""
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            args = [a.decode() for a in handle.read().split(b"\0") if a]
    except OSError:
        args = []
    if len(args) < 2:
        args = [sys.executable, *sys.argv]
    return [sys.executable, *args[1:]]


def read_answer(fd: int) -> bytes:
    """The new process's first line on the ready pipe (b"" when it closed it unsaid)."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data


def take_int(name: str, environ: dict[str, str] | None = None) -> int | None:
    """Pop an integer from the environment (None when absent or not a number)."""
    env = os.environ if environ is None else environ
    text = env.pop(name, "")
    return int(text) if text.strip().isdigit() else None


def report_ready(fd: int | None, message: bytes = READY) -> None:
    """Tell the old process we are ready (or why not); closes ``fd``. Never raises."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, message)
    with contextlib.suppress(OSError):
        os.close(fd)


def report_start_failure(message: str) -> None:
    """When started by a reload, tell the old process why this one cannot start (the CLI calls
    it for an error before :func:`teleport_core.process.run_process`, such as a broken config)."""
    fd = take_int(ENV_READY_FD)
    if fd is not None:
        report_ready(fd, ERROR_PREFIX + " ".join(message.split()).encode("utf-8", "replace")[:4000] + b"\n")
