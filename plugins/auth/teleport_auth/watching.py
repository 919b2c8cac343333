"""Keeping an in-memory snapshot of cluster state valid across auth servers.

The role snapshot (:class:`~teleport_auth.authz.RoleAuthorizer`) and the lock snapshot
(:class:`~teleport_auth.locks.LockStore`) are reused until a backend event under their prefix,
from any auth server sharing the backend, invalidates them; events only invalidate (never patch
a snapshot), so a late event cannot roll one back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from teleport_core.errors import WatcherClosed
from teleport_core.state.backend import Backend, OpType


async def invalidate_on_change(backend: Backend, prefix: bytes, invalidate: Callable[[], None],
                               set_watching: Callable[[bool], None], what: str, log: Any,
                               retry_delay: float = 1.0) -> None:
    """Call ``invalidate()`` on every event under ``prefix``, until cancelled.

    ``set_watching(True)`` once the watcher is live (its INIT event: every later change will be
    seen), ``set_watching(False)`` when it closes; a closed watcher is reopened after ``retry_delay``.
    """
    while True:
        try:
            async with backend.watch([prefix]) as watcher:
                async for event in watcher:
                    invalidate()
                    if event.type is OpType.INIT:
                        set_watching(True)
        except WatcherClosed as exc:
            log.info(f"{what} watcher closed, reopening", reason=str(exc))
        except Exception as exc:
            log.warning(f"{what} watcher failed, reopening", error=f"{type(exc).__name__}: {exc}")
        finally:
            set_watching(False)
            invalidate()
        await asyncio.sleep(retry_delay)
