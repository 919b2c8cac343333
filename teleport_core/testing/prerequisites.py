"""Tests that need a real outside program (sshd, etcd, ssh-agent) or root."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """A prerequisite is missing: skip the test on a developer's machine, fail it under CI
    (``$CI`` set), where ``.ci/run`` installs every prerequisite and a skip would pass silently."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs it: a missing prerequisite must not pass silently)")
    pytest.skip(message)
