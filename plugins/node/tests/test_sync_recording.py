"""session_recording: node-sync: a session's recording streams to auth while it runs.

Real auth (in process, file session storage), real node processes, the real OpenSSH client.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Auth, Node, auth_config, run, ssh_argv

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import AccessDenied, AlreadyExists, NotFound
from teleport_core.plugins import make_plugins
from teleport_core.recording.stream import RecordingRefused
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.processes import free_port
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

HEADER = b'{"version": 2, "width": 80, "height": 24}\n'


@pytest.fixture(scope="module")
def sync_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    data_dir = tmp_path_factory.mktemp("sync-auth")
    port = free_port()
    with start_cluster(auth_config(data_dir, port, recording="node-sync"), make_plugins(), timeout=60) as handle:
        yield Auth(handle, data_dir, port)


@pytest.fixture(scope="module")
def sync_node(sync_auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = Node(sync_auth, tmp_path_factory.mktemp("sync-node"), nodename="syncnode").start()
    yield started
    started.stop()


def _as_host(node: Node, fn: Any) -> Any:
    """Call auth with the node's own host identity."""
    import asyncio

    async def body() -> Any:
        async with AuthClient(node.auth.addr, [load_identity_dir(node.data_dir / "data" / "keys" / "node")]) as host:
            return await fn(host)

    return asyncio.run(body())


def _stream(auth: Auth, sid: str, offset: int = 0) -> tuple[bytes, dict[str, str]]:
    return auth.run(lambda admin: admin.read_recording_stream(sid, offset))  # type: ignore[no-any-return]


def _stream_all(auth: Auth, sid: str) -> bytes:
    """Everything auth has of the recording (a read returns at most 4 MiB)."""
    out = b""
    while data := _stream(auth, sid, len(out))[0]:
        out += data
    return out


def _record(auth: Auth, sid: str) -> Any:
    from teleport_auth.session_records import records_of

    service = auth.handle.process.services["auth_service"]
    return auth.handle.call(lambda: records_of(service).get(sid))


class Shell:
    """An interactive OpenSSH session (``-tt``) to a node."""

    def __init__(self, tmp: Path, auth: Auth, node: Node, user: str) -> None:
        key = auth.user(tmp, user, ["access"], ["root"])
        (tmp / "known_hosts").write_text(auth.known_hosts())
        argv = ssh_argv(tmp, node.port, key, "root", "-tt", host_alias=f"{node.nodename}.node.test")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.seen = b""

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, text: bytes) -> None:
        assert self.proc.stdout is not None
        looked = 0  # where the search starts again (only what is new is searched)
        while text not in self.seen[looked:]:
            looked = max(0, len(self.seen) - len(text))
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert chunk, f"session ended early: {self.seen[-2000:]!r}"
            self.seen += chunk

    def sid(self) -> str:
        import re

        self.type('echo "S""ID=$TELEPORT_SESSION="')  # the echoed command line does not match
        assert self.proc.stdout is not None
        while (found := re.search(rb"SID=([0-9a-f-]{36})=", self.seen)) is None:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, f"session ended early: {self.seen!r}"
            self.seen += chunk
        return found.group(1).decode()


