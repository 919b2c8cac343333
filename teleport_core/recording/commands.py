"""What a session's command is audited as: an ``scp`` transfer (``scp`` event) or a plain ``exec``.
Shared by the hosts that run sessions: our node, and the proxy for agentless OpenSSH nodes."""

from __future__ import annotations

import os
import shlex


def scp_action(command: str) -> tuple[str, str] | None:
    """``("upload", path)`` for ``scp -t``, ``("download", path)`` for ``scp -f``, else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or os.path.basename(words[0]) != "scp":
        return None
    flags = [w for w in words[1:] if w.startswith("-")]
    path = next((w for w in reversed(words[1:]) if not w.startswith("-")), "")
    if any("t" in f for f in flags):
        return "upload", path
    if any("f" in f for f in flags):
        return "download", path
    return None
