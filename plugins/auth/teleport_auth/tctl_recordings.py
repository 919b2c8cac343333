"""``tctl recordings ls``: recorded sessions, as Teleport's command (``--format``, ``--from-utc``,
``--to-utc``, ``--last``, ``--limit``), from the session records of the cluster (the same on every
auth server); ``--refused`` lists the recordings auth refused for good instead (host, session,
time, status, reason), so none sits unseen in a node's ``.refused`` file.

``tctl recordings reindex [SID ...]`` indexes recordings again for text search (``tsh recordings ls
--search``): the given ones, or every stored recording, a batch at a time (auth reads each from
the session storage); it says which failed and why, and exits non-zero then."""

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


async def reindexing(client: AuthClient, sids: list[str], output: str) -> int:
    """Index ``sids`` (every stored recording when empty) again, in batches; prints what was done."""
    from teleport_core.state.sessions import check_session_id

    for sid in sids:
        check_session_id(sid)
    indexed = truncated = 0
    failed: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = [{"sids": sids[i:i + 100]} for i in range(0, len(sids), 100)]
    after: str | None = None if sids else ""
    while batches or after is not None:
        request = batches.pop(0) if batches else {"all": True, "after": after, "limit": 20}
        answer = await client.call("POST", "/v1/sessions/reindex", request, timeout=300)
        indexed += int(answer["indexed"])
        truncated += int(answer["truncated"])
        failed.extend(answer["failed"])
        if "all" in request:
            after = answer["next"] or None
    if output == "json":
        print_json({"indexed": indexed, "truncated": truncated, "failed": failed})
    else:
        print(f"indexed {indexed} recording(s) for search ({truncated} cut at the indexed text cap)")
        for failure in failed:
            print(f"failed: {printable(str(failure['sid']))}: {printable(str(failure['error']))}")
    return 1 if failed else 0


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
    reindex = add("reindex", "Index recordings again for text search (tsh recordings ls --search): the given "
                             "sessions, or every stored recording.")
    reindex.add_argument("sids", nargs="*", metavar="SESSION_ID", help="only these sessions (default: all)")
    reindex.add_argument("--format", choices=FORMATS, default="text")
    args = parser.parse(argv)
    if args.subcommand == "reindex":
        return run(cli, args, lambda client: reindexing(client, list(args.sids), args.format))
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
