"""Fixtures of the identity-store tests: the real SQLite backend on tmp_path and an injectable clock."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Backend


class Clock:
    """A clock that starts at the real time and moves only when told.

    It never runs behind the real time, so expiries the code under test derives from it stay
    in the future for the backend (which hides items by the real time).
    """

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def with_backend(tmp_path: Path) -> Callable[[Callable[[Backend], Awaitable[Any]]], Any]:
    """``with_backend(body)`` runs ``await body(backend)`` on a fresh SQLite backend in ``asyncio.run``."""

    def run(body: Callable[[Backend], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            plugins = make_plugins()
            backend = await open_backend(plugins, storage_config(plugins, {"type": "sqlite"}), tmp_path)
            try:
                return await body(backend)
            finally:
                await backend.close()

        return asyncio.run(main())

    return run
