"""Multi-party sessions on the node: joining (``tsh join``), observers, peers, moderators, and
moderated sessions (roles' ``require_session_join``), Teleport's RFD 43 model.

One process and one PTY per session, whoever is in it. The owner's session (``Session`` in
:mod:`teleport_node.sshserver`) keeps its own streams on the pump: PTY output to the owner's
channel (flow-controlled by the owner's window) and the owner's input to the PTY. Every
interactive session gets a :class:`Party`, the PTY output stream's sink: it writes the one
recording and hands each chunk to every joined :class:`Member`, which keeps its own bounded
buffer and drains it into its channel as that channel's window allows, on the same pump (no
thread per participant). A member whose buffer would exceed :data:`MAX_BEHIND` has fallen too far
behind: it is told so in-band and removed from the session (its terminal could not show a
consistent screen with bytes missing), so a slow observer never stalls the owner or the others.

Modes: a *peer*'s input goes to the PTY as the owner's does; an *observer*'s is dropped, except
Ctrl-C which leaves; a *moderator*'s is dropped too, except ``t`` which terminates the session
(Teleport's key) and Ctrl-C which leaves. The keys are read here on the node, so any client that
joins (``tsh join``, the web terminal, OpenSSH with the two environment variables) has them.

Joining: the client opens a session channel on a connection authenticated with its user
certificate (CA, validity, source address, locks: as any login) under Teleport's join principal
:data:`JOIN_PRINCIPAL`, sends ``TELEPORT_SESSION`` (the session ID) and ``TELEPORT_SSH_JOIN_MODE``
(``observer``, ``peer`` or ``moderator``; ``peer`` when absent, as Teleport's node) as ``env``
requests, a ``pty-req`` and a ``shell``. The node checks the session exists here and is
interactive, then :func:`teleport_core.policy.joining.may_join` with the owner's roles, then the
``teleport_authorize`` plugins; a refusal is told on the channel's stderr and audited
(``session.join`` failure, T2001W, ours). A join-only connection can do nothing else (no
command, shell, subsystem or forwarding).

Moderated sessions: when the owner's roles carry ``require_session_join`` policies
(:mod:`teleport_core.policy.moderation`) for ``ssh``, an interactive session starts *pending*: the
owner sees ``Teleport >`` lines saying so and the session ID, no process runs and the owner's input is
dropped, until enough matching participants joined; then the shell starts. Non-interactive
sessions (exec, scp, sftp) of such a user are refused, as Teleport's node does, since nobody
could watch them. When participants leave and the policies no longer hold, ``on_leave:
terminate`` ends the session and ``pause`` holds it: no participant's input reaches the PTY and
its output is not read (the process blocks once the PTY buffer is full) until enough
participants are back; the tracker says ``pending`` meanwhile.

Audit: ``session.join`` (T2001I) and ``session.leave`` (T2003I) for every joiner (``sid``,
``user``, ``participant_mode``); a terminated session's ``session.end`` says ``end_reason:
terminated`` and ``terminated_by``.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from teleport_core.policy.access import Decision, check_access
from teleport_core.policy.joining import may_join
from teleport_core.policy.moderation import Participant, Verdict, fulfilled, policy_sets

if TYPE_CHECKING:
    from teleport_node.sshserver import Session, SSHServer

JOIN_PRINCIPAL = "-teleport-internal-join"  # Teleport's: starts with "-", never a Unix login
SESSION_ENV = "TELEPORT_SESSION"
MODE_ENV = "TELEPORT_SSH_JOIN_MODE"
JOIN_ENV = (SESSION_ENV, MODE_ENV)
JOIN_VERB = "join_session"  # what teleport_authorize plugins see (resource: the node; name: the session)
FORCE_TERMINATE = "x-teleport-force-terminate"  # Teleport's request for the same
MAX_BEHIND = 1024 * 1024  # bytes a member may lag behind the session's output before it is removed
CHUNK = 64 * 1024
CTRL_C = 0x03
KILL_AFTER = 2.0  # seconds between SIGHUP and SIGKILL when a session is terminated


def notice(text: str) -> bytes:
    """An in-band line as Teleport words them (``Teleport > ...``)."""
    return f"Teleport > {text}\r\n".encode()


def controls(mode: str) -> bytes:
    lines = [f"\r\nTeleport > Joining session with participant mode: {mode}", "Teleport > Controls",
             "Teleport >   - CTRL-C: Leave the session"]
    if mode == "moderator":
        lines.append("Teleport >   - t: Forcefully terminate the session")
    return ("\r\n".join(lines) + "\r\n").encode()


def registry(server: SSHServer) -> dict[str, Party]:
    """The node's interactive sessions by ID (joinable ones)."""
    parties: dict[str, Party] | None = getattr(server, "parties", None)
    if parties is None:
        parties = server.parties = {}  # type: ignore[attr-defined]
    return parties


