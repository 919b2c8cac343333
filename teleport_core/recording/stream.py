"""Streaming (sync) session recording: a live session's recording sent to auth in chunks.

With ``session_recording: node-sync`` (or ``proxy-sync``) the host that runs a session keeps no
recording on its disk: :class:`StreamRecorder` takes the session's output in memory and sends
it to auth while the session runs, as numbered chunks of the final asciicast v2 file (chunk 0
starts with the header; every chunk ends at the end of an event line, so the chunks received so
far are always a playable recording). The bytes are the same as the spool recorder's
(:mod:`teleport_core.recording.spool`) for the same output at the same times: one
``[t, "o", text]`` event per write, UTF-8 decoded across writes.

* **The data path never blocks.** :meth:`StreamRecorder.write` (the session's thread: the node's
  pump) appends to an in-memory buffer under a lock; the sending runs on an asyncio loop
  (:meth:`StreamRecorder.run`), which encodes in a worker thread and sends one chunk at a time.
* **Chunks** go out every :data:`FLUSH_INTERVAL` seconds, or as soon as :data:`CHUNK_BYTES` of
  output are waiting, so a follower sees output within about a second; one at a time (auth takes
  them in order), each with what waits, up to :data:`CHUNK_MAX` bytes of JSON plus one write
  (auth's limit is 8 MiB): a fast session's backlog goes in few big chunks.
* **Bounded memory.** Output not yet acknowledged by auth (waiting or in flight) is at most
  ``buffer_limit`` bytes (:data:`BUFFER_LIMIT`). When it is full, :attr:`StreamRecorder.accepting`
  turns False and the host stops reading the session's output (the process blocks on its
  terminal or pipe, the user sees the session pause) until auth catches up: output is never
  shown unrecorded. A writer that ignores ``accepting`` cannot grow it past twice the limit:
  the recorder gives up (the next :meth:`StreamRecorder.flush` ends the session).
* **Deny wins.** A failed send (auth unreachable, slow, or answering 5xx or 404) is retried with
  backoff. When output has waited for auth longer than ``stall_limit`` seconds
  (:data:`STALL_LIMIT`), or auth refused a chunk for good (403, 409, 400), the recorder gives up:
  :attr:`StreamRecorder.failure` says why and the host's ``on_give_up`` callback ends the session
  with a message (Teleport's strict recording mode, its RFD 68: "Session terminating due to
  ... error"). What auth received stays, and is completed (``partial``) when the session ends.
* **Completion.** Once the session ended and every chunk is acknowledged, ``complete(count,
  partial)`` tells auth to assemble the recording (retried until auth answers).
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import functools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from teleport_core.errors import AccessDenied, AlreadyExists, NotFound, TeleportError
from teleport_core.state.sessions import check_session_id

#: seconds between chunks while output keeps coming
FLUSH_INTERVAL = 0.5
#: output bytes waiting that make a chunk go at once
CHUNK_BYTES = 1 << 20
#: the most one chunk holds (its JSON; auth takes up to 8 MiB): a backlog goes in big chunks
CHUNK_MAX = 6 << 20
#: output bytes not yet acknowledged by auth before the session's output pauses
BUFFER_LIMIT = 16 << 20
#: seconds output may wait for auth before the session ends
STALL_LIMIT = 30.0
RETRY_FIRST = 0.25
RETRY_MAX = 2.0
#: seconds a session that ended (or was ended) keeps trying to send what is left
DRAIN_FOR = 600.0
#: a lost session's completion: attempts and the seconds between them
LOST_RETRY = 5.0
LOST_ATTEMPTS = 60
#: the modes that stream
SYNC_MODES = frozenset({"node-sync", "proxy-sync"})


class RecordingRefused(TeleportError):
    """Auth refused a chunk or a completion as malformed (a 400 or 413): never retried."""


#: errors auth gives for good: a refused chunk is never retried
PERMANENT = (AccessDenied, AlreadyExists, RecordingRefused)

SendChunk = Callable[[int, bytes], Awaitable[Any]]
Complete = Callable[[int, bool], Awaitable[Any]]


def header_line(*, width: int, height: int, started: float, env: Mapping[str, str], title: str = "",
                command: str = "") -> bytes:
    """The asciicast v2 header line, as the spool recorder writes it."""
    header: dict[str, object] = {"version": 2, "width": max(width, 1), "height": max(height, 1),
                                 "timestamp": int(started), "env": dict(env)}
    if title:
        header["title"] = title
    if command:
        header["command"] = command
    return (json.dumps(header) + "\n").encode()


def event_line(stamp: float, text: str) -> bytes:
    return (json.dumps([round(stamp, 6), "o", text]) + "\n").encode()


class StreamRecorder:
    """Records one live session into chunks sent to auth (see the module docstring).

    ``write``/``flush``/``accepting`` are for the session's thread; ``run`` is a coroutine for
    the host's event loop, which it needs to wake (``loop``)."""

    def __init__(self, session_id: str, loop: asyncio.AbstractEventLoop, send_chunk: SendChunk,
                 complete: Complete, *, width: int, height: int, env: Mapping[str, str], title: str = "",
                 command: str = "", started: float | None = None, buffer_limit: int = BUFFER_LIMIT,
                 stall_limit: float = STALL_LIMIT, drain_for: float = DRAIN_FOR,
                 on_give_up: Callable[[str], None] | None = None,
                 log: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.session_id = check_session_id(session_id)
        self.loop = loop
        self.send_chunk = send_chunk
        self.complete = complete
        self.buffer_limit = buffer_limit
        self.stall_limit = stall_limit
        self.drain_for = drain_for
        self.on_give_up = on_give_up
        self.log = log
        self.clock = clock
        self._start = clock()
        self._header = header_line(width=width, height=height, env=env, title=title, command=command,
                                   started=time.time() if started is None else started)
        self._lock = threading.Lock()
        self._frames: collections.deque[tuple[float, float, bytes]] = collections.deque()  # (stamp, queued, data)
        self._queued = 0  # output bytes in _frames (not taken for a chunk yet)
        self._deadline: float | None = None  # once ended or given up: when to stop trying to send
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._last_stamp = 0.0
        self._wake = asyncio.Event()
        self._signalled = False
        self.bytes = 0  # output recorded (given to write)
        self.unacked = 0  # output bytes waiting or in flight
        self._oldest_unacked: float | None = None  # when the oldest unacknowledged output was written
        self.chunks_sent = 0
        self._encoded_header = False  # chunk 0 (with the header) was encoded
        self.closed = False
        self.failure = ""  # why the recorder gave up ("" while it has not)
        self._gave_up = False
        self.done = asyncio.Event()  # set by run() once everything is sent and completed (or given up)

    # -- the session's thread ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False while the buffer is full (or the recorder gave up): the host stops reading output."""
        return self.unacked < self.buffer_limit and not self._gave_up

    def write(self, data: bytes) -> None:
        if self.closed or self._gave_up or not data or self.unacked > 2 * self.buffer_limit:
            return
        now = self.clock()
        with self._lock:
            self._frames.append((now - self._start, now, bytes(data)))
            self.bytes += len(data)
            self.unacked += len(data)
            self._queued += len(data)
            if self._oldest_unacked is None:
                self._oldest_unacked = now
            queued = self._queued
            overflow = self.unacked > 2 * self.buffer_limit
        if overflow and not self.failure:  # a writer that ignored ``accepting``: memory stays bounded
            self.failure = f"the session recording buffer overflowed ({self.unacked} bytes not sent to auth)"
        if queued >= CHUNK_BYTES:
            self._signal()

    def stalled_for(self) -> float:
        """Seconds the oldest output not yet acknowledged by auth has waited (0: none waits)."""
        with self._lock:
            oldest = self._oldest_unacked
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest)

    def flush(self) -> None:
        """The host's periodic tick: check that auth keeps up, give up when it does not."""
        if self._gave_up:
            return
        stalled = self.stalled_for()
        if not self.failure and stalled > self.stall_limit:
            self.failure = (f"the session recording could not reach auth for {stalled:.0f}s "
                            f"({self.unacked} bytes waiting)")
        if self.failure:
            self._give_up()

    def close(self) -> None:
        """The session ended: send what is left (for up to :data:`DRAIN_FOR` seconds), then
        complete the recording."""
        if not self.closed:
            self.closed = True
            if self._deadline is None:
                self._deadline = self.clock() + self.drain_for
            self._signal(force=True)

    def _give_up(self) -> None:
        """Stop taking output and end the session (``on_give_up``: called on the thread that
        noticed, the session's or the loop's); what was written is still sent while it can be."""
        if self._gave_up:
            return
        self._gave_up = True
        if self._deadline is None:
            self._deadline = self.clock() + self.drain_for
        if self.log is not None:
            self.log.error("session recording failed: ending the session", sid=self.session_id, error=self.failure)
        if self.on_give_up is not None:
            self.on_give_up(self.failure)
        self._signal(force=True)

    def _signal(self, force: bool = False) -> None:
        if self._signalled and not force:
            return
        self._signalled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the host is going away
            self.loop.call_soon_threadsafe(self._wake.set)

    # -- the event loop ------------------------------------------------------------------------------

    def _take(self) -> list[tuple[float, float, bytes]]:
        """The frames waiting (at most what fits a chunk: their encoding stops at :data:`CHUNK_MAX`,
        and the rest is put back by :meth:`_encode`)."""
        taken: list[tuple[float, float, bytes]] = []
        size = 0
        with self._lock:
            while self._frames and (not taken or size + len(self._frames[0][2]) <= CHUNK_MAX):
                frame = self._frames.popleft()
                taken.append(frame)
                size += len(frame[2])
            self._queued -= size
            self._signalled = False
        return taken

    def _encode(self, frames: list[tuple[float, float, bytes]], final: bool) -> tuple[bytes, int]:
        """The chunk of ``frames`` (the header first in chunk 0): its bytes and how many frames it
        holds; frames past :data:`CHUNK_MAX` bytes of JSON go back to the front of the queue."""
        out = bytearray(self._header if not self._encoded_header else b"")
        used = 0
        for stamp, _, data in frames:
            if used and len(out) >= CHUNK_MAX:
                break
            text = self._decoder.decode(data)
            self._last_stamp = stamp
            used += 1
            if text:
                out += event_line(stamp, text)
        rest = frames[used:]
        if rest:
            with self._lock:
                self._frames.extendleft(reversed(rest))
                self._queued += sum(len(f[2]) for f in rest)
        elif final:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                out += event_line(self._last_stamp, tail)
        return bytes(out), used

    def _acked(self, frames: list[tuple[float, float, bytes]]) -> None:
        with self._lock:
            self.unacked -= sum(len(f[2]) for f in frames)
            self._oldest_unacked = self._frames[0][1] if self._frames else None

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``call`` until it succeeds (True); False when auth refused it for good (:attr:`failure`
        says why) or the deadline after the session's end passed."""
        delay = RETRY_FIRST
        while True:
            try:
                await call()
                return True
            except PERMANENT as exc:
                self.failure = self.failure or f"auth refused the session recording ({what}): {exc}"
                return False
            except (TeleportError, OSError) as exc:
                if self.log is not None:
                    self.log.warning("cannot stream the session recording to auth, will retry", sid=self.session_id,
                                     what=what, error=str(exc), waiting_bytes=self.unacked)
            if self._deadline is not None and self.clock() >= self._deadline:
                self.failure = self.failure or f"auth was unreachable for the session recording ({what})"
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _next_chunk(self) -> tuple[bytes, list[tuple[float, float, bytes]], bool] | None:
        """Take what waits and encode it: (chunk bytes, its frames, whether it is the last), or None
        when there is nothing to send."""
        ending = self.closed or self._gave_up
        frames = self._take()
        with self._lock:
            final = ending and not self._frames
        if not frames and not (final and self.chunks_sent == 0 and not self._encoded_header):
            return None if not final else (b"", [], True)
        data, used = await asyncio.to_thread(self._encode, frames, final)
        self._encoded_header = True
        if used < len(frames):
            frames, final = frames[:used], False
        return data, frames, final

    async def run(self) -> None:
        """Send chunks while the session runs; once it ended (or the recorder gave up) send what is
        left, then complete the recording (``partial`` when something could not be sent). The next
        chunk is encoded while the current one is on its way."""
        ready: asyncio.Task[tuple[bytes, list[tuple[float, float, bytes]], bool] | None] | None = None
        try:
            while True:
                if ready is not None:
                    chunk = await ready
                    ready = None
                else:
                    if not (self.closed or self._gave_up) and self._queued < CHUNK_BYTES:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
                    self._wake.clear()
                    chunk = await self._next_chunk()
                if chunk is None:
                    continue
                data, frames, final = chunk
                if data:
                    index = self.chunks_sent
                    sending = asyncio.ensure_future(self._retrying(f"chunk {index}",
                                                                   functools.partial(self.send_chunk, index, data)))
                    if not final and self._queued >= CHUNK_BYTES:  # a backlog: encode the next meanwhile
                        ready = asyncio.ensure_future(self._next_chunk())
                    if not await sending:
                        break
                    self.chunks_sent += 1
                self._acked(frames)
                if final:
                    break
            if self.failure and not self._gave_up:  # refused for good while running: end the session
                self._give_up()
            if self.chunks_sent:
                partial = bool(self.failure)
                if self._deadline is None:
                    self._deadline = self.clock() + self.drain_for
                await self._retrying("completion", lambda: self.complete(self.chunks_sent, partial))
        finally:
            if ready is not None:
                ready.cancel()
            self.done.set()


