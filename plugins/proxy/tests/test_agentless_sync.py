"""``session_recording: proxy-sync``: the proxy streams an agentless node's session to auth while
it runs (nothing on the proxy's disk but the sidecar); our own nodes stream theirs as in
``node-sync``. One cluster and the real sshd (test_agentless_e2e.agentless_cluster)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, background_tsh
from test_agentless_e2e import (
    NODE_UUID,
    NODENAME,
    _alice_key,
    _read_until,
    agentless_cluster,
    events,
    load_tls_from_profile,
    uploaded,
)
from test_play_follow import _read_until as follow_until
from test_tsh_play_forward import on_a_terminal

from teleport_core.api.client import AuthClient
from teleport_core.errors import AccessDenied
from teleport_core.state.nodes import NodeInfo
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with agentless_cluster(tmp_path_factory.mktemp("agentless-sync"), "proxy-sync") as e:
        yield e


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return env.logged_in(tmp_path_factory, "alice")


def admin(env: Env, call: Any) -> Any:
    async def body() -> Any:
        async with env.admin() as client:
            return await call(client)

    return asyncio.run(body())


def as_alice(env: Env, home: Path, call: Any) -> Any:
    async def body() -> Any:
        async with AuthClient(env.auth_addr, [load_tls_from_profile(home)]) as client:
            return await call(client)

    return asyncio.run(body())


def test_an_agentless_session_streams_to_auth_while_it_runs(env: Env, alice: Path, tmp_path: Path) -> None:
    forwarder = env.proxy.agentless
    node = NodeInfo(NODE_UUID, NODENAME, f"127.0.0.1:{env.sshd_port}", {"env": "plain"},  # type: ignore[attr-defined]
                    sub_kind="openssh")
    transport = paramiko.Transport(forwarder.dial(node, "127.0.0.1:40010"))
    try:
        transport.start_client(timeout=30)
        transport.auth_publickey(LOGIN, _alice_key(alice))
        shell = transport.open_session(timeout=30)
        shell.get_pty("xterm", 80, 24)
        shell.invoke_shell()
        shell.sendall(b"echo live-$((6*7))\n")
        # 90 s, not the usual 30: twice on 2026-12-05, under a parallel run's load, this first output
        # took longer than 30 s (the shell's prompt and echo; not reproduced alone, beside 6 CPU hogs,
        # 60-way root-shell starts, the fuzzers or the reload drill). A proxy-sync session's output
        # waits while its recording cannot reach auth: a delivery retried with backoff would do it.
        assert b"live-42" in _read_until(shell, b"live-42", timeout=90)
        [session] = wait_for(lambda: list(forwarder.sessions), "the forwarded session", timeout=30)
        sid = session.id

        def streamed() -> tuple[bytes, dict[str, str]] | None:
            data, headers = admin(env, lambda client: client.read_recording_stream(sid, 0))
            return (data, headers) if b"live-42" in data else None

        data, headers = wait_for(streamed, "the output at auth while the session runs", timeout=30)
        assert headers["x-teleport-recording"] == "streaming" and headers["x-teleport-session"] == "running"
        assert data.startswith(b'{"version": 2')
        assert [p.name for p in forwarder.spool.iterdir() if sid in p.name and ".cast" in p.name] == []
        # the session's own user tries to write its recording (auth, proxy and our node share one
        # host UUID in this cluster; another host is refused in test_sync_recording): refused, audited
        with pytest.raises(AccessDenied, match="no role allows create on session"):
            as_alice(env, alice, lambda client: client.put_recording_chunk(sid, 1, b'[1.0, "o", "forged"]\n'))
        wait_for(lambda: [e for e in events(env, type="auth") if e.get("user") == "alice"
                          and "create on session" in str(e.get("error", ""))], "the refused chunk audited", timeout=30)
        with background_tsh(alice, "play", "--follow", sid) as follower:  # follows the agentless session live
            assert "live-42" in follow_until(follower, "live-42")
            shell.sendall(b"echo after-$((7*7))\n")
            assert "after-49" in follow_until(follower, "after-49")
            shell.sendall(b"exit\n")
            assert shell.recv_exit_status() == 0
            follower.communicate(timeout=60)
            assert follower.returncode == 0, "the follower ends when the session ends"
    finally:
        transport.close()
    start = wait_for(lambda: [e for e in events(env, type="session.start") if e.get("sid") == sid],
                     "the session.start", timeout=30)[0]
    assert start["session_recording"] == "proxy-sync" and start["forwarded_by"] == env.proxy.identity.host_uuid
    record = uploaded(env, alice, sid)
    assert record["end_reason"] == "exit" and record["server_hostname"] == NODENAME
    cast = subprocess.run([sys.executable, "-m", "teleport_core.cli.tsh", "play", "--format=cast", sid],
                          capture_output=True, timeout=60, check=False, env={**os.environ, "TELEPORT_HOME": str(alice)})
    assert cast.returncode == 0, cast.stderr
    path = tmp_path / "session.cast"
    path.write_bytes(cast.stdout)
    shown = on_a_terminal(["asciinema", "cat", str(path)], stdout_too=False)
    assert b"live-42" in shown and b"after-49" in shown
    uploads = wait_for(lambda: [e for e in events(env, type="session.upload") if e.get("sid") == sid],
                       "the session.upload", timeout=30)
    assert uploads[0]["completed_by"] == "host" and not uploads[0]["partial"]
    assert [p.name for p in forwarder.spool.iterdir() if sid in p.name] == []  # the sidecar went too


def test_in_proxy_sync_mode_our_own_node_streams_its_sessions(env: Env, alice: Path) -> None:
    ran = env.tsh(alice, "ssh", f"{LOGIN}@agentless-proxy", "echo", "own-node-$((6*7))")
    assert ran.returncode == 0 and ran.stdout == "own-node-42\n", ran.stderr
    start = wait_for(lambda: [e for e in events(env, type="session.start")
                              if e.get("server_hostname") == "agentless-proxy"], "our node's session.start",
                     timeout=30)[-1]
    assert start["session_recording"] == "proxy-sync" and "forwarded_by" not in start
    uploaded(env, alice, start["sid"])
    uploads = wait_for(lambda: [e for e in events(env, type="session.upload") if e.get("sid") == start["sid"]],
                       "the session.upload", timeout=30)
    assert "chunks" in uploads[0]  # streamed and completed, not uploaded from a spool file


def test_auth_completes_an_agentless_session_whose_proxy_is_lost(env: Env, alice: Path) -> None:
    """An agentless node never heartbeats: auth's sweep looks at the proxy that owns the session.
    Once the recording is complete, the proxy's next chunk is refused and the session ends with
    Teleport's strict-mode message."""
    import datetime as dt

    from teleport_auth.presence import PROXIES_PREFIX
    from teleport_auth.streamed import LOST_AFTER, complete_lost

    service = env.auth_handle.process.services["auth_service"]
    forwarder = env.proxy.agentless
    node = NodeInfo(NODE_UUID, NODENAME, f"127.0.0.1:{env.sshd_port}", {"env": "plain"},  # type: ignore[attr-defined]
                    sub_kind="openssh")
    transport = paramiko.Transport(forwarder.dial(node, "127.0.0.1:40011"))
    try:
        transport.start_client(timeout=30)
        transport.auth_publickey(LOGIN, _alice_key(alice))
        shell = transport.open_session(timeout=30)
        shell.get_pty("xterm", 80, 24)
        shell.invoke_shell()
        shell.sendall(b"echo lost-$((6*7))\n")
        assert b"lost-42" in _read_until(shell, b"lost-42")
        [session] = wait_for(lambda: list(forwarder.sessions), "the forwarded session", timeout=30)
        sid = session.id
        wait_for(lambda: b"lost-42" in admin(env, lambda client: client.read_recording_stream(sid, 0))[0],
                 "the output at auth", timeout=30)
        record = env.auth_handle.call(lambda: _record(service, sid))
        later = record.start + LOST_AFTER + dt.timedelta(minutes=1)
        assert env.auth_handle.call(lambda: complete_lost(service, later)) == [], "its proxy heartbeats"
        env.auth_handle.call(lambda: service.backend.delete(PROXIES_PREFIX + record.forwarded_by.encode()))
        assert env.auth_handle.call(lambda: complete_lost(service, later)) == [sid]
        shell.sendall(b"echo too-late-$((7*7))\n")
        ended = _read_until(shell, b"Closing session")
        assert b"Session terminating due to recording error" in ended and b"takes no more chunks" in ended
        assert shell.recv_exit_status() in (-1, 255), "the session was ended"
    finally:
        transport.close()
    done = env.auth_handle.call(lambda: _record(service, sid))
    assert done.recording.state == "uploaded" and done.recording.partial
    end = wait_for(lambda: [e for e in events(env, type="session.end") if e.get("sid") == sid],
                   "the session.end", timeout=30)[0]
    assert end["end_reason"] == "interrupted" and "complete" in end["recording_error"]


