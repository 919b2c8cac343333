"""Every session ends in the record: a node process killed with SIGKILL mid-session ends it at
its next start (``end_reason`` ``node_restart``, dated at the recording's real end); one stopped
with SIGTERM or SIGINT tells the client, ends it (``interrupted``) and delivers its end and its
recording before it exits. Either way the session is listed by auth and its recording plays
(``tsh play``) with what was typed before. A recording auth refuses for good is kept as
``<sid>.cast.refused`` and counted in the node's ``/metrics``; one auth has no record of yet
(404) is retried until it has.

Real processes: an auth server (in process), a ``teleport start`` node and the OpenSSH client.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from node_helpers import Auth, Node, free_port, ssh_argv

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.state.audit import new_event, parse_time
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # slow: scheduled among the first files

SHUTDOWN_LINE = "teleport: the node is shutting down; this session ends (session {sid})"


def with_diag(node: Node) -> str:
    """Give ``node`` a diagnostics endpoint (before it starts); its URL."""
    config = yaml.safe_load(node.config.read_text())
    addr = f"127.0.0.1:{free_port()}"
    config["teleport"]["diag_addr"] = addr
    node.config.write_text(yaml.safe_dump(config))
    return f"http://{addr}"


def open_session(auth: Auth, node: Node, tmp: Path, user: str, *args: str) -> subprocess.Popen[bytes]:
    key = auth.user(tmp, user, ["access"], ["root"])
    (tmp / "known_hosts").write_text(auth.known_hosts())
    argv = ssh_argv(tmp, node.port, key, "root", *args, host_alias=f"{node.nodename}.node.test")
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until(stream: Any, needle: bytes, timeout: float = 30.0) -> bytes:
    """Read ``stream`` until ``needle`` appeared (or it closed: then fail); what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen in {seen!r}"
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"the stream closed before {needle!r}: {seen!r}"
            seen += chunk
    return seen


def read_to_end(stream: Any, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            return seen
        seen += chunk
    raise AssertionError(f"the stream did not close: {seen!r}")


def spool(node: Node) -> Path:
    return node.data_dir / "data" / "log" / "upload" / "sessions"


def flushed_sid(node: Node, marker: bytes, exclude: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """The session whose spooled recording holds ``marker`` (waits for the recorder's flush)."""

    def find() -> str | None:
        for part in spool(node).glob("*.raw.part"):
            sid = part.name.removesuffix(".raw.part")
            if sid not in exclude and marker in part.read_bytes():
                return sid
        return None

    return str(wait_for(find, what="the recording flushed to the spool", timeout=10))


def typed_shell(auth: Auth, node: Node, tmp: Path, user: str, word: str) -> tuple[subprocess.Popen[bytes], str]:
    """A PTY shell in which ``echo typed-$((40+2))-<word>`` was typed and shown, once the
    recorder flushed it to the spool: the client and the session ID."""
    client = open_session(auth, node, tmp, user, "-tt")
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"echo typed-$((40+2))-{word}\n".encode())
    client.stdin.flush()
    read_until(client.stdout, f"typed-42-{word}".encode())
    return client, flushed_sid(node, f"typed-42-{word}".encode())


def session_end(auth: Auth, sid: str) -> dict[str, Any]:
    """The one ``session.end`` of ``sid`` in auth's audit log (auth's log is written through its
    spool: an event it accepted shows within a moment)."""
    ends = wait_for(lambda: [e for e in auth.events(type="session.end") if e.get("sid") == sid],
                    what=f"the session.end of {sid}", timeout=10)
    [end] = ends
    return dict(end)


def listed(auth: Auth, sid: str, timeout: float = 30.0) -> dict[str, Any]:
    """The session's entry in auth's listing (``GET /v1/sessions``), once its recording is stored."""

    def find() -> dict[str, Any] | None:
        for entry in auth.run(lambda admin: admin.list_recordings(limit=1000)):
            if entry["sid"] == sid and entry.get("recorded"):
                return dict(entry)
        return None

    return dict(wait_for(find, what=f"session {sid} listed as recorded", timeout=timeout))


def play(auth: Auth, sid: str, tmp: Path) -> str:
    """``tsh play`` of the stored recording (downloaded through the auth API)."""
    dest = tmp / f"{sid}.cast"
    auth.run(lambda admin: admin.download_recording(sid, dest))
    played = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "play", str(dest)], capture_output=True,
                            timeout=60, env={**os.environ, "TELEPORT_HOME": str(tmp / "tsh-home")}, check=False)
    assert played.returncode == 0, played.stderr
    return played.stdout.decode(errors="replace")


