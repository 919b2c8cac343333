"""Graceful reload of a real one-process cluster (auth, proxy and node on SQLite), started as
``teleport start --config FILE --pid-file FILE``, with tsh as the client (issue 14):

* a 60-second interactive session (``tsh ssh -t``, a command typed every 3 seconds) and a
  512 MiB ``tsh scp`` survive a ``SIGHUP`` intact, while 200 ``tsh ssh node true`` (4 at a
  time) run through the reload with no failure; the old process drains them and exits 0, the
  pid file names the new one;
* ``tctl lock`` handled by the new process ends a session still running on the old (draining)
  one: the lock crosses processes through the SQLite events table;
* a reload with a broken config leaves the serving process serving (a new ``tsh ssh`` works, the
  log says why).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import hashlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.testing.waiting import wait_for
from tests.reload_helpers import Daemon, alive, free_port, zombie

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
for _package in ("teleport_auth", "teleport_proxy", "teleport_node"):  # teleport-core alone: nothing to reload
    pytest.importorskip(_package, reason="runs a cluster of the auth, proxy and node services")

LOGIN = getpass.getuser()
NODE = "reload-node"
PASSWORD = "a long enough password 123"
SCP_SIZE = 512 << 20
LOOP_RUNS = 200
LOOP_WORKERS = 4


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.web_port, self.ssh_port, self.node_port = free_port(), free_port(), free_port()
        config: dict[str, Any] = {
            "version": "v3",
            "teleport": {"data_dir": str(root / "data"), "nodename": NODE, "diag_addr": f"127.0.0.1:{free_port()}"},
            "auth_service": {"cluster_name": "reload.test", "listen_addr": f"127.0.0.1:{free_port()}",
                             "authentication": {"second_factor": "off"}},
            "proxy_service": {"enabled": True, "web_listen_addr": f"127.0.0.1:{self.web_port}",
                              "listen_addr": f"127.0.0.1:{self.ssh_port}",
                              "tunnel_listen_addr": f"127.0.0.1:{free_port()}"},
            "ssh_service": {"enabled": True, "listen_addr": f"127.0.0.1:{self.node_port}"},
        }
        self.daemon = Daemon(root / "teleport", config, plugins="")
        self.auth_addr = config["auth_service"]["listen_addr"]

    def call(self, method: str, *args: Any) -> Any:
        async def body() -> Any:
            identity = load_identity_dir(Path(self.daemon.config["teleport"]["data_dir"]) / "keys" / "auth")
            async with AuthClient(self.auth_addr, [identity]) as client:
                return await getattr(client, method)(*args)

        return asyncio.run(body())

    def signup(self, user: str) -> Path:
        """A user with the access role and our login, signed up and logged in with tsh; its home."""
        token = self.call("create_user", user, ["access"], {"logins": [LOGIN]})["invite"]["token"]
        with httpx.Client(base_url=f"https://127.0.0.1:{self.web_port}", verify=False, timeout=30) as web:
            done = web.put("/v1/webapi/users/password/token",
                           json={"token": token, "password": PASSWORD, "second_factor_token": ""})
            assert done.status_code == 200, done.text
        home = self.root / f"home-{user}"
        login = self.tsh(home, "login", f"--proxy=127.0.0.1:{self.web_port}", f"--user={user}", "--insecure",
                         stdin=PASSWORD + "\n")
        assert login.returncode == 0, login.stderr
        return home

    def tsh_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "teleport_core.cli.tsh", *args]

    def tsh_env(self, home: Path) -> dict[str, str]:
        env = {**os.environ, "TELEPORT_HOME": str(home)}
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def tsh(self, home: Path, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.tsh_argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=self.tsh_env(home), check=False)

    def tctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(self.daemon.config_path),
                               *args], capture_output=True, text=True, timeout=120, check=False)


class Terminal:
    """``tsh ssh -t`` on a pseudo-terminal: type lines, wait for what the shell prints."""

    def __init__(self, cluster: Cluster, home: Path, node: str = NODE) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(cluster.tsh_argv("ssh", "-t", f"{LOGIN}@{node}"), stdin=slave, stdout=slave,
                                     stderr=slave, env=cluster.tsh_env(home), start_new_session=True)
        os.close(slave)
        self.seen = b""

    def ready(self, tag: str) -> None:
        """Wait until the remote shell answers (what is typed before it started may be lost)."""
        for attempt in range(30):
            self.type(f"echo {tag}$((40+{attempt}))X")
            try:
                self.expect(f"{tag}{40 + attempt}X".encode(), timeout=3)
                return
            except AssertionError:
                if self.proc.poll() is not None:
                    raise
        raise AssertionError(f"the shell never answered: {self.seen[-2000:]!r}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def expect(self, needle: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen in {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the session ended
                    chunk = b""
                assert chunk, f"the session ended before {needle!r}: {self.seen[-2000:]!r}"
                self.seen += chunk

    def rest(self, timeout: float = 30.0) -> bytes:
        """Read until the terminal closes (the session ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        return self.seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH is not installed")
    c = Cluster(tmp_path_factory.mktemp("reload"))
    c.daemon.start()
    try:
        wait_for(lambda: any(n.get("nodename") == NODE for n in c.call("get_nodes")), "the node", 60)
        yield c
    finally:
        c.daemon.stop()


def test_sessions_scp_and_200_logins_survive_a_hup(cluster: Cluster, tmp_path: Path) -> None:
    daemon = cluster.daemon
    old = daemon.pid()
    home = cluster.signup("joe")
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(SCP_SIZE // (4 << 20)):
            block = os.urandom(4 << 20)
            digest.update(block)
            out.write(block)
    target = tmp_path / "copied.bin"
    term = Terminal(cluster, home)
    pool = concurrent.futures.ThreadPoolExecutor(LOOP_WORKERS + 1)
    try:
        term.ready("T")
        started = time.monotonic()
        scp = pool.submit(cluster.tsh, home, "scp", str(source), f"{LOGIN}@{NODE}:{target}", timeout=600)

        def one(_: int) -> tuple[int, str]:
            done = cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "true")
            return done.returncode, done.stderr

        logins = [pool.submit(one, i) for i in range(LOOP_RUNS)]
        time.sleep(3)
        new = daemon.reload(signal.SIGHUP)
        tick = 100
        while time.monotonic() - started < 60:  # the interactive session goes on, on the old process
            term.type(f"echo T$((40+{tick}))X")
            term.expect(f"T{40 + tick}X".encode())
            tick += 1
            time.sleep(3)
        failures = [(code, err) for code, err in (f.result(600) for f in logins) if code != 0]
        assert failures == [], failures[:3]
        copied = scp.result(600)
        assert copied.returncode == 0, copied.stderr
        assert target.stat().st_size == SCP_SIZE
        check = hashlib.sha256()
        with open(target, "rb") as handle:
            while block := handle.read(4 << 20):
                check.update(block)
        assert check.hexdigest() == digest.hexdigest()
        assert daemon.proc is not None and daemon.proc.poll() is None  # still draining our session
        term.type("exit")
        term.rest()
        assert term.proc.wait(30) == 0
        assert daemon.proc.wait(60) == 0  # drained, exited 0
        daemon.wait_log(r"drained")
        assert daemon.pid() == new and alive(new) and not alive(old) and not zombie(old)
        assert cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "echo", "after-reload").stdout.strip() == "after-reload"
    finally:
        term.close()
        pool.shutdown(wait=False, cancel_futures=True)
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def test_a_lock_made_through_the_new_process_ends_a_session_on_the_old_one(cluster: Cluster) -> None:
    daemon = cluster.daemon
    old = daemon.pid()
    home = cluster.signup("mallory")
    term = Terminal(cluster, home)
    try:
        term.ready("M")
        closed = len(re.findall(r"stopped accepting new connections", daemon.log()))
        new = daemon.reload(signal.SIGHUP)
        daemon.wait_log(r"stopped accepting new connections", count=closed + 1)  # tctl reaches the new one
        locked = cluster.tctl("lock", "--user=mallory", "--message=reload lock test")
        assert locked.returncode == 0, locked.stderr
        seen = term.rest(60)
        assert b"reload lock test" in seen or term.proc.poll() is not None
        assert term.proc.wait(30) != 0
        wait_for(lambda: not alive(old), "the old process drained and exited", 60)
        assert daemon.pid() == new
        refused = cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "true")
        assert refused.returncode != 0  # the new process enforces it too
    finally:
        term.close()


