"""The import paths the 2026-12 regrouping moved (``teleport_core.audit`` is now
``teleport_core.state.audit``, ...) keep working for one release, with a DeprecationWarning:
importing an old path gives the very module at its new path (one module object, not a copy),
so plugins written against the old layout run unchanged while they move. See
docs/architecture.md.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Loader as _LoaderBase
else:
    _LoaderBase = object  # importlib.abc costs tsh about 10-20 ms of imports (tempfile, ...)

MOVED: dict[str, str] = {
    # old (under teleport_core.) -> new
    "keys": "pki.keys", "certs": "pki.certs", "identity": "pki.identity", "pins": "pki.pins",
    "secret": "pki.secret", "serverrole": "pki.serverrole",
    "access": "policy.access", "roles": "policy.roles", "locks": "policy.locks",
    "backend": "state.backend", "backends": "state.backends", "sessions": "state.sessions",
    "audit": "state.audit", "audit_spool": "state.audit_spool", "nodes": "state.nodes",
    "lookup_plugin": "state.lookup_plugin",
    "tlsserver": "net.tlsserver", "diag": "net.diag", "pipes": "net.pipes", "allocator": "net.allocator",
    "httplimits": "net.httplimits", "limits": "net.limits",
    "client": "api.client", "join": "api.join", "renewal": "api.renewal", "schema": "api.schema",
}
PREFIX = "teleport_core."


class _Alias(_LoaderBase):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there", DeprecationWarning,
                      stacklevel=3)
        return importlib.import_module(self.target)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module at the new path was imported whole."""


class MovedFinder:
    """Finds a moved path (or a module inside a moved package) as an alias of its new home."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PREFIX):
            return None
        rest = fullname[len(PREFIX):]
        head, _, tail = rest.partition(".")
        new = MOVED.get(head)
        if new is None:
            return None
        name = PREFIX + new + (f".{tail}" if tail else "")
        return importlib.machinery.ModuleSpec(fullname, _Alias(name), is_package=head == "backends" and not tail)


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # first: a module inside a moved package is an alias too
