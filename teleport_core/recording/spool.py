"""Session recordings as asciicast v2, spooled locally while the session runs.

While a session runs its output goes to ``<spool>/<sid>.raw.part``: the asciicast header as
one JSON line, then frames of ``(seconds: float64, length: uint32, bytes)``. Writing a frame
is a buffered copy (256 KiB buffer, flushed every :data:`FLUSH_INTERVAL` seconds so a crash
loses at most that much), so recording costs the session's data path almost nothing and
memory stays bounded whatever the output. JSON encoding happens when the session has ended:
:func:`finalize` converts the spool to ``<sid>.cast`` (asciicast v2, one ``[t, "o", text]``
event per frame, UTF-8 decoded across frame boundaries) off the session's thread, and the
service uploads it, then deletes it. :func:`recover` converts what a crash left (a torn last
frame is dropped). Files are 0600 in a 0700 directory.

Every live session also has a sidecar ``<sid>.session.json`` (written atomically at its start,
before ``session.start`` is emitted; removed once its ``session.end`` is on disk and its
recording handed to the uploader): what a ``session.end`` needs. At start the node ends every
session a crash left a sidecar for (:func:`recover_sessions`): ``end_reason`` ``node_restart``,
stopped when its recording's last complete frame was written.

The process that runs a session holds an ``flock`` on its sidecar until the sidecar is
removed. During a graceful reload the old process's sessions go on while the new process
starts: its recovery skips every sidecar that is locked (:func:`sidecar_live`), and with it
that session's recording in progress. A crash drops the lock with the process. An upload
holds an ``flock`` on its ``.cast`` (:func:`claim`), so the two processes never send one twice.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import fcntl
import json
import os
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from teleport_core.files import write_private
from teleport_core.state.audit import format_time, parse_time
from teleport_core.state.sessions import check_session_id

PART = ".raw.part"
FINAL = ".cast"
BUFFER = 256 * 1024
FLUSH_INTERVAL = 0.5
FRAME = struct.Struct(">dI")
SIDECAR = ".session.json"
SIDECAR_VERSION = 1
_HELD: dict[Path, int] = {}  # sidecar -> the descriptor holding its lock (this process's live sessions)
_HELD_LOCK = threading.Lock()


def prepare_spool(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


class Recorder:
    """Spools one session's output (call from one thread at a time)."""

    def __init__(self, spool: Path, session_id: str, *, width: int, height: int, env: Mapping[str, str],
                 title: str = "", command: str = "", started: float | None = None) -> None:
        """``started``: the session's start (Unix time; default now), the header's ``timestamp``."""
        self.session_id = check_session_id(session_id)
        self.path = spool / (session_id + PART)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=BUFFER)
        self._start = time.monotonic()
        self._last_flush = self._start
        self.bytes = 0
        self.closed = False
        header: dict[str, object] = {"version": 2, "width": max(width, 1), "height": max(height, 1),
                                     "timestamp": int(time.time() if started is None else started),
                                     "env": dict(env)}
        if title:
            header["title"] = title
        if command:
            header["command"] = command
        self._file.write((json.dumps(header) + "\n").encode())

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.bytes += len(data)
        now = time.monotonic()
        self._file.write(FRAME.pack(now - self._start, len(data)))
        self._file.write(data)
        if now - self._last_flush >= FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if not self.closed:
            self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> Path:
        """Stop writing; returns the spool file for :func:`finalize`."""
        if not self.closed:
            self.closed = True
            self._file.close()
        return self.path


@attrs.frozen
class Frames:
    """What a recording holds: its header's ``timestamp`` (Unix seconds), the output bytes of its
    complete frames, and the offset (seconds) of the last one (None: no frame)."""

    timestamp: float | None = None
    recorded_bytes: int = 0
    last_offset: float | None = None


def finalize(part: Path) -> Path:
    """Convert a spool file to ``<sid>.cast`` (fsynced, renamed atomically) and delete the spool."""
    return convert(part)[0]


