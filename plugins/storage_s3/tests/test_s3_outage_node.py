"""S3 down in the middle of a session, through the real path: a node (``teleport start``) records
sessions and uploads them to auth (``PUT /v1/sessions/<sid>/recording``), which stores them in S3
(``teleport.storage.audit_sessions_uri: s3://...``, a moto server on loopback).

While S3 is down the recordings stay in the node's spool (``data_dir/log/upload/sessions``),
``teleport_recordings_pending`` in the node's ``/metrics`` shows the backlog and the node logs a
WARN with it; once S3 is back every recording is uploaded and the spool is empty.

moto keeps its state in memory: the server started again on the same port is empty, the bucket
gone. The S3 plugin re-creates it at the first upload (a WARN in auth's log naming the bucket),
and every recording of the outage arrives, complete: none is lost or refused.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from storage_s3_helpers import MotoServer

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.testing.processes import TeleportProcess, free_port
from teleport_core.testing.waiting import wait_for

for _plugin in ("teleport_auth", "teleport_node"):  # not in this plugin's own tox env: skipped there
    pytest.importorskip(_plugin, reason=f"{_plugin} is not installed (this test runs auth and a node)")
if os.environ.get("CI"):
    import moto  # noqa: F401 - CI installs moto[server]: a missing one must fail, not skip
else:
    pytest.importorskip("moto", reason="moto[server] is not installed (pip install -e 'plugins/storage_s3[test]')")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER = "s3-outage.test"
TOKEN = "s3-outage-node-token-0123456789abcdef"
BUCKET = "rec-outage"
LOGIN = getpass.getuser()
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, 120))


def s3(moto: MotoServer) -> Any:
    return boto3.client("s3", region_name="us-east-1", endpoint_url=moto.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def recordings(moto: MotoServer) -> dict[str, bytes]:
    """Every recording in the bucket: session ID -> content."""
    client = s3(moto)
    out = {}
    for entry in client.list_objects_v2(Bucket=BUCKET, Prefix="records/").get("Contents", []):
        sid = entry["Key"].removeprefix("records/").removesuffix(".cast")
        out[sid] = client.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
    return out


def pending(node: TeleportProcess) -> float:
    found = re.search(r"^teleport_recordings_pending (\S+)$", node.metrics(), re.MULTILINE)
    assert found, "teleport_recordings_pending is not in the node's /metrics"
    return float(found.group(1))




class Cluster:
    def __init__(self, root: Path, moto: MotoServer) -> None:
        self.root = root
        self.moto = moto
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        uri = f"s3://{BUCKET}/records?region=us-east-1&endpoint={moto.url}&insecure=true&path_style=true"
        self.auth = TeleportProcess(root, "auth", {
            "teleport": {"storage": {"audit_sessions_uri": uri}},
            "auth_service": {"cluster_name": CLUSTER, "listen_addr": self.addr, "tokens": [f"node:{TOKEN}"]},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}},
            env={**os.environ, **AWS_ENV})
        self.node: TeleportProcess | None = None
        self.node_port = free_port()

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.auth.data_dir / "keys" / "auth")])

    def start(self) -> None:
        self.auth.start()

        async def prepare() -> tuple[str, str, dict[str, Any]]:
            async with self.admin() as admin:
                pin = str((await admin.status())["ca_pin"])
                known = str((await admin.get_cert_authority("host"))["known_hosts"])
                await admin.create_user("rita", ["access"], {"logins": [LOGIN]})
                key = keys.generate_private_key("ed25519")
                write_private(self.root / "rita", keys.private_key_openssh(key))
                return pin, known, await admin.sign_user_cert("rita", keys.public_key_openssh(key), ttl="1h")

        pin, known, certs = run(prepare())
        write_public(self.root / "rita-cert.pub", certs["ssh_cert"] + "\n")
        (self.root / "known_hosts").write_text(known)
        self.node = TeleportProcess(self.root, "node1", {
            "teleport": {"auth_server": self.addr, "auth_token": TOKEN, "ca_pin": pin},
            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"listen_addr": f"127.0.0.1:{self.node_port}"}}).start()

    def ssh_argv(self, command: str) -> list[str]:
        key = self.root / "rita"
        return ["ssh", "-F", "/dev/null", "-p", str(self.node_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias=node1.{CLUSTER}",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
                "-o", f"CertificateFile={key}-cert.pub", "-o", "ConnectTimeout=30",
                f"{LOGIN}@127.0.0.1", command]  # fmt: skip

    def ssh(self, command: str) -> str:
        result = subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr + self.logs()
        return result.stdout

    def logs(self) -> str:
        node = self.node.log()[-3000:] if self.node else ""
        return f"\n==== auth\n{self.auth.log()[-3000:]}\n==== node\n{node}"

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.auth.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    moto = MotoServer()
    s3(moto).create_bucket(Bucket=BUCKET)
    started = Cluster(tmp_path, moto)
    try:
        started.start()
        yield started
    finally:
        started.stop()
        started.moto.stop()


@pytest.mark.hook_call_site("teleport_session_storages")
def test_recordings_wait_in_the_node_spool_while_s3_is_down_and_none_is_lost(cluster: Cluster) -> None:
    assert cluster.node is not None
    node = cluster.node
    spool = node.data_dir / "log" / "upload" / "sessions"

    # before the outage: a session's recording reaches S3 through auth
    assert cluster.ssh("echo before-outage") == "before-outage\n"
    wait_for(lambda: any(b"before-outage" in body for body in recordings(cluster.moto).values()),
             "the first recording in S3")
    wait_for(lambda: pending(node) == 0, "no recording pending")

    # S3 goes down in the middle of a session
    session = subprocess.Popen(cluster.ssh_argv("echo two-start; sleep 3; echo two-end"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert session.stdout is not None
    assert session.stdout.readline() == "two-start\n"
    cluster.moto.stop()
    out, err = session.communicate(timeout=120)
    assert session.returncode == 0, err + cluster.logs()
    assert out == "two-end\n"
    assert cluster.ssh("echo during-outage") == "during-outage\n"  # sessions go on without S3

    # both recordings wait in the spool; /metrics and the log show the backlog
    wait_for(lambda: pending(node) == 2, "teleport_recordings_pending 2 in /metrics")
    casts = sorted(p.name for p in spool.iterdir() if p.name.endswith(".cast"))
    assert len(casts) == 2, casts
    warning = wait_for(lambda: [line for line in node.log().splitlines()
                                if "cannot upload recording, kept in the spool" in line], "the WARN of the backlog")
    assert "WARN" in warning[-1] and "recordings_pending=" in warning[-1], warning[-1]
    # the reason names the S3 endpoint and what failed
    assert f"s3://{BUCKET}/records at {cluster.moto.url}" in warning[-1], warning[-1]
    assert "Could not connect to the endpoint URL" in warning[-1], warning[-1]
    assert node.alive and cluster.auth.alive

    # S3 is back, empty (the bucket gone): auth re-creates the bucket, everything in the spool is uploaded
    cluster.moto = MotoServer(port=cluster.moto.port)
    wait_for(lambda: pending(node) == 0, "the backlog uploaded", timeout=180)
    healed = [line for line in cluster.auth.log().splitlines() if f"bucket '{BUCKET}' is gone from" in line]
    assert healed and "WARN" in healed[0] and "NoSuchBucket" in healed[0], cluster.logs()
    assert "re-creating it (versioning on, default encryption)" in healed[0], healed[0]
    assert s3(cluster.moto).get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    stored = recordings(cluster.moto)
    assert {name.removesuffix(".cast") for name in casts} == set(stored), (casts, list(stored))
    bodies = b"".join(stored.values())
    for marker in (b"two-start", b"two-end", b"during-outage"):
        assert marker in bodies
    assert not [p for p in spool.iterdir() if p.name.endswith(".cast")]
    assert not [p for p in spool.iterdir() if p.name.endswith(".refused")], "no recording was refused"


def test_s3_unreachable_at_start_is_reported_and_stops_nothing(tmp_path: Path) -> None:
    """Auth and a node in one process, S3 down from the start: both services become ready, auth
    logs an ERROR naming the S3 URL and what failed (recordings would wait in the spool, as
    the test above shows)."""
    dead = f"http://127.0.0.1:{free_port()}"
    uri = f"s3://{BUCKET}/records?region=us-east-1&endpoint={dead}&insecure=true"
    node_port = free_port()
    process = TeleportProcess(tmp_path, "all-in-one", {
        "teleport": {"storage": {"audit_sessions_uri": uri}},
        "auth_service": {"cluster_name": CLUSTER, "listen_addr": f"127.0.0.1:{free_port()}"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"listen_addr": f"127.0.0.1:{node_port}"}}, env={**os.environ, **AWS_ENV})
    try:
        process.start()  # ready: every service started
        errors = wait_for(lambda: [line for line in process.log().splitlines()
                                   if "ERROR" in line and "session storage is unreachable" in line], "the ERROR")
        assert f"endpoint={dead}" in errors[0] and f"cannot reach S3 at {dead}" in errors[0], errors[0]
        assert "Traceback" not in process.log()
        assert re.search(r"^teleport_recordings_pending 0", process.metrics(), re.MULTILINE)
        assert process.alive
    finally:
        process.stop()
