"""A session's audit events as every host that runs sessions writes them (our node, and the proxy
for agentless OpenSSH nodes): the fields ``session.start`` records and ``session.end`` repeats
(:func:`start_fields`), and the events a session's end writes (:func:`emit_end`)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any, Protocol

from teleport_core.recording.commands import scp_action
from teleport_core.state.audit import format_time


class Emit(Protocol):
    """A host's audit call: ``emit(event, outcome, **fields)``."""

    def __call__(self, event: str, outcome: str = ..., **fields: Any) -> None: ...


def rfc3339(unix: float) -> str:
    """Unix time as the events' RFC 3339 UTC text."""
    return format_time(dt.datetime.fromtimestamp(unix, dt.UTC))


def start_fields(sid: str, *, interactive: bool, command: str | None, recording: str, started: float,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a session's record says from its start (``session.end`` repeats it; the sidecar keeps it
    for a crash): ``recording`` is "off" when nothing is recorded, so no upload is awaited."""
    return {"sid": sid, "proto": "ssh", "interactive": interactive, "initial_command": [command or ""],
            "session_recording": recording, "session_start": rfc3339(started), **(extra or {})}


def emit_end(emit: Emit, *, sid: str, command: str | None, code: int | None, tx: int, rx: int,
             end_fields: Mapping[str, Any], end_reason: str, recorded_bytes: int,
             extra: Mapping[str, Any] | None = None) -> None:
    """The events a session's end writes, in order: its command's (``scp`` or ``exec``, with the exit
    code; 255 for a signal or none), ``session.data`` (bytes each way), ``session.end``."""
    exit_code = str(code if code is not None and code >= 0 else 255)
    if command is not None:
        scp = scp_action(command)
        if scp is not None:
            action, target = scp
            emit("scp", action if code == 0 else f"{action}_failure", sid=sid, path=target, action=action,
                 command=command, exitCode=exit_code)
        else:
            emit("exec", "ok" if code == 0 else "failure", sid=sid, command=command, exitCode=exit_code)
    emit("session.data", "ok", sid=sid, tx=tx, rx=rx)
    emit("session.end", "ok", **end_fields, end_reason=end_reason, **(extra or {}),
         session_stop=rfc3339(time.time()), recorded_bytes=recorded_bytes)