def convert(part: Path) -> tuple[Path, Frames]:
    """:func:`finalize`, also returning what the recording held (a torn last frame is dropped)."""
    sid = part.name[: -len(PART)]
    final = part.with_name(sid + FINAL)
    temp = part.with_name(sid + ".cast.tmp")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(part, "rb") as src, os.fdopen(fd, "wb", buffering=BUFFER) as out:
        header = src.readline()
        timestamp = _header_timestamp(json.loads(header))  # a spool whose header is torn is not a recording
        out.write(header)
        stamp, total, last = 0.0, 0, None
        while True:
            head = src.read(FRAME.size)
            if len(head) < FRAME.size:
                break  # the end, or a frame header a crash cut
            stamp, length = FRAME.unpack(head)
            data = src.read(length)
            if len(data) < length:
                break  # a frame a crash cut: dropped
            total, last = total + length, stamp
            text = decoder.decode(data)
            if text:
                out.write((json.dumps([round(stamp, 6), "o", text]) + "\n").encode())
        tail = decoder.decode(b"", final=True)
        if tail:
            out.write((json.dumps([round(last or 0.0, 6), "o", tail]) + "\n").encode())
        out.flush()
        os.fsync(out.fileno())
    os.rename(temp, final)
    part.unlink()
    return final, Frames(timestamp, total, last)


def _header_timestamp(header: Any) -> float | None:
    if not isinstance(header, dict):
        raise ValueError("the recording's header is not a JSON object")
    value = header.get("timestamp")
    return float(value) if isinstance(value, int | float) else None


def cast_frames(path: Path) -> Frames:
    """What a finished asciicast file holds (bytes counted as the UTF-8 of its output events)."""
    with open(path, "rb") as src:
        timestamp = _header_timestamp(json.loads(src.readline()))
        total, last = 0, None
        for line in src:
            try:
                stamp, kind, text = json.loads(line)
            except ValueError:
                break
            if kind == "o":
                total, last = total + len(str(text).encode()), float(stamp)
    return Frames(timestamp, total, last)


# -- session sidecars ------------------------------------------------------------------------------


def sidecar_path(spool: Path, session_id: str) -> Path:
    return spool / (check_session_id(session_id) + SIDECAR)


def write_sidecar(spool: Path, session_id: str, started: float, fields: Mapping[str, Any]) -> Path:
    """Write ``<sid>.session.json`` (0600, atomically): the session's start (Unix time) and the
    fields its ``session.end`` carries (what its ``session.start`` said about it)."""
    path = sidecar_path(spool, session_id)
    doc = {"version": SIDECAR_VERSION, "sid": session_id, "started": started,
           "session_start": format_time(dt.datetime.fromtimestamp(started, dt.UTC)), "fields": dict(fields)}
    write_private(path, json.dumps(doc, separators=(",", ":")))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_EX)  # ours alone: held until remove_sidecar (or this process's end)
    with _HELD_LOCK:
        previous = _HELD.pop(path, None)
        _HELD[path] = fd
    if previous is not None:
        os.close(previous)
    return path


def remove_sidecar(spool: Path, session_id: str) -> None:
    path = sidecar_path(spool, session_id)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with _HELD_LOCK:
        fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def release_sidecar(path: Path) -> None:
    """Drop this process's lock on a sidecar and keep the file: what a crash leaves (tests)."""
    with _HELD_LOCK:
        fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def sidecar_live(path: Path) -> bool:
    """Whether a running process holds this sidecar's session (its lock is taken)."""
    with _HELD_LOCK:
        if path in _HELD:
            return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock we just took
    return False


def live_sessions(spool: Path) -> set[str]:
    """The sessions a running process (this one or another: a reload) holds the sidecar of."""
    return {p.name[: -len(SIDECAR)] for p in spool.glob("*" + SIDECAR) if sidecar_live(p)}


