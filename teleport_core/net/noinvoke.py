"""paramiko without invoke: ``paramiko.config`` imports ``invoke`` (about 60-170 ms) only for
``Match exec`` in OpenSSH client config files, which nothing of ours reads (no ``SSHConfig``
use in the kernel or the plugins). While ``paramiko.config`` is being imported, and only then,
``import invoke`` fails with :class:`ModuleNotFoundError`; paramiko catches it (``invoke =
None``) and would raise it back only on a ``Match exec``. Any other ``import invoke``, before or
after, finds the real package. Installed by ``teleport_core/__init__.py``, so every process of
ours (``tsh``, ``tctl``, ``teleport`` and the plugins it loads) has it before its first
``import paramiko``; tests/test_cli_imports.py checks both halves.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any


class NoInvokeForParamikoConfig:
    """A meta path finder refusing ``invoke`` to ``paramiko.config`` while it initializes."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> Any:
        if fullname == "invoke":
            config = sys.modules.get("paramiko.config")
            # importlib marks a module's spec "_initializing" while its body runs (CPython 3.4+;
            # without the mark invoke is merely imported, as paramiko would anyway)
            if config is not None and getattr(config.__spec__, "_initializing", False):
                raise ModuleNotFoundError("invoke is not imported for paramiko.config by teleport-py "
                                          "(SSH config 'Match exec' is not supported)", name="invoke")
        return None


def install() -> None:
    if not any(isinstance(finder, NoInvokeForParamikoConfig) for finder in sys.meta_path):
        sys.meta_path.insert(0, NoInvokeForParamikoConfig())
