"""pytest plugin shipped with teleport-core (entry point ``pytest11``), active wherever
teleport-core is installed.

Fixtures:

- ``teleport_plugins``: a freshly built :class:`~teleport_core.plugins.Plugins` with every
  installed plugin (and ``$TELEPORT_PLUGINS``).
- ``teleport_cluster``: a factory that starts a real in-process teleport from a config
  mapping and stops it at teardown::

      def test_my_sink_receives_events(teleport_cluster, tmp_path):
          cluster = teleport_cluster({"teleport": {"storage": {"audit_events_uri": ["mysink://x"]}},
                                      "auth_service": {"enabled": True}})
          ...

  Sections the mapping leaves out are disabled (unlike ``teleport start``, which enables
  them), ``data_dir`` defaults to a fresh temporary directory, and ``diag_addr`` to a free
  port on 127.0.0.1 (``cluster.diag_url``).

The conformance suites are classes to subclass, each needing one fixture:
:class:`~teleport_core.testing.backend_suite.BackendConformance` (``teleport_backend_config``),
:class:`~teleport_core.testing.audit_suite.AuditSinkConformance` (``teleport_audit_uri``),
:class:`~teleport_core.testing.session_suite.SessionStorageConformance` (``teleport_sessions_uri``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from teleport_core.plugins import Plugins
    from teleport_core.testing.cluster import ClusterHandle

# the suites' asserts show the values they compared, like a test file's do
pytest.register_assert_rewrite(
    "teleport_core.testing.backend_suite",
    "teleport_core.testing.audit_suite",
    "teleport_core.testing.session_suite",
    "teleport_core.testing.recording_index_suite",
)

STANDARD_SECTIONS = ("auth_service", "proxy_service", "ssh_service")


@pytest.fixture
def teleport_plugins() -> Plugins:
    from teleport_core.plugins import make_plugins

    return make_plugins()


def cluster_config(data: Mapping[str, Any], data_dir: Path, plugins: Plugins) -> dict[str, Any]:
    """``data`` with test defaults: other sections disabled, data_dir and diag_addr set."""
    config = copy.deepcopy(dict(data))
    teleport = config.setdefault("teleport", {})
    teleport.setdefault("data_dir", str(data_dir))
    teleport.setdefault("diag_addr", "127.0.0.1:0")
    for section in {*STANDARD_SECTIONS, *plugins.services()}:
        config.setdefault(section, {"enabled": False})
    return config


@pytest.fixture
def teleport_cluster(tmp_path: Path) -> Iterator[Callable[..., ClusterHandle]]:
    from teleport_core.plugins import make_plugins
    from teleport_core.testing.cluster import start_cluster

    started: list[ClusterHandle] = []

    def start(data: Mapping[str, Any], plugins: Plugins | None = None, timeout: float = 60) -> ClusterHandle:
        plugins = plugins or make_plugins()
        data_dir = tmp_path / f"cluster-{len(started)}"
        handle = start_cluster(cluster_config(data, data_dir, plugins), plugins, timeout=timeout)
        started.append(handle)
        return handle

    yield start
    for handle in reversed(started):
        handle.stop()
