"""Trusted clusters end to end (issue 19): the tunnel, routing and tsh. Two clusters on loopback: the
root (auth and proxy, one ``teleport start`` process, restarted in a test) and the leaf (auth, proxy and
our node, in this process). The root never dials the leaf: the leaf's proxy dials the root's tunnel port.
A root user lists the leaf (``tsh clusters``), its nodes (``tsh ls --cluster``) and reaches its node
(``tsh ssh --cluster``, ``tsh scp --cluster``, OpenSSH through ``tsh config``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.config.load import Flags
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.processes import free_port, stop_process
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = "root.example.com"
LEAF = "leaf.example.com"
LOGIN = getpass.getuser()
PASSWORD = "correct horse battery staple"


class Cluster:
    """One cluster's admin API (the auth's own identity on disk) and ``tctl``."""

    def __init__(self, folder: Path, name: str, auth_addr: str, web: str) -> None:
        self.folder = folder
        self.name = name
        self.auth_addr = auth_addr
        self.web = web
        self.config_file = folder / "tctl.yaml"
        self.config_file.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(folder / "data"), "nodename": "tctl"},
            "auth_service": {"cluster_name": name, "listen_addr": auth_addr},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            keys = load_identity_dir(self.folder / "data" / "keys" / "auth")
            async with AuthClient(self.auth_addr, [keys]) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())

    def ok(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(self.config_file), *args],
                                capture_output=True, text=True, input=input, timeout=90, check=False)
        assert result.returncode == 0, f"tctl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def events(self, kind: str) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        page = self.call("search_events", type=kind, since=(now - dt.timedelta(minutes=30)).isoformat(),
                         until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000)
        return list(page["events"])

    def signup(self, user: str, roles: list[str]) -> None:
        created = self.call("create_user", user, roles, {"logins": [LOGIN]})
        token = created["invite"]["token"]
        with httpx.Client(base_url=f"https://{self.web}", verify=False, timeout=30) as web:
            done = web.put("/v1/webapi/users/password/token",
                           json={"token": token, "password": PASSWORD, "second_factor_token": ""})
            assert done.status_code == 200, done.text


class RootProcess:
    """The root: auth and proxy in one ``teleport start`` on fixed ports (so it can restart)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.auth_port, self.web_port, self.ssh_port, self.tunnel_port = (free_port() for _ in range(4))
        self.config = folder / "teleport.yaml"
        self.config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(folder / "data"), "nodename": "root-auth",
                         "log": {"output": str(folder / "teleport.log")}},
            "auth_service": {"cluster_name": ROOT, "listen_addr": f"127.0.0.1:{self.auth_port}",
                             "authentication": {"second_factor": "off"}},
            "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{self.web_port}",
                              "listen_addr": f"127.0.0.1:{self.ssh_port}",
                              "tunnel_listen_addr": f"127.0.0.1:{self.tunnel_port}"},
            "ssh_service": {"enabled": False}}))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def web(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    def start(self) -> None:
        with open(self.folder / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("teleport")), "start", "-c",
                                          str(self.config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (self.folder / "stderr.log").read_text()
            try:
                return httpx.get(f"https://{self.web}/webapi/ping", verify=False, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "the root's proxy", timeout=120, interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Env:
    def __init__(self, root: Cluster, root_process: RootProcess, leaf: Cluster, leaf_handle: Any,
                 home: Path) -> None:
        self.root = root
        self.root_process = root_process
        self.leaf = leaf
        self.leaf_handle = leaf_handle
        self.home = home

    def tsh(self, *args: str, home: Path | None = None, stdin: str = "",
            timeout: float = 90) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TELEPORT_HOME": str(home or self.home)}
        env.pop("SSH_AUTH_SOCK", None)
        env.pop("TELEPORT_CLUSTER", None)
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def login(self, user: str, home: Path) -> None:
        done = self.tsh("login", f"--proxy={self.root.web}", f"--user={user}", "--insecure", home=home,
                        stdin=f"{PASSWORD}\n")
        assert done.returncode == 0, done.stderr

    def clusters(self, home: Path | None = None) -> dict[str, str]:
        done = self.tsh("clusters", "--format=json", home=home)
        assert done.returncode == 0, done.stderr
        return {c["cluster_name"]: c["status"] for c in json.loads(done.stdout)}

    def leaf_online(self) -> bool:
        return self.clusters().get(LEAF) == "online"


def tc_yaml(root: Cluster, root_process: RootProcess, token: str, *, enabled: bool = True,
            tunnel_addr: str = "") -> str:
    """The leaf's ``trusted_cluster`` (``tunnel_addr``: the root's tunnel port unless given)."""
    spec = {"enabled": enabled, "token": token, "web_proxy_addr": root.web,
            "tunnel_addr": tunnel_addr or f"127.0.0.1:{root_process.tunnel_port}",
            "role_map": [{"remote": "dev", "local": ["access"]}],
            "ca_pin": root.call("status")["ca_pin"]}
    return yaml.safe_dump({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT}, "spec": spec})


ROLES = """kind: role
version: v7
metadata: {name: dev}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
    cluster_labels: {env: prod}
---
kind: role
version: v7
metadata: {name: outsider}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
    cluster_labels: {'*': '*'}
---
kind: role
version: v7
metadata: {name: blind}
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels: {'*': '*'}
"""


@contextlib.contextmanager
def joined(tmp_path_factory: pytest.TempPathFactory, *, users: Sequence[tuple[str, list[str]]] = (("alice", ["dev"]),),
           root_config: Callable[[dict[str, Any]], None] | None = None, leaf_teleport: dict[str, Any] | None = None,
           leaf_flags: Flags | None = None, tunnel_addr: Callable[[Cluster], str] | None = None,
           env_class: type[Env] = Env) -> Iterator[Any]:
    """A root (auth and proxy, ``teleport start``; ``root_config`` edits its config first) and a leaf
    (auth, proxy and node ``leaf-node`` labelled ``env=leaf``, in this process; ``leaf_teleport``: more
    keys of its ``teleport`` section) joined with a single-use token (labels ``env=prod``), the leaf's
    tunnel up (to ``tunnel_addr(root)``, else the root's tunnel port), the root's ``users`` signed up
    and the first logged in (after the join: the login brings the leaf's host CA)."""
    root_dir, leaf_dir = tmp_path_factory.mktemp("root"), tmp_path_factory.mktemp("leaf")
    root_process = RootProcess(root_dir)
    if root_config is not None:
        config = yaml.safe_load(root_process.config.read_text())
        root_config(config)
        root_process.config.write_text(yaml.safe_dump(config))
    root_process.start()
    try:
        root = Cluster(root_dir, ROOT, f"127.0.0.1:{root_process.auth_port}", root_process.web)
        root.ok("create", "-f", "-", input=ROLES)
        for user, roles in users:
            root.signup(user, roles)
        leaf_config = {
            "teleport": {"data_dir": str(leaf_dir / "data"), "nodename": "leaf-node", **(leaf_teleport or {})},
            "auth_service": {"cluster_name": LEAF, "listen_addr": "127.0.0.1:0",
                             "authentication": {"second_factor": "off"}},
            "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                              "tunnel_listen_addr": "127.0.0.1:0"},
            "ssh_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "leaf"}},
        }
        with start_cluster(leaf_config, make_plugins(), flags=leaf_flags, timeout=120) as handle:
            services: Any = handle.process.services
            proxy = services["proxy_service"]
            leaf = Cluster(leaf_dir, LEAF, services["auth_service"].address,
                           f"127.0.0.1:{proxy.web_address.port}")
            token = json.loads(root.ok("tokens", "add", "--type=trusted_cluster", "--labels=env=prod",
                                       "--format=json"))["token"]
            leaf.ok("create", "-", input=tc_yaml(root, root_process, token,
                                                 tunnel_addr=tunnel_addr(root) if tunnel_addr else ""))
            e = env_class(root, root_process, leaf, handle, tmp_path_factory.mktemp(f"{users[0][0]}-tsh"))
            # the root proxy learns of the leaf, the leaf proxy of the trust: the tunnel comes up
            wait_for(lambda: proxy.clusters.agents.get(ROOT) and proxy.clusters.agents[ROOT].connected.is_set(),
                     "the leaf's tunnel to the root", timeout=120, interval=0.2)
            e.login(users[0][0], e.home)
            yield e
    finally:
        root_process.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with joined(tmp_path_factory, users=(("alice", ["dev"]), ("mallory", ["outsider"]), ("bob", ["blind"]))) as e:
        yield e


def test_the_leaf_dials_out_and_the_root_shows_it_online(env: Env) -> None:
    # the leaf's proxy dialed the root's tunnel port; the root heartbeats the remote_cluster to its auth
    rcs = wait_for(lambda: [r for r in json.loads(env.root.ok("get", "rc", "--format=json"))
                            if r["status"]["connection"] == "online"], "the leaf online at the root's auth")
    assert rcs[0]["metadata"]["name"] == LEAF and rcs[0]["metadata"]["labels"] == {"env": "prod"}
    connects = wait_for(lambda: [e for e in env.root.events("reverse_tunnel.connect")
                                 if e.get("leaf_cluster") == LEAF], "the tunnel's connect event at the root")
    assert connects[0]["tunnel_type"] == "proxy"

    done = env.tsh("clusters")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["Cluster", "Name", "Status", "Cluster", "Type", "Labels", "Selected"]
    assert lines[2].split() == [ROOT, "online", "root", "*"]
    assert lines[3].split() == [LEAF, "online", "leaf", "env=prod"]


def test_tsh_ls_through_the_leafs_tunnel(env: Env) -> None:
    done = env.tsh("ls", f"--cluster={LEAF}", "--format=json")
    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)
    assert [n["nodename"] for n in nodes] == ["leaf-node"]
    assert nodes[0]["labels"] == {"env": "leaf"} and LOGIN in nodes[0]["logins"]
    # the root's own nodes are not the leaf's
    own = env.tsh("ls", "--format=json")
    assert own.returncode == 0 and json.loads(own.stdout) == []


def test_leaves_are_hidden_by_cluster_labels(env: Env, tmp_path: Path) -> None:
    """A role without cluster_labels sees no leaf (deny by default) and cannot route to one."""
    env.login("bob", tmp_path)
    assert env.clusters(home=tmp_path) == {ROOT: "online"}
    done = env.tsh("ls", f"--cluster={LEAF}", home=tmp_path)
    assert done.returncode != 0 and f'cluster "{LEAF}" is not found' in done.stderr
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "true", home=tmp_path)
    assert done.returncode != 0 and f'cluster "{LEAF}" is not found' in done.stderr


