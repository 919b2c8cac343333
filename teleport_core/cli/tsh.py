"""``tsh``: the user's client. Plugins may add commands; the kernel adds ``version`` and the
commands below (their code, in ``teleport_core.tsh``, is imported only when one runs)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from teleport_core.cli.common import Builtin, run_tool
from teleport_core.cli.teleport import cmd_version
from teleport_core.net.allocator import keep_large_blocks

if TYPE_CHECKING:
    from teleport_core.cli.common import CliContext, Handler

DESCRIPTION = "teleport-py client: log in to a cluster and reach its nodes over SSH."


def _lazy(name: str) -> Handler:
    def run(argv: list[str], cli: CliContext) -> int:
        from teleport_core.tsh import commands

        return int(getattr(commands, name)(argv, cli))

    return run


def _lazy_clusters(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh.clusters import clusters

    return clusters(argv, cli)


def cmd_help(argv: list[str], cli: CliContext) -> int:
    """``tsh help [COMMAND]``: what ``tsh --help`` / ``tsh COMMAND --help`` print (as Teleport's)."""
    parser = cli.parser("show the commands, or one command's options")
    parser.add_argument("topic", nargs="?", metavar="COMMAND", help="the command to explain")
    args, _ = parser.parse_known_args(argv)
    return run_tool("tsh", DESCRIPTION, BUILTINS, [args.topic, "--help"] if args.topic else ["--help"])


def cmd_tsh_version(argv: list[str], cli: CliContext) -> int:
    """``tsh version [--format=text|json|yaml]`` (text and json as ``teleport version``'s)."""
    from teleport_core.tsh import output

    parser = cli.parser("Print the version.")
    output.add_format(parser)
    args = parser.parse_args(argv)
    if args.format != "yaml":
        return cmd_version(argv, cli)
    from teleport_core import __version__

    output.emit({"version": __version__, "python": ".".join(map(str, sys.version_info[:3]))}, "yaml")
    return 0


BUILTINS = {
    "help": Builtin("show the commands, or a command's options: help [COMMAND]", cmd_help),
    "version": Builtin("print the version [--format=text|json|yaml]", cmd_tsh_version),
    "login": Builtin("log in through the proxy: [--proxy=HOST[:PORT]] (default: the current profile's) [--user] "
                     "[--ttl] [--out] [--request-roles=ROLES [--request-reason=..] | --request-id=ID]",
                     _lazy("login")),
    "status": Builtin("show the current profile (user, cluster, roles, logins, expiry) [--format=text|json|yaml]",
                      _lazy("status")),
    "logout": Builtin("delete the current profile's key and certificates", _lazy("logout")),
    "ls": Builtin("list the nodes you may reach [label=value] [-v] [--format=text|json|yaml] [--cluster=LEAF]",
                  _lazy("ls")),
    "ssh": Builtin("run a command or shell on a node through the proxy: [-L spec] [-A] [--cluster=LEAF] "
                   "[login@]target [cmd]",
                   _lazy("ssh")),
    "scp": Builtin("copy files to or from a node: [-r] [-p] [--cluster=LEAF] src... dst with [login@]node:path",
                   _lazy("scp")),
    "recordings": Builtin("recordings ls [--format=text|json|yaml]: list recorded sessions you may replay",
                          _lazy("recordings")),
    "join": Builtin("join a live session: [--mode=observer|peer|moderator] SESSION_ID", _lazy("join")),
    "sessions": Builtin("sessions ls [--kind=ssh] [--format=text|json|yaml]: list the active sessions you may see",
                        _lazy("sessions")),
    "request": Builtin("access requests: create --roles=.. [--reason=..] [--nowait], ls, show ID, "
                       "review --approve|--deny ID, drop", _lazy("request")),
    "play": Builtin("replay a recorded session: SID [--speed=N] [--format=text|json|cast] [--follow]", _lazy("play")),
    "clusters": Builtin("list the root cluster and the trusted leaf clusters [--format=text|json|yaml]",
                        _lazy_clusters),
    "config": Builtin("print an ssh_config block for plain OpenSSH through the proxy", _lazy("config")),
    "proxy": Builtin("proxy ssh [user@]host[:port]: stdin/stdout bridge for ProxyCommand", _lazy("proxy")),
}


def main(argv: list[str] | None = None) -> int:
    keep_large_blocks()  # tsh ssh, scp and proxy ssh move bulk data through 256 KiB buffers
    return run_tool("tsh", DESCRIPTION, BUILTINS, argv)


if __name__ == "__main__":
    sys.exit(main())
