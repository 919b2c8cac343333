"""``teleport start`` flags on real processes, their bad values, and the bind check that runs before a
node spends its single-use join token.

One auth + proxy process is started with ``--config-string`` (base64 YAML), ``--data-dir`` and
``--listen-ip=127.0.0.2``; nodes join it with ``--auth-server`` or ``--proxy``, ``--token``,
``--ca-pin``, ``--advertise-ip``, ``--labels``, ``-d`` and ``-r``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from teleport_core.testing.processes import free_port, stop_process, teleport_executable
from teleport_core.testing.waiting import wait_for

LISTEN_IP = "127.0.0.2"  # all of 127/8 is this host on Linux


def needs_the_services() -> None:
    """Skip where only teleport-core is installed (the wheel test): these start auth, proxy and node."""
    for package in ("teleport_auth", "teleport_proxy", "teleport_node"):
        pytest.importorskip(package, reason="starts the auth, proxy and node services")


def b64(config: dict[str, Any]) -> str:
    return base64.b64encode(yaml.safe_dump(config).encode()).decode()


def run_teleport(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "TELEPORT_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.teleport", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=full_env, cwd=cwd)


# -- bad values: one clear line, exit 1 (argparse: 2), no traceback, nothing started ------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "teleport.yaml"
    path.write_text(yaml.safe_dump({"teleport": {"data_dir": str(tmp_path / "data")},
                                    "auth_service": {"listen_addr": "127.0.0.1:0"},
                                    "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}))
    return path


BAD_FLAGS = [
    (["--listen-ip=nope"], 'ERROR: --listen-ip: expected an IP address like 10.0.0.5 or ::, got "nope"'),
    (["-l", "10.0.0.300"], 'ERROR: --listen-ip: expected an IP address like 10.0.0.5 or ::, got "10.0.0.300"'),
    (["--advertise-ip=0.0.0.0"], 'ERROR: --advertise-ip: expected an address other servers can reach, got "0.0.0.0"'),
    (["--advertise-ip=10.0.0.1:99999"],
     'ERROR: --advertise-ip: expected an IP address or host[:port], got "10.0.0.1:99999" (port 99999 out of range)'),
    (["--proxy=proxy.example.com:https"],
     'ERROR: --proxy: expected host:port, got "proxy.example.com:https" (bad port \'https\')'),
    (["--data-dir="], 'ERROR: --data-dir: expected a file path, got ""'),
    (["--fips"], "ERROR: --fips: FedRAMP/FIPS 140 mode needs a FIPS-validated crypto module; teleport-py has none"),
    (["--insecure-no-tls"],
     "ERROR: --insecure-no-tls: the proxy's web port always speaks TLS (it also carries SSH and the auth API)"),
    (["--permit-user-env"], "ERROR: --permit-user-env: the node does not read ~/.tsh/environment"),
    (["--bootstrap=resources.yaml"],
     "ERROR: --bootstrap: not supported: create roles, users and tokens with tctl create after the first start"),
]


@pytest.mark.parametrize(("args", "message"), BAD_FLAGS)
def test_bad_flag_is_one_clear_line(config_file: Path, args: list[str], message: str) -> None:
    result = run_teleport("start", "-c", str(config_file), *args)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.strip().splitlines() == [message]
    assert not (config_file.parent / "data").exists()  # nothing was started


def test_bad_config_string(tmp_path: Path, config_file: Path) -> None:
    cases = [
        (["--config-string=not base64!"],
         "ERROR: --config-string: expected a base64-encoded teleport.yaml (base64 -w0 teleport.yaml)"),
        ([f"--config-string={base64.b64encode(b'teleport: [1').decode()}"],
         "ERROR: --config-string: invalid YAML at line 1, column 13: expected ',' or ']', but got '<stream end>'"),
        ([f"--config-string={base64.b64encode(b'  ').decode()}"], "ERROR: --config-string: the decoded config is empty"),
        ([f"--config-string={b64({'teleport': {'nodname': 'x'}})}"],
         'ERROR: teleport.nodname: unknown key (did you mean "nodename"?)'),
        (["-c", str(config_file), f"--config-string={b64({'teleport': {}})}"],
         "ERROR: --config-string: give either --config or --config-string (TELEPORT_CONFIG), not both"),
    ]
    for args, message in cases:
        result = run_teleport("start", *args, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (1, ""), (args, result.stderr)
        assert result.stderr.strip().splitlines() == [message], args
    from_env = run_teleport("start", env={"TELEPORT_CONFIG": "%%%"}, cwd=tmp_path)
    assert from_env.returncode == 1
    assert from_env.stderr.strip().splitlines() == [
        "ERROR: TELEPORT_CONFIG: expected a base64-encoded teleport.yaml (base64 -w0 teleport.yaml)"]


def test_unknown_flag_is_argparse_usage_error(config_file: Path) -> None:
    result = run_teleport("start", "-c", str(config_file), "--listen-ipp=1.2.3.4")
    assert result.returncode == 2
    assert "unrecognized arguments: --listen-ipp=1.2.3.4" in result.stderr and "Traceback" not in result.stderr


# -- real processes -------------------------------------------------------------------------------------


class Proc:
    """A ``teleport start`` child: stderr in a file, ready when ``/readyz`` of ``--diag-addr`` answers."""

    def __init__(self, folder: Path, args: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stderr_path = folder / "stderr.log"
        self.diag = f"127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if k != "TELEPORT_CONFIG"}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([teleport_executable(), "start", f"--diag-addr={self.diag}", *args],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"teleport exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                return httpx.get(f"http://{self.diag}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "teleport to be ready", timeout)

    def stop(self) -> None:
        stop_process(self.proc)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {name: free_port() for name in ("auth", "web", "ssh", "tunnel")}
        self.data_dir = root / "cluster-data"
        p = self.ports
        self.config = {
            "version": "v3",
            "teleport": {"nodename": "flags-cluster"},
            "auth_service": {"cluster_name": "flags.test", "listen_addr": f"0.0.0.0:{p['auth']}"},
            "proxy_service": {"web_listen_addr": f"0.0.0.0:{p['web']}", "listen_addr": f"0.0.0.0:{p['ssh']}",
                              "tunnel_listen_addr": f"0.0.0.0:{p['tunnel']}"},
            "ssh_service": {"enabled": False},
        }
        self.proc = Proc(root / "cluster", [f"--config-string={b64(self.config)}", f"--data-dir={self.data_dir}",
                                            f"--listen-ip={LISTEN_IP}"])
        self.tctl_config = root / "tctl.yaml"
        self.tctl_config.write_text(yaml.safe_dump({
            "teleport": {"data_dir": str(self.data_dir)},
            "auth_service": {"cluster_name": "flags.test", "listen_addr": f"{LISTEN_IP}:{p['auth']}"},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}))

    def tctl(self, *args: str) -> Any:
        result = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(self.tctl_config), *args,
                                 "--format=json"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def token(self) -> tuple[str, str]:
        answer = self.tctl("nodes", "add")
        return answer["token"], answer["ca_pin"]

    def tokens(self) -> set[str]:
        return {t["token"] for t in self.tctl("tokens", "ls")}

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.tctl("nodes", "ls") if n["nodename"] == name), None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    needs_the_services()
    c = Cluster(tmp_path_factory.mktemp("flags"))
    try:
        c.proc.wait_ready()
        yield c
    finally:
        c.proc.stop()


def connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_config_string_data_dir_and_listen_ip_take_effect(cluster: Cluster) -> None:
    assert (cluster.data_dir / "keys" / "auth").is_dir()  # --data-dir: the cluster's state is there
    for name in ("auth", "web", "ssh", "tunnel"):  # --listen-ip: every listener on 127.0.0.2, ports kept
        port = cluster.ports[name]
        assert connects(LISTEN_IP, port), name
        assert not connects("127.0.0.1", port), name
    assert "flags.test" in cluster.proc.log()  # the config came from --config-string


@pytest.mark.slow
def test_port_taken_refused_before_the_token_is_spent(cluster: Cluster, tmp_path: Path) -> None:
    token, pin = cluster.token()
    port = free_port()
    node_config = b64({"version": "v3", "ssh_service": {"listen_addr": f"127.0.0.1:{port}"}})
    data_dir = tmp_path / "node-data"
    args = ["--roles=node", f"--token={token}", f"--ca-pin={pin}", f"--auth-server={LISTEN_IP}:{cluster.ports['auth']}",
            f"--data-dir={data_dir}", "--nodename=flags-node", f"--config-string={node_config}",
            "--advertise-ip=10.20.30.40", "--labels=env=flags"]
    with socket.socket() as taken:  # someone else holds the node's port (another teleport, say)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        refused = Proc(tmp_path / "first", args)
        assert refused.proc.wait(120) == 1
        log = refused.log()
        assert (f"cannot listen on 127.0.0.1:{port} (ssh_service.listen_addr): address already in use "
                "(is another teleport running?") in log
        assert "nothing was started and no join token was used" in log
        assert "Traceback" not in log
    assert token in cluster.tokens()  # still valid: the node never joined
    assert not (data_dir / "keys" / "node").exists()
    assert cluster.node("flags-node") is None

    node = Proc(tmp_path / "second", ["-d", *args])  # the same command, with the port free now
    try:
        node.wait_ready()
        assert token not in cluster.tokens()  # single-use: spent by this join
        found = wait_for(lambda: cluster.node("flags-node"), "the node's heartbeat", 60)
        assert found["addr"] == f"10.20.30.40:{port}"  # --advertise-ip (its port: the listen port)
        assert found["labels"] == {"env": "flags"}
        assert connects("127.0.0.1", port)
        assert " DEBUG " in node.log() or '"level": "debug"' in node.log()  # -d
    finally:
        node.stop()


@pytest.mark.slow
def test_proxy_flag_joins_through_the_proxy_and_opens_no_port(cluster: Cluster, tmp_path: Path) -> None:
    token, pin = cluster.token()
    port = free_port()
    node_config = b64({"version": "v3", "ssh_service": {"listen_addr": f"127.0.0.1:{port}"}})
    with socket.socket() as taken:  # a tunnelled node listens nowhere: a taken port is no reason to refuse
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        node = Proc(tmp_path / "tunnelled", ["-r", "node", f"--proxy={LISTEN_IP}:{cluster.ports['web']}",
                                             f"--token={token}", f"--ca-pin={pin}", "--insecure",
                                             f"--data-dir={tmp_path / 'data'}", "--nodename=flags-tunnelled",
                                             f"--config-string={node_config}"])
        try:
            node.wait_ready()
            found = wait_for(lambda: cluster.node("flags-tunnelled"), "the tunnelled node's heartbeat", 60)
            assert found["tunnel"] is True and found["addr"] == ""
            deadline = time.monotonic() + 60
            while "reverse tunnel" not in node.log() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "no SSH listener: this node is reached through a reverse tunnel" in node.log()
        finally:
            node.stop()


# -- units: what the flags and the bind check do ------------------------------------------------------


def test_listen_ip_rewrites_given_and_default_listen_addrs_only() -> None:
    needs_the_services()
    from teleport_core.config.load import Flags, parse_config
    from teleport_core.config.values import NetAddr
    from teleport_core.plugins import make_plugins

    data = {"teleport": {"data_dir": "/tmp/unused", "diag_addr": "127.0.0.1:3000"},
            "auth_service": {"listen_addr": "0.0.0.0:4025"}, "proxy_service": {"public_addr": "p.example.com"}}
    config = parse_config(data, make_plugins(), Flags(listen_ip="10.1.2.3"))
    auth, proxy, node = (config.settings(s) for s in ("auth_service", "proxy_service", "ssh_service"))
    assert auth.listen_addr == NetAddr("10.1.2.3", 4025)  # given: its port kept
    assert (proxy.web_listen_addr, proxy.listen_addr, proxy.tunnel_listen_addr) == (
        NetAddr("10.1.2.3", 3080), NetAddr("10.1.2.3", 3023), NetAddr("10.1.2.3", 3024))  # defaults too
    assert node.listen_addr == NetAddr("10.1.2.3", 3022)
    assert proxy.public_addrs == (NetAddr("p.example.com", 3080),)  # not a listen address
    assert config.diag_addr == NetAddr("127.0.0.1", 3000)  # as Teleport's: diag is not moved
    six = parse_config(data, make_plugins(), Flags(listen_ip="::"))
    assert six.settings("auth_service").listen_addr == NetAddr("::", 4025)


def test_bind_check_names_the_key_and_the_cause() -> None:
    from teleport_core.config.values import NetAddr
    from teleport_core.net.listeners import ListenError, PlannedListener, check_can_listen

    with socket.create_server(("127.0.0.1", 0)) as taken:
        addr = NetAddr("127.0.0.1", taken.getsockname()[1])
        planned = [PlannedListener("proxy_service.web_listen_addr", addr)]
        with pytest.raises(ListenError, match=rf"^cannot listen on {addr} \(proxy_service.web_listen_addr\): "
                                              "address already in use"):
            check_can_listen(planned)
        check_can_listen(planned, inherited={str(addr)})  # handed down by a reload: the old process holds it
    check_can_listen(planned)  # free again
    check_can_listen([PlannedListener("x.listen_addr", NetAddr("127.0.0.1", 0))])  # any free port: not checked
    with pytest.raises(ListenError, match=r"192\.0\.2\.1 is not an address of this host \(check --listen-ip"):
        check_can_listen([PlannedListener("ssh_service.listen_addr", NetAddr("192.0.2.1", 3022))])
