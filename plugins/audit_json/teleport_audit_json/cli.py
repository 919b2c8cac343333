"""``tctl audit events``: print audit events, oldest first.

Reads the audit log named by ``teleport.storage.audit_events_uri`` of the local config
(``-c/--config``; searches use the first URI) directly from disk. Every page is followed,
so the output is complete up to ``--limit``. Formats:

- ``text``: ``TIME CODE EVENT user=USER sid=SID``, one event a line; a value that is not
  plain (spaces, quotes, control or non-ASCII characters) is printed as a JSON string;
- ``json``: one JSON array, one event object a line;
- ``csv``: a header and one row per event with Teleport's common fields (non-string values
  as JSON); a cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``
  so spreadsheets do not run it as a formula, and control characters are written as
  ``\\uXXXX`` so no value can drive the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import attrs

from teleport_core.cli.common import GLOBAL_OPTIONS, CliContext
from teleport_core.config.load import load_config
from teleport_core.config.values import parse_duration
from teleport_core.resources import open_audit_log
from teleport_core.state.audit import AuditEvent, AuditQuery, format_time

PAGE = 1000
DEFAULT_SINCE = dt.timedelta(hours=24)
NO_END = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
FORMATS = ("text", "json", "csv")
CSV_COLUMNS = (
    "time",
    "event",
    "code",
    "uid",
    "cluster_name",
    "user",
    "login",
    "sid",
    "server_id",
    "server_hostname",
    "server_labels",
    "addr.remote",
    "addr.local",
    "proto",
    "size",
    "initial_command",
)
_PLAIN = re.compile(r"^[A-Za-z0-9@._:/+,-]+$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def parse_time(text: str, now: dt.datetime) -> dt.datetime:
    """An RFC 3339 time, or a duration meaning that long before ``now`` (``1h``, ``30m``)."""
    value = text.strip()
    try:
        ago = parse_duration(value)
    except ValueError:
        pass
    else:
        if ago < dt.timedelta(0):
            raise argparse.ArgumentTypeError(f"a duration means that long ago and cannot be negative, got {text!r}")
        return now - ago
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time like 2024-05-01T12:00:00Z or a duration like 1h (1 hour ago), got {text!r}"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z for UTC or an offset like +02:00")
    return when.astimezone(dt.UTC)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _name(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty string")
        return text

    return check


def _parsers(cli: CliContext, now: dt.datetime) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``tctl audit`` parser and its ``events`` subparser."""
    parser = cli.parser("Audit log commands (teleport-py; not in Teleport's tctl).")
    commands = parser.add_subparsers(dest="action", metavar="COMMAND", required=True)
    events = commands.add_parser(
        "events",
        help="print audit events, oldest first",
        description="Print audit events from the local audit log, oldest first (complete, or up to --limit).",
    )
    for flags, kwargs in GLOBAL_OPTIONS[cli.tool]:  # accepted after the subcommand too
        events.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})
    events.add_argument(
        "--since",
        metavar="TIME",
        type=lambda text: parse_time(text, now),
        default=now - DEFAULT_SINCE,
        help="oldest time (inclusive): RFC 3339 or a duration ago such as 1h (default: 24h)",
    )
    events.add_argument(
        "--until",
        metavar="TIME",
        type=lambda text: parse_time(text, now),
        default=NO_END,
        help="newest time (exclusive): RFC 3339 or a duration ago (default: no limit)",
    )
    events.add_argument(
        "--type",
        dest="types",
        metavar="TYPE",
        nargs="+",
        action="extend",
        type=_name("an event type such as user.login"),
        default=[],
        help="only these event types (repeatable; several may follow one --type)",
    )
    events.add_argument("--user", type=_name("a user name"), help="only events of this user")
    events.add_argument("--sid", type=_name("a session id"), help="only events of this session")
    events.add_argument("--limit", type=_positive, default=None, help="print at most N events")
    events.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    return parser, events


def audit(argv: list[str], cli: CliContext) -> int:
    """``tctl audit events ...``"""
    now = dt.datetime.now(dt.UTC)
    parser, events_parser = _parsers(cli, now)
    args = parser.parse_args(argv)
    if args.auth_server or args.identity:
        events_parser.error(
            "this command reads the local audit log named by -c/--config; --auth-server and --identity "
            "are not supported yet"
        )
    if args.since >= args.until:
        events_parser.error(f"--since ({format_time(args.since)}) must be before --until ({format_time(args.until)})")
    query = AuditQuery(
        since=args.since, until=args.until, event_types=args.types, user=args.user or "", sid=args.sid or ""
    )
    config = load_config(Path(args.config) if args.config else None, cli.plugins)
    return asyncio.run(_print_events(cli, config.storage.audit_events_uri, config.data_dir, query, args))


async def _print_events(
    cli: CliContext, uris: tuple[str, ...], data_dir: Path, query: AuditQuery, args: argparse.Namespace
) -> int:
    audit_log = await open_audit_log(cli.plugins, uris, data_dir)
    out = _Output(args.format, sys.stdout)
    try:
        left: int | None = args.limit
        cursor = ""
        while left is None or left > 0:
            size = PAGE if left is None else min(PAGE, left)
            page = await audit_log.search(attrs.evolve(query, limit=size, cursor=cursor))
            for event in page.events:
                out.write(event)
            if left is not None:
                left -= len(page.events)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
    finally:
        await audit_log.close()
    out.finish()
    return 0


def _plain(value: str) -> str:
    """``value`` as is when plain, else as a JSON string (no control characters reach the terminal)."""
    return value if _PLAIN.match(value) else json.dumps(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _Output:
    """Streams events in one of :data:`FORMATS`."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.format = fmt
        self.stream = stream
        self.count = 0
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, event: AuditEvent) -> None:
        data = event.to_dict()
        if self.format == "text":
            self.stream.write(
                f"{data['time']} {_plain(event.code)} {_plain(event.event)} "
                f"user={_plain(event.user)} sid={_plain(event.sid)}\n"
            )
        elif self.format == "json":
            self.stream.write(("[\n" if self.count == 0 else ",\n") + json.dumps(data, ensure_ascii=True))
        else:
            assert self.csv is not None
            self.csv.writerow([_cell(data.get(column)) for column in CSV_COLUMNS])
        self.count += 1

    def finish(self) -> None:
        if self.format == "json":
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()
