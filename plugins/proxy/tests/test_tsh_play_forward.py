"""End to end: ``tsh recordings ls``, ``tsh play``, ``tsh ssh -L`` and ``tsh ssh -A``.

One teleport process runs auth, proxy and our node (records sessions, serves direct-tcpip and
agent forwarding); tsh runs as a subprocess against the proxy; a real ssh-agent, OpenSSH's
ssh-add and asciinema check the results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import LOGIN, Env, background_tsh, free_port, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.sockets import echo_server, exchange
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "rec-node"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tsh-play")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        for name, options in (("no-forwarding", {"forward_agent": False, "port_forwarding": False}),
                              ("forwarding", {"forward_agent": True, "port_forwarding": True})):
            e.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": name},
                                   "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                                                      "rules": [{"resources": ["node"], "verbs": ["list", "read"]}]},
                                            "options": options}})
        e.signup("audrey", ["access", "auditor"], [LOGIN], PASSWORD)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        e.signup("nofwd", ["no-forwarding"], [LOGIN], PASSWORD)
        e.signup("later", ["forwarding"], [LOGIN], PASSWORD)
        deadline = time.monotonic() + 60
        while not e.call("get_nodes") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield e


@pytest.fixture(scope="module")
def audrey(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "audrey")


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "alice")


def tsh(home: Path, *args: str, stdin: str = "", timeout: float = 300, agent: str = "",
        binary: bool = False) -> subprocess.CompletedProcess[Any]:
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    if agent:
        env["SSH_AUTH_SOCK"] = agent
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", *args],
                          input=stdin.encode() if binary else stdin, capture_output=True, text=not binary,
                          timeout=timeout, env=env, check=False)


def events(env: Env) -> list[dict[str, Any]]:
    """Every audit event of the last day."""
    import asyncio

    async def body() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = ""
        async with env.admin() as admin:
            while True:
                page = await admin.search_events(limit=5000, cursor=cursor)
                out.extend(page["events"])
                cursor = page["next_cursor"]
                if not cursor:
                    return out

    return asyncio.run(body())


# -- recordings ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(env: Env, audrey: Path) -> dict[str, Any]:
    """An interactive session audrey typed in, once its recording is uploaded: its listing entry."""
    result = tsh(audrey, "ssh", "-t", f"{LOGIN}@{NODENAME}", stdin="echo typed-$((6*7))-here\nexit\n")
    assert result.returncode == 0, result.stderr
    assert "typed-42-here" in result.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = tsh(audrey, "recordings", "ls", "--format=json")
        assert listing.returncode == 0, listing.stderr
        found = [s for s in json.loads(listing.stdout) if s["interactive"] and s["recorded"]]
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError("the recording was not listed as uploaded")


def on_a_terminal(argv: list[str], *, stdout_too: bool = True) -> bytes:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal and stdin (and stdout when
    ``stdout_too``, else a pipe); what it wrote."""
    import fcntl
    import pty
    import select
    import termios

    master, slave = pty.openpty()

    def controlling() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave if stdout_too else subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=controlling)
    os.close(slave)
    out = b""
    if stdout_too:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal closed
                break
            if not chunk:
                break
            out += chunk
    else:
        assert proc.stdout is not None
        out = proc.stdout.read()
    proc.wait(120)
    os.close(master)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
    return out


def test_recordings_ls_lists_the_session(env: Env, audrey: Path, recorded: dict[str, Any]) -> None:
    assert recorded["user"] == "audrey" and recorded["login"] == LOGIN
    assert recorded["server_hostname"] == NODENAME and recorded["participants"] == ["audrey"]
    assert recorded["start"] <= recorded["end"] and recorded["duration_seconds"] >= 0 and recorded["size"] > 0
    text = tsh(audrey, "recordings", "ls")
    assert text.returncode == 0, text.stderr
    header, rule, *rows = text.stdout.splitlines()
    assert header.split() == ["ID", "Type", "Participants", "Login", "Hostname", "Started", "Duration", "Recording"]
    assert set(rule.replace(" ", "")) == {"-"}
    row = next(r for r in rows if r.startswith(recorded["sid"]))
    assert row.split()[1:5] == ["ssh", "audrey", LOGIN, NODENAME]
    assert row.split()[-1] == "uploaded" and recorded["recording"] == "uploaded"
    assert recorded["end_reason"] == "exit"
    # a window that ends before the session excludes it
    old = tsh(audrey, "recordings", "ls", "--format=json", "--to-utc=2001-01-02T00:00:00Z")
    assert old.returncode == 0 and json.loads(old.stdout) == []


