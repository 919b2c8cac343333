"""End to end: ``tsh ssh -R`` (remote forwarding), ``-D`` (SOCKS), ``-o`` (OpenSSH options), and
OpenSSH's ``ssh -J proxy -R`` against our node. One teleport process runs auth, the proxy and
our node; tsh runs as a subprocess; curl is the SOCKS client."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, background_tsh, free_port, one_process_config, profile_ssh_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.sockets import echo_server, listening, roundtrip
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "fwd-node"
TARGET = f"{LOGIN}@{NODENAME}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tsh-fwd")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "no-forwarding"},
                               "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                                        "options": {"port_forwarding": False}}})
        e.signup("rae", ["access"], [LOGIN], PASSWORD)
        e.signup("nofwd", ["no-forwarding"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), what="the node's heartbeat")
        yield e


@pytest.fixture(scope="module")
def rae(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "rae")


@pytest.fixture(scope="module")
def nofwd(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "nofwd")


def events(env: Env, user: str, event: str = "port") -> list[dict[str, Any]]:
    import asyncio

    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            page = await admin.search_events(limit=5000, type=event)
            return [e for e in page["events"] if e.get("user") == user]

    return asyncio.run(body())


@contextlib.contextmanager
def http_server() -> Iterator[int]:
    """A local HTTP server answering every GET with a fixed body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"socks-ok {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def allocated(proc: subprocess.Popen[str]) -> int:
    """The port of ``Allocated port N for remote forward to ...`` on the stderr of ssh or tsh (``-R 0:...``:
    the node picks a free port, so no other process on this machine can take it first)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        words = line.removeprefix("tsh: ").split()
        if words[:2] == ["Allocated", "port"] or len(seen) > 20:
            break
    assert seen and "Allocated port" in seen[-1], "".join(seen)
    return int(seen[-1].removeprefix("tsh: ").split()[2])


def up(proc: subprocess.Popen[str], port: int) -> None:
    wait_for(lambda: listening(port) or proc.poll() is not None, what=f"port {port} to listen")
    if proc.poll() is not None:
        raise AssertionError(proc.communicate()[1])


# -- -R ------------------------------------------------------------------------------------------------------


def test_remote_forward_brings_node_connections_back(env: Env, rae: Path) -> None:
    with echo_server() as echo, background_tsh(rae, "ssh", "-N", "-R", f"0:127.0.0.1:{echo}", TARGET) as proc:
        port = allocated(proc)
        up(proc, port)  # the node listens on its loopback (this machine's)
        payload = os.urandom(300_000)
        assert roundtrip(port, payload) == payload
    wait_for(lambda: not listening(port), what="the node to close the -R listener")
    [event] = wait_for(lambda: [e for e in events(env, "rae") if e.get("forward") == "remote"], what="audit")
    assert event["code"] == "T3003I" and event["addr.local"] == f"127.0.0.1:{port}"


def test_remote_forward_with_a_command_and_as_an_option(env: Env, rae: Path) -> None:
    """The node's own command reaches the forward (bash's /dev/tcp) while it runs; -o RemoteForward
    is the same as -R; port 0 is allocated by the node and reported."""
    port = free_port()
    with echo_server() as echo:
        script = f"exec 3<>/dev/tcp/127.0.0.1/{port}; echo through-R >&3; head -n1 <&3"
        result = env.tsh(rae, "ssh", "-o", f"RemoteForward {port} 127.0.0.1:{echo}", TARGET, f"bash -c '{script}'")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "through-R\n"
        with background_tsh(rae, "ssh", "-N", "-R", f"0:127.0.0.1:{echo}", TARGET) as proc:
            assert roundtrip(allocated(proc), b"allocated") == b"allocated"


def test_remote_forward_refused_by_the_role(env: Env, nofwd: Path) -> None:
    result = env.tsh(nofwd, "ssh", "-N", "-R", f"{free_port()}:127.0.0.1:9", TARGET)
    assert result.returncode == 1
    assert "port forwarding (-R) is not allowed" in result.stderr and "port_forwarding" in result.stderr


def test_openssh_jump_with_remote_forward_to_our_node(env: Env, rae: Path, tmp_path: Path) -> None:
    config = profile_ssh_config(rae, tmp_path / "ssh_config", "ExitOnForwardFailure yes")
    with echo_server() as echo:
        proc = subprocess.Popen(["ssh", "-F", str(config), "-J", f"rae@127.0.0.1:{env.ssh_port}", "-N",
                                 "-R", f"0:127.0.0.1:{echo}", f"{LOGIN}@{NODENAME}.{CLUSTER}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "SSH_AUTH_SOCK": ""}, start_new_session=True)
        try:
            port = allocated(proc)
            up(proc, port)
            assert roundtrip(port, b"openssh -R through the proxy") == b"openssh -R through the proxy"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # ssh and its -J helper, which holds the pipes too
            proc.communicate(timeout=30)
    wait_for(lambda: not listening(port), what="the node to close the -R listener")


# -- -D ------------------------------------------------------------------------------------------------------


def test_dynamic_forward_socks5_and_socks4a_with_curl(env: Env, rae: Path) -> None:
    if not shutil.which("curl"):
        missing("curl is not installed (apt-get install curl)")
    port = free_port()
    with http_server() as web, background_tsh(rae, "ssh", "-N", "-D", str(port), TARGET) as proc:
        up(proc, port)
        for flag in ("--socks5-hostname", "--socks5", "--socks4a", "--socks4"):
            got = subprocess.run(["curl", "-sS", "--max-time", "60", flag, f"127.0.0.1:{port}",
                                  f"http://localhost:{web}/via{flag}"], capture_output=True, text=True, check=False)
            assert got.returncode == 0, (flag, got.stderr)
            assert got.stdout == f"socks-ok /via{flag}", flag
    ports = [e for e in events(env, "rae") if e["code"] == "T3003I" and e["addr.local"].endswith(f":{web}")]
    assert {e["addr.local"] for e in ports} >= {f"localhost:{web}", f"127.0.0.1:{web}"}  # by name and by address


def test_dynamic_forward_closes_garbage_and_refused_destinations(env: Env, rae: Path) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there, on the node's side
    with background_tsh(rae, "ssh", "-N", "-D", f"127.0.0.1:{port}", TARGET) as proc:
        up(proc, port)
        for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x05\x01\x02", b"\x05\x01\x00\x05\x02\x00\x01\x7f\0\0\x01\0\x50",
                        b"\x04\x01" + b"\xff" * 600):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(garbage)
                answer = b""
                with contextlib.suppress(ConnectionResetError):
                    while data := sock.recv(1024):
                        answer += data
            assert answer in (b"", b"\x05\xff", b"\x05\x00", b"\x05\x00\x05\x07\x00\x01" + b"\0" * 6), (garbage, answer)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # a port nothing listens on
            sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + dead.to_bytes(2, "big"))
            answer = b""
            while len(answer) < 12 and (data := sock.recv(1024)):
                answer += data
        assert answer[:2] == b"\x05\x00" and answer[2:4] == b"\x05\x04"  # no-auth chosen, then host unreachable
        assert proc.poll() is None  # still serving


def test_dynamic_forward_refused_by_the_role(env: Env, nofwd: Path) -> None:
    result = env.tsh(nofwd, "ssh", "-N", "-D", str(free_port()), TARGET)
    assert result.returncode == 1
    assert "port forwarding (-D) is not allowed" in result.stderr and "port_forwarding" in result.stderr


# -- -o ------------------------------------------------------------------------------------------------------


def test_options_user_port_tty_and_local_forward(env: Env, rae: Path) -> None:
    node_port = env.proxy_handle.process.services["ssh_service"].ssh_addr[1]
    result = env.tsh(rae, "ssh", "-o", f"User={LOGIN}", "-o", f"Port {node_port}", "-o", "RequestTTY=yes",
                     NODENAME, "tty; echo user=$(id -un)")
    assert result.returncode == 0, result.stderr
    assert "/dev/pts/" in result.stdout and f"user={LOGIN}" in result.stdout
    plain = env.tsh(rae, "ssh", "-o", "requesttty no", TARGET, "tty")  # keywords are case-insensitive
    assert plain.returncode == 1 and "not a tty" in plain.stdout
    with echo_server() as echo:
        port = free_port()
        with background_tsh(rae, "ssh", "-N", "-o", f"LocalForward=127.0.0.1:{port} 127.0.0.1:{echo}",
                            TARGET) as proc:
            up(proc, port)
            assert roundtrip(port, b"-o LocalForward") == b"-o LocalForward"


def test_options_server_alive_and_connect_timeout(env: Env, rae: Path) -> None:
    """Keepalives every second for a 3-second command: answered, so the session is not cut."""
    result = env.tsh(rae, "ssh", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2",
                     "-o", "ConnectTimeout=20", TARGET, "sleep 3; echo alive")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alive\n" and "Timeout" not in result.stderr


def test_options_forward_agent_needs_an_agent(env: Env, rae: Path) -> None:
    result = env.tsh(rae, "ssh", "-o", "ForwardAgent=yes", TARGET, "true")
    assert result.returncode == 1 and "needs a running ssh-agent" in result.stderr


def test_option_errors(env: Env, rae: Path) -> None:
    for args, message in (
            (("-o", "Frobnicate=yes"), "unsupported option 'Frobnicate' in -o: tsh ssh supports AddKeysToAgent, "),
            (("-o", "StrictHostKeyChecking=no"), "tsh always checks the host certificate against the cluster's host CA"),
            (("-o", "ForwardX11=yes"), "X11 forwarding is not supported by tsh"),
            (("-o", "ForwardAgent=maybe"), "-o ForwardAgent: expected yes or no, got 'maybe'"),
            (("-o", "ServerAliveInterval=soon"), "-o ServerAliveInterval: expected a number from 0 to 86400"),
            (("-o", "Port=70000"), "-o Port: expected a number from 1 to 65535"),
            (("-o", "User="), "-o User: the value is empty"),
            (("-o", "RequestTTY"), "expected Option=value or 'Option value'"),
            (("-o", "LocalForward=8080"), "-o LocalForward: expected '[bind_address:]port host:hostport'"),
            (("-R", "8080", ), "invalid -R spec '8080': expected [bind_address:]port:host:hostport"),
            (("-R", "1:h:0"), "invalid -R spec '1:h:0': port '0' is not a number from 1 to 65535"),
            (("-D", "1:2:3"), "invalid -D spec '1:2:3': expected [bind_address:]port"),
            (("-D", "0"), "invalid -D spec '0': port '0' is not a number from 1 to 65535"),
            (("-N", "-o", "ServerAliveInterval=5"), "-N runs no command: give -L, -R or -D forwards and no command"),
            (("-R", "8080:h:80"), "-L, -R, -D and -A need a single node, not a label selector")):
        target = f"{LOGIN}@env=test" if "label" in message else TARGET
        result = env.tsh(rae, "ssh", *args, target, *([] if args[0] == "-N" else ["true"]))
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    ignored = env.tsh(rae, "ssh", "-o", "Ciphers=aes256-ctr", TARGET, "echo ran")
    assert ignored.returncode == 0 and ignored.stdout == "ran\n"
    assert "tsh: warning: option Ciphers is decided by tsh itself and has no effect" in ignored.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        result = env.tsh(rae, "ssh", "-N", "-D", str(taken), TARGET)
    assert result.returncode == 1 and f"-D 127.0.0.1:{taken}: cannot listen on 127.0.0.1:{taken}" in result.stderr


def test_the_node_refuses_after_the_role_changed(env: Env, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The certificate still permits forwarding, the node's current roles do not: a -D connection
    gets SOCKS "not allowed" (audited T3003E) and -R stops tsh (audited T3003E, forward: remote)."""
    env.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "fwd-later"},
                             "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                                      "options": {"port_forwarding": True}}})
    env.signup("lena", ["fwd-later"], [LOGIN], PASSWORD)
    home = env.logged_in(tmp_path_factory, "lena")
    env.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "fwd-later"},
                             "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                                      "options": {"port_forwarding": False}}})
    # the node follows role changes through auth's long poll: retry -R until it is refused
    refused = wait_for(lambda: (r := env.tsh(home, "ssh", "-R", f"{free_port()}:127.0.0.1:9", TARGET, "true"))
                       .returncode == 1 and r, what="-R refused after the role change", interval=0.5)
    assert "the node refused remote port forwarding" in refused.stderr
    port = free_port()
    with http_server() as web, background_tsh(home, "ssh", "-N", "-D", str(port), TARGET) as proc:
        up(proc, port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01" + web.to_bytes(2, "big"))
            answer = b""
            while len(answer) < 12 and (data := sock.recv(1024)):
                answer += data
        assert answer[:4] == b"\x05\x00\x05\x02"  # no-auth chosen, then "connection not allowed by ruleset"
    refusals = wait_for(lambda: [e for e in events(env, "lena") if e["code"] == "T3003E"], what="audited refusals")
    assert {e.get("forward", "local") for e in refusals} == {"remote", "local"}
    assert any(e["addr.local"] == f"127.0.0.1:{web}" for e in refusals)
