"""A real cluster for the proxy tests: an auth server, a proxy joined with a token (each its own
in-process teleport), an OpenSSH ``sshd`` registered as a node (host certificate from joining,
``TrustedUserCAKeys`` = the user CA), and users signed up through the proxy's invite API."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import yaml

from teleport_core.api.client import AuthClient, load_identity_dir, load_tls, register
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.testing import openssh, otp
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.processes import background, free_port, stop_process
from teleport_core.testing.waiting import wait_for

CLUSTER = "example.com"
PROXY_TOKEN = "proxy-token-0123456789abcdef"
NODE_TOKEN = "node-token-0123456789abcdef"
LOGIN = getpass.getuser()
SSHD = openssh.SSHD


def one_process_config(root: Path, nodename: str) -> dict[str, Any]:
    """One teleport process with auth (second factor off), the proxy and our node (which records)."""
    return {
        "teleport": {"data_dir": str(root / "auth"), "nodename": nodename},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        "ssh_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "test"}},
    }


class Env:
    """The running cluster and helpers the tests share."""

    def __init__(self, root: Path, auth: Any, proxy: Any) -> None:
        self.root = root
        self.auth_handle = auth
        self.proxy_handle = proxy
        self.auth_addr = auth.process.services["auth_service"].address
        self.proxy = proxy.process.services["proxy_service"]
        self.web = f"127.0.0.1:{self.proxy.web_address.port}"
        self.ssh_port = self.proxy.ssh_address.port
        self.passwords: dict[str, str] = {}
        self.totps: dict[str, pyotp.TOTP] = {}
        self.used_codes: dict[str, set[str]] = {}

    def admin(self) -> AuthClient:
        return AuthClient(self.auth_addr, [load_identity_dir(self.root / "auth" / "keys" / "auth")])

    def call(self, method: str, *args: Any) -> Any:
        async def body() -> Any:
            async with self.admin() as client:
                return await getattr(client, method)(*args)

        return asyncio.run(body())

    def web_client(self) -> httpx.Client:
        return httpx.Client(base_url=f"https://{self.web}", verify=False, timeout=30)

    def fresh_code(self, user: str) -> str:
        """A TOTP code of ``user`` not used before (auth accepts each code once)."""
        return otp.fresh_code(self.totps[user], self.used_codes.setdefault(user, set()))

    def signup(self, user: str, roles: list[str], logins: list[str], password: str) -> None:
        created = self.call("create_user", user, roles, {"logins": logins})
        token = created["invite"]["token"]
        with self.web_client() as web:
            info = web.get(f"/v1/webapi/users/password/token/{token}").json()
            assert info["user"] == user
            code = ""
            if "otp_uri" in info:
                assert info["otp_uri"].startswith("otpauth://totp/")
                self.totps[user] = pyotp.parse_uri(info["otp_uri"])
                code = self.fresh_code(user)
            done = web.put("/v1/webapi/users/password/token",
                           json={"token": token, "password": password, "second_factor_token": code})
            assert done.status_code == 200, done.text
            assert done.json() == {"user": user}
        self.passwords[user] = password

    def tsh(self, home: Path, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TELEPORT_HOME": str(home)}
        env.pop("SSH_AUTH_SOCK", None)
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout, env=env, check=False)

    def login(self, home: Path, user: str, *extra: str) -> subprocess.CompletedProcess[str]:
        code = self.fresh_code(user) if user in self.totps else ""
        stdin = f"{self.passwords[user]}\n{code}\n" if code else f"{self.passwords[user]}\n"
        return self.tsh(home, "login", f"--proxy={self.web}", f"--user={user}", "--insecure", *extra, stdin=stdin)

    def logged_in(self, factory: pytest.TempPathFactory, user: str) -> Path:
        """A fresh tsh home where ``user`` has logged in (asserted)."""
        home = factory.mktemp(f"{user}-tsh")
        result = self.login(home, user)
        assert result.returncode == 0, result.stderr
        return home

    def join_node(self, nodename: str, addr: str, labels: dict[str, str]) -> tuple[LocalIdentity, Any]:
        """Join as a node with the node token and register ``addr``; (identity, private key)."""
        key = keys.generate_private_key("ed25519")

        async def body() -> LocalIdentity:
            body = {"token": NODE_TOKEN, "role": "Node", "nodename": nodename,
                    "public_key": keys.public_key_openssh(key)}
            joined = await register(self.auth_addr, body, [])
            a = joined.answer
            identity = LocalIdentity(keys.private_key_pem(key), a["tls_cert"].encode(),
                                     tuple(p.encode() for p in a["host_ca_pems"]), a["ssh_cert"],
                                     tuple(a["known_hosts"]), a["host_uuid"])
            async with AuthClient(self.auth_addr, [load_tls(identity.client_context())]) as client:
                await client.upsert_node({"uuid": identity.host_uuid, "nodename": nodename, "addr": addr,
                                          "labels": labels})
            return identity

        return asyncio.run(body()), key


class Sshd:
    """OpenSSH sshd on a free port with a host certificate from the cluster, trusting the user CA."""

    def __init__(self, folder: Path, port: int, identity: LocalIdentity, key: Any, user_ca: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        write_private(folder / "host_key", keys.private_key_openssh(key))
        write_public(folder / "host_key-cert.pub", identity.ssh_cert + "\n")
        write_public(folder / "user_ca.pub", "".join(line + "\n" for line in user_ca))
        self.proc, _ = openssh.start_sshd(folder, host_key=folder / "host_key",
                                          host_cert=folder / "host_key-cert.pub", user_ca=folder / "user_ca.pub",
                                          port=port, extra=["LogLevel VERBOSE", "MaxStartups 1000",
                                                            "Subsystem sftp internal-sftp"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)



@contextlib.contextmanager
def background_tsh(home: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``tsh *args`` with the profile in ``home`` (no SSH agent) for the block; text pipes."""
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    with background([sys.executable, "-m", "teleport_core.cli.tsh", *args], env) as proc:
        yield proc


