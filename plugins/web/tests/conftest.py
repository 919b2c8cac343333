"""Fixtures of the web UI tests (the cluster itself is in web_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web_helpers import WebCluster, running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    """A cluster without a second factor (logins need no TOTP code, which auth takes once each),
    with users alice (dev: nodes labelled env=test/dev) and bob (no node access)."""
    with running_cluster(tmp_path_factory.mktemp("web"), second_factor="off") as c:
        c.signup("alice", ["dev"])
        c.signup("bob", ["nothing"])
        yield c


@pytest.fixture(scope="session")
def otp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    """A cluster whose second factor is OTP, with alice (dev) enrolled."""
    with running_cluster(tmp_path_factory.mktemp("web-otp"), second_factor="otp") as c:
        c.signup("alice", ["dev"])
        yield c
