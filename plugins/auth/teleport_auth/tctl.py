"""``tctl`` commands of teleport-auth: shared helpers and ``tctl status``.

Every command parses its arguments with :func:`command_parser` (a bad flag is one
``ERROR: ...`` line, not argparse's usage dump), then runs one async function against the
auth API with :func:`run`. The other commands live in ``tctl_users``, ``tctl_nodes``,
``tctl_resources`` and ``tctl_auth``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from teleport_core.api.client import AuthClient
from teleport_core.cli.common import GLOBAL_OPTIONS, CliContext, add_global_options
from teleport_core.cli.connect import auth_client, from_profile
from teleport_core.config.values import format_duration, parse_duration
from teleport_core.errors import AccessDenied, TeleportError

FORMATS = ("text", "json")


class UsageError(TeleportError):
    """A command line ``tctl`` cannot run: a bad flag, a missing argument or a bad value."""


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one ``ERROR:`` line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see \"{self.prog} --help\")")

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """Like ``parse_args``; an unknown argument is reported against the subcommand given."""
        args, extra = self.parse_known_args(argv)
        if extra:
            subcommand = getattr(args, "subcommand", None)
            prog = f"{self.prog} {subcommand}" if subcommand else self.prog
            raise UsageError(f"{prog}: unrecognized arguments: {' '.join(extra)} (see \"{prog} --help\")")
        return args


def command_parser(cli: CliContext, description: str, **kwargs: Any) -> CommandParser:
    """The parser of one command (``tctl users``), accepting tctl's global options too."""
    parser = CommandParser(prog=f"{cli.tool} {cli.command}", description=description, **kwargs)
    add_global_options(parser, cli.tool)
    return parser


def subcommands(parser: CommandParser, tool: str = "tctl") -> Callable[[str, str], CommandParser]:
    """Add a required subcommand to ``parser``; returns ``add(name, help)`` giving each one's parser.

    Each subcommand accepts the global options as well (``tctl users add -c FILE joe``); one
    given before the subcommand is kept.
    """
    group = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True, parser_class=CommandParser)

    def add(name: str, help_text: str) -> CommandParser:
        sub: CommandParser = group.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in GLOBAL_OPTIONS[tool]:
            # no default here: it would clobber a value given before the subcommand
            sub.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})
        return sub

    return add


def run(cli: CliContext, args: Any, body: Callable[[AuthClient], Awaitable[int]]) -> int:
    """Connect to the auth API with tctl's global options and run ``body`` with the client."""

    async def main() -> int:
        async with auth_client(args, cli.plugins) as client:
            try:
                return await body(client)
            except AccessDenied as exc:
                if not from_profile(client):
                    raise
                raise AccessDenied(f"{exc} (tctl used your tsh login: log in as a user whose roles allow this, "
                                   "or run tctl on the auth server)") from None

    return asyncio.run(main())


# -- argument values ---------------------------------------------------------------------------------


def split_list(text: str, flag: str, *, required: bool = True) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty item (``a,,b``) or list is a :class:`UsageError`."""
    items = [item.strip() for item in text.split(",")]
    if text.strip() == "" and not required:
        return []
    if not items or any(not item for item in items):
        raise UsageError(f'{flag}: expected a comma-separated list like "a,b", got {json.dumps(text)}')
    return list(dict.fromkeys(items))


def check_ttl(text: str | None, flag: str = "--ttl") -> str:
    """Validate a Go duration locally (``30m``, ``1h``); returns it (``""`` when not given)."""
    if text is None:
        return ""
    try:
        value = parse_duration(text)
    except ValueError:
        raise UsageError(f'{flag}: expected a duration like "30m" or "1h", got {json.dumps(text)}') from None
    if value <= dt.timedelta(0):
        raise UsageError(f"{flag}: must be positive, got {json.dumps(text)}")
    return text


def short_duration(value: dt.timedelta) -> str:
    """A duration as Teleport prints it in messages: ``1h``, ``30m``, ``1h30m``, ``45s``."""
    text = format_duration(dt.timedelta(seconds=round(value.total_seconds())))
    if text.endswith("h0m0s"):
        return text[: -len("0m0s")]
    if text.endswith("m0s"):
        return text[: -len("0s")]
    return text


# -- output ------------------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A text table like Teleport's: a header, a dashed rule, then the rows, columns space-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        " ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in ([*headers], ["-" * w for w in widths], *rows)
    ]
    return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters escaped (names come from the server)."""
    if text.isprintable():
        return text
    return json.dumps(text)[1:-1]


def labels_text(labels: dict[str, Any]) -> str:
    """``k=v,k2=v2`` sorted by key."""
    return ",".join(f"{printable(str(k))}={printable(str(v))}" for k, v in sorted(labels.items()))


def human_time(when: dt.datetime) -> str:
    """Go's ``time.RFC822`` in UTC, as ``tctl`` prints expiry times: ``02 Jan 06 15:04 UTC``."""
    return when.astimezone(dt.UTC).strftime("%d %b %y %H:%M UTC")


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


# -- tctl status -------------------------------------------------------------------------------------


def describe_rotation(rotation: dict[str, Any]) -> str:
    phase = rotation.get("phase", "standby")
    last = rotation.get("last_rotated")
    if phase not in ("standby", ""):
        return f"rotation in progress: phase {phase} ({rotation.get('mode', 'manual')} mode)"
    if not last:
        return "never updated"
    when = dt.datetime.fromisoformat(last)
    return f"rotated {when.strftime('%Y-%m-%d %H:%M:%S UTC')}"


def status(argv: list[str], cli: CliContext) -> int:
    """``tctl status``: cluster name, version, CA rotation state and the CA pin."""
    parser = command_parser(cli, "Cluster status: name, version, CA rotation state and the CA pin.")
    parser.add_argument("--format", choices=FORMATS, default="text")
    args = parser.parse(argv)

    async def body(client: AuthClient) -> int:
        info = await client.status()
        if args.format == "json":
            print_json(info)
            return 0
        rows = [
            ("Cluster", info["cluster_name"]),
            ("Version", info["version"]),
            ("User CA", describe_rotation(info["cas"]["user"])),
            ("Host CA", describe_rotation(info["cas"]["host"])),
        ]
        # every trusted host CA's pin (two during a host CA rotation), the active one first
        pins = [info["ca_pin"], *(pin for pin in info.get("ca_pins") or () if pin != info["ca_pin"])]
        rows.extend(("CA pin", pin) for pin in pins)
        # the live auth servers (several on a shared backend) and where each writes the audit
        rows.extend(("Auth", f"{a['nodename']} at {a['addr']} ({a['host_uuid']}): audit "
                             f"{', '.join(a['audit_events_uri'])}, recordings {a['audit_sessions_uri']}")
                    for a in info.get("auth_servers") or ())
        for name, value in rows:
            print(f"{name:<8} {value}")
        return 0

    return run(cli, args, body)
