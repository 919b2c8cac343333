"""A durable outbox for audit events emitted away from the auth server (nodes, proxies).

``await spool.emit(event)`` returns once the event is on the emitter's disk (appended and
fsynced, with concurrent emits sharing one fsync). A sender task delivers events in order to
the auth server and records progress; while auth is unreachable events accumulate on disk and
:meth:`AuditSpool.backlog` says how many. Delivery is at least once (a crash between sending
and recording progress resends), and the audit log stores each ``uid`` once, so every event
appears in the log exactly once. An event the auth server refuses (403: a host may emit only
its own event types, see ``teleport_auth.events_policy``) is logged once and dropped, so it
never blocks the events behind it; any other failure is retried with backoff.

Layout in ``directory`` (0700): ``events.jsonl`` (one event per line, 0600) and ``sent``
(how many bytes of it were delivered, replaced atomically).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from teleport_core.audit import AuditEvent
from teleport_core.errors import AccessDenied
from teleport_core.files import write_private

Send = Callable[[dict[str, Any]], Awaitable[None]]
COMPACT_AT = 4 << 20  # once everything is delivered, start a new file past this size


class AuditSpool:
    def __init__(self, directory: Path, send: Send, log: Any, *, retry: float = 1.0, max_retry: float = 30.0) -> None:
        self.directory = directory
        self.path = directory / "events.jsonl"
        self.sent_path = directory / "sent"
        self.send = send
        self.log = log
        self.retry, self.max_retry = retry, max_retry
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.refused = 0  # events the auth server refused (403): dropped, each logged once
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        if not self.path.exists():
            write_private(self.path, b"")

    # -- emitting ------------------------------------------------------------------------------------

    async def emit(self, event: AuditEvent) -> None:
        """Append ``event``; returns once it is durable on this host."""
        line = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        await future

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._lock:
                    await asyncio.to_thread(self._append, b"".join(line for line, _ in batch))
            except OSError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            self._wake.set()

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- delivering ----------------------------------------------------------------------------------

    def _sent(self) -> int:
        try:
            return int(self.sent_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def backlog(self) -> int:
        """Events on disk not yet delivered."""
        sent = self._sent()
        with open(self.path, "rb") as handle:
            handle.seek(min(sent, self.path.stat().st_size))
            return sum(1 for line in handle if line.endswith(b"\n"))

    async def run(self) -> None:
        """Deliver events until cancelled; retries with backoff while the auth server is away."""
        delay = self.retry
        while True:
            try:
                delivered = await self.deliver()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("audit events not delivered, will retry", error=str(exc),
                                 backlog=await asyncio.to_thread(self.backlog), retry_in=f"{delay:.1f}s")
                await asyncio.sleep(delay)
                delay = min(self.max_retry, delay * 2)
                continue
            delay = self.retry
            if not delivered:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5.0)

    async def deliver(self) -> int:
        """Send every undelivered complete line, recording progress after each; how many were sent."""
        sent = self._sent()
        size = self.path.stat().st_size
        if sent > size:  # the file was restarted after a compaction whose progress mark was not written
            sent = 0
        count = 0
        if sent < size:
            with open(self.path, "rb") as handle:
                handle.seek(sent)
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # a torn last line of a crash: never acknowledged, skip it for good below
                    try:
                        event = json.loads(line)
                    except ValueError:
                        self.log.warning("skipping a corrupt line in the audit spool", offset=sent)
                    else:
                        try:
                            await self.send(event)
                        except AccessDenied as exc:  # refused for good (auth audited it): never retried
                            self.refused += 1
                            self.log.error("audit event refused by the auth server, dropped", reason=str(exc),
                                           event_type=str(event.get("event", "")), uid=str(event.get("uid", "")))
                        else:
                            count += 1
                    sent += len(line)
                    write_private(self.sent_path, f"{sent}\n")
        await self._compact(sent)
        return count

    async def _compact(self, sent: int) -> None:
        """Start the file anew once everything in it was delivered and it grew large."""
        async with self._lock:
            size = self.path.stat().st_size
            if sent < size or size < COMPACT_AT:
                return
            write_private(self.path, b"")
            write_private(self.sent_path, "0\n")