def _wait_stream(auth: Auth, sid: str, text: bytes, timeout: float = 20) -> tuple[bytes, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            data, headers = _stream(auth, sid)
            if text in data:
                return data, headers
        except NotFound:
            pass
        assert time.monotonic() < deadline, f"{text!r} never reached auth"
        time.sleep(0.2)


def _wait_complete(auth: Auth, sid: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        record = _record(auth, sid)
        if record is not None and record.recording.state == "uploaded":
            return record
        assert time.monotonic() < deadline, f"recording of {sid} never completed: {record}"
        time.sleep(0.2)


def test_node_sync_output_reaches_auth_while_the_session_runs(sync_auth: Auth, sync_node: Node,
                                                              tmp_path: Path) -> None:
    shell = Shell(tmp_path, sync_auth, sync_node, "sally")
    sid = shell.sid()
    shell.type("echo live-$((6*7))")
    shell.wait_for(b"live-42")
    live, headers = _wait_stream(sync_auth, sid, b"live-42")
    assert headers["x-teleport-recording"] == "streaming" and headers["x-teleport-session"] == "running"
    assert live.startswith(b'{"version": 2'), "what was received so far is a playable recording"
    more, _ = _stream(sync_auth, sid, len(live))  # a follower asks from where it is
    spool = sync_node.data_dir / "data" / "log" / "upload" / "sessions"
    assert not list(spool.glob("*.raw.part")) and not list(spool.glob("*.cast")), "nothing recorded on the node's disk"
    shell.type("exit")
    shell.proc.wait(20)
    record = _wait_complete(sync_auth, sid)
    assert record.session_recording == "node-sync" and not record.recording.partial
    whole, headers = _stream(sync_auth, sid)
    assert headers["x-teleport-recording"] == "complete"
    assert whole.startswith(live + more), "the final recording holds what a follower saw"
    dest = tmp_path / "sync.cast"
    dest.write_bytes(whole)
    cat = run(["script", "-qec", f"asciinema cat {dest}", "/dev/null"], stdin=subprocess.DEVNULL)
    assert cat.returncode == 0, cat.stderr
    assert "live-42" in cat.stdout
    deadline = time.monotonic() + 20
    while not (uploads := [e for e in sync_auth.events(type="session.upload") if e.get("sid") == sid]):
        assert time.monotonic() < deadline, "completion is audited as session.upload"
        time.sleep(0.2)
    assert uploads[0]["partial"] is False
    deadline = time.monotonic() + 20  # a completed stream is indexed as an upload is: found by its text
    while not auth_search(sync_auth, "live-42"):
        assert time.monotonic() < deadline, "the completed recording never became searchable"
        time.sleep(0.2)
    assert [s["sid"] for s in auth_search(sync_auth, "live-42")] == [sid]


def auth_search(auth: Auth, text: str) -> list[dict[str, Any]]:
    return auth.run(lambda admin: admin.list_recordings(search=text))  # type: ignore[no-any-return]


def test_chunk_refusals(sync_auth: Auth, sync_node: Node, tmp_path: Path) -> None:
    """Only the host that runs a session sends its chunks, in order, well formed; each refusal is clear."""
    shell = Shell(tmp_path, sync_auth, sync_node, "rick")
    sid = shell.sid()
    _wait_stream(sync_auth, sid, b"SID=")
    # another host (the auth server's own identity) and a user (the admin) are refused, audited
    with pytest.raises(AccessDenied, match="not started by host"):
        sync_auth.run(lambda admin: admin.put_recording_chunk(sid, 0, HEADER))
    denials = [e for e in sync_auth.events(type="auth") if sid in str(e.get("error", ""))]
    assert denials, "a refused chunk is audited"
    with pytest.raises(AccessDenied):
        sync_auth.run(lambda admin: admin.complete_recording(sid, 1))

    def as_owner(index: int, data: bytes) -> Any:
        return _as_host(sync_node, lambda host: host.put_recording_chunk(sid, index, data))

    with pytest.raises(AlreadyExists, match="never replaced"):
        as_owner(0, HEADER)  # chunk 0 is the node's own: other bytes are refused
    with pytest.raises(RecordingRefused, match="body is empty"):
        as_owner(5000, b"")
    with pytest.raises(RecordingRefused, match="must end with a newline"):
        as_owner(5000, b'[1.0, "o", "x"]')
    with pytest.raises(AlreadyExists, match="arrived before chunk 4999"):
        as_owner(5000, b'[1.0, "o", "x"]\n')
    with pytest.raises(RecordingRefused, match="index"):
        as_owner(-1, b'[1.0, "o", "x"]\n')
    from teleport_auth.api import ROUTES
    from teleport_auth.api.streaming import CHUNK_MAX_BODY

    # a bigger body is refused by the listener before it is read (413: teleport_core.net.httplimits)
    assert {op.max_body for op in ROUTES if op.handler == "put_recording_chunk"} == {CHUNK_MAX_BODY}
    with pytest.raises(RecordingRefused, match="chunks"):
        _as_host(sync_node, lambda host: host.complete_recording(sid, 0))
    with pytest.raises(NotFound):
        _as_host(sync_node, lambda host: host.put_recording_chunk("no-such-session", 0, HEADER))
    shell.type("exit")
    shell.proc.wait(20)
    _wait_complete(sync_auth, sid)
    with pytest.raises(AlreadyExists, match="complete"):
        as_owner(1000, b'[1.0, "o", "late"]\n')


@pytest.mark.slow
def test_kill_9_of_the_node_keeps_what_auth_received(sync_auth: Auth, tmp_path: Path) -> None:
    node = Node(sync_auth, tmp_path / "crash", nodename="synccrash").start()
    try:
        shell = Shell(tmp_path, sync_auth, node, "kate")
        sid = shell.sid()
        shell.type("echo before-crash-$((40+2))")
        shell.wait_for(b"before-crash-42")
        _wait_stream(sync_auth, sid, b"before-crash-42")
        node.kill()
        shell.proc.kill()
        shell.proc.wait(10)
        kept, headers = _stream(sync_auth, sid)
        assert b"before-crash-42" in kept and headers["x-teleport-recording"] == "streaming"
        node.start()  # its recovery ends the session and has auth complete what it received
        record = _wait_complete(sync_auth, sid)
        deadline = time.monotonic() + 20  # the restart's session.end reaches auth through its audit spool
        while not record.end_reason:
            assert time.monotonic() < deadline, f"the session never ended in its record: {record}"
            time.sleep(0.2)
            record = _record(sync_auth, sid)
        assert record.recording.partial and record.end_reason == "node_restart"
        final, headers = _stream(sync_auth, sid)
        assert headers["x-teleport-recording"] == "complete" and final == kept
        [entry] = [s for s in sync_auth.run(lambda admin: admin.list_recordings(limit=1000)) if s["sid"] == sid]
        assert entry["recording"] == "uploaded" and entry["recording_partial"] is True
    finally:
        node.stop()


@pytest.mark.slow
def test_auth_completes_the_recording_of_a_host_that_never_comes_back(sync_auth: Auth, tmp_path: Path) -> None:
    import datetime as dt

    from teleport_auth.streamed import LOST_AFTER, complete_lost

    node = Node(sync_auth, tmp_path / "gone", nodename="syncgone").start()
    try:
        shell = Shell(tmp_path, sync_auth, node, "gus")
        sid = shell.sid()
        shell.type("echo last-words-$((3*3))")
        shell.wait_for(b"last-words-9")
        _wait_stream(sync_auth, sid, b"last-words-9")
    finally:
        node.kill()
        shell.proc.kill()
        shell.proc.wait(10)
    service = sync_auth.handle.process.services["auth_service"]
    record = _record(sync_auth, sid)
    later = record.start + LOST_AFTER + dt.timedelta(minutes=1)
    assert sync_auth.handle.call(lambda: complete_lost(service, later)) == [], "its heartbeat says it may be back"
    sync_auth.run(lambda admin: admin.delete_node(record.server_id))  # the heartbeat expired, or an admin removed it
    assert sync_auth.handle.call(lambda: complete_lost(service, record.start)) == [], "too early"
    assert sync_auth.handle.call(lambda: complete_lost(service, later)) == [sid]
    done = _record(sync_auth, sid)
    assert done.recording.state == "uploaded" and done.recording.partial
    assert b"last-words-9" in _stream_all(sync_auth, sid)
    assert sync_auth.handle.call(lambda: complete_lost(service, later)) == [], "once"
    uploads = [e for e in sync_auth.events(type="session.upload") if e.get("sid") == sid]
    assert uploads and uploads[0]["completed_by"] == "auth"


def test_session_recording_takes_node_sync_and_refuses_what_is_not_built() -> None:
    from teleport_core.config.load import parse_config
    from teleport_core.errors import ConfigError

    def settings(mode: str) -> Any:
        return parse_config({"auth_service": {"session_recording": mode}, "proxy_service": {"enabled": False},
                             "ssh_service": {"enabled": False}}, make_plugins())

    settings("node-sync")
    settings("proxy-sync")  # the proxy streams agentless sessions; our nodes stream their own (docs/sessions.md)
    with pytest.raises(ConfigError, match=r'^auth_service.session_recording: expected .*"proxy-sync".*, '
                                          r'got "node-async"$'):
        settings("node-async")


@pytest.mark.slow
def test_auth_unreachable_ends_the_session_and_nothing_goes_unrecorded(sync_auth: Auth, tmp_path: Path) -> None:
    """The attacker cuts the node off from auth to work unrecorded: the output waits in memory, the
    session ends after STALL_LIMIT with a message, and what was shown reaches auth once it is back."""
    import yaml

    from teleport_core.recording.stream import STALL_LIMIT
    from teleport_core.testing.sockets import CuttableProxy

    link = CuttableProxy(int(sync_auth.addr.rsplit(":", 1)[1]))
    node = Node(sync_auth, tmp_path / "cut", nodename="synccut")
    config = yaml.safe_load(node.config.read_text())
    config["teleport"]["auth_server"] = f"127.0.0.1:{link.port}"
    node.config.write_text(yaml.safe_dump(config))
    node.start()
    try:
        shell = Shell(tmp_path, sync_auth, node, "mia")
        sid = shell.sid()
        _wait_stream(sync_auth, sid, b"SID=")
        link.cut()
        started = time.monotonic()
        shell.type("echo after-cut-$((1+1))")
        shell.wait_for(b"after-cut-2")  # buffered in memory, shown
        shell.type("head -c 40000000 /dev/zero | base64 -w 76; echo never-$((2+2))")  # ~54 MB of output
        shell.wait_for(b"Session terminating due to recording error")
        assert time.monotonic() - started >= STALL_LIMIT - 1
        shell.wait_for(b"Closing session...")
        assert shell.proc.wait(30) is not None
        link.restore()
        _wait_complete(sync_auth, sid, timeout=120)
        # the upload and the session.end event both waited for the link: either may reach auth first
        def ended() -> Any:
            found = _record(sync_auth, sid)
            return found if found is not None and found.end_reason else None

        record = wait_for(ended, what="the session.end on the record", timeout=60)
        assert record.recording.partial and record.end_reason == "interrupted"
        final = _stream_all(sync_auth, sid)
        assert b"after-cut-2" in final, "what the user saw reached auth once it was back"
        shown = shell.seen.count(b"A")
        assert 0 < shown < 30_000_000, "the output paused once the buffer was full"
        assert final.count(b"A") >= shown, "every byte the user saw is in the recording"
        assert b"never-4" not in shell.seen
        deadline = time.monotonic() + 30
        while not (ends := [e for e in sync_auth.events(type="session.end") if e.get("sid") == sid]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "could not reach auth" in ends[0]["recording_error"]
    finally:
        node.stop()
        link.close()