class Member:
    """A joined participant (its own connection and channel), on the pump thread."""

    def __init__(self, party: Party, session: Session, mode: str) -> None:
        self.party = party
        self.session = session  # the joiner's own session channel
        self.channel = session.channel
        self.mode = mode
        cert = session.conn.cert
        assert cert is not None
        self.user = cert.user
        self.roles = tuple(cert.roles)
        self.traits = {k: tuple(v) for k, v in cert.traits.items()}
        self.id = str(uuid.uuid4())
        self.buffer = bytearray()
        self.parked = False
        self.gone = False
        self.input: Any = None  # a peer's ChannelToFd into the PTY while the session runs

    def participant(self) -> Participant:
        return Participant(self.user, self.roles, self.mode, self.traits)

    # -- output ------------------------------------------------------------------------------------

    def push(self, data: bytes, *, force: bool = False) -> None:
        if self.gone:
            return
        if not force and len(self.buffer) + len(data) > MAX_BEHIND:
            self.buffer.clear()
            self.buffer += b"\r\n" + notice(f"You fell more than {MAX_BEHIND // 1024} KiB behind the session's "
                                            "output and were removed from it.")
            self.flush()
            self.party.leave(self, reason="fell behind")
            return
        self.buffer += data
        self.flush()

    def flush(self) -> bool:
        """Send what the window allows; park on the pump for the rest. True when drained."""
        while self.buffer and not self.channel.closed:
            window = self.channel.out_window_size
            if window <= 0:
                break
            try:
                sent = self.channel.send(bytes(self.buffer[:min(window, CHUNK)]))
            except (OSError, EOFError):
                self.buffer.clear()
                break
            if sent <= 0:
                break
            del self.buffer[:sent]
        if self.channel.closed:
            self.buffer.clear()
        if self.buffer and not self.parked:
            self.parked = True
            self.party.pump.park(self._retry)
        return not self.buffer

    def _retry(self) -> bool:
        self.parked = False
        drained = self.flush()
        return drained or self.parked  # flush parked again: this retry is done

    # -- input -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Attach (pump thread): read the member's input; a peer's goes to the PTY once running."""
        self.channel.setblocking(False)
        self.party.pump.watch(self.channel.fileno(), selectors.EVENT_READ, self._readable)
        if self.mode == "peer" and self.party.state == "running":
            self.connect_input()

    def connect_input(self) -> None:
        """A peer types into the PTY (the same flow control as the owner's input)."""
        master = self.party.session.master
        if self.gone or self.mode != "peer" or self.input is not None or master is None:
            return
        from teleport_node.pump import ChannelToFd

        self.party.pump.watch(self.channel.fileno(), selectors.EVENT_READ, None)
        self.input = ChannelToFd(self.party.pump, self.channel, os.dup(master), self._input_eof,
                                 counter=lambda n: self.party.touch(self))
        self.input.start()

    def disconnect_input(self) -> None:
        if self.input is not None:
            self.input.stop()
            self.input = None
        if not self.gone:
            self.party.pump.watch(self.channel.fileno(), selectors.EVENT_READ, self._readable)

    def _input_eof(self) -> None:
        if self.channel.closed or self.channel.eof_received:
            self.party.leave(self)

    def _readable(self) -> None:
        try:
            data = self.channel.recv(CHUNK)
        except TimeoutError:
            return
        if not data:
            self.party.leave(self)
            return
        self.party.touch(self)
        if self.mode == "moderator" and b"t" in data:
            self.party.terminate(self.user)
        elif CTRL_C in data:
            self.party.leave(self)
        # anything else from an observer, a moderator, or a peer while the session waits: dropped

    def close(self, code: int = 0) -> None:
        """Stop reading and close the channel (after what is buffered, as far as the window allows)."""
        self.gone = True
        if self.input is not None:
            self.input.stop()
            self.input = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.party.pump.forget(self.channel.fileno())
        self.flush()
        with contextlib.suppress(Exception):
            self.channel.send_exit_status(code)
            self.channel.close()
        self.session.conn.sessions.pop(self.channel.get_id(), None)


