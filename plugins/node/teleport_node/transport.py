"""The node's paramiko transport: paramiko's, keeping the channels the node opens to the client
(``forwarded-tcpip`` for ``ssh -R``, ``auth-agent@openssh.com``) that the client confirms and
closes at once.

paramiko's ``open_channel`` waits for the confirmation, then looks the channel up; a client that
confirmed, sent its data and closed before that lookup (a service behind ``ssh -R`` that answers
and hangs up: the client sends the answer, EOF and close in one burst) has had its channel removed
by then, and paramiko raises "Unable to open channel": the answer is lost. This transport keeps
such a channel until ``open_channel`` returns it, closed, with the data still in its buffer.
"""

from __future__ import annotations

import threading
from typing import Any

import paramiko


class NodeTransport(paramiko.Transport):  # type: ignore[misc]
    """``paramiko.Transport`` whose :meth:`open_channel` returns a channel the peer closed
    right after confirming it (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opening: set[int] = set()  # channel IDs an open_channel call is waiting for
        self._closed_early: dict[int, paramiko.Channel] = {}
        self._opener = threading.local()  # the channel ID this thread's open_channel got

    def _next_channel(self) -> int:  # paramiko holds self.lock here
        chanid: int = super()._next_channel()
        if threading.current_thread() is not self:  # open_channel (the peer's opens run on the transport thread)
            self._opening.add(chanid)
            self._opener.chanid = chanid
        return chanid

    def _unlink_channel(self, chanid: int) -> None:  # a channel's close (transport thread)
        with self.lock:
            chan = self._channels.get(chanid)
            if chan is not None and chanid in self._opening:
                self._closed_early[chanid] = chan
        super()._unlink_channel(chanid)

    def open_channel(self, *args: Any, **kwargs: Any) -> paramiko.Channel:
        self._opener.chanid = None
        try:
            return super().open_channel(*args, **kwargs)
        except paramiko.SSHException:
            with self.lock:
                early = self._closed_early.get(self._opener.chanid)
            if early is None:
                raise
            return early
        finally:
            with self.lock:
                self._opening.discard(self._opener.chanid)
                self._closed_early.pop(self._opener.chanid, None)
