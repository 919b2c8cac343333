"""The pytest plugin teleport-core ships: its fixtures work for plugin authors."""

from __future__ import annotations

import socket

import httpx
import pytest

pytestmark = pytest.mark.e2e  # real processes end to end

pytest_plugins = ["pytester"]


def test_cluster_fixture_runs_a_real_process(teleport_cluster, monkeypatch):
    monkeypatch.setenv("TELEPORT_PLUGINS", "tests.plugins.sample_service")
    from teleport_core.plugins import make_plugins

    cluster = teleport_cluster({"sample_service": {"enabled": True, "listen_addr": "127.0.0.1:0"}}, make_plugins())
    assert httpx.get(f"{cluster.diag_url}/readyz").status_code == 200
    assert cluster.process.units["sample_service"].state == "running"
    service = cluster.process.services["sample_service"]
    with socket.create_connection((service.addr.host, service.addr.port), timeout=5) as conn:  # the real echo listener
        conn.sendall(b"ping\n")
        assert conn.recv(16) == b"ping\n"
    assert not cluster.config.services["proxy_service"].enabled  # sections left out are disabled


def test_plugin_is_registered_through_entry_point(pytester):
    pytester.makepyfile(
        """
        def test_fixture_available(teleport_plugins):
            assert "sqlite" in teleport_plugins.backends()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
