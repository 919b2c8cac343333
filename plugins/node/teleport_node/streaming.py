"""Sync recording on the node (``session_recording: node-sync``): sessions stream to auth.

The kernel's :class:`~teleport_core.recording.stream.StreamRecorder` does the work; this module
wires it into the node:

* :class:`~teleport_core.recording.stream.Streamer` (the kernel's; the service makes one on its
  event loop with its auth client): a recorder per session whose chunks go to auth, its sending
  run as a task; after a crash, the completion of the recordings of the sessions the restart
  recovery ended (``complete_lost``: ``partial``, what auth received).
* :func:`stream_recorder` / :func:`close_stream` (the session's side, called from
  ``sshserver.Session``): the recorder of a new session, and its end (no spool file, no
  upload: the sidecar is removed once ``session.end`` is on disk, as for any session).
* :func:`end_session` (the pump thread): the recording gave up (auth unreachable for
  ``STALL_LIMIT`` seconds, or it refused a chunk): the user is told, the session's output stops
  (nothing more is shown unrecorded) and its process group is killed; ``session.end`` carries
  ``end_reason`` ``interrupted`` and ``recording_error``.

The session's output pauses while the recorder's buffer is full (``pump.FdToChannel`` reads its
sink's ``accepting``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from teleport_core.recording.stream import SYNC_MODES, StreamRecorder
from teleport_core.recording.stream import Streamer as Streamer  # the service makes one (re-exported)
from teleport_node.pump import FdToChannel

if TYPE_CHECKING:
    from teleport_node.sshserver import NodeState, Session

MESSAGE_WAIT = 5.0  # seconds the message that ends a session waits for the client's window


def stream_recorder(session: Session, state: NodeState, env: dict[str, str]) -> StreamRecorder | None:
    """The stream recorder of a session starting (None unless the node records in a sync mode)."""
    streamer: Streamer | None = getattr(state, "streamer", None)
    if state.recording not in SYNC_MODES or streamer is None:
        return None
    pump = session.conn.server.pump

    def give_up(reason: str) -> None:
        pump.call(lambda: end_session(session, reason))

    return streamer.recorder(session.id, width=session.size[0], height=session.size[1],
                             env={"TERM": env.get("TERM", ""), "SHELL": env["SHELL"]},
                             title=f"{session.conn.login}@{state.nodename}", command=session.command or "",
                             started=session.started_at, on_give_up=give_up)


def close_stream(session: Session, state: NodeState) -> bool:
    """End a streamed session's recording (the pump thread, after its ``session.end``): True when
    the session streams (nothing left to finalize or upload)."""
    recorder = session.recorder
    if not isinstance(recorder, StreamRecorder):
        return False
    session.conn.server.recorders.discard(recorder)
    recorder.close()
    state.recorded(session.id, None)
    return True


def end_session(session: Session, reason: str) -> None:
    """The recording gave up (pump thread): tell the user (the output is paused, so the message is
    the next thing they read; sent as the client's window allows, for up to
    :data:`MESSAGE_WAIT` seconds), then stop the output and kill the processes."""
    if session.finished or session.process is None or session.end_fields.get("recording_error"):
        return
    session.end_reason = "interrupted"
    session.end_fields["recording_error"] = reason
    session.conn.server.log.error("ending a session its recording cannot keep up with", sid=session.id,
                                  error=reason)
    pending = [(f"\r\nteleport: Session terminating due to recording error: {reason}. "
                f"Closing session...\r\n").encode()]
    send = session.channel.send if session.pty else session.channel.send_stderr
    deadline = time.monotonic() + MESSAGE_WAIT

    def told() -> bool:
        try:
            while pending[0] and not session.channel.closed and time.monotonic() < deadline:
                sent = send(pending[0])
                if sent <= 0:
                    return False
                pending[0] = pending[0][sent:]
        except TimeoutError:  # the window is full: later
            if time.monotonic() < deadline:
                return False
        except (OSError, EOFError):
            pass
        for stream in session.streams:
            if isinstance(stream, FdToChannel):
                stream.stop()
        session.kill()
        return True

    if not told():
        session.conn.server.pump.park(told)