def test_a_broken_config_leaves_the_cluster_serving(cluster: Cluster) -> None:
    daemon = cluster.daemon
    serving = daemon.pid()
    home = cluster.signup("ann")
    good = daemon.config_path.read_text()
    try:
        daemon.write_config(text=good.replace("ssh_service:", "ssh_service:\n  no_such_key: 1", 1))
        os.kill(serving, signal.SIGHUP)
        failed = daemon.wait_log(r"reload failed: the new process did not start: (.*?) pid=")[-1]
        assert "no_such_key" in failed.group(1)
        assert daemon.pid() == serving and alive(serving)
        done = cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "echo", "still-serving")
        assert done.returncode == 0 and done.stdout.strip() == "still-serving"
    finally:
        daemon.write_config(text=good)
    assert re.search(r"reload requested signal=SIGHUP", daemon.log())


def test_usr2_two_clusters_serve_side_by_side_then_quit_drains_the_old(cluster: Cluster) -> None:
    """Two whole processes (two auth servers on one SQLite file, two proxies, two nodes) serve the
    same sockets; SIGQUIT drains the old one while the new one serves on."""
    daemon = cluster.daemon
    old = daemon.pid()
    home = cluster.signup("usr2")
    term = Terminal(cluster, home)
    try:
        term.ready("U")
        new = daemon.reload(signal.SIGUSR2)
        assert alive(old) and alive(new)
        for i in range(10):  # whichever process takes each one, every login works
            done = cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "echo", f"both-{i}")
            assert done.returncode == 0 and done.stdout.strip() == f"both-{i}", done.stderr
        created = cluster.tctl("users", "add", "made-during-usr2", "--roles=access", f"--logins={LOGIN}")
        assert created.returncode == 0, created.stderr
        os.kill(old, signal.SIGQUIT)
        daemon.wait_log(r"graceful shutdown requested signal=SIGQUIT")
        term.type("echo U$((40+77))X")  # the old process still serves the session it holds
        term.expect(b"U117X")
        assert alive(old)
        term.type("exit")
        term.rest()
        try:
            wait_for(lambda: not alive(old), "the old process drained and exited", 60)
        except BaseException:
            print(daemon.log()[-6000:])  # what the drain waits for
            raise
        assert daemon.pid() == new
        done = cluster.tsh(home, "ssh", f"{LOGIN}@{NODE}", "echo", "after-quit")
        assert done.returncode == 0 and done.stdout.strip() == "after-quit", done.stderr
        assert "made-during-usr2" in str(cluster.call("get_user", "made-during-usr2"))  # one cluster state
    finally:
        term.close()


