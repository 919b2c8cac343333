"""A ``file://`` audit log whose directory cannot be created is refused when the auth service
opens it at start (naming the directory and why), not at the first event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_audit_sink
from teleport_core.testing.processes import TeleportProcess, free_port


def test_directory_under_a_regular_file_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    uri = f"file://{tmp_path}/afile/log"
    with pytest.raises(ConfigError, match=f"cannot create {tmp_path}/afile/log: {tmp_path}/afile is not a directory"):
        asyncio.run(open_audit_sink(make_plugins(), uri, tmp_path))
    assert (tmp_path / "afile").read_text() == "not a directory"


@pytest.mark.e2e
def test_teleport_start_exits_1_naming_the_audit_directory(tmp_path: Path) -> None:
    pytest.importorskip("teleport_auth", reason="the auth plugin is not installed")
    (tmp_path / "afile").write_text("x")
    process = TeleportProcess(tmp_path, "auth", {
        "teleport": {"storage": {"audit_events_uri": [f"file://{tmp_path}/afile/log", "stdout://"]}},
        "auth_service": {"cluster_name": "audit.test", "listen_addr": f"127.0.0.1:{free_port()}"},
        "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}})
    process.start(wait=False)
    assert process.proc is not None
    assert process.proc.wait(120) == 1
    stderr = (process.folder / "stderr.log").read_text()
    assert "teleport.storage.audit_events_uri" in stderr, stderr
    assert f"{tmp_path}/afile is not a directory" in stderr, stderr
    assert "Traceback" not in process.log()