def test_kill_9_mid_session_then_restart_ends_the_session(auth: Auth, tmp_path: Path) -> None:
    node = Node(auth, tmp_path / "node", nodename="killnode").start()
    try:
        client, sid = typed_shell(auth, node, tmp_path, "kim", "before-kill")
        assert (spool(node) / f"{sid}.session.json").exists()  # the live session's sidecar
        time.sleep(0.6)  # a recorder flush interval: the spool holds what was typed
        node.kill()
        client.kill()
        client.wait(10)
        killed_at = time.time()
        node.start()
        entry = listed(auth, sid, timeout=30)
        end = session_end(auth, sid)
        assert end["end_reason"] == "node_restart" and end["code"] == "T2004I"
        assert end["user"] == "kim" and end["login"] == "root" and end["interactive"] is True
        assert end["server_hostname"] == "killnode" and end["session_recording"] == "node"
        assert end["recorded_bytes"] >= len("typed-42-before-kill")
        start, stop = parse_time(end["session_start"]), parse_time(end["session_stop"])
        assert end["time"] == end["session_stop"]  # dated at the recording's real end, not the restart
        assert start <= stop and stop.timestamp() <= killed_at
        assert entry["user"] == "kim" and entry["server_hostname"] == "killnode"
        assert entry["end_reason"] == "node_restart" and entry["end"] == end["session_stop"]
        assert "typed-42-before-kill" in play(auth, sid, tmp_path)
        wait_for(lambda: not list(spool(node).iterdir()), what="an empty spool", timeout=30)
    finally:
        node.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_tells_the_clients_and_ends_their_sessions(auth: Auth, tmp_path: Path, signum: int) -> None:
    name = f"stopnode-{signal.Signals(signum).name.lower()}"
    node = Node(auth, tmp_path / "node", nodename=name).start()
    try:
        shell, shell_sid = typed_shell(auth, node, tmp_path, "sam", "before-stop")
        # a command that ignores SIGHUP: killed (SIGKILL) after the grace
        command = open_session(auth, node, tmp_path, "sam", "trap '' HUP; echo exec-started; sleep 600")
        assert command.stdout is not None and command.stderr is not None
        read_until(command.stdout, b"exec-started")
        exec_sid = flushed_sid(node, b"exec-started")
        time.sleep(0.6)
        assert node.proc is not None
        node.proc.send_signal(signum)
        # each client is told, on its terminal or its stderr, then its session ends
        assert shell.stdout is not None
        seen = read_to_end(shell.stdout).decode(errors="replace")
        assert SHUTDOWN_LINE.format(sid=shell_sid) in seen
        told = read_to_end(command.stderr).decode(errors="replace")
        assert SHUTDOWN_LINE.format(sid=exec_sid) in told
        assert shell.wait(30) != 0 and command.wait(30) != 0
        assert node.proc.wait(30) == 0
        # the ends and the recordings reached auth before the node exited
        for sid, interactive in ((shell_sid, True), (exec_sid, False)):
            end = session_end(auth, sid)
            assert end["end_reason"] == "interrupted" and end["interactive"] is interactive
            assert end["user"] == "sam" and end["recorded_bytes"] > 0
            assert parse_time(end["session_start"]) <= parse_time(end["session_stop"])
            wait_for(lambda sid=sid: [e for e in auth.events(type="session.upload") if e.get("sid") == sid],
                     what="its session.upload", timeout=10)
        entry = listed(auth, shell_sid, timeout=5)
        assert entry["server_hostname"] == name and entry["end_reason"] == "interrupted"
        played = play(auth, shell_sid, tmp_path)
        assert "typed-42-before-stop" in played and SHUTDOWN_LINE.format(sid=shell_sid) in played
        assert not list(spool(node).iterdir())  # nothing left for the next start
    finally:
        for client in ("shell", "command"):
            proc = locals().get(client)
            if proc is not None and proc.poll() is None:
                proc.kill()
        node.stop()


