"""``python -m tests.process_main teleport.yaml``: what ``teleport start --config FILE`` does.

Loads the config with every installed plugin plus ``$TELEPORT_PLUGINS``, configures logging
from it and runs the process; the exit code is ``run_process``'s (2 for a bad config).
"""

from __future__ import annotations

import sys
from pathlib import Path

from teleport_core.config.load import load_config
from teleport_core.errors import TeleportError
from teleport_core.logs import configure_logging
from teleport_core.plugins import make_plugins
from teleport_core.process import run_process


def main(argv: list[str]) -> int:
    plugins = make_plugins()
    try:
        config = load_config(Path(argv[0]), plugins)
        configure_logging(config.log)
    except TeleportError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return run_process(config, plugins)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
