"""Several auth servers on one etcd must share where audit events and recordings go
(``teleport_auth.ha``): a second auth server whose audit log or recordings would stay local (the
default, under its data_dir), or go elsewhere than the first one's, is refused at start with a
message naming the keys and the shared options; the first keeps serving."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from etcd_server import EtcdMember, etcd_fixture
from ha_cluster import admin, auth_process, shared_storage

from teleport_core.api.client import AuthClient, load_tls
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.testing.processes import TeleportProcess

pytest.importorskip("teleport_auth", reason="the auth plugin is not installed")

from teleport_auth.ha import comparable, is_local

pytestmark = pytest.mark.e2e


def test_comparable_and_local_forms(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert comparable(f"file://{data}/log/") == f"file://{data}/log"
    assert comparable(f"file://{data}/x/../log?server_id=auth-1") == f"file://{data}/log"
    assert comparable("s3://rec/prefix/?region=us-east-1&endpoint=http://m:9000") == comparable(
        "S3://rec/prefix?endpoint=http://m:9000&region=us-east-1")
    assert comparable("s3://rec/a") != comparable("s3://rec/b")
    assert is_local(f"file://{data}/log", data) and is_local(f"file://{data}", data)
    assert not is_local(f"file://{tmp_path}/shared/audit", data)
    assert not is_local(f"file://{tmp_path}/data-other/log", data)  # a sibling, not under data_dir
    assert not is_local("s3://rec/prefix", data) and not is_local("stdout://", data)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    assert is_local(f"file://{tmp_path}/link/log", data)  # a symlink into data_dir is still local


def refused(process: TeleportProcess) -> str:
    """Start ``process``, which must exit 1; the ERROR line of its refusal."""
    process.start(wait=False)
    assert process.proc is not None
    assert process.proc.wait(120) == 1, process.log()
    log = process.log()
    assert "Traceback" not in log and "teleport is ready" not in log, log
    errors = [line for line in log.splitlines() if "ERROR" in line and "auth_service failed to start" in line]
    assert errors, log
    return errors[0]


def test_second_auth_server_with_local_audit_is_refused_and_the_first_keeps_serving(
        tmp_path: Path, etcd: EtcdMember) -> None:
    prefix = f"/ha-config-{uuid.uuid4().hex[:8]}"
    first = auth_process(tmp_path, "auth-1", [etcd.url], prefix).start()  # shared directories
    try:
        # the default: audit log and recordings under the second server's own data_dir
        second = auth_process(tmp_path, "auth-2", [etcd.url], prefix, storage={})
        line = refused(second)
        data = second.data_dir
        assert "teleport.storage: another auth server shares this cluster state (auth-1 (" in line, line
        assert f"audit_events_uri file://{data}/log is under this server's data_dir" in line, line
        assert f"audit_sessions_uri file://{data}/log/records is under this server's data_dir" in line, line
        assert f"audit_events_uri differs: [file://{data}/log] here, [file://{tmp_path}/shared/audit] on auth-1" in line
        for option in ("teleport.storage.audit_events_uri", "teleport.storage.audit_sessions_uri",
                       "a shared directory outside data_dir", "file:///mnt/shared/audit", "s3://bucket/prefix",
                       "high-availability audit backend"):
            assert option in line, (option, line)
        assert "ERROR: auth_service failed to start: teleport.storage: another auth server" in (
            second.folder / "stderr.log").read_text()

        # recordings elsewhere (audit shared): refused too, naming the difference
        elsewhere = {**shared_storage(tmp_path), "audit_sessions_uri": f"file://{tmp_path}/other-records"}
        third = auth_process(tmp_path, "auth-3", [etcd.url], prefix, storage=elsewhere)
        line = refused(third)
        assert (f"audit_sessions_uri differs: file://{tmp_path}/other-records here, "
                f"file://{tmp_path}/shared/records on auth-1") in line, line
        assert "under this server's data_dir" not in line, line

        # the first one never noticed: it serves, and logged the refused peers as ERRORs at most
        assert first.alive

        async def serves() -> None:
            async with admin([first]) as api:
                assert (await api.status())["cluster_name"] == "ha.example.com"
                await api.create_token(["node"], "10m")

        asyncio.run(asyncio.wait_for(serves(), 60))

        # configured alike, a second auth server starts beside it; status lists the live ones
        fourth = auth_process(tmp_path, "auth-4", [etcd.url], prefix).start()

        async def auth_servers() -> list[str]:
            async with admin([first]) as api:
                return sorted(a["nodename"] for a in (await api.status())["auth_servers"])

        assert asyncio.run(asyncio.wait_for(auth_servers(), 60)) == ["auth-1", "auth-4"]
        status = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "status", "-c",
                                 str(first.config_path)], capture_output=True, text=True, timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        rows = sorted(line for line in status.stdout.splitlines() if line.startswith("Auth "))
        assert [row.split()[1] for row in rows] == ["auth-1", "auth-4"], status.stdout
        assert rows[0].endswith(f"audit file://{tmp_path}/shared/audit, recordings file://{tmp_path}/shared/records")

        async def as_status_reader() -> dict[str, Any]:
            """A user who may read the cluster status but not list auth servers sees none of them."""
            async with admin([first]) as api:
                await api.upsert_role({"kind": "role", "version": "v5", "metadata": {"name": "status-reader"},
                                       "spec": {"allow": {"rules": [{"resources": ["cluster_name"],
                                                                     "verbs": ["read"]}]}}})
                await api.create_user("uma", ["status-reader"])
                key = keys.generate_private_key("ed25519")
                certs = await api.sign_user_cert("uma", keys.public_key_openssh(key), "1h")
            identity = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                     tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])
            async with AuthClient(first.addr, [load_tls(identity.client_context())]) as user:
                return dict(await user.status())

        seen = asyncio.run(asyncio.wait_for(as_status_reader(), 60))
        assert seen["cluster_name"] == "ha.example.com" and seen["auth_servers"] == []
        fourth.stop()  # a graceful stop withdraws its announcement
        assert asyncio.run(asyncio.wait_for(auth_servers(), 60)) == ["auth-1"]
    finally:
        first.stop()


__all__ = ["etcd_fixture"]  # the session etcd fixture, imported for pytest