class Party:
    """An interactive session's participants: the owner's session plus joined members."""

    def __init__(self, session: Session, sets: list[Any]) -> None:
        self.session = session
        self.server = session.conn.server
        self.pump = self.server.pump
        cert = session.conn.cert
        assert cert is not None
        self.owner = cert.user
        self.owner_roles = tuple(cert.roles)
        self.login = session.conn.login
        self.sets = sets
        self.members: list[Member] = []
        self.state = "running"
        self.finished = False
        self.terminated_by = ""
        self.started = False  # the process runs (after a pending start, once fulfilled)

    @property
    def sid(self) -> str:
        return self.session.id

    def verdict(self) -> Verdict:
        return fulfilled(self.sets, [m.participant() for m in self.members], owner=self.owner)

    # -- output (pump thread) -----------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False while a streaming recorder's buffer is full (``pump.Sink``): the PTY's output pauses."""
        return bool(getattr(self.session.recorder, "accepting", True))

    def write(self, data: bytes) -> None:
        """The PTY stream's sink: the recording, then every member's buffer."""
        recorder = self.session.recorder
        if recorder is not None:
            recorder.write(data)
        for member in list(self.members):
            member.push(data)

    def broadcast(self, text: str) -> None:
        """A ``Teleport >`` line to the owner and every member (not recorded)."""
        line = notice(text)
        channel = self.session.channel
        with contextlib.suppress(Exception):  # non-blocking: a full window drops the owner's copy
            if not channel.closed and channel.out_window_size >= len(line):
                channel.send(line)
        for member in list(self.members):
            member.push(line, force=True)

    def touch(self, member: Member) -> None:
        tracked = _tracked(self.session)
        if tracked is not None:
            tracked.touch(member.id)

    # -- joining and leaving (pump thread) ----------------------------------------------------------

    def add(self, member: Member) -> None:
        if self.finished:
            member.close(255)
            return
        self.members.append(member)
        member.push(controls(member.mode), force=True)
        self.broadcast(f"User {member.user} joined the session with participant mode: {member.mode}.")
        member.start()
        tracked = _tracked(self.session)
        if tracked is not None:
            tracked.add_participant(member.user, member.mode, member.id)
        member.session.conn.emit("session.join", "ok", sid=self.sid, login=self.login, participant_mode=member.mode,
                                 session_owner=self.owner)
        self.server.log.info("joined a session", sid=self.sid, user=member.user, mode=member.mode)
        self._reconsider()

    def leave(self, member: Member, reason: str = "") -> None:
        if member not in self.members:
            return
        self.members.remove(member)
        member.close()
        self.broadcast(f"User {member.user} left the session.")
        tracked = _tracked(self.session)
        if tracked is not None:
            tracked.remove_participant(member.id)
        member.session.conn.emit("session.leave", "ok", sid=self.sid, login=self.login,
                                 participant_mode=member.mode, **({"reason": reason} if reason else {}))
        self._reconsider()

    def _reconsider(self) -> None:
        """After a join or a leave: start, resume, pause or terminate as the policies say."""
        if self.finished or not self.sets:
            return
        verdict = self.verdict()
        if verdict.fulfilled and self.state == "pending":
            self._set_state("running")
            if self.started:
                self.broadcast("Resuming session...")
                self._hold(False)
            else:
                self.broadcast(f"Connecting to {self.server.state().nodename} over SSH")
                self._launch()
        elif not verdict.fulfilled and self.state == "running":
            if verdict.on_leave == "terminate":
                self.broadcast("Required participants left; terminating the session (on_leave: terminate).")
                self.terminate("")
                return
            self._set_state("pending")
            self.broadcast("Session paused, Waiting for required participants...")
            self._hold(True)

    def _set_state(self, state: str) -> None:
        self.state = state
        tracked = _tracked(self.session)
        if tracked is not None:
            tracked.set_state(state)

    # -- a pending start ------------------------------------------------------------------------------

    def wait(self) -> None:
        """(pump) The session waits for its participants: tell the owner, drop its input."""
        self.broadcast(f"Creating session with ID: {self.sid}")
        self.broadcast("Waiting for required participants...")
        for line in self.verdict().missing:
            self.broadcast(f"  {line}")
        channel = self.session.channel
        channel.setblocking(False)
        self.pump.watch(channel.fileno(), selectors.EVENT_READ, self._owner_waiting)

    def _owner_waiting(self) -> None:
        try:
            data = self.session.channel.recv(CHUNK)
        except TimeoutError:
            return
        if not data:
            self._end_unstarted("the owner left before the session started")

    def _launch(self) -> None:
        self.pump.watch(self.session.channel.fileno(), selectors.EVENT_READ, None)
        self.started = True
        threading.Thread(target=self.session._start, name="teleport-node-launch", daemon=True).start()

    def attached(self) -> None:
        """(pump) The process and its streams are up: peers' input goes to the PTY now."""
        self.started = True
        for member in list(self.members):
            member.connect_input()
        if self.state == "pending":  # paused meanwhile
            self._hold(True)

    def _hold(self, held: bool) -> None:
        """Pause (or resume) the running session: nobody's input reaches the PTY, its output is not read."""
        session = self.session
        stdin = getattr(session, "stdin", None)
        outputs = [s for s in session.streams if s is not stdin]
        if stdin is not None and not stdin.done:
            self.pump.watch(stdin.chan_fd, selectors.EVENT_READ, None if held else stdin._readable)
        for stream in outputs:
            if not stream.done:
                self.pump.watch(stream.fd, selectors.EVENT_READ, None if held else stream._readable)
        for member in list(self.members):
            if held:
                member.disconnect_input()
            else:
                member.connect_input()

    # -- the end ------------------------------------------------------------------------------------------

    def terminate(self, by: str) -> None:
        """(pump) A moderator pressed ``t`` (``by``), or the policies ended it (``by`` empty)."""
        if self.finished:
            return
        self.terminated_by = by
        if by:
            self.broadcast(f"User {by} forcefully terminated the session.")
        self.broadcast("Forcefully terminating session...")
        self.session.end_reason = "terminated"
        if not self.started:
            self._end_unstarted(f"terminated by {by}" if by else "required participants left")
            return
        self.session.hangup()
        self.pump.call_later(KILL_AFTER, self.session.kill)

    def end_fields(self) -> dict[str, Any]:
        return {"terminated_by": self.terminated_by} if self.terminated_by else {}

    def ended(self, code: int | None) -> None:
        """(pump) The owner's session finished: every member gets the exit status and is closed."""
        if self.finished:
            return
        self.finished = True
        registry(self.server).pop(self.sid, None)
        for member in list(self.members):
            self.members.remove(member)
            member.close(code if code is not None and code >= 0 else 255)
            member.session.conn.emit("session.leave", "ok", sid=self.sid, login=self.login,
                                     participant_mode=member.mode, reason="session ended")

    def _end_unstarted(self, why: str) -> None:
        """A pending session ends before its process started (owner left, terminated)."""
        session = self.session
        if self.finished:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.pump.forget(session.channel.fileno())
        with contextlib.suppress(Exception):
            session.channel.send_exit_status(255)
            session.channel.close()
        session.conn.sessions.pop(session.channel.get_id(), None)
        session.finished = True
        self.ended(255)
        session.conn.emit("session.end", "ok", sid=self.sid, proto="ssh", interactive=True, session_recording="off",
                          initial_command=[session.command or ""], end_reason=session.end_reason or "exit",
                          session_stop=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), reason=why,
                          **self.end_fields())
        tracked = _tracked(session)
        if tracked is not None:
            tracked.end()
        session.conn.server.state().recorded(self.sid, None)


