"""``teleport start`` with an auth server on an etcd that does not answer: the process exits 1
with one error naming every peer URL and what failed, without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from teleport_core.testing.processes import TeleportProcess, free_port

pytest.importorskip("teleport_auth", reason="the auth plugin is not installed")

pytestmark = pytest.mark.e2e


def test_unreachable_etcd_at_start_exits_1_naming_each_peer(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    process = TeleportProcess(tmp_path, "auth", {
        "teleport": {"storage": {"type": "etcd", "peers": dead, "dial_timeout": "2s"}},
        "auth_service": {"cluster_name": "etcd-down.test", "listen_addr": f"127.0.0.1:{free_port()}"},
        "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}})
    process.start(wait=False)
    assert process.proc is not None
    assert process.proc.wait(120) == 1
    log = process.log()
    errors = [line for line in log.splitlines() if "ERROR" in line]
    expected = "auth_service failed to start: etcd backend: cannot reach any peer: " + "; ".join(
        f"{url}: connection refused" for url in dead)
    assert any(expected in line for line in errors), log
    assert f"ERROR: {expected}" in (process.folder / "stderr.log").read_text()  # also on the terminal
    assert "Traceback" not in log
    assert "teleport is ready" not in log