def test_play_shows_what_was_typed(env: Env, audrey: Path, recorded: dict[str, Any], tmp_path: Path) -> None:
    sid = recorded["sid"]
    played = tsh(audrey, "play", sid, "--speed=4x", binary=True)
    assert played.returncode == 0, played.stderr
    text = played.stdout.decode()
    assert "echo typed-$((6*7))-here" in text  # the pty echoed what was typed
    assert "typed-42-here" in text
    cast = tsh(audrey, "play", "--format=cast", sid, binary=True)
    assert cast.returncode == 0, cast.stderr
    path = tmp_path / "session.cast"
    path.write_bytes(cast.stdout)
    if shutil.which("asciinema"):  # asciinema cat reads /dev/tty: give it a terminal, stdout a pipe
        reference = on_a_terminal(["asciinema", "cat", str(path)], stdout_too=False)
        assert reference == played.stdout  # the same output as asciinema's own player
    as_json = tsh(audrey, "play", "--format=json", sid)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["header"]["version"] == 2
    assert "".join(data for _t, kind, data in doc["events"] if kind == "o") == text
    local = tsh(audrey, "play", str(path), binary=True)  # a local .cast file plays without the cluster
    assert local.returncode == 0 and local.stdout == played.stdout
    # on a terminal the output is replayed with its timing (scaled by --speed)
    shown = on_a_terminal([sys.executable, "-m", "teleport_core.cli.tsh", "play", "--speed=50", str(path)])
    assert b"typed-42-here" in shown
    audits = [e for e in events(env) if e["event"] == "session.recording.access"]
    assert any(e["sid"] == sid and e["user"] == "audrey" and e["code"] == "T2012I" for e in audits)