def test_a_role_the_leaf_does_not_map_is_refused_there_and_audited(env: Env, tmp_path: Path) -> None:
    env.login("mallory", tmp_path)
    assert env.clusters(home=tmp_path)[LEAF] == "online"  # visible (cluster_labels), yet maps to nothing
    done = env.tsh("ls", f"--cluster={LEAF}", home=tmp_path)
    assert done.returncode != 0 and "maps to a role of this cluster" in done.stderr
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "true", home=tmp_path)
    assert done.returncode != 0 and "maps to a role of this cluster" in done.stderr
    refusals = wait_for(lambda: [e for e in env.leaf.events("auth") if e.get("user") == "mallory"
                                 and e.get("user_cluster") == ROOT], "the leaf's audit of the refusal")
    assert all(e["cluster_name"] == LEAF and e["code"] == "T3007W" for e in refusals)


def test_tsh_ssh_and_scp_to_a_leaf_node(env: Env, tmp_path: Path) -> None:
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "echo", "hello from the leaf")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the leaf\n"
    # a label selector runs the command on every matching node of the leaf, each run routed there too
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@env=leaf", "echo", "by label")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[leaf-node] by label\n"
    source = tmp_path / "up.txt"
    source.write_text("through two proxies\n")
    remote = tmp_path / "remote.txt"
    done = env.tsh("scp", f"--cluster={LEAF}", str(source), f"{LOGIN}@leaf-node:{remote}")
    assert done.returncode == 0, done.stderr
    assert remote.read_text() == "through two proxies\n"
    # the session is recorded and audited in the leaf, the user shown with the root cluster's name
    starts = wait_for(lambda: [e for e in env.leaf.events("session.start") if e.get("user") == "alice"],
                      "the leaf's session.start")
    assert starts[0]["cluster_name"] == LEAF and starts[0]["user_cluster"] == ROOT


