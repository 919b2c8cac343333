"""The ``stdout://`` audit sink: each event as one JSON line on standard output.

For log collectors that read a process's output (containers, systemd). Lines are encoded as
in the file log and flushed before ``emit`` returns (and fsynced when stdout is a regular
file). A uid emitted again within the last :data:`RECENT_UIDS` events is not written twice;
older redeliveries cannot be detected, a stream cannot be read back. It cannot be searched:
list a ``file://`` URI first in ``teleport.storage.audit_events_uri``, as searches go to the
first sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from teleport_audit_json.lines import encode
from teleport_core.errors import ConfigError
from teleport_core.state.audit import AuditError, AuditEvent, AuditPage, AuditQuery, AuditSink

CONFIG_KEY = "teleport.storage.audit_events_uri"
RECENT_UIDS = 65_536
NOT_SEARCHABLE = (
    "the stdout:// audit sink cannot be searched: add a file:// URI to "
    "teleport.storage.audit_events_uri (searches use the first searchable sink)"
)


def check_uri(uri: str) -> None:
    """The only valid URI is ``stdout://``; ``ConfigError`` for anything else."""
    parts = urlsplit(uri)
    if uri != "stdout://" or parts.scheme != "stdout":
        raise ConfigError(CONFIG_KEY, f"expected stdout:// (nothing after the slashes), got {uri!r}")


async def open_sink(uri: str, data_dir: Path) -> StdoutAuditSink:
    """Factory of the ``stdout`` scheme."""
    check_uri(uri)
    return StdoutAuditSink()


def _sync(stream: BinaryIO) -> None:
    """fsync ``stream`` when it is a regular file (a pipe or terminal has nothing to sync)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fsync(fd)


class StdoutAuditSink(AuditSink):
    """Writes JSON lines to ``stream`` (default: ``sys.stdout``'s binary buffer). Write-only."""

    searchable = False

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    def _output(self) -> BinaryIO:
        if self._stream is not None:
            return self._stream
        buffer: BinaryIO = sys.stdout.buffer
        return buffer

    async def emit(self, event: AuditEvent) -> None:
        record = encode(event)
        await asyncio.to_thread(self._write, record.uid, record.line)

    def _write(self, uid: str, line: bytes) -> None:
        with self._lock:
            if self._closed:
                raise AuditError("the stdout audit sink is closed")
            if uid in self._recent:
                self._recent.move_to_end(uid)
                return
            stream = self._output()
            try:
                stream.write(line)
                stream.flush()
                _sync(stream)
            except (OSError, ValueError) as exc:
                raise AuditError(f"cannot write audit event to stdout: {exc}") from None
            self._recent[uid] = None
            if len(self._recent) > RECENT_UIDS:
                self._recent.popitem(last=False)

    async def search(self, query: AuditQuery) -> AuditPage:
        raise AuditError(NOT_SEARCHABLE)

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                self._recent.clear()
                with contextlib.suppress(OSError, ValueError):  # stdout closed: nothing left to flush
                    self._output().flush()

        await asyncio.to_thread(close)
