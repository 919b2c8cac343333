"""``tctl recordings ls``: recorded sessions, as Teleport's command (``--format``, ``--from-utc``,
``--to-utc``, ``--last``, ``--limit``), from the session records of the cluster (the same on every
auth server); ``--refused`` lists the recordings auth refused for good instead (host, session,
time, status, reason), so none sits unseen in a node's ``.refused`` file."""

from __future__ import annotations

from typing import Any

from teleport_auth.tctl import FORMATS, UsageError, command_parser, print_json, printable, run, subcommands, table
from teleport_core.api.client import AuthClient
from teleport_core.cli.common import CliContext
from teleport_core.tsh.recordings import MAX_LIMIT, listing_window
from teleport_core.tsh.recordings import table as sessions_table


def refusals_table(refusals: list[dict[str, Any]]) -> str:
    rows = [(printable(str(r["host"])), printable(str(r["sid"])), str(r["time"]), str(r.get("status", "")),
             printable(str(r.get("reason", "")))) for r in refusals]
    return table(("Host", "Session", "Refused", "Status", "Reason"), rows)


def recordings(argv: list[str], cli: CliContext) -> int:
    """``tctl recordings ls [--refused] [--format=text|json] [--from-utc=..] [--to-utc=..] [--last=..] [--limit=N]``."""
    parser = command_parser(cli, "View session recordings.")
    add = subcommands(parser)
    ls = add("ls", "List recorded sessions (with where each recording is), or with --refused the recordings "
                   "auth refused for good.")
    ls.add_argument("--format", choices=FORMATS, default="text")
    ls.add_argument("--from-utc", default="", help="start of the window, RFC 3339 (default: 24h ago)")
    ls.add_argument("--to-utc", default="", help="end of the window, RFC 3339 (default: now)")
    ls.add_argument("--last", default="", help="the window is this long, up to --to-utc (e.g. 5h30m)")
    ls.add_argument("--limit", default="50", help=f"at most this many sessions (1 to {MAX_LIMIT})")
    ls.add_argument("--refused", action="store_true",
                    help="list the uploads auth refused for good (403: not the session's node; 409: a different "
                         "recording is stored), newest first")
    args = parser.parse(argv)
    if not args.limit.isdigit() or not 1 <= int(args.limit) <= MAX_LIMIT:
        raise UsageError(f"--limit: expected a number from 1 to {MAX_LIMIT}, got {args.limit!r}")
    limit = int(args.limit)

    async def refused(client: AuthClient) -> int:
        answer = await client.call("GET", "/v1/upload_refusals")
        found = list(answer["refusals"])
        if args.format == "json":
            print_json(found)
        else:
            print(refusals_table(found))
        return 0

    if args.refused:
        return run(cli, args, refused)
    since, until = listing_window(args.from_utc, args.to_utc, args.last)

    async def listing(client: AuthClient) -> int:
        sessions = await client.list_recordings(since=since.isoformat(), until=until.isoformat(), limit=limit)
        if args.format == "json":
            print_json(sessions)
        else:
            print("\n".join(sessions_table(sessions)))
        return 0

    return run(cli, args, listing)
