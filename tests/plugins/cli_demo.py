"""A test plugin adding ``tctl hello``, loaded through ``TELEPORT_PLUGINS``."""

from __future__ import annotations

from teleport_core import hookimpl
from teleport_core.specs import CliCommand


def hello(argv, cli):
    parser = cli.parser("say hello")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    print(f"hello {args.name} config={args.config} tool={cli.tool} command={cli.command}")
    return 7


@hookimpl
def teleport_cli_commands(tool):
    if tool == "tctl":
        return [CliCommand("hello", "greet someone", "tests.plugins.cli_demo:hello")]
    return None
