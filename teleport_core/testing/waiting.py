"""Polling for tests that watch real processes: :func:`wait_for` a condition, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str = "condition", timeout: float = 120.0,
             interval: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy and return that; fail the test after ``timeout``
    seconds, naming ``what`` and the last value seen. The default timeout is generous: a loaded CI
    machine starts processes slowly, and a passing test waits only as long as it must."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