def claim(path: Path) -> int | None:
    """Lock a finished recording for upload: its descriptor (close it when done), or None when
    another process is uploading it or it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not path.exists():  # uploaded and deleted by the other process between open and lock
        os.close(fd)
        return None
    return fd


@attrs.frozen
class EndedSession:
    """A session a crash cut off, recovered from its sidecar: the ``session.end`` it gets."""

    session_id: str
    fields: dict[str, Any]  # the session.end fields, end_reason "node_restart"
    stop: dt.datetime  # the recording's real end: the event's time
    recording: Path | None  # its finished recording awaiting upload (None: nothing was recorded)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict) or not isinstance(doc.get("fields"), dict):
            return None
        check_session_id(str(doc["sid"]))
        parse_time(str(doc["session_start"]))
        float(doc["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc


def session_stop(started: float, frames: Frames, written: float | None) -> float:
    """When a recovered session really ended (Unix time): the header's timestamp (the precise
    start when it is the same second) plus the last frame's offset; the start if no frame;
    never later than ``written`` (the spool file's mtime), never before the start."""
    if frames.last_offset is None:
        return started
    base = frames.timestamp if frames.timestamp is not None else started
    if int(base) == int(started):
        base = started
    stop = base + frames.last_offset
    if written is not None:
        stop = min(stop, written)
    return max(stop, started)


def recover_sessions(spool: Path, live: set[str]) -> tuple[list[EndedSession], list[Path]]:
    """End every session whose sidecar a crash left (not in ``live``): finalize its spool file,
    work out its real end. Returns the ended sessions (oldest first; their sidecars are still
    there: remove each once its ``session.end`` is stored) and the sidecars that could not be
    read (removed: nothing can be built from them)."""
    for stale in spool.glob(".*" + SIDECAR + ".*.tmp"):  # write_private's temp file of a crash
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    ended: list[EndedSession] = []
    unreadable: list[Path] = []
    for path in sorted(spool.glob("*" + SIDECAR)):
        sid = path.name[: -len(SIDECAR)]
        if sid in live or sidecar_live(path):  # still running (in the old process of a reload)
            continue
        doc = _read_sidecar(path)
        if doc is None or doc["sid"] != sid:
            unreadable.append(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        started = float(doc["started"])
        frames, written, recording = Frames(), None, None
        part = spool / (sid + PART)
        cast = spool / (sid + FINAL)
        if part.exists():
            written = part.stat().st_mtime
            try:
                recording, frames = convert(part)
            except ValueError:  # not even a header: nothing was recorded
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
            except OSError:  # left for the next start
                pass
        else:
            # finalized before the crash (its end may have been emitted too: auth drops a duplicate)
            for done in (cast, cast.with_name(cast.name + ".refused")):
                if done.exists():
                    written = done.stat().st_mtime
                    with contextlib.suppress(OSError, ValueError):
                        frames = cast_frames(done)
                    recording = done if done == cast else None
                    break
        stop = session_stop(started, frames, written)
        when = dt.datetime.fromtimestamp(stop, dt.UTC)
        fields = {**doc["fields"], "sid": sid, "end_reason": "node_restart",
                  "session_start": str(doc["session_start"]), "session_stop": format_time(when),
                  "recorded_bytes": frames.recorded_bytes}
        ended.append(EndedSession(sid, fields, when, recording))
    ended.sort(key=lambda e: e.stop)
    return ended, unreadable


def recover(spool: Path, live: set[str]) -> list[Path]:
    """Convert crash leftovers (not in ``live``) and list every recording awaiting upload."""
    live = live | live_sessions(spool)  # the old process of a reload records these
    for stale in spool.glob("*.cast.tmp"):
        if stale.name[: -len(".cast.tmp")] not in live:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    for entry in sorted(spool.glob("*" + PART)):
        sid = entry.name[: -len(PART)]
        if sid in live:
            continue
        try:
            finalize(entry)
        except ValueError:  # not even a header: nothing was recorded
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return sorted(spool.glob("*" + FINAL))
