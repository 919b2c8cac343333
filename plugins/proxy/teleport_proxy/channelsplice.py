"""Splicing an SSH channel to a TCP socket (the user's end-to-end SSH stream to a node).

Client to node: paramiko's transport thread decrypts each ``CHANNEL_DATA`` packet and puts it
in the channel's ``in_buffer``; a reader thread would then wake up, copy it out and write it to
the node. Here the channel's ``in_buffer`` is an :class:`Upstream` instead, which writes the
packet to the node's socket on the transport thread, without blocking (``MSG_DONTWAIT``). What
the socket does not take at once is queued for the writer thread, and so is everything after
it until the queue is empty, so bytes stay in order. The writer thread runs only while it has
work (queued bytes, a window to acknowledge, the end of input): it is started when work comes
and ends after :data:`WRITER_IDLE` seconds without any, so an idle session, or one whose
keystrokes the node's socket takes at once, holds no thread for it. The transport thread never blocks on the
node, so the other direction's window adjustments keep flowing: a blocked reader could deadlock
a session that echoes its input.

Flow control is the SSH window: bytes are acknowledged to the client (``WINDOW_ADJUST``) only
once the node's socket took them, so at most one window (4 MiB) waits in the queue. The
writer thread sends the adjustments. The transport thread must not: during a key exchange
paramiko holds other messages back, and waiting for that on the transport thread would stall it.

Node to client stays a thread reading the socket into ``channel.sendall`` (paramiko waits
for the client's window there).

Profiled with ``py-spy`` on ``ssh -J`` through the proxy: the reader-thread hand-off, the
``BufferedPipe`` copies and the per-packet wake-ups were half of the proxy's CPU for the
upload direction.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_CLOSE, MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, cMSG_CHANNEL_WINDOW_ADJUST

CHUNK = 256 * 1024
#: seconds a writer thread waits for more work before it ends (the next work starts another)
WRITER_IDLE = 5.0


class Upstream:
    """Client-to-node bytes of one spliced channel, in place of its ``in_buffer``.

    Implements the part of paramiko's ``BufferedPipe`` a channel uses (``feed``, ``close``,
    ``read_ready``, ``read``, ``set_event``, ``len``); ``read`` always finds nothing, since
    the bytes went to the node."""

    def __init__(self, sock: socket.socket, received: Callable[[int], None] | None = None) -> None:
        sock.settimeout(None)  # blocking: a send with MSG_DONTWAIT must not wait for a timeout
        self.sock = sock
        self.received = received  # told the size of each packet from the client (the rx metric)
        self.channel: paramiko.Channel | None = None
        self._cv = threading.Condition(threading.Lock())
        self._queue: collections.deque[bytes | memoryview] = collections.deque()
        self._writing = False  # the writer holds bytes taken off the queue: they go first
        self._written = 0  # bytes the node took and the client was not yet told of
        self._threshold = 1  # set from the channel's window on adopt
        self._closed = False
        self._failed = False
        self._writer: threading.Thread | None = None  # the writer thread, while it runs
        #: set once the client-to-node direction has ended (the node's socket half-closed)
        self.finished = threading.Event()

    def adopt(self, channel: paramiko.Channel) -> None:
        """Take over ``channel``'s input (call on its transport's thread, or before the
        client may send): bytes already buffered are forwarded first."""
        old = channel.in_buffer
        self.channel = channel
        self._threshold = max(1, channel.in_window_threshold)
        channel.in_buffer = self
        if len(old):
            self.feed(old.read(len(old)))
        if old._closed:
            self.close()

    # -- BufferedPipe's interface (transport thread) ---------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.received is not None:
            self.received(len(data))
        with self._cv:
            if self._failed or self._closed:
                return
            sent = 0
            if not self._queue and not self._writing:
                try:
                    sent = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._failed = True
                    self._wake()
                    return
            if sent < len(data):
                self._queue.append(memoryview(data)[sent:])
            self._written += sent
            if self._queue or self._written >= self._threshold:
                self._wake()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._wake()

    def read_ready(self) -> bool:
        return False

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        return b""

    def set_event(self, event: threading.Event) -> None:
        event.set()

    def __len__(self) -> int:
        return 0

    # -- the writer thread ------------------------------------------------------------------------

    @property
    def writer_running(self) -> bool:
        return self._writer is not None

    def _work(self) -> bool:
        """Whether the writer has something to do (call with ``_cv`` held)."""
        return bool(self._queue) or self._closed or self._failed or self._written >= self._threshold

    def _wake(self) -> None:
        """Hand the writer its work (call with ``_cv`` held): notify it, or start it."""
        if self._writer is not None:
            self._cv.notify()
        elif not self.finished.is_set():
            self._writer = threading.Thread(target=self._run, name="proxy-up", daemon=True)
            self._writer.start()

    def _run(self) -> None:
        """Write what the transport thread queued, acknowledge written bytes to the client;
        at end of input (or when the channel or the node goes away) half-close the socket.
        Ends after :data:`WRITER_IDLE` seconds without work (under ``_cv``: no work is missed)."""
        while True:
            with self._cv:
                while not self._work():
                    if not self._cv.wait(WRITER_IDLE) and not self._work():
                        self._writer = None
                        return
                batch = list(self._queue)
                self._queue.clear()
                self._writing = bool(batch)
                ack, self._written = self._written, 0
                done = self._failed or (self._closed and not batch)
            self._acknowledge(ack)
            if done:
                break
            written = 0
            try:
                for chunk in batch:
                    self.sock.sendall(chunk)
                    written += len(chunk)
            except OSError:
                with self._cv:
                    self._failed = True
                    self._writing = False
                break
            with self._cv:
                self._writing = False
                self._written += written
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        with self._cv:
            self._writer = None
            self.finished.set()

    def _acknowledge(self, nbytes: int) -> None:
        channel = self.channel
        if channel is None or nbytes <= 0:
            return
        ack = channel._check_add_window(nbytes)
        if ack > 0:
            message = paramiko.Message()
            message.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
            message.add_int(channel.remote_chanid)
            message.add_int(ack)
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.transport._send_user_message(message)


def _adopting(handler: Any) -> Any:
    """A channel message handler that first gives a waiting :class:`Upstream` the channel."""

    def handle(channel: paramiko.Channel, message: paramiko.Message) -> None:
        waiting = getattr(channel.transport, "upstreams", {}).pop(channel.chanid, None)
        if waiting is not None:
            waiting.adopt(channel)
        handler(channel, message)

    return handle


class SplicingTransport(paramiko.Transport):  # type: ignore[misc]
    """A server transport whose channels may be spliced: ``upstreams[chanid]`` (set while the
    channel open is checked, before the client may send) takes the channel's input as its
    first data, end-of-input or close arrives."""

    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,
        MSG_CHANNEL_DATA: _adopting(paramiko.Channel._feed),
        MSG_CHANNEL_EOF: _adopting(paramiko.Channel._handle_eof),
        MSG_CHANNEL_CLOSE: _adopting(paramiko.Channel._handle_close),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upstreams: dict[int, Upstream] = {}
        #: called on the transport's thread with each channel the client opened (after paramiko
        #: confirmed it), instead of queueing it for ``accept()``: no thread has to wait for it
        self.on_channel: Callable[[paramiko.Channel], None] | None = None
        #: called once on the transport's thread when the connection has ended
        self.on_closed: Callable[[], None] | None = None

    def close(self) -> None:
        """paramiko's close(), after shutting the socket down: that wakes the transport's thread
        blocked reading it (a close() of the descriptor alone would not, until its poll timeout)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        super().close()

    def _queue_incoming_channel(self, channel: paramiko.Channel) -> None:
        if self.on_channel is None:
            super()._queue_incoming_channel(channel)
        else:
            self.on_channel(channel)

    def run(self) -> None:
        """paramiko's transport thread; when the connection ends, channels that never got a
        message release their node connections too (the others end with their channel)."""
        try:
            super().run()
        finally:
            for upstream in list(self.upstreams.values()):
                upstream.close()
                with contextlib.suppress(OSError):  # wakes a thread blocked reading the node, tells the node
                    upstream.sock.shutdown(socket.SHUT_RDWR)
            self.upstreams.clear()
            if self.on_closed is not None:
                self.on_closed()


def splice(channel: paramiko.Channel, upstream: Upstream, sent: Callable[[int], None] | None = None,
           ended: Callable[[], None] | None = None) -> None:
    """Copy bytes both ways between ``channel`` and ``upstream.sock`` until both directions end
    (a thread reading the node, and the upstream's writer while it has work; returns at once).
    ``upstream`` already adopted the channel, or will on its first message. ``sent`` is told the
    size of each chunk from the node to the client; ``ended`` is called once both directions ended."""
    sock = upstream.sock

    def downstream() -> None:  # node -> client
        try:
            while True:
                data = sock.recv(CHUNK)
                if not data:
                    break
                if sent is not None:
                    sent(len(data))
                channel.sendall(data)
        except (OSError, EOFError):
            pass
        with contextlib.suppress(OSError, EOFError):
            channel.shutdown_write()
        upstream.finished.wait()
        with contextlib.suppress(OSError, EOFError):  # the client's transport may already be gone
            channel.close()
        sock.close()
        if ended is not None:
            ended()

    threading.Thread(target=downstream, name="proxy-down", daemon=True).start()