def test_user_without_the_rule_is_refused_and_audited(env: Env, recorded: dict[str, Any],
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    """A role with no ``session`` rule at all: listing and playing are refused and audited. (The
    preset ``access`` role lists and plays the user's own sessions only: test_recordings_own_sessions.)"""
    nofwd = env.logged_in(tmp_path_factory, "nofwd")
    listing = tsh(nofwd, "recordings", "ls")
    assert listing.returncode == 1
    assert 'access denied to user "nofwd": no role allows list on session' in listing.stderr
    played = tsh(nofwd, "play", recorded["sid"])
    assert played.returncode == 1
    assert 'access denied to user "nofwd": no role allows read on session' in played.stderr
    failures = [e for e in events(env) if e["event"] == "auth" and e.get("user") == "nofwd"]
    paths = {e["path"] for e in failures}
    assert "/v1/sessions" in paths and f"/v1/sessions/{recorded['sid']}/recording" in paths
    assert all(e["code"] == "T3007W" for e in failures)


def test_access_role_does_not_list_or_play_another_users_session(env: Env, alice: Path,
                                                                 recorded: dict[str, Any]) -> None:
    listing = tsh(alice, "recordings", "ls", "--format=json")
    assert listing.returncode == 0, listing.stderr
    assert recorded["sid"] not in listing.stdout
    played = tsh(alice, "play", recorded["sid"])
    assert played.returncode == 1 and "access denied" in played.stderr


def test_a_host_cannot_forward_a_user_certificate_unless_it_is_a_proxy(env: Env, audrey: Path) -> None:
    import base64
    import ssl

    import httpx

    from teleport_core.api.client import FORWARDED_USER_CERT
    from teleport_core.pki.identity import LocalIdentity

    node = LocalIdentity.load(env.root / "auth" / "keys" / "node")
    user = LocalIdentity.load(audrey / "profiles" / "127.0.0.1")
    der = ssl.PEM_cert_to_DER_cert(user.tls_cert_pem.decode())
    with httpx.Client(verify=node.client_context(), timeout=30) as client:
        answer = client.get(f"https://{env.auth_addr}/v1/sessions", headers={
            FORWARDED_USER_CERT: base64.b64encode(der).decode(), "Host": "teleport.cluster.local"},
            extensions={"sni_hostname": "teleport.cluster.local"})
    assert answer.status_code == 403
    assert "only a proxy may forward a user's certificate" in answer.json()["error"]


def test_play_and_ls_flag_errors(env: Env, audrey: Path) -> None:
    for args, message in ((("play", "x", "--speed=0"), "--speed: expected a factor from 0.1 to 100"),
                          (("play", "x", "--speed=fast"), "--speed: expected a number like 2 or 0.5x"),
                          (("play", "../etc/passwd"), "is neither a session ID nor a .cast file"),
                          (("play", "no-such-session"), "no recording of session no-such-session"),
                          (("recordings", "ls", "--from-utc=yesterday"), "--from-utc: expected an RFC 3339 time"),
                          (("recordings", "ls", "--last=forever"), "--last: expected a duration like 30m"),
                          (("recordings", "ls", "--limit=0"), "--limit: expected a number from 1 to 1000"),
                          (("recordings", "ls", "--from-utc=2030-01-01T00:00:00Z", "--to-utc=2029-01-01T00:00:00Z"),
                           "--from-utc must be before --to-utc")):
        result = tsh(audrey, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    for args in (("play", "x", "--format=xml"), ("recordings", "rm")):
        result = tsh(audrey, *args)
        assert result.returncode == 2 and "invalid choice" in result.stderr, result.stderr


def test_a_recording_missing_from_the_storage_is_listed_missing(env: Env, audrey: Path) -> None:
    """A recording the session storage lost: ``tsh recordings ls`` says ``missing``, ``tsh play`` says why."""
    result = tsh(audrey, "ssh", f"{LOGIN}@{NODENAME}", "echo soon-lost")
    assert result.returncode == 0, result.stderr
    entry: dict[str, Any] = {}

    def uploaded() -> bool:
        listing = tsh(audrey, "recordings", "ls", "--format=json")
        found = [s for s in json.loads(listing.stdout) if s["command"] == "echo soon-lost"]
        entry.update(found[0] if found else {})
        return bool(found) and found[0]["recording"] == "uploaded"

    wait_for(uploaded, timeout=60, interval=0.3, what="the recording to be uploaded")
    sid = entry["sid"]
    [stored] = [p for p in (env.root / "auth").rglob(f"{sid}.cast") if "upload" not in p.parts]
    stored.unlink()
    listing = tsh(audrey, "recordings", "ls", "--format=json")
    [again] = [s for s in json.loads(listing.stdout) if s["sid"] == sid]
    assert (again["recording"], again["recorded"]) == ("missing", False)
    [row] = [r for r in tsh(audrey, "recordings", "ls").stdout.splitlines() if r.startswith(sid)]
    assert row.split()[-1] == "missing"
    played = tsh(audrey, "play", sid)
    assert played.returncode == 1
    assert f"the recording of session {sid} is missing from the session storage" in played.stderr


# -- forwarding -------------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 120) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def roundtrip(port: int, payload: bytes) -> bytes:
    """Send ``payload`` (then EOF) while reading the answer until EOF."""
    with connect(port) as sock:
        return exchange(sock, payload)


def closed_at_once(port: int) -> bool:
    """The forward accepted a connection and closed it without data (the node refused the channel)."""
    with connect(port) as sock:
        try:
            return sock.recv(65536) == b""
        except ConnectionResetError:
            return True


def test_local_forward_reaches_an_echo_server_through_the_node(env: Env, alice: Path) -> None:
    with echo_server() as echo:
        first, second = free_port(), free_port()
        with background_tsh(alice, "ssh", "-N", "-L", f"{first}:127.0.0.1:{echo}",
                            "-L", f"127.0.0.1:{second}:localhost:{echo}", f"{LOGIN}@{NODENAME}") as proc:
            payload = os.urandom(300_000)
            assert roundtrip(first, payload) == payload
            assert roundtrip(second, b"second forward") == b"second forward"
            assert proc.poll() is None
        # with a command: the forward lives as long as the command runs
        port = free_port()
        with background_tsh(alice, "ssh", "-L", f"{port}:127.0.0.1:{echo}", f"{LOGIN}@{NODENAME}", "sleep 30"):
            assert roundtrip(port, b"while a command runs") == b"while a command runs"
    ports = [e for e in events(env) if e["event"] == "port" and e.get("user") == "alice"]
    assert any(e["code"] == "T3003I" and e["addr.local"] == f"127.0.0.1:{echo}" for e in ports)


def test_local_forward_refused_by_the_role(env: Env, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = env.logged_in(tmp_path_factory, "nofwd")
    result = tsh(home, "ssh", "-N", "-L", f"{free_port()}:127.0.0.1:9", f"{LOGIN}@{NODENAME}")
    assert result.returncode == 1
    assert "port forwarding (-L) is not allowed" in result.stderr and "port_forwarding" in result.stderr


def test_node_refuses_forwarding_after_the_role_changed(env: Env, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The certificate still permits forwarding, the node's current roles do not: both refused."""
    home = env.logged_in(tmp_path_factory, "later")
    env.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "forwarding"},
                             "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}},
                                      "options": {"forward_agent": False, "port_forwarding": False}}})
    # the node follows role changes through auth's long poll: try agent forwarding until it is refused
    with ssh_agent() as (sock, _fingerprint):
        result = wait_for(lambda: (r := tsh(home, "ssh", "-A", f"{LOGIN}@{NODENAME}", "ssh-add -l", agent=sock))
                          .returncode == 1 and r, what="agent forwarding refused after the role change", interval=0.5)
    assert "the node refused agent forwarding (-A)" in result.stderr
    with echo_server() as echo:
        port = free_port()
        with background_tsh(home, "ssh", "-N", "-L", f"{port}:127.0.0.1:{echo}", f"{LOGIN}@{NODENAME}") as proc:
            assert closed_at_once(port)  # the node refused the channel
            proc.terminate()
            _out, err = proc.communicate(timeout=30)
    assert "administratively prohibited" in err
    ports = wait_for(lambda: [e for e in events(env) if e["event"] == "port" and e.get("user") == "later"
                              and e["code"] == "T3003E"], what="audited port refusal", interval=0.5)
    assert ports[0]["code"] == "T3003E"
    refusals = wait_for(lambda: [e for e in events(env) if e["event"] == "auth" and e.get("user") == "later"
                                 and "agent forwarding refused" in e.get("error", "")],
                        what="audited refusal", interval=0.5)
    assert refusals[0]["code"] == "T3007W"
    assert refusals[0]["error"] == "agent forwarding refused: forward_agent is not allowed by the roles"