async def _record(service: Any, sid: str) -> Any:
    from teleport_auth.session_records import records_of

    return await records_of(service).get(sid)


def test_a_proxy_crash_leaves_what_auth_received_completed_by_the_restart(env: Env, alice: Path,
                                                                          tmp_path: Path) -> None:
    """What a crashed proxy leaves of a streamed session (its sidecar; chunks at auth): the next
    start ends the session (``node_restart``) and has auth complete the recording (``partial``)."""
    import time
    import uuid

    from teleport_proxy.forwarder import Forwarder

    from teleport_core.errors import NotFound
    from teleport_core.recording.spool import prepare_spool, release_sidecar, write_sidecar
    from teleport_core.recording.stream import event_line, header_line
    from teleport_core.state.audit import new_event

    proxy = env.proxy
    spool = prepare_spool(tmp_path / "proxy-sessions")
    sid = str(uuid.uuid4())
    started = time.time() - 5
    fields = {"cluster_name": CLUSTER, "server_id": NODE_UUID, "server_hostname": NODENAME, "user": "alice",
              "login": LOGIN, "sid": sid, "proto": "ssh", "interactive": True, "session_recording": "proxy-sync"}
    # what the run that crashed did: the session.start, chunk 0, the sidecar (its lock dropped)
    asyncio.run_coroutine_threadsafe(proxy.audit.emit(new_event("session.start", "ok", **fields)),
                                     proxy.loop).result(30)
    chunk = header_line(width=80, height=24, started=started, env={"TERM": "xterm"}) + event_line(
        0.5, "typed before the crash\r\n")

    def sent() -> bool:
        try:
            asyncio.run_coroutine_threadsafe(proxy.auth.put_recording_chunk(sid, 0, chunk), proxy.loop).result(30)
        except NotFound:  # the session.start is on its way
            return False
        return True

    wait_for(sent, "chunk 0 taken", timeout=30)
    release_sidecar(write_sidecar(spool, sid, started, fields))
    forwarder = Forwarder(proxy, spool)
    tasks = asyncio.run_coroutine_threadsafe(forwarder.start(), proxy.loop).result(60)
    try:
        record = uploaded(env, alice, sid)
        assert record["end_reason"] == "node_restart" and record["recording_partial"] is True
        played = env.tsh(alice, "play", sid)
        assert played.returncode == 0 and "typed before the crash" in played.stdout, played.stderr
        assert not list(spool.glob(sid + "*"))  # the sidecar went; there never was a recording file
    finally:
        forwarder.stop()
        for task in tasks:
            proxy.loop.call_soon_threadsafe(task.cancel)


