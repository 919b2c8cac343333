"""Helpers for the process tests: configs for the sample plugin and teleport child processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from teleport_core.plugins import make_plugins
from teleport_core.testing.waiting import wait_for
from tests.plugins.sample_service import SECTIONS

REPO = Path(__file__).resolve().parent.parent
SAMPLE_PLUGIN = "tests.plugins.sample_service"
SECRET = "hunter2-correct-horse-battery"
T = TypeVar("T")


def sample_plugins() -> Any:
    return make_plugins(extra=[SAMPLE_PLUGIN])


def other_sections_disabled() -> dict[str, Any]:
    """Every installed service section but the sample ones, disabled (they default to enabled)."""
    names = {"auth_service", "proxy_service", "ssh_service", *sample_plugins().services()}
    return {name: {"enabled": False} for name in sorted(names) if name not in SECTIONS}


def sample_config(
    data_dir: Path,
    *,
    diag: bool = True,
    log: dict[str, Any] | None = None,
    sample: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A teleport.yaml (as a dict) running ``sample_service`` and ``sample_after`` (``after=None``: off)."""
    teleport: dict[str, Any] = {"nodename": "test-node", "data_dir": str(data_dir)}
    if diag:
        teleport["diag_addr"] = "127.0.0.1:0"
    if log is not None:
        teleport["log"] = log
    data: dict[str, Any] = {"version": "v3", "teleport": teleport, **other_sections_disabled()}
    data["sample_service"] = {"password": SECRET, **(sample or {})}
    data["sample_after"] = {**after} if after is not None else {"enabled": False}
    return data




def connect_refused(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def echo(addr: str, payload: bytes = b"hello\n") -> bytes:
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


class TeleportChild:
    """``python -m tests.process_main CONFIG`` with stdout and stderr captured to files."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], name: str = "teleport", plugins: str = SAMPLE_PLUGIN
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        log = config["teleport"].get("log") or {}
        output = log.get("output", "stderr")
        self.log_path = {"stderr": self.stderr_path, "stdout": self.stdout_path}.get(output, Path(output))
        self.data_dir = Path(config["teleport"]["data_dir"])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env["TELEPORT_PLUGINS"] = plugins
        env.pop("TELEPORT_DISABLE_PLUGINS", None)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.process_main", str(self.config_path)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern`` (fails early if the process exits)."""

        def check() -> re.Match[str] | None:
            found = re.search(pattern, self.log())
            if found is None and self.proc.poll() is not None:
                found = re.search(pattern, self.log())
                if found is None:
                    pytest.fail(
                        f"teleport exited with {self.proc.returncode} before logging {pattern!r}:\n{self.log()}"
                    )
            return found

        return wait_for(check, f"log line {pattern!r}", timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_log(r"teleport is ready", timeout)

    @property
    def diag_url(self) -> str:
        addr = self.wait_log(r"diagnostics listening addr=(\S+)").group(1)
        return f"http://{addr}"

    def addr_of(self, section: str) -> str:
        return (self.data_dir / f"{section}.addr").read_text(encoding="utf-8")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"teleport did not exit within {timeout:g}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def spawner() -> Iterator[Callable[..., TeleportChild]]:
    """For a fixture: ``spawn(workdir, config)`` starts a teleport child; all are killed at teardown."""
    children: list[TeleportChild] = []

    def start(
        workdir: Path, config: dict[str, Any], name: str = "teleport", plugins: str = SAMPLE_PLUGIN
    ) -> TeleportChild:
        child = TeleportChild(workdir, config, name, plugins)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