@contextlib.contextmanager
def ssh_agent() -> Iterator[tuple[str, str]]:
    """A real ssh-agent holding one fresh key: (socket path, the key's fingerprint)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tsh-agent-"))
    sock = str(folder / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        key = folder / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "forwarded-key", "-f", str(key)],
                       check=True, timeout=30)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, timeout=30, env={**os.environ, "SSH_AUTH_SOCK": sock},
                       capture_output=True)
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], check=True, capture_output=True,
                                     text=True, timeout=30).stdout.split()[1]
        yield sock, fingerprint
    finally:
        agent.terminate()
        agent.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_agent_forwarding_lists_the_key_on_the_node(env: Env, alice: Path) -> None:
    if not shutil.which("ssh-agent"):
        missing("OpenSSH ssh-agent is not installed (apt-get install openssh-client)")
    with ssh_agent() as (sock, fingerprint):
        result = tsh(alice, "ssh", "-A", f"{LOGIN}@{NODENAME}", "ssh-add -l", agent=sock)
        assert result.returncode == 0, result.stderr
        assert fingerprint in result.stdout and "forwarded-key" in result.stdout
        plain = tsh(alice, "ssh", f"{LOGIN}@{NODENAME}", "ssh-add -l", agent=sock)  # without -A: no agent
        assert plain.returncode == 2, plain.stdout + plain.stderr


def test_agent_forwarding_refused_by_the_role(env: Env, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = env.logged_in(tmp_path_factory, "nofwd")
    with ssh_agent() as (sock, _fingerprint):
        result = tsh(home, "ssh", "-A", f"{LOGIN}@{NODENAME}", "ssh-add -l", agent=sock)
    assert result.returncode == 1
    assert "agent forwarding (-A) is not allowed" in result.stderr and "forward_agent" in result.stderr


def test_forwarding_flag_errors(env: Env, alice: Path) -> None:
    target = f"{LOGIN}@{NODENAME}"
    for args, message in (
            (("-L", "8080", target), "invalid -L spec '8080': expected [bind_address:]port:host:hostport"),
            (("-L", "a:b:c:d:e", target), "expected [bind_address:]port:host:hostport"),
            (("-L", "0:host:80", target), "port '0' is not a number from 1 to 65535"),
            (("-L", "8080:host:99999", target), "port '99999' is not a number from 1 to 65535"),
            (("-L", "[::1:8080:host:80", target), "unbalanced '['"),
            (("-L", "8080::80", target), "the host is empty"),
            (("-N", target), "-N runs no command: give -L, -R or -D forwards and no command"),
            (("-L", "8080:h:80", f"{LOGIN}@env=test", "true"), "-L, -R, -D and -A need a single node"),
            (("-A", target, "true"), "needs a running ssh-agent: SSH_AUTH_SOCK is not set")):
        result = tsh(alice, "ssh", *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = tsh(alice, "ssh", "-N", "-L", f"{port}:127.0.0.1:9", target)
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