def test_tsh_ssh_to_a_leaf_node_on_the_ssh_port(env: Env, tmp_path: Path) -> None:
    """The same profile without TLS routing: the proxy:host:port@leaf subsystem, the user's SSH
    certificate forwarded to the leaf (which checks it against the root's user CA)."""
    home = tmp_path / "ssh-port"
    shutil.copytree(env.home, home)
    meta = home / "profiles" / "127.0.0.1" / "profile.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tls_routing": False}))
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "echo", "over the ssh port", home=home)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "over the ssh port\n"
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@no-such-node", "true", home=home)
    assert done.returncode != 0 and "no-such-node" in done.stderr


def test_openssh_through_tsh_config(env: Env, tmp_path: Path) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        missing("OpenSSH client is not installed (apt-get install openssh-client)")
    done = env.tsh("config")
    assert done.returncode == 0, done.stderr
    assert f"Host *.{LEAF} !127.0.0.1" in done.stdout and f"proxy ssh --cluster={LEAF} %r@%h:%p" in done.stdout
    config = tmp_path / "ssh_config"
    config.write_text(done.stdout + "Host *\n    BatchMode yes\n    StrictHostKeyChecking yes\n")
    result = subprocess.run([ssh, "-F", str(config), f"{LOGIN}@leaf-node.{LEAF}", "echo", "openssh"],
                            capture_output=True, text=True, timeout=90, check=False,
                            env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "openssh\n"


def test_disabling_the_trust_ends_access_and_enabling_restores_it(env: Env) -> None:
    tc = json.loads(env.leaf.ok("get", f"trusted_cluster/{ROOT}", "--format=json"))[0]
    tc["spec"]["enabled"] = False
    env.leaf.ok("create", "-f", "-", input=yaml.safe_dump(tc))
    wait_for(lambda: env.clusters().get(LEAF) == "offline", "the leaf offline after enabled: false")
    done = env.tsh("ls", f"--cluster={LEAF}")
    assert done.returncode != 0 and "offline" in done.stderr
    tc["spec"]["enabled"] = True
    env.leaf.ok("create", "-f", "-", input=yaml.safe_dump(tc))
    wait_for(env.leaf_online, "the leaf online again after enabled: true")
    done = env.tsh("ls", f"--cluster={LEAF}", "--format=json")
    assert done.returncode == 0, done.stderr
    assert [n["nodename"] for n in json.loads(done.stdout)] == ["leaf-node"]


def test_the_tunnel_comes_back_after_the_root_proxy_restarts(env: Env) -> None:
    agent = env.leaf_handle.process.services["proxy_service"].clusters.agents[ROOT]
    reconnects = agent.reconnects
    env.root_process.stop()
    wait_for(lambda: not agent.connected.is_set(), "the leaf to notice the root went away")
    env.root_process.start()
    wait_for(lambda: agent.connected.is_set() and agent.reconnects > reconnects, "the tunnel back", timeout=120)
    wait_for(env.leaf_online, "the leaf online at the restarted root")
    done = env.tsh("ls", f"--cluster={LEAF}", "--format=json")
    assert done.returncode == 0, done.stderr



def test_removing_the_remote_cluster_at_the_root_ends_the_tunnel(env: Env) -> None:
    """(Last: it ends the trust.) ``tctl rm rc/LEAF``: the root forgets the leaf's host CA, closes its
    tunnel and refuses the leaf proxy's next attempts (audited at the root)."""
    env.root.ok("rm", f"rc/{LEAF}")
    wait_for(lambda: LEAF not in env.clusters(), "the leaf gone from tsh clusters")
    done = env.tsh("ls", f"--cluster={LEAF}")
    assert done.returncode != 0 and f'cluster "{LEAF}" is not found' in done.stderr
    refused = wait_for(lambda: [e for e in env.root.events("auth") if e.get("kind") == "reverse_tunnel"
                                and f"'{LEAF}' is not a trusted leaf cluster" in e.get("error", "")],
                       "the root's audit of the refused tunnel")
    assert refused[0]["cluster_name"] == ROOT and refused[0]["code"] == "T3007W"
