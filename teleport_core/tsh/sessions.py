"""``tsh sessions ls [--kind=ssh] [--format=text|json|yaml]``: the live sessions the user may see.

As Teleport's (since its issue 19152): the active sessions' trackers, from the proxy's
``/v1/webapi/sites/<cluster>/sessions``, which asks auth for the user (their own sessions, those
their ``join_sessions`` let them join, every one with ``list`` on ``session_tracker``). ``json``
and ``yaml`` print the ``session_tracker`` resources; ``text`` a table with the participants.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from teleport_core.cli.common import CliContext
    from teleport_core.tsh.profile import Profile

#: Teleport's session kinds (``--kind``); this implementation runs ssh sessions only
KINDS = ("ssh", "k8s", "db", "app", "desktop")
HEAD = ("ID", "Kind", "Created", "Hostname", "Address", "Login", "Participants", "State", "Command")


def _created(text: str) -> str:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rows(trackers: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for item in trackers:
        spec = item.get("spec") or {}
        users = list(dict.fromkeys(str(p.get("user", "")) for p in spec.get("participants") or []))
        out.append([str(spec.get("session_id", "")), str(spec.get("kind", "")), _created(str(spec.get("created", ""))),
                    str(spec.get("hostname", "")), str(spec.get("address", "")), str(spec.get("login", "")),
                    ", ".join(users), str(spec.get("state", "")), str(spec.get("command", ""))])
    return out


def live_sessions(profile: Profile) -> list[dict[str, Any]]:
    """The live sessions (``session_tracker`` resources) the user may see, through the proxy."""
    from teleport_core.tsh.web import call

    found = call(profile.web_addr, "GET", f"/v1/webapi/sites/{profile.cluster}/sessions",
                 insecure=profile.insecure, profile=profile)
    return [item for item in found["sessions"] if isinstance(item, dict)]


def sessions(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import output
    from teleport_core.tsh.web import current

    parser = cli.parser("list the active sessions you may see: yours, those your roles' join_sessions let you "
                        "join, all with list on session_tracker")
    parser.add_argument("action", choices=("ls",), help="ls: list active sessions")
    parser.add_argument("--kind", action="append", choices=KINDS, default=[],
                        help="only sessions of this kind (repeat for several; default: all)")
    output.add_format(parser)
    args = parser.parse_args(argv)
    found = live_sessions(current(args))
    if args.kind:
        found = [t for t in found if (t.get("spec") or {}).get("kind") in args.kind]
    if args.format != "text":
        output.emit(found, args.format)
        return 0
    print("\n".join(output.table(HEAD, rows(found), truncate=len(HEAD) - 1)))
    return 0
