"""``tctl`` with no ``-c``, no ``-i`` and no /etc/teleport.yaml uses the current ``tsh login`` profile:
through the proxy's web port (TLS routing passes the auth API through), the user's roles decide."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.cli.connect import CONFIG_ENV
from teleport_core.config.load import DEFAULT_CONFIG
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists: tctl would use it, not the profile"),
]

PASSWORD = "correct horse battery staple 42"  # a test user's password


class Cluster:
    def __init__(self, root: Path, handle: Any) -> None:
        self.root = root
        services = handle.process.services
        self.auth_addr = services["auth_service"].address
        self.web = f"127.0.0.1:{services['proxy_service'].web_address.port}"

    def call(self, method: str, *args: Any) -> Any:
        async def body() -> Any:
            async with AuthClient(self.auth_addr, [load_identity_dir(self.root / "data" / "keys" / "auth")]) as c:
                return await getattr(c, method)(*args)

        return asyncio.run(body())

    def user(self, name: str, roles: list[str]) -> None:
        token = self.call("create_user", name, roles, {"logins": ["nobody"]})["invite"]["token"]
        self.call("complete_user_token", token, PASSWORD)

    def run(self, tool: str, home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TELEPORT_HOME": str(home)}
        env.pop(CONFIG_ENV, None)
        return subprocess.run([sys.executable, "-m", f"teleport_core.cli.{tool}", *args], input=stdin,
                              capture_output=True, text=True, timeout=60, env=env, check=False, cwd=self.root)

    def login(self, home: Path, user: str) -> None:
        done = self.run("tsh", home, "login", f"--proxy={self.web}", f"--user={user}", "--insecure",
                        stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("tctl-profile")
    config = {
        "teleport": {"data_dir": str(root / "data"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        c = Cluster(root, handle)
        c.user("alice", ["editor"])
        c.user("bob", ["access"])
        yield c


def test_admin_profile_runs_tctl_without_flags(cluster, tmp_path):
    cluster.login(tmp_path, "alice")
    done = cluster.run("tctl", tmp_path, "get", "roles")
    assert done.returncode == 0, done.stderr
    assert {"access", "editor", "auditor"} <= {r["metadata"]["name"] for r in yaml.safe_load_all(done.stdout)}
    created = cluster.run("tctl", tmp_path, "create", stdin="kind: role\nversion: v7\nmetadata: {name: via-profile}\n"
                                                                  "spec: {}\n")
    assert created.stdout == 'role "via-profile" has been created\n', created.stderr
    assert cluster.call("get_role", "via-profile")["metadata"]["name"] == "via-profile"
    # --auth-server still picks the address; the profile's certificate goes with it
    direct = cluster.run("tctl", tmp_path, "--auth-server", cluster.auth_addr, "get", "role/via-profile")
    assert direct.returncode == 0, direct.stderr


def test_profile_without_rights_is_refused_with_a_clear_message(cluster, tmp_path):
    cluster.login(tmp_path, "bob")
    done = cluster.run("tctl", tmp_path, "get", "roles")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        'ERROR: access denied to user "bob": no role allows list on role (access) (tctl used your tsh login: '
        "log in as a user whose roles allow this, or run tctl on the auth server)")


def test_no_profile_says_how_to_get_credentials(cluster, tmp_path):
    done = cluster.run("tctl", tmp_path / "empty", "get", "roles")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ERROR: tctl needs credentials: log in with tsh login --proxy=HOST, run it on the auth server "
        "(tctl -c /etc/teleport.yaml), or pass --auth-server HOST:3025 -i IDENTITY_FILE")


def test_expired_profile_says_to_log_in_again(cluster, tmp_path):
    import json

    cluster.login(tmp_path, "alice")
    [meta_path] = list((tmp_path / "profiles").glob("*/profile.json"))
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "valid_before": "2020-01-01T00:00:00+00:00"}))
    done = cluster.run("tctl", tmp_path, "get", "roles")
    assert done.returncode == 1
    assert done.stderr.strip() == "ERROR: tctl: your session has expired, run tsh login"
