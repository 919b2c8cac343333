"""Lazy references: ``"package.module:attribute"`` strings resolved only when used.

Hook results name factories and command handlers this way so that loading every plugin's
hook module stays cheap (``tsh --help`` must answer in well under 0.3 s).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from teleport_core.errors import PluginError

Ref = str | Callable[..., Any]


def resolve(ref: Ref) -> Callable[..., Any]:
    """Return the callable ``ref`` names (or ``ref`` itself when it is already callable)."""
    if callable(ref):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"bad reference {ref!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not only ImportError: a module may fail at import in any way
        raise PluginError(f"cannot import {module_name!r} (from {ref!r}): {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise PluginError(f"{module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    if not callable(target):
        raise PluginError(f"{ref!r} is not callable")
    return target  # type: ignore[no-any-return]