def test_a_recording_refused_for_good_is_kept_and_counted(auth: Auth, tmp_path: Path) -> None:
    """409 (auth holds a different recording of the session): kept as .refused at once, counted."""
    node = Node(auth, tmp_path / "node", nodename="refusenode")
    diag = with_diag(node)
    node.start()
    try:
        client = open_session(auth, node, tmp_path, "rob", "echo recorded-$((40+2))")
        assert client.wait(30) == 0
        [start] = wait_for(lambda: [e for e in auth.events(type="session.start")
                                    if e.get("server_hostname") == "refusenode"], what="session.start")
        sid = start["sid"]
        wait_for(lambda: [e for e in auth.events(type="session.upload") if e.get("sid") == sid],
                 what="session.upload")
        end = session_end(auth, sid)  # a session that ended normally
        assert end["end_reason"] == "exit" and end["recorded_bytes"] == len("recorded-42\n")
        assert end["session_start"] <= end["session_stop"] <= end["time"]
        wait_for(lambda: not (spool(node) / f"{sid}.session.json").exists(), what="the sidecar removed")
        node.stop()
        # the spool now offers different bytes for that session: auth answers 409
        (spool(node) / f"{sid}.cast").write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "forged"]\n')
        node.start()
        refused = spool(node) / f"{sid}.cast.refused"
        wait_for(refused.exists, what="the refused recording kept", timeout=30)
        metrics = urllib.request.urlopen(f"{diag}/metrics", timeout=10).read().decode()
        assert re.search(r"^teleport_recordings_refused 1\.0$", metrics, re.MULTILINE), metrics
        assert re.search(r"^teleport_recordings_pending 0\.0$", metrics, re.MULTILINE), metrics
        assert "auth refused the recording for good" in node.log()
        assert "forged" not in play(auth, sid, tmp_path)  # the stored recording is untouched
        node.stop()
        node.start()  # a restart neither retries it nor forgets it
        metrics = urllib.request.urlopen(f"{diag}/metrics", timeout=10).read().decode()
        assert re.search(r"^teleport_recordings_refused 1\.0$", metrics, re.MULTILINE), metrics
        assert refused.exists() and not (spool(node) / f"{sid}.cast").exists()
    finally:
        node.stop()


def test_an_upload_auth_has_no_record_for_yet_is_retried(auth: Auth, tmp_path: Path) -> None:
    """404 (no session.start of it has reached auth yet): transient, retried with backoff, counted
    pending, never refused; once the session.start arrives the next try stores it."""
    node = Node(auth, tmp_path / "node", nodename="latenode")
    diag = with_diag(node)
    node.start()
    node.stop()
    sid = str(uuid.uuid4())
    (spool(node) / f"{sid}.cast").write_text(
        f'{{"version": 2, "width": 80, "height": 24, "timestamp": {int(time.time())}}}\n[0.1, "o", "late-start"]\n')
    node.start()
    try:
        wait_for(lambda: "auth has no record of the session yet, will retry the upload" in node.log(),
                 what="the 404 logged as transient", timeout=30)
        metrics = urllib.request.urlopen(f"{diag}/metrics", timeout=10).read().decode()
        assert re.search(r"^teleport_recordings_pending 1\.0$", metrics, re.MULTILINE), metrics
        assert re.search(r"^teleport_recordings_refused 0\.0$", metrics, re.MULTILINE), metrics
        # the session.start reaches auth late (as from another auth server, or a long outage)
        start = new_event("session.start", "ok", sid=sid, proto="ssh", user="lee", login="root",
                          initial_command=[""], session_recording="node")

        async def emit() -> None:
            identity = load_identity_dir(node.data_dir / "data" / "keys" / "node")
            async with AuthClient(auth.addr, [identity]) as client:
                await client.emit_event(start.to_dict())

        asyncio.run(emit())
        wait_for(lambda: [e for e in auth.events(type="session.upload") if e.get("sid") == sid],
                 what="the upload stored once auth knows the session", timeout=60)
        assert not (spool(node) / f"{sid}.cast.refused").exists()
        assert "late-start" in play(auth, sid, tmp_path)
    finally:
        node.stop()