def _tracked(session: Session) -> Any:
    """The session's tracker (tracking.py's TrackedSession; None without a keeper)."""
    return getattr(session, "tracker", None)


# -- hooks called from sshserver.Session --------------------------------------------------------------


def hold(session: Session) -> bool:
    """Top of ``Session._start`` (transport thread): True when the session must not start now
    (pending until its participants joined, or refused); creates the session's :class:`Party`."""
    if session.party is not None:  # the second call, once a pending session may start
        return False
    conn = session.conn
    sets = policy_sets(conn.roleset.roles, "ssh") if conn.roleset is not None else []
    if not session.pty or session.subsystem is not None:
        if not sets:
            return False
        reason = ("this session requires moderation (require_session_join): only interactive sessions may run, "
                  "watched by the required participants")
        conn.emit("exec", "failure", sid=session.id, command=session.command or session.subsystem or "",
                  exitCode="255", error=reason)
        with contextlib.suppress(Exception):
            session.channel.send_stderr(f"teleport: {reason}\r\n".encode())
            session.channel.send_exit_status(255)
            session.channel.close()
        return True
    party = Party(session, sets)
    session.party = party
    registry(conn.server)[session.id] = party
    if sets and not party.verdict().fulfilled:
        party.state = "pending"
        from teleport_node import tracking

        state = conn.server.state()
        tracking.started(session, state, state.recording)  # listed (pending) so that joiners find it
        tracked = _tracked(session)
        if tracked is not None:
            tracked.set_state("pending")
        conn.server.pump.call(party.wait)
        return True
    party.started = True
    return False


