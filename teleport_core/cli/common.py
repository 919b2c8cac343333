"""What ``teleport``, ``tctl`` and ``tsh`` share: global options, dispatch, one-line errors.

A tool knows its built-in commands; plugins add more through ``teleport_cli_commands``.
Handlers are resolved only when their command runs, so ``--help`` stays fast. Errors the
code raises on purpose (:class:`~teleport_core.errors.TeleportError`) print as
``ERROR: <message>`` with exit code 1; ``-d/--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core import __version__
from teleport_core.errors import TeleportError

if TYPE_CHECKING:
    from teleport_core.plugins import Plugins

Handler = Callable[[list[str], "CliContext"], int]

# Options every command of a tool accepts, before or after the command name (as in Teleport).
GLOBAL_OPTIONS: Mapping[str, Sequence[tuple[tuple[str, ...], dict[str, Any]]]] = {
    "teleport": (
        (("-d", "--debug"), {"action": "store_true", "help": "verbose logging and tracebacks on errors"}),
    ),
    "tctl": (
        (("-c", "--config"), {"metavar": "FILE", "help": "teleport.yaml of the auth server (local admin identity)"}),
        (("--auth-server",), {"metavar": "HOST:PORT", "action": "append", "help": "auth server address"}),
        (("-i", "--identity"), {"metavar": "FILE", "help": "identity file (from tctl auth sign)"}),
        (("--insecure",), {"action": "store_true", "help": "do not verify the server's certificate"}),
        (("-d", "--debug"), {"action": "store_true", "help": "verbose logging and tracebacks on errors"}),
    ),
    "tsh": (
        (("--proxy",), {"metavar": "HOST[:PORT]", "help": "proxy address"}),
        (("--user",), {"metavar": "NAME", "help": "Teleport user name"}),
        (("-i", "--identity"), {"metavar": "FILE", "help": "identity file instead of the profile"}),
        (("--insecure",), {"action": "store_true", "help": "do not verify the proxy's certificate"}),
        (("-d", "--debug"), {"action": "store_true", "help": "verbose logging and tracebacks on errors"}),
    ),
}


def add_global_options(parser: argparse.ArgumentParser, tool: str) -> None:
    for flags, kwargs in GLOBAL_OPTIONS[tool]:
        parser.add_argument(*flags, **kwargs)


@attrs.define
class CliContext:
    """What a command handler receives besides its arguments."""

    tool: str
    command: str
    _plugins: Plugins | None = attrs.field(default=None, alias="plugins")

    @property
    def plugins(self) -> Plugins:
        """The loaded plugins (built on first use)."""
        if self._plugins is None:
            from teleport_core.plugins import make_plugins

            self._plugins = make_plugins()
        return self._plugins

    def parser(self, description: str = "", **kwargs: Any) -> argparse.ArgumentParser:
        """An argument parser for this command that also accepts the tool's global options."""
        parser = argparse.ArgumentParser(prog=f"{self.tool} {self.command}", description=description, **kwargs)
        add_global_options(parser, self.tool)
        return parser


@attrs.frozen
class Builtin:
    help: str
    handler: Handler


def _wants_debug(argv: Sequence[str]) -> bool:
    return any(a in ("-d", "--debug") for a in argv)


def fail(message: str) -> int:
    """Print ``ERROR: message`` to stderr; return exit code 1."""
    print(f"ERROR: {message}", file=sys.stderr)
    return 1


def _commands_help(tool: str, builtins: Mapping[str, Builtin], plugins: Plugins | None) -> str:
    from teleport_core.plugins import KNOWN_PROVIDERS

    rows = [(name, b.help) for name, b in builtins.items()]
    provided: set[str] = set()
    notes: list[str] = []
    if plugins is not None:
        for name, (info, command) in sorted(plugins.cli_commands(tool, builtins).items()):
            rows.append((name, f"{command.help}  [{info.distribution}]"))
            provided.add(name)
        for info in plugins.broken:
            notes.append(f"warning: {info.label} is broken: {info.error}")
    from teleport_core.plugins import install_hint

    missing = sorted({(n, p) for (t, n), p in KNOWN_PROVIDERS.items() if t == tool and n not in provided})
    width = max((len(n) for n, _ in rows), default=8) + 2
    text = "commands:\n" + "\n".join(f"  {n:<{width}}{h}" for n, h in rows)
    if missing:
        hints = {p: install_hint(p) for _, p in missing}
        text += "\n\nnot available:\n" + "\n".join(f"  {n:<{width}}{hints[p]}" for n, p in missing)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def run_tool(tool: str, description: str, builtins: Mapping[str, Builtin], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` for ``tool``, dispatch to a built-in or plugin command, report errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _wants_debug(argv)
    try:
        return _dispatch(tool, description, builtins, argv)
    except TeleportError as exc:
        if debug:
            traceback.print_exc()
        from teleport_core.net.inherit import report_start_failure

        report_start_failure(str(exc))  # a reload's new process (broken config): tell the old one
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _dispatch(tool: str, description: str, builtins: Mapping[str, Builtin], argv: list[str]) -> int:
    from teleport_core.plugins import KNOWN_PROVIDERS, make_plugins

    top = argparse.ArgumentParser(prog=tool, description=description, add_help=False)
    add_global_options(top, tool)
    top.add_argument("-h", "--help", action="store_true")
    top.add_argument("--version", action="store_true")
    top.add_argument("command", nargs="?")
    top.add_argument("args", nargs=argparse.REMAINDER)
    ns, _ = top.parse_known_args(argv)
    if ns.version:
        print(f"{tool} teleport-py v{__version__}")
        return 0
    if ns.command is None or (ns.help and ns.command is None):
        plugins = make_plugins()
        top.print_usage()
        print(f"\n{description}\n\n{_commands_help(tool, builtins, plugins)}")
        print(f"\nRun '{tool} COMMAND --help' for a command's options.")
        return 0 if (ns.help or not argv) else 2
    command = ns.command
    # the handler parses every argument except the command name itself, which stands right
    # before what argparse left as the remainder (not merely its first occurrence in argv)
    position = len(argv) - len(ns.args) - 1
    if argv[position] != command:
        position = argv.index(command)
    rest = argv[:position] + argv[position + 1 :]
    if command in builtins:
        return builtins[command].handler(rest, CliContext(tool, command))
    plugins = make_plugins()
    commands = plugins.cli_commands(tool, builtins)
    if command in commands:
        from teleport_core.refs import resolve

        _info, spec = commands[command]
        handler = resolve(spec.handler)
        return int(handler(rest, CliContext(tool, command, plugins=plugins)))
    package = KNOWN_PROVIDERS.get((tool, command))
    if package:
        from teleport_core.plugins import install_hint

        return fail(f'"{tool} {command}" comes from {package}: {install_hint(package)}')
    from teleport_core.suggest import did_you_mean

    known = [*builtins, *commands]
    hint = did_you_mean(command, known).replace("valid keys", "commands")
    return fail(f'unknown command "{command}"{hint}; run "{tool} --help"')