NODE_TOKEN = "reload-node-token-0123456789abcdef"
HIDDEN = "hidden-node"


def test_a_reverse_tunnel_moves_to_the_new_proxy(tmp_path: Path) -> None:
    """Auth and proxy in one reloaded process, a node behind a reverse tunnel in another: a
    session through the tunnel started before the HUP runs to its end on the old proxy, the node
    dials the new proxy (the old one closed the tunnel's control connection when it began to
    drain), and new sessions reach it there."""
    c = Cluster(tmp_path / "tunnel")
    c.daemon.config["ssh_service"] = {"enabled": False}
    c.daemon.config["auth_service"]["tokens"] = [f"node:{NODE_TOKEN}"]
    c.daemon.write_config()
    c.daemon.start()
    node: Daemon | None = None
    term: Terminal | None = None
    try:
        pin = str(c.call("status")["ca_pin"])
        node = Daemon(tmp_path / "node", {"version": "v3", "teleport": {
            "data_dir": str(tmp_path / "node" / "data"), "nodename": HIDDEN, "auth_token": NODE_TOKEN,
            "ca_pin": pin, "proxy_server": f"127.0.0.1:{c.web_port}"},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"enabled": True}}, plugins="", args=("--insecure",))  # the proxy's self-signed HTTPS
        node.start()
        home = c.signup("tunnel-user")

        def reachable() -> bool:
            return c.tsh(home, "ssh", f"{LOGIN}@{HIDDEN}", "true").returncode == 0

        wait_for(reachable, "the tunnelled node is reachable", 60)
        term = Terminal(c, home, HIDDEN)
        term.ready("H")
        old = c.daemon.pid()
        c.daemon.reload(signal.SIGHUP)
        node.wait_log(r"reverse tunnel connected", count=2)  # it dialed again: the new proxy took it
        wait_for(reachable, "the node through the new proxy", 60)
        term.type("echo H$((40+55))X")  # the session on the old proxy goes on
        term.expect(b"H95X")
        assert alive(old)
        term.type("exit")
        term.rest()
        wait_for(lambda: not alive(old), "the old process drained and exited", 60)
        assert reachable()
    finally:
        if term is not None:
            term.close()
        if node is not None:
            node.stop()
        c.daemon.stop()
