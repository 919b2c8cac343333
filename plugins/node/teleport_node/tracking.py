"""The node's live sessions in auth: one ``session_tracker`` per interactive and exec session.

A session's tracker (:mod:`teleport_core.state.trackers`) is registered when its process starts
(sftp sessions are file transfers, not tracked), with the owner as its first participant (mode
``peer``), state ``running``, the terminal size and, for the web terminal, ``client: web``. It
follows resizes, and the owner's typing moves ``last_active`` at most every
:data:`~teleport_core.state.trackers.ACTIVITY_EVERY`; it is removed when the session ends. The
node's one :class:`~teleport_core.state.trackers.TrackerKeeper` sends all of it to auth from a
task on the service's loop: the SSH threads never wait for auth, and auth being unreachable
never ends or stalls a session (logged; the keeper retries).

``session.tracker`` (:class:`~teleport_core.state.trackers.TrackedSession`) is what joining
(the node's multi-party sessions) uses to add and remove participants or hold a moderated
session ``pending``; ``session.tracker.owner_id`` is the owner's participant ID.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from teleport_core.state.trackers import ACTIVITY_EVERY, SessionTracker, TrackedSession, TrackerClient, TrackerKeeper

if TYPE_CHECKING:
    from teleport_node.sshserver import NodeState, Session

_ACTIVITY_SECONDS = ACTIVITY_EVERY.total_seconds()


def keeper(client: TrackerClient, loop: asyncio.AbstractEventLoop, log: Any) -> TrackerKeeper:
    """The node's keeper (the service runs :meth:`TrackerKeeper.run` and stops it last)."""
    return TrackerKeeper(client, loop, log)


def started(session: Session, state: NodeState, recording: str) -> None:
    """The session's process runs: register its tracker (not for sftp; not without a keeper)."""
    keeper = state.trackers
    if keeper is None or session.subsystem is not None or session.tracker is not None:
        return  # (a moderated session's tracker exists from its pending start: party.py)
    conn = session.conn
    roles = conn.roleset.names if conn.roleset is not None else ()
    user = conn.cert.user if conn.cert is not None else ""
    tracker = SessionTracker(
        session_id=session.id, server_id=state.host_uuid, owner=user, login=conn.login, hostname=state.nodename,
        address=conn.local, cluster=state.cluster_name, owner_roles=roles,
        terminal_size=f"{session.size[0]}:{session.size[1]}" if session.pty else "", interactive=session.pty,
        command=session.command or "", recording=recording, client=session.client)
    tracked = keeper.start_session(tracker)
    tracked.owner_id = tracked.add_participant(user, "peer").id
    session.tracker = tracked


def resized(session: Session) -> None:
    if session.tracker is not None:
        session.tracker.resize(session.size[0], session.size[1])


def active(session: Session) -> None:
    """The owner typed (the pump thread, per chunk): cheap, and rarely more than a clock read."""
    tracked = session.tracker
    if tracked is None:
        return
    now = time.monotonic()
    if now - tracked.touched < _ACTIVITY_SECONDS:
        return
    tracked.touched = now
    tracked.touch(tracked.owner_id)


def ended(session: Session) -> None:
    """The session is over: its tracker goes (the keeper removes it from auth)."""
    tracked: TrackedSession | None = session.tracker
    if tracked is not None:
        tracked.end()
