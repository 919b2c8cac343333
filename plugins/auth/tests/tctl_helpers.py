"""What the ``tctl`` tests share: a real auth server on 127.0.0.1 and ``tctl`` run as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

STATIC_TOKEN = "static-node-token-0123456789abcdef"


class TctlCluster:
    """A running auth server and how to reach it: ``tctl -c <config>`` or ``tctl -i <file> --auth-server``."""

    def __init__(self, handle: Any, root: Path, config_file: Path) -> None:
        self.handle = handle
        self.root = root
        self.data_dir = root / "data"
        self.config_file = config_file
        self.addr: str = handle.process.services["auth_service"].address

    def tctl(self, *args: str, identity: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        how = ["-i", str(identity), "--auth-server", self.addr] if identity else ["-c", str(self.config_file)]
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", *how, *args], capture_output=True,
                              text=True, input=input, timeout=60, check=False, cwd=self.root)

    def ok(self, *args: str, **kwargs: Any) -> str:
        """``tctl args`` must succeed quietly; its stdout."""
        result = self.tctl(*args, **kwargs)
        assert result.returncode == 0, f"tctl {' '.join(args)} failed: {result.stderr}"
        assert result.stderr == "", result.stderr
        return result.stdout

    def error(self, *args: str, **kwargs: Any) -> str:
        """``tctl args`` must fail with exactly one ``ERROR: ...`` line and no output; that line."""
        result = self.tctl(*args, **kwargs)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert result.stdout == "", result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
        return lines[0]

    def admin(self) -> AuthClient:
        """An API client with the auth server's own identity."""
        return AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")])

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``await AuthClient.<method>(*args)`` as the admin, from the test's thread."""

        async def main() -> Any:
            async with self.admin() as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())


@contextlib.contextmanager
def tctl_cluster(root: Path) -> Iterator[TctlCluster]:
    """Start an auth server (cluster ``example.com``, one static node token) and write its ``teleport.yaml``."""
    config: dict[str, Any] = {
        "teleport": {"data_dir": str(root / "data"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "tokens": [f"node:{STATIC_TOKEN}"]},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        address = handle.process.services["auth_service"].address
        config_file = root / "teleport.yaml"
        config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                          "listen_addr": address}}))
        yield TctlCluster(handle, root, config_file)
