"""Helpers for the graceful reload tests: ``teleport start --pid-file`` as a real daemon whose
process may be replaced by a reload (``SIGHUP``), so it is followed by the pid file."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from teleport_core.testing.processes import free_port as free_port  # the tests import it from here
from teleport_core.testing.waiting import wait_for
from tests.process_helpers import REPO, SAMPLE_PLUGIN


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it is reported by :func:`zombie`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not zombie(pid)


def zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return bool(re.search(r"^State:\s+Z", status, re.M))


class Daemon:
    """``teleport start -c CONFIG --pid-file FILE`` logging to ``teleport.log`` in ``folder``."""

    def __init__(self, folder: Path, config: dict[str, Any], *, plugins: str = SAMPLE_PLUGIN,
                 extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.args = args  # more flags for teleport start
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.config = config
        teleport = config.setdefault("teleport", {})
        teleport.setdefault("log", {"output": str(folder / "teleport.log"), "severity": "INFO"})
        self.log_path = Path(teleport["log"]["output"])
        self.config_path = folder / "teleport.yaml"
        self.pid_file = folder / "teleport.pid"
        self.write_config()
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [self.env.get("PYTHONPATH")])])
        self.env["TELEPORT_PLUGINS"] = plugins
        self.env.pop("TELEPORT_DISABLE_PLUGINS", None)
        self.env.update(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    def write_config(self, config: dict[str, Any] | None = None, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else yaml.safe_dump(config or self.config))

    def start(self) -> Daemon:
        with open(self.folder / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "teleport_core.cli.teleport", "start", "-c", str(self.config_path),
                 "--pid-file", str(self.pid_file), *self.args],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.pids.add(self.proc.pid)
        proc, ready = self.proc, re.compile(rf"teleport is ready.*pid={self.proc.pid}")

        def started() -> bool:
            if ready.search(self.log()):
                return True
            if proc.poll() is not None:
                raise RuntimeError(f"teleport exited with {proc.returncode}:\n{self.log()[-3000:]}")
            return False

        wait_for(started, "teleport is ready", 180)
        return self

    @property
    def first_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        out = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        err = self.folder / "stderr.log"
        return out + (err.read_text(errors="replace") if err.exists() else "")

    def wait_log(self, pattern: str, timeout: float = 60.0, count: int = 1) -> list[re.Match[str]]:
        def found() -> list[re.Match[str]] | None:
            matches = list(re.finditer(pattern, self.log()))
            return matches if len(matches) >= count else None

        return wait_for(found, f"log line {pattern!r} x{count}", timeout)

    def pid(self) -> int:
        """The pid the pid file names now."""
        return int(self.pid_file.read_text().strip())

    def reload(self, signum: int = signal.SIGHUP, timeout: float = 180.0) -> int:
        """Send ``signum`` to the serving process; the new process's pid once it is ready."""
        old = self.pid()
        before = len(re.findall(r"new process ready", self.log()))
        os.kill(old, signum)
        match = self.wait_log(r"new process ready pid=(\d+)", timeout, count=before + 1)[-1]
        new = int(match.group(1))
        self.pids.add(new)
        return new

    def stop(self) -> None:
        """SIGTERM every process this daemon had (then SIGKILL); reaps our own child."""
        for pid in sorted(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in self.pids):
            if self.proc is not None:
                self.proc.poll()
            time.sleep(0.1)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def echo_pid(port: int) -> int:
    """Which process answers a new connection to the sample service on ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"pid\n")
        return int(sock.makefile("rb").readline())


class EchoConnection:
    """One open echo connection (held across a reload)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        return self.reader.readline()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
