"""Real ``teleport start`` processes (:class:`TeleportProcess`) for the high-availability tests:
auth servers sharing one etcd cluster, and a proxy and a node configured with every auth server
(``auth_servers``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.testing.processes import TeleportProcess, free_port

CLUSTER = "ha.example.com"
PROXY_TOKEN = "ha-proxy-token-0123456789abcdef"
NODE_TOKEN = "ha-node-token-0123456789abcdef"


Teleport = TeleportProcess


class AuthProcess(TeleportProcess):
    """An auth server; ``addr`` is its API address."""

    addr = ""


class ProxyProcess(TeleportProcess):
    """A proxy; ``web`` is its HTTPS address (``tsh --proxy``)."""

    web = ""


def shared_storage(root: Path) -> dict[str, Any]:
    """Audit events and recordings in directories every auth server of ``root`` shares (outside
    their data_dirs): several auth servers on one cluster state are refused without it."""
    return {"audit_events_uri": [f"file://{root / 'shared' / 'audit'}"],
            "audit_sessions_uri": f"file://{root / 'shared' / 'records'}"}


def auth_process(root: Path, name: str, peers: list[str], prefix: str, *, second_factor: str = "off",
                 extra: dict[str, Any] | None = None, storage: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> AuthProcess:
    """An auth server (only) on etcd ``peers``, with static proxy and node tokens; audit events and
    recordings go to ``storage`` (default: :func:`shared_storage`); ``env`` adds to its environment."""
    port = free_port()
    audit = shared_storage(root) if storage is None else storage
    config = {
        "teleport": {"storage": {"type": "etcd", "peers": peers, "prefix": prefix, **audit}, **(extra or {})},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": f"127.0.0.1:{port}",
                         "tokens": [f"proxy:{PROXY_TOKEN}", f"node:{NODE_TOKEN}"],
                         "authentication": {"second_factor": second_factor}},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    process = AuthProcess(root, name, config, env={**os.environ, **env} if env else None)
    process.addr = f"127.0.0.1:{port}"
    return process


#: Dummy AWS credentials from the environment only (the S3 server is moto), no profile files of the host.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def moto_server() -> Any:
    """A moto S3 server on loopback (teleport-storage-s3's test helper ``MotoServer``); skips the
    test when moto or the S3 plugin is not installed (CI installs both: there it fails)."""
    from teleport_core.testing.prerequisites import missing

    for module, package in (("moto", "moto[server]"), ("teleport_storage_s3", "plugins/storage_s3[test]")):
        try:
            __import__(module)
        except ImportError:
            missing(f"{module} is not installed (pip install -e '{package}')")
    helpers = str(Path(__file__).resolve().parents[2] / "storage_s3" / "tests")
    if helpers not in sys.path:
        sys.path.append(helpers)
    from storage_s3_helpers import MotoServer

    return MotoServer()


def s3_uri(bucket: str, endpoint: str) -> str:
    return f"s3://{bucket}/records?region=us-east-1&endpoint={endpoint}&insecure=true&path_style=true"


def admin(auth_servers: list[AuthProcess], identity_of: AuthProcess | None = None) -> AuthClient:
    """An admin client (an auth server's own identity) that knows every auth server."""
    owner = identity_of or auth_servers[0]
    return AuthClient([a.addr for a in auth_servers],
                      [load_identity_dir(owner.data_dir / "keys" / "auth")], timeout=20)


def run(coro: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def proxy_process(root: Path, auth_addrs: list[str], ca_pin: str) -> ProxyProcess:
    web, ssh, tunnel = free_port(), free_port(), free_port()
    config = {
        "teleport": {"auth_servers": auth_addrs, "auth_token": PROXY_TOKEN, "ca_pin": ca_pin},
        "auth_service": {"enabled": False},
        "ssh_service": {"enabled": False},
        "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{web}", "listen_addr": f"127.0.0.1:{ssh}",
                          "tunnel_listen_addr": f"127.0.0.1:{tunnel}"},
    }
    process = ProxyProcess(root, "proxy-1", config)
    process.web = f"127.0.0.1:{web}"
    return process


def node_process(root: Path, auth_addrs: list[str], ca_pin: str, labels: dict[str, str]) -> Teleport:
    port = free_port()
    config = {
        "teleport": {"auth_servers": auth_addrs, "auth_token": NODE_TOKEN, "ca_pin": ca_pin},
        "auth_service": {"enabled": False},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": True, "listen_addr": f"127.0.0.1:{port}", "labels": labels},
    }
    return Teleport(root, "node-1", config)


def tsh(home: Path, *args: str, stdin: str = "", timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def signup(web: str, invite_token: str, password: str) -> None:
    """Complete an invite through the proxy's web API (``second_factor: off``: password only)."""
    with httpx.Client(base_url=f"https://{web}", verify=False, timeout=30) as client:
        done = client.put("/v1/webapi/users/password/token",
                          json={"token": invite_token, "password": password, "second_factor_token": ""})
    assert done.status_code == 200, done.text
