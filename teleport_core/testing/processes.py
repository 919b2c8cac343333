"""Run ``teleport start`` as a real process inside a test: :class:`TeleportProcess`.

::

    from teleport_core.testing.processes import TeleportProcess

    auth = TeleportProcess(tmp_path, "auth-1", {"auth_service": {...}}).start()
    ...
    auth.kill()     # kill -9, as a crash
    auth.start()    # again, same data_dir and config

The config mapping is written to ``<root>/<name>/teleport.yaml`` (``data_dir`` defaults to
``<root>/<name>/data``, ``nodename`` to ``name``); the process logs to
``<root>/<name>/teleport.log`` and is ready when ``/readyz`` of its ``diag_addr`` (a free port
chosen here; ``diag_url``) answers 200. Use it where a test needs what an in-process cluster
(:mod:`teleport_core.testing.cluster`) cannot give: several processes, kill -9, restarts.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from teleport_core.errors import TeleportError

READY_TIMEOUT = 180.0


#: the ports free_port handed out in this process (never handed twice: the first may not be bound yet)
_handed: set[int] = set()


def _port_range() -> range:
    """Where :func:`free_port` picks: below the kernel's ephemeral range (where ``connect()`` takes
    its source ports, so no outgoing connection takes the port before the server binds it) and,
    under pytest-xdist, this worker's own slice of it (two workers never pick the same port)."""
    low, high = 10000, 32768
    with contextlib.suppress(OSError, ValueError):
        high = min(high, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]))
    if high - low < 1000:
        return range(0)  # an unusual ephemeral range: let the kernel choose
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (high - low) // max(count, 1)
    start = low + min(index, count - 1) * size
    return range(start, start + size)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see :func:`_port_range` for where)."""
    ports = _port_range()
    for _ in range(200):
        if not ports:
            break
        port = random.choice(ports)  # noqa: S311 (a port, not a secret)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT is not free
            except OSError:
                continue
        _handed.add(port)
        if len(_handed) > len(ports) // 2:
            _handed.clear()
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` (a graceful stop), SIGKILL it after ``timeout`` seconds; idempotent."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@contextlib.contextmanager
def background(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run ``argv`` for the block (stdin closed; stdout and stderr text pipes the test may read),
    then SIGTERM it and collect what is left of its output.

    The SIGTERM is repeated every few seconds (then SIGKILL after 30 s): Debian's OpenSSH client
    can lose a SIGTERM that arrives while it handles a channel closing (its loop checks the flag,
    then sleeps in ``poll`` for minutes; a second SIGTERM ends it at once). Seen with ``ssh -R``
    right after a forwarded connection ended."""
    proc = subprocess.Popen(list(argv), env=None if env is None else dict(env), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        for _ in range(10):
            proc.terminate()
            try:
                proc.communicate(timeout=3)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            proc.kill()
            proc.communicate(timeout=30)


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from ``/proc``), sorted."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def teleport_executable() -> str:
    """The ``teleport`` script of the running interpreter's environment."""
    return str(Path(sys.executable).with_name("teleport"))


class TeleportProcess:
    """One ``teleport start`` process; see the module docstring."""

    def __init__(self, root: Path, name: str, config: dict[str, Any], *, severity: str = "INFO",
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = env  # the process's environment (None: this one's)
        self.folder = root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.diag_port = free_port()
        teleport = config.setdefault("teleport", {})
        teleport.setdefault("data_dir", str(self.folder / "data"))
        teleport.setdefault("nodename", name)
        teleport["diag_addr"] = f"127.0.0.1:{self.diag_port}"
        teleport.setdefault("log", {"output": str(self.folder / "teleport.log"), "severity": severity})
        config.setdefault("version", "v3")
        self.config = config
        self.data_dir = Path(teleport["data_dir"])
        self.config_path = self.folder / "teleport.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    @property
    def diag_url(self) -> str:
        return f"http://127.0.0.1:{self.diag_port}"

    def write_config(self) -> None:
        """Write ``self.config`` (after changing it, before the next :meth:`start`)."""
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, timeout: float = READY_TIMEOUT, *, wait: bool = True) -> Self:
        """Start the process; with ``wait``, return once ``/readyz`` answers 200."""
        with open(self.folder / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([teleport_executable(), "start", "-c", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                         env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc is not None else None
                raise TeleportError(f"{self.name} exited with {code}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.diag_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TeleportError(f"{self.name} not ready within {timeout:g} s:\n{self.log()[-4000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What the process logged (its log file, then its stderr)."""
        out = ""
        for name in ("teleport.log", "stderr.log"):
            path = self.folder / name
            out += path.read_text(errors="replace") if path.exists() else ""
        return out

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        import httpx

        return httpx.get(f"{self.diag_url}/metrics", timeout=10).text

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout`` seconds; idempotent."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
