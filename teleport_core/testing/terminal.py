"""A process on a pseudo-terminal for tests and benches: type, wait for output, read to the end.

::

    term = Terminal([tsh, "ssh", "-t", "me@node"], env)
    term.type("echo hi")
    term.expect(b"hi")
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence


def _controlling() -> None:  # in the child: the terminal becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``argv`` with a new pseudo-terminal as its stdin, stdout, stderr and controlling terminal."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env or os.environ),
                                     start_new_session=True, preexec_fn=_controlling)
        os.close(slave)
        self.seen = bytearray()
        self.closed = False

    def type(self, line: str) -> None:
        self.send(line.encode() + b"\n")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the terminal closed."""
        if self.closed:
            return False
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every holder of the terminal closed it
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.seen += chunk
        return True

    def expect(self, needle: bytes, timeout: float = 60.0, since: int = 0) -> int:
        """Wait until ``needle`` shows (after offset ``since``); the offset just after it."""
        deadline = time.monotonic() + timeout
        start = since
        while (found := self.seen.find(needle, start)) < 0:
            start = max(since, len(self.seen) - len(needle))  # scan only what is new (bulk output stays linear)
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self.seen[-2000:]!r}"
            assert self._read(left), f"the terminal closed before {needle!r}: {self.seen[-2000:]!r}"
        return found + len(needle)

    def rest(self, timeout: float = 30.0) -> bytes:
        """Read until the terminal closes (or ``timeout``); everything seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        return bytes(self.seen)

    def wait(self, timeout: float = 30.0) -> int:
        self.rest(timeout)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)
