"""``tctl``: cluster administration. Its commands come from plugins (users, nodes, tokens,
roles and CAs from teleport-auth); the kernel adds only ``version``."""

from __future__ import annotations

import sys

from teleport_core.cli.common import Builtin, run_tool
from teleport_core.cli.teleport import cmd_version

DESCRIPTION = "teleport-py admin tool: manages users, roles, join tokens and certificate authorities."

BUILTINS = {"version": Builtin("print the version", cmd_version)}


def main(argv: list[str] | None = None) -> int:
    return run_tool("tctl", DESCRIPTION, BUILTINS, argv)


if __name__ == "__main__":
    sys.exit(main())
