"""Unit tests of the session sidecars: what a crash leaves is ended with its real end time."""

from __future__ import annotations

import json
import time
from pathlib import Path

from teleport_core.recording.spool import (
    FRAME,
    Frames,
    Recorder,
    finalize,
    recover,
    recover_sessions,
    release_sidecar,
    remove_sidecar,
    session_stop,
    sidecar_path,
    write_sidecar,
)
from teleport_core.state.audit import format_time, parse_time

FIELDS = {"sid": "s", "proto": "ssh", "user": "ann", "login": "root", "server_id": "host-1",
          "server_hostname": "n1", "interactive": True, "initial_command": [""], "session_recording": "node"}


def sidecar(spool: Path, sid: str, started: float) -> Path:
    """A sidecar as a crash leaves it (its process, which held its lock, is gone)."""
    path = write_sidecar(spool, sid, started, {**FIELDS, "sid": sid})
    release_sidecar(path)
    return path


def test_sidecar_is_private_and_atomic(tmp_path: Path) -> None:
    path = sidecar(tmp_path, "s1", time.time())
    assert path == sidecar_path(tmp_path, "s1") and path.name == "s1.session.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["s1.session.json"]  # no temp file left
    doc = json.loads(path.read_text())
    assert doc["fields"]["user"] == "ann" and doc["sid"] == "s1"
    remove_sidecar(tmp_path, "s1")
    remove_sidecar(tmp_path, "s1")  # gone already: fine
    assert not path.exists()


def test_torn_last_frame_counts_the_complete_frames_only(tmp_path: Path) -> None:
    started = time.time() - 60
    sidecar(tmp_path, "torn", started)
    recorder = Recorder(tmp_path, "torn", width=80, height=24, env={}, started=started)
    recorder.write(b"hello ")
    recorder.write(b"marker-1\n")
    recorder.flush()
    part = tmp_path / "torn.raw.part"
    with open(part, "ab") as file:  # a frame a crash cut in the middle
        file.write(FRAME.pack(30.0, 100) + b"torn")
    [ended], unreadable = recover_sessions(tmp_path, live=set())
    assert unreadable == []
    assert ended.session_id == "torn" and ended.recording == tmp_path / "torn.cast"
    fields = ended.fields
    assert fields["end_reason"] == "node_restart" and fields["recorded_bytes"] == len(b"hello marker-1\n")
    assert fields["user"] == "ann" and fields["server_id"] == "host-1" and fields["sid"] == "torn"
    start, stop = parse_time(fields["session_start"]), parse_time(fields["session_stop"])
    assert abs(start.timestamp() - started) < 0.002
    # the real end: the start plus the last complete frame's offset (the recorder was made just now,
    # a minute after the start it was given), not the torn frame's 30 s, and not the recovery time
    assert start <= stop and format_time(ended.stop) == fields["session_stop"]
    assert stop.timestamp() <= part_mtime_bound(tmp_path) and stop.timestamp() < started + 1
    assert not part.exists() and "marker-1" in (tmp_path / "torn.cast").read_text()
    assert (tmp_path / "torn.session.json").exists()  # removed by the caller once the end is stored
    assert recover(tmp_path, live=set()) == [tmp_path / "torn.cast"]


def part_mtime_bound(spool: Path) -> float:
    return max(p.stat().st_mtime for p in spool.iterdir())


def test_no_frames_ends_at_the_start(tmp_path: Path) -> None:
    started = time.time() - 5
    sidecar(tmp_path, "quiet", started)
    Recorder(tmp_path, "quiet", width=80, height=24, env={}, started=started).close()
    [ended], _ = recover_sessions(tmp_path, live=set())
    assert ended.fields["recorded_bytes"] == 0
    assert abs(ended.stop.timestamp() - started) < 0.002
    assert ended.fields["session_stop"] == ended.fields["session_start"]
    assert (tmp_path / "quiet.cast").exists()  # a header-only recording: still uploaded


def test_no_part_file_recording_off(tmp_path: Path) -> None:
    started = time.time() - 5
    release_sidecar(write_sidecar(tmp_path, "off", started, {**FIELDS, "sid": "off", "session_recording": "off"}))
    [ended], _ = recover_sessions(tmp_path, live=set())
    assert ended.recording is None and ended.fields["recorded_bytes"] == 0
    assert ended.fields["session_recording"] == "off"
    assert abs(ended.stop.timestamp() - started) < 0.002