def is_join(session: Session) -> bool:
    """Whether a shell/exec/subsystem request on ``session`` is a join (or must be refused as one)."""
    return session.conn.login == JOIN_PRINCIPAL or bool(session.join_env.get(SESSION_ENV))


def join(session: Session, command: str | None, subsystem: str | None) -> bool:
    """A join request (transport thread): checks, then the member attaches once the reply is out."""
    conn = session.conn
    state = conn.server.state()
    sid = session.join_env.get(SESSION_ENV, "")
    mode = session.join_env.get(MODE_ENV) or "peer"
    cert = conn.cert
    party = registry(conn.server).get(sid) if sid else None

    def refuse(reason: str) -> bool:
        conn.emit("session.join", "failure", sid=sid, participant_mode=mode, error=reason,
                  **({"login": party.login} if party is not None else {}))
        conn.server.log.info("join refused", sid=sid, user=cert.user if cert else "", mode=mode, reason=reason)
        with contextlib.suppress(Exception):
            session.channel.send_stderr(f"teleport: cannot join session {sid or '(none)'}: {reason}\r\n".encode())
        return False

    if cert is None or conn.roleset is None:
        return refuse("not authenticated")
    if not sid:
        return refuse(f"a {JOIN_PRINCIPAL} connection only joins sessions: set {SESSION_ENV}")
    if command is not None or subsystem is not None:
        return refuse("joining takes a shell request, not a command or subsystem")
    if party is None or party.finished:
        return refuse("no such interactive session on this node (it ended, or it is not interactive)")
    if conn.login not in (JOIN_PRINCIPAL, party.login):
        return refuse(f"cannot switch logins from {party.login} to {conn.login} (join as {JOIN_PRINCIPAL})")
    decision = may_join(conn.roleset, "ssh", party.owner_roles, mode, user=cert.user, owner=party.owner)
    request = conn._request(state, cert, JOIN_VERB, party.login, sid)
    decision = check_access(state.hook, request, decision)
    if not decision.allowed:
        return refuse(decision.reason or "access denied")
    session.started = True
    session.member = member = Member(party, session, mode)
    conn.after_reply(lambda: conn.server.pump.call(lambda: party.add(member)))
    return True


def refuse_join_only(conn: Any, what: str) -> Decision | None:
    """Forwarding and the like on a join-only connection: refused."""
    if conn.login == JOIN_PRINCIPAL:
        return Decision.deny(f"a {JOIN_PRINCIPAL} connection only joins sessions: no {what}")
    return None


def force_terminate(session: Session) -> tuple[bool, str]:
    """Teleport's ``x-teleport-force-terminate`` on a member's channel (transport thread)."""
    member = session.member
    if member is None or member.mode != "moderator":
        return False, "only a moderator may terminate the session"
    member.party.pump.call(lambda: member.party.terminate(member.user))
    return True, ""


def gone(session: Session) -> None:
    """(pump) The member's connection closed."""
    member = session.member
    if member is not None:
        member.party.leave(member)
