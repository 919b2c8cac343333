"""One thread that moves bytes for every session of the node: the selector loop.

paramiko runs one thread per SSH connection (its transport: key exchange, crypto, packet
framing). Everything else — process stdout/stderr and PTY output to the client, client input
to processes, port-forwarding sockets, child exits — is driven by this single
:class:`Pump` thread with non-blocking file descriptors, so an idle session costs no thread.

Flow control: data read from a process is never more than the channel's send window, so a
``send`` never blocks the loop; a stream whose window is empty parks until the client opens
it again. Data from the client is read only once the previous chunk reached the process, so
memory per stream stays bounded (one chunk).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import heapq
import itertools
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

CHUNK = 256 * 1024
PARKED_POLL = 0.005


class Sink(Protocol):
    """Where output is copied (a recorder). A sink with an ``accepting`` attribute that is False
    (a streaming recorder whose buffer is full) pauses the stream: nothing is read from the
    descriptor, so nothing reaches the client unrecorded, until it is True again."""

    def write(self, data: bytes) -> None: ...


def _sink_accepting(sink: Sink | None) -> bool:
    return sink is None or bool(getattr(sink, "accepting", True))


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class Pump:
    """The selector loop. ``call(fn)`` runs ``fn`` on the loop's thread (thread-safe)."""

    def __init__(self, name: str = "teleport-node-pump") -> None:
        self._selector = selectors.DefaultSelector()
        self._handlers: dict[int, dict[int, Callable[[], None]]] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._parked: list[Callable[[], bool]] = []
        self._wake_r, self._wake_w = os.pipe()
        set_nonblocking(self._wake_r)
        set_nonblocking(self._wake_w)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread.ident is not None:
            self._thread.join(10)

    @property
    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def call(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        if not self.on_loop:
            self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop after ``delay`` seconds (call from the loop only)."""
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._counter), fn))

    def park(self, retry: Callable[[], bool]) -> None:
        """Call ``retry()`` every few ms until it returns True (a stream waiting for window)."""
        self._parked.append(retry)

    # -- registration (loop thread only) ---------------------------------------------------------

    def watch(self, fd: int, event: int, handler: Callable[[], None] | None) -> None:
        """Set (or with None clear) the handler of ``event`` (EVENT_READ/EVENT_WRITE) on ``fd``."""
        current = self._handlers.get(fd, {})
        if handler is None:
            if event not in current:
                return
            current = {k: v for k, v in current.items() if k != event}
        else:
            current = {**current, event: handler}
        mask = 0
        for ev in current:
            mask |= ev
        if fd in self._handlers:
            if mask:
                self._selector.modify(fd, mask, None)
                self._handlers[fd] = current
            else:
                self._selector.unregister(fd)
                del self._handlers[fd]
        elif mask:
            self._selector.register(fd, mask, None)
            self._handlers[fd] = current

    def forget(self, fd: int) -> None:
        if fd in self._handlers:
            self._selector.unregister(fd)
            del self._handlers[fd]

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            timeout: float | None = None
            if self._parked:
                timeout = PARKED_POLL
            if self._timers:
                until = max(0.0, self._timers[0][0] - time.monotonic())
                timeout = until if timeout is None else min(timeout, until)
            if self._calls:
                timeout = 0
            try:
                ready = self._selector.select(timeout)
            except InterruptedError:
                continue
            for key, mask in ready:
                fd = key.fd
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                    continue
                for event in (selectors.EVENT_WRITE, selectors.EVENT_READ):
                    if mask & event:
                        handler = self._handlers.get(fd, {}).get(event)
                        if handler is not None:
                            self._guard(handler)
            while self._calls:
                self._guard(self._calls.popleft())
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._guard(heapq.heappop(self._timers)[2])
            if self._parked:
                parked, self._parked = self._parked, []
                for retry in parked:
                    done = False
                    try:
                        done = retry()
                    except Exception as exc:  # a broken stream must not stop the loop
                        self._note(exc)
                        done = True
                    if not done:
                        self._parked.append(retry)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # one session's failure must not stop the others
            self._note(exc)

    def _note(self, exc: BaseException) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")
        del self.errors[:-20]


class ChannelToFd:
    """Client data (a paramiko channel) into a file descriptor: process stdin, a PTY, a socket."""

    def __init__(self, pump: Pump, channel: Any, fd: int, on_eof: Callable[[], None], *,
                 close_fd: bool = True, counter: Callable[[int], None] | None = None) -> None:
        self.pump, self.channel, self.fd = pump, channel, fd
        self.on_eof = on_eof
        self.close_fd = close_fd
        self.counter = counter
        self.pending = b""
        self.broken = False
        self.done = False
        self.eof_reported = False  # on_eof called: everything read from the channel was written
        self.chan_fd = channel.fileno()

    def start(self) -> None:
        self.channel.setblocking(False)
        set_nonblocking(self.fd)
        self.pump.watch(self.chan_fd, selectors.EVENT_READ, self._readable)

    def _readable(self) -> None:
        try:
            data = self.channel.recv(CHUNK)
        except TimeoutError:
            return
        if not data:
            self.pump.watch(self.chan_fd, selectors.EVENT_READ, None)
            self.finish()
            return
        if self.counter is not None:
            self.counter(len(data))
        if self.broken:
            return  # the reader went away: keep draining the channel, drop the data
        self.pending = data
        self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except BlockingIOError:
                break
            except OSError:
                self.broken = True
                self.pending = b""
                break
            self.pending = self.pending[written:]
        if self.pending:
            self.pump.watch(self.chan_fd, selectors.EVENT_READ, None)
            self.pump.watch(self.fd, selectors.EVENT_WRITE, self._flush)
        else:
            self.pump.watch(self.fd, selectors.EVENT_WRITE, None)
            if not self.done:
                self.pump.watch(self.chan_fd, selectors.EVENT_READ, self._readable)
            else:
                self._ended()

    def finish(self) -> None:
        """The client sent EOF (or the session ends): close the descriptor and report the end
        (``on_eof``) once what was read is written: an ``on_eof`` that half-closes a socket
        before the last chunk reached it would cut that chunk off."""
        if self.done:
            return
        self.done = True
        self.pump.watch(self.chan_fd, selectors.EVENT_READ, None)
        if not self.pending:
            self._ended()
        # else: _flush calls _ended once the pending chunk is written (or the reader went away)

    def _ended(self) -> None:
        if self.eof_reported:
            return
        self.eof_reported = True
        if self.close_fd:
            self._close()
        self.on_eof()

    def stop(self) -> None:
        self.pump.watch(self.chan_fd, selectors.EVENT_READ, None)
        self.pump.watch(self.fd, selectors.EVENT_WRITE, None)
        self.done = True
        self.pending = b""
        if self.close_fd:
            self._close()

    def _close(self) -> None:
        self.pump.forget(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.close_fd = False


class FdToChannel:
    """A file descriptor's output (process stdout/stderr, PTY, socket) to the client."""

    def __init__(self, pump: Pump, fd: int, channel: Any, on_eof: Callable[[], None], *, stderr: bool = False,
                 sink: Sink | None = None, counter: Callable[[int], None] | None = None,
                 close_fd: bool = True) -> None:
        self.pump, self.fd, self.channel = pump, fd, channel
        self.on_eof = on_eof
        self.stderr = stderr
        self.sink = sink
        self.counter = counter
        self.close_fd = close_fd
        self.done = False

    def start(self) -> None:
        set_nonblocking(self.fd)
        self.pump.watch(self.fd, selectors.EVENT_READ, self._readable)

    def _retry(self) -> bool:
        if self.done:
            return True
        if self.channel.closed:
            self._eof()
            return True
        if self.channel.out_window_size > 0 and _sink_accepting(self.sink):
            self.pump.watch(self.fd, selectors.EVENT_READ, self._readable)
            return True
        return False

    def _readable(self) -> None:
        window = self.channel.out_window_size
        if (window <= 0 and not self.channel.closed) or not _sink_accepting(self.sink):
            self.pump.watch(self.fd, selectors.EVENT_READ, None)
            self.pump.park(self._retry)
            return
        try:
            data = os.read(self.fd, max(1, min(window, CHUNK)))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADF, errno.ECONNRESET):
                raise
            data = b""  # EIO: the PTY's last holder closed it
        if not data:
            self._eof()
            return
        if self.counter is not None:
            self.counter(len(data))
        if self.sink is not None:
            self.sink.write(data)
        send = self.channel.send_stderr if self.stderr else self.channel.send
        view = memoryview(data)
        try:
            while view:
                sent = send(view)
                if sent <= 0:
                    break
                view = view[sent:]
        except (OSError, EOFError):
            self._eof()  # the client went away; the session ends

    def _eof(self) -> None:
        if self.done:
            return
        self.done = True
        self.pump.watch(self.fd, selectors.EVENT_READ, None)
        if self.close_fd:
            self.pump.forget(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.on_eof()

    def stop(self) -> None:
        self._eof()
