"""Test helpers: a real moto S3 server on loopback; the TCP proxy that can cut the link is
:class:`teleport_core.testing.sockets.CuttableProxy`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from teleport_core.testing.processes import free_port
from teleport_core.testing.sockets import CuttableProxy

__all__ = ["CuttableProxy", "MotoServer", "free_port"]


class MotoServer:
    """``python -m moto.server`` in a subprocess on 127.0.0.1 (a real HTTP S3 endpoint).

    ``port``: listen there (to start a server again where a stopped one was; moto keeps its
    state in memory, so the new server starts empty)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start within 60 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
