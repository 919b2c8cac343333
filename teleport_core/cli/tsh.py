"""``tsh``: the user's client. Plugins may add commands; the kernel adds ``version``."""

from __future__ import annotations

import sys

from teleport_core.cli.common import Builtin, run_tool
from teleport_core.cli.teleport import cmd_version

DESCRIPTION = "teleport-py client: log in to a cluster and reach its nodes over SSH."

BUILTINS = {"version": Builtin("print the version", cmd_version)}


def main(argv: list[str] | None = None) -> int:
    return run_tool("tsh", DESCRIPTION, BUILTINS, argv)


if __name__ == "__main__":
    sys.exit(main())