def test_torn_header_means_nothing_recorded(tmp_path: Path) -> None:
    started = time.time() - 5
    sidecar(tmp_path, "nohead", started)
    (tmp_path / "nohead.raw.part").write_bytes(b'{"version": 2, "wid')
    [ended], _ = recover_sessions(tmp_path, live=set())
    assert ended.recording is None and ended.fields["recorded_bytes"] == 0
    assert not (tmp_path / "nohead.raw.part").exists()


def test_already_finalized_recording_gives_its_end(tmp_path: Path) -> None:
    """A crash after the recording was finalized, before the sidecar was removed."""
    started = time.time() - 5
    sidecar(tmp_path, "done", started)
    recorder = Recorder(tmp_path, "done", width=80, height=24, env={}, started=started)
    recorder.write("héllo".encode())
    finalize(recorder.close())
    [ended], _ = recover_sessions(tmp_path, live=set())
    assert ended.recording == tmp_path / "done.cast" and ended.fields["recorded_bytes"] == len("héllo".encode())


def test_live_sessions_and_unreadable_sidecars(tmp_path: Path) -> None:
    sidecar(tmp_path, "live", time.time())
    (tmp_path / "bad.session.json").write_text("{not json")
    (tmp_path / ".x.session.json.0123.tmp").write_text("{")  # a crash mid-write
    ended, unreadable = recover_sessions(tmp_path, live={"live"})
    assert ended == [] and unreadable == [tmp_path / "bad.session.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.session.json"]


def test_stop_never_after_the_mtime_nor_before_the_start() -> None:
    frames = Frames(timestamp=1000.0, recorded_bytes=5, last_offset=50.0)
    assert session_stop(1000.4, frames, written=None) == 1050.4  # the precise start, same second
    assert session_stop(1000.4, frames, written=1020.0) == 1020.0
    assert session_stop(1003.0, Frames(1000.0, 5, 1.0), written=None) == 1003.0
    assert session_stop(1000.0, Frames(), written=900.0) == 1000.0


def test_a_session_still_running_elsewhere_is_not_recovered(tmp_path: Path) -> None:
    """Graceful reload: the old process still runs the session (it holds the sidecar's lock); the
    new process's recovery leaves it, and its recording in progress, alone."""
    import subprocess
    import sys

    from teleport_core.recording.spool import PART, recover

    path = sidecar(tmp_path, "running", time.time() - 5)
    part = tmp_path / ("running" + PART)
    part.write_bytes(b'{"version": 2, "width": 80, "height": 24}\n')
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert recover_sessions(tmp_path, live=set()) == ([], [])
        assert recover(tmp_path, set()) == [] and part.exists() and path.exists()
    finally:
        holder.communicate(b"", timeout=10)
    [ended], _ = recover_sessions(tmp_path, live=set())  # its process is gone: a crash leftover now
    assert ended.session_id == "running"


def test_the_spool_rescan_queues_leftover_recordings_once(tmp_path: Path) -> None:
    """A finished recording the other process of a graceful reload left in the spool is queued by
    the periodic rescan, once however many scans pass; refused ones and those already being sent
    or waiting after a 404 are not."""
    import asyncio

    from teleport_node.service import NodeService

    for name in ("left.cast", "refused.cast.refused", "sending.cast", "waiting.cast", "live.raw.part"):
        (tmp_path / name).write_bytes(b"{}\n")
    node = object.__new__(NodeService)  # only the upload bookkeeping the rescan reads
    node.spool = tmp_path
    node._uploads = asyncio.Queue()
    node._queued = set()
    node._uploading = "sending"
    node._waiting = {"waiting"}

    async def scan() -> list[tuple[str, Path]]:
        task = asyncio.create_task(node._rescan_spool(every=0.01))
        await asyncio.sleep(0.2)  # many scans
        task.cancel()
        return [node._uploads.get_nowait() for _ in range(node._uploads.qsize())]

    assert asyncio.run(scan()) == [("left", tmp_path / "left.cast")]