def profile_ssh_config(home: Path, path: Path, *extra: str) -> Path:
    """An ``ssh_config`` at ``path`` for OpenSSH with the key, certificate and known_hosts of the
    tsh profile in ``home``, strict host checking on every hop (command-line ``-o`` options would
    not reach a ``-J`` jump hop); ``extra`` lines are added to it."""
    folder = home / "profiles" / "127.0.0.1"
    lines = [f"IdentityFile {folder / 'id'}", f"CertificateFile {folder / 'id-cert.pub'}",
             f"UserKnownHostsFile {folder / 'known_hosts'}", "GlobalKnownHostsFile /dev/null",
             "StrictHostKeyChecking yes", "IdentitiesOnly yes", "BatchMode yes", *extra]
    path.write_text("Host *\n" + "".join(f"    {line}\n" for line in lines))
    return path

class NodeEnv(Env):
    """:func:`cluster_with_node`'s environment: ``tctl -c auth_yaml`` reaches auth; the node's port and UUID."""

    auth_yaml: Path
    node_uuid: str
    node_port: int


@contextlib.contextmanager
def cluster_with_node(root: Path, env_class: type[NodeEnv], nodename: str, node_token: str,
                      labels: dict[str, str]) -> Iterator[Any]:
    """Auth and proxy in one process (second factor off), ``auth.yaml`` for a local ``tctl``, and our
    node as its own ``teleport start`` (joined with ``node_token``, ``labels``), heartbeating before
    the block starts; the node is stopped after it."""
    config = {
        "teleport": {"data_dir": str(root / "auth"), "nodename": "auth-proxy"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0", "tokens": [f"node:{node_token}"],
                         "authentication": {"second_factor": "off"}},
        "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                          "tunnel_listen_addr": "127.0.0.1:0"},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = env_class(root, cluster, cluster)
        e.auth_yaml = root / "auth.yaml"
        e.auth_yaml.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(root / "auth"), "nodename": "auth-proxy"},
            "auth_service": {"cluster_name": CLUSTER, "listen_addr": e.auth_addr},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}))
        e.node_port = free_port()
        node_dir = root / "node"
        node_dir.mkdir()
        node_config = node_dir / "teleport.yaml"
        node_config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(node_dir / "data"), "nodename": nodename, "auth_server": e.auth_addr,
                         "auth_token": node_token, "ca_pin": e.call("status")["ca_pin"],
                         "log": {"output": str(node_dir / "node.log")}},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"listen_addr": f"127.0.0.1:{e.node_port}", "labels": labels}}))
        with open(node_dir / "stderr.log", "ab") as stderr:
            node = subprocess.Popen([str(Path(sys.executable).with_name("teleport")), "start", "-c", str(node_config)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            found = wait_for(lambda: [n for n in e.call("get_nodes") if n["nodename"] == nodename],
                             "the node's heartbeat", timeout=120)
            e.node_uuid = found[0]["uuid"]
            yield e
        finally:
            stop_process(node)


@contextlib.contextmanager
def running_env(tmp_path_factory: pytest.TempPathFactory, second_factor: str = "otp",
                plugin_objects: Sequence[tuple[str, object]] = ()) -> Iterator[Env]:
    """Auth and proxy (each its own process object), two OpenSSH sshd nodes; ``plugin_objects``
    are registered as plugins in both (``(name, module-like object)``)."""
    if not Path(SSHD).exists():
        missing("OpenSSH sshd is not installed (apt-get install openssh-server)")
    root = tmp_path_factory.mktemp("proxy")
    auth_config = {
        "teleport": {"data_dir": str(root / "auth"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0",
                         "tokens": [f"proxy:{PROXY_TOKEN}", f"node:{NODE_TOKEN}"],
                         "authentication": {"second_factor": second_factor}},
        "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False},
    }
    plugins = make_plugins(objects=plugin_objects)
    with start_cluster(auth_config, plugins, timeout=60) as auth:
        addr = auth.process.services["auth_service"].address

        async def pin() -> str:
            async with AuthClient(addr, [load_identity_dir(root / "auth" / "keys" / "auth")]) as client:
                return str((await client.status())["ca_pin"])

        proxy_config = {
            "teleport": {"data_dir": str(root / "proxy"), "nodename": "proxy-1", "auth_server": addr,
                         "auth_token": PROXY_TOKEN, "ca_pin": asyncio.run(pin())},
            "auth_service": {"enabled": False}, "ssh_service": {"enabled": False},
            "proxy_service": {"enabled": True, "web_listen_addr": "127.0.0.1:0", "listen_addr": "127.0.0.1:0",
                              "tunnel_listen_addr": "127.0.0.1:0"},
        }
        with start_cluster(proxy_config, plugins, timeout=60) as proxy:
            e = Env(root, auth, proxy)
            e.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "dev"},
                                   "spec": {"allow": {"logins": ["{{internal.logins}}"],
                                                      "node_labels": {"env": "test"}}}})
            user_ca = e.call("get_cert_authority", "user")["ssh_public_keys"]
            sshds = []
            registered: list[tuple[LocalIdentity, dict[str, Any]]] = []
            for name in ("sshd-node", "sshd-two"):
                port = free_port()
                labels = {"env": "test", "group": "real"}
                identity, key = e.join_node(name, f"127.0.0.1:{port}", labels)
                registered.append((identity, {"uuid": identity.host_uuid, "nodename": name,
                                              "addr": f"127.0.0.1:{port}", "labels": labels}))
                sshds.append(Sshd(root / name, port, identity, key, user_ca))
                if name == "sshd-node":
                    e.sshd_uuid = identity.host_uuid  # type: ignore[attr-defined]
            sshd = sshds[0]
            e.sshd = sshd  # type: ignore[attr-defined]
            stop = threading.Event()
            beating = threading.Thread(target=_heartbeat, args=(e, registered, stop), daemon=True)
            beating.start()
            try:
                yield e
            finally:
                stop.set()
                beating.join(30)
                for one in sshds:
                    one.stop()


def _heartbeat(env: Env, nodes: list[tuple[LocalIdentity, dict[str, Any]]], stop: threading.Event) -> None:
    """Announce the sshd nodes again every minute, as a node's heartbeat would: the session's
    environment outlives their entries' 10-minute expiry in a long CI run (a label target then found
    no node)."""
    async def announce() -> None:
        for identity, entry in nodes:
            async with AuthClient(env.auth_addr, [load_tls(identity.client_context())]) as client:
                await client.upsert_node(entry)

    while not stop.wait(60):
        with contextlib.suppress(Exception):  # a slow auth: the next beat tries again
            asyncio.run(announce())
