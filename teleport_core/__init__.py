"""teleport-py kernel: hook specs, config, plugin manager, process, embedded backends.

Importing this package is cheap on purpose (``tsh`` runs once per SSH connection as a
ProxyCommand): submodules are imported only by the code that needs them.
"""

__version__ = "0.1.0"

import pluggy as _pluggy

from teleport_core import _moved as _moved_paths
from teleport_core.net import noinvoke as _noinvoke

hookimpl = _pluggy.HookimplMarker("teleport")
"""Decorator marking a plugin's hook implementations (``@hookimpl``, ``@hookimpl(trylast=True)``)."""

_noinvoke.install()  # paramiko.config imports without invoke (for 'Match exec' only)
_moved_paths.install()  # the paths the 2026-12 regrouping moved keep working, with a warning