class ChunkClient(Protocol):
    """What a :class:`Streamer` needs of auth (``teleport_core.api.client.AuthClient`` has it)."""

    async def put_recording_chunk(self, session_id: str, index: int, data: bytes) -> Any: ...

    async def complete_recording(self, session_id: str, chunks: int, partial: bool = False) -> Any: ...


class Streamer:
    """Makes the stream recorders of a host's sessions and runs their sending on ``loop``: what a
    node (``teleport_node/streaming.py``) or a proxy recording in a sync mode creates once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, auth: ChunkClient, log: Any) -> None:
        self.loop = loop
        self.auth = auth
        self.log = log
        self.tasks: set[asyncio.Task[None]] = set()

    def recorder(self, session_id: str, **kwargs: Any) -> StreamRecorder:
        """A recorder for a new session (any thread); its sending starts on the loop."""

        async def send(index: int, data: bytes) -> None:
            await self.auth.put_recording_chunk(session_id, index, data)

        async def complete(chunks: int, partial: bool) -> None:
            await self.auth.complete_recording(session_id, chunks, partial)

        recorder = StreamRecorder(session_id, self.loop, send, complete, log=self.log, **kwargs)
        self.loop.call_soon_threadsafe(self._run, recorder)
        return recorder

    def _run(self, recorder: StreamRecorder) -> None:
        task = self.loop.create_task(recorder.run(), name=f"stream-{recorder.session_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def pending(self) -> int:
        """Streamed recordings still sending or completing."""
        return len(self.tasks)

    def complete_lost(self, session_id: str) -> None:
        """A session an earlier run of this host lost (kill -9, crash): have auth complete its
        recording from what it received (``partial``), retried while auth is away."""
        task = self.loop.create_task(self._complete_lost(session_id), name=f"stream-lost-{session_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _complete_lost(self, session_id: str) -> None:
        for _ in range(LOST_ATTEMPTS):
            try:
                answer = await self.auth.complete_recording(session_id, 1, partial=True)
            except NotFound as exc:  # nothing of it reached auth, or its record has not (yet)
                self.log.warning("cannot complete the streamed recording of a lost session", sid=session_id,
                                 error=str(exc))
            except TeleportError as exc:
                self.log.warning("cannot complete the streamed recording of a lost session, will retry",
                                 sid=session_id, error=str(exc))
            else:
                self.log.info("completed the streamed recording of a session an earlier run lost", sid=session_id,
                              size=answer.get("size"), partial=answer.get("partial"))
                return
            await asyncio.sleep(LOST_RETRY)
