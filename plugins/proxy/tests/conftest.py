"""Fixtures of the proxy tests (the cluster itself is in proxy_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_helpers import Env, running_env


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory) as e:
        yield e
