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
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path

from teleport_core.sessions import check_session_id

PART = ".raw.part"
FINAL = ".cast"
BUFFER = 256 * 1024
FLUSH_INTERVAL = 0.5
FRAME = struct.Struct(">dI")


def prepare_spool(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


class Recorder:
    """Spools one session's output (call from one thread at a time)."""

    def __init__(self, spool: Path, session_id: str, *, width: int, height: int, env: Mapping[str, str],
                 title: str = "", command: str = "") -> None:
        self.session_id = check_session_id(session_id)
        self.path = spool / (session_id + PART)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=BUFFER)
        self._start = time.monotonic()
        self._last_flush = self._start
        self.bytes = 0
        self.closed = False
        header: dict[str, object] = {"version": 2, "width": max(width, 1), "height": max(height, 1),
                                     "timestamp": int(time.time()), "env": dict(env)}
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


def finalize(part: Path) -> Path:
    """Convert a spool file to ``<sid>.cast`` (fsynced, renamed atomically) and delete the spool."""
    sid = part.name[: -len(PART)]
    final = part.with_name(sid + FINAL)
    temp = part.with_name(sid + ".cast.tmp")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with open(part, "rb") as src, os.fdopen(fd, "wb", buffering=BUFFER) as out:
        header = src.readline()
        json.loads(header)  # a spool whose header is torn is not a recording
        out.write(header)
        stamp = 0.0
        while True:
            head = src.read(FRAME.size)
            if len(head) < FRAME.size:
                break  # the end, or a frame header a crash cut
            stamp, length = FRAME.unpack(head)
            data = src.read(length)
            if len(data) < length:
                data = b""  # a frame a crash cut: dropped
                break
            text = decoder.decode(data)
            if text:
                out.write((json.dumps([round(stamp, 6), "o", text]) + "\n").encode())
        tail = decoder.decode(b"", final=True)
        if tail:
            out.write((json.dumps([round(stamp, 6), "o", tail]) + "\n").encode())
        out.flush()
        os.fsync(out.fileno())
    os.rename(temp, final)
    part.unlink()
    return final


def recover(spool: Path, live: set[str]) -> list[Path]:
    """Convert crash leftovers (not in ``live``) and list every recording awaiting upload."""
    for stale in spool.glob("*.cast.tmp"):
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
