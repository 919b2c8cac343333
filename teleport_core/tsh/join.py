"""``tsh join [--mode=observer|peer|moderator] SESSION_ID``: join a live session (Teleport's RFD 43).

The session is looked up among the live sessions the user may see (the proxy's
``/v1/webapi/sites/<cluster>/sessions``, session trackers) to learn its node; tsh then reaches
that node through the proxy as ``tsh ssh`` does, logs in as Teleport's join principal
(``-teleport-internal-join``) with the user's certificate, and asks for the session with
``TELEPORT_SESSION`` and ``TELEPORT_SSH_JOIN_MODE`` (``env`` requests), a terminal and a shell.
The node decides (roles' ``join_sessions``) and tells a refusal on stderr.

Keys, as Teleport's: Ctrl-C leaves (observers and moderators; a peer's Ctrl-C goes to the
session like the owner's), ``t`` terminates the session (moderators). The node reads them, so
tsh only passes the terminal through.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from teleport_core.errors import TeleportError
from teleport_core.tsh.profile import Profile

MODES = ("observer", "peer", "moderator")
DEFAULT_MODE = "observer"  # Teleport's tsh join
JOIN_PRINCIPAL = "-teleport-internal-join"
SESSION_ENV = "TELEPORT_SESSION"
MODE_ENV = "TELEPORT_SSH_JOIN_MODE"


def live_sessions(profile: Profile) -> list[dict[str, Any]]:
    """The live sessions (session_tracker resources) the user may see, through the proxy."""
    from teleport_core.tsh.web import call

    found = call(profile.web_addr, "GET", f"/v1/webapi/sites/{profile.cluster}/sessions",
                 insecure=profile.insecure, profile=profile)
    if isinstance(found, dict):
        found = found.get("sessions") or found.get("trackers") or []
    return [item for item in found if isinstance(item, dict)]


def _spec(item: dict[str, Any]) -> dict[str, Any]:
    spec = item.get("spec")
    return spec if isinstance(spec, dict) else item


def find_session(profile: Profile, sid: str) -> dict[str, Any]:
    """The tracker (its spec) of ``sid``; a clear error when the user sees no such session."""
    for item in live_sessions(profile):
        spec = _spec(item)
        if sid in (spec.get("session_id"), spec.get("sid"), spec.get("id")):
            return spec
    raise TeleportError(f"session {sid} not found: it ended, or your roles do not let you join it "
                        "(see tsh sessions ls)")


def run(profile: Profile, sid: str, mode: str) -> int:
    """Join ``sid`` in ``mode``; the exit status the session ends with."""
    import paramiko

    from teleport_core.tsh import sshclient

    spec = find_session(profile, sid)
    if spec.get("interactive") is False:
        raise TeleportError(f"session {sid} is not interactive: only interactive sessions can be joined")
    node = str(spec.get("server_id") or spec.get("hostname") or "")
    if not node:
        raise TeleportError(f"session {sid}: the cluster does not say which node runs it")
    proxy, transport = sshclient.connect_node(profile, JOIN_PRINCIPAL, node)
    try:
        channel = transport.open_session(timeout=sshclient.TIMEOUT)
        channel.set_environment_variable(SESSION_ENV, sid)
        channel.set_environment_variable(MODE_ENV, mode)
        tty = sys.stdin.isatty()
        if tty:
            import shutil

            size = shutil.get_terminal_size()
            channel.get_pty(os.environ.get("TERM", "xterm"), size.columns, size.lines)
        else:
            channel.get_pty("xterm", 80, 24)
        try:
            channel.invoke_shell()
        except (paramiko.SSHException, EOFError):
            said = b""
            while channel.recv_stderr_ready():  # the node's reason came before its refusal
                said += channel.recv_stderr(4096)
            reason = said.decode(errors="replace").strip()
            raise TeleportError(reason.removeprefix("teleport: ") or f"the node refused to join session {sid}") \
                from None
        if tty:
            return sshclient._interactive(channel)
        return sshclient._pump(channel)
    finally:
        transport.close()
        proxy.close()