def test_an_agentless_session_pauses_while_auth_does_not_keep_up(env: Env, alice: Path) -> None:
    """The proxy's link to auth is cut: the session's output stops once 16 MiB wait unsent (sshd
    and the process block), resumes when auth is back, and every byte shown is recorded."""
    from teleport_core.recording.stream import BUFFER_LIMIT, Streamer
    from teleport_core.testing.sockets import CuttableProxy

    forwarder = env.proxy.agentless
    link = CuttableProxy(int(env.auth_addr.rsplit(":", 1)[1]))
    real = forwarder.streamer
    auth = AuthClient(f"127.0.0.1:{link.port}", timeout=5, credentials=env.proxy.auth.credentials)
    forwarder.streamer = Streamer(env.proxy.loop, auth, env.proxy.log)
    node = NodeInfo(NODE_UUID, NODENAME, f"127.0.0.1:{env.sshd_port}", {"env": "plain"},  # type: ignore[attr-defined]
                    sub_kind="openssh")
    transport = paramiko.Transport(forwarder.dial(node, "127.0.0.1:40012"))
    shown = b""
    try:
        transport.start_client(timeout=30)
        transport.auth_publickey(LOGIN, _alice_key(alice))
        link.cut()
        job = transport.open_session(timeout=30)
        job.exec_command("head -c 18000000 /dev/zero | base64 -w 76; echo done-$((2+2))")  # ~24 MB
        [session] = wait_for(lambda: list(forwarder.sessions), "the forwarded session", timeout=30)
        sid = session.id
        job.settimeout(3)
        try:
            while data := job.recv(1 << 20):
                shown += data
        except TimeoutError:
            pass  # no output for 3 s: paused
        assert 0 < len(shown) <= BUFFER_LIMIT + (4 << 20) and b"done-4" not in shown, len(shown)
        link.restore()
        job.settimeout(60)
        while data := job.recv(1 << 20):
            shown += data
        assert shown.endswith(b"done-4\n") and job.recv_exit_status() == 0
        uploaded(env, alice, sid)  # its last chunks and completion go through the link
    finally:
        transport.close()
        forwarder.streamer = real
        link.close()
        asyncio.run_coroutine_threadsafe(auth.close(), env.proxy.loop).result(30)

    async def recording() -> bytes:
        out = b""
        async with env.admin() as client:
            while data := (await client.read_recording_stream(sid, len(out)))[0]:
                out += data
        return out

    final = asyncio.run(recording())
    assert final.count(b"A") == shown.count(b"A") and b"done-4" in final
