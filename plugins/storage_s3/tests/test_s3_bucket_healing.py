"""A bucket that vanishes under the plugin (S3 restarted empty, or restored without it) is
re-created by the next upload, with a WARN each time; when it cannot be, the upload fails with
``StorageUnavailable`` naming the bucket (callers keep the recording and retry). Against a real
moto S3 server on loopback, restarted empty on the same port (moto keeps its state in memory)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.awsrequest
import pytest
from storage_s3_helpers import CuttableProxy, MotoServer
from teleport_storage_s3.storage import STATE_DIR, StorageUnavailable, open_storage
from test_storage_s3 import _client, _sha256, _uri, _write_random, aws_env

MiB = 1 << 20
BUCKET = "rec-healing"


class S3:
    """A moto server that can be restarted empty on its port."""

    def __init__(self) -> None:
        self.server = MotoServer()

    def restart_empty(self) -> None:
        self.server.stop()
        self.server = MotoServer(port=self.server.port)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> Any:
        return _client(self.server)


@pytest.fixture
def s3() -> Iterator[S3]:
    holder = S3()
    try:
        yield holder
    finally:
        holder.server.stop()


def healing_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "teleport_storage_s3.storage" and BUCKET in r.getMessage()]


def assert_recreated_like_at_open(s3: S3) -> None:
    client = s3.client()
    client.head_bucket(Bucket=BUCKET)
    assert client.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = client.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["single-put", "multipart"])
def test_upload_recreates_a_bucket_that_vanished(s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 size: int) -> None:
    caplog.set_level(logging.INFO, logger="teleport_storage_s3.storage")
    before, after, dest = tmp_path / "before.cast", tmp_path / "after.cast", tmp_path / "out.cast"
    _write_random(before, 100)
    digest = _write_random(after, size)

    async def main() -> None:
        storage = await open_storage(_uri(s3.url, BUCKET), tmp_path)  # creates the bucket
        try:
            await storage.upload("before", before)
            s3.restart_empty()  # the bucket and everything in it are gone
            caplog.clear()
            await storage.upload("after", after)
            await storage.download("after", dest)
        finally:
            await storage.close()

    asyncio.run(main())
    assert _sha256(dest) == digest
    assert_recreated_like_at_open(s3)
    warnings = healing_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"bucket '{BUCKET}' is gone from {s3.url} ("), warnings[0]
    assert f"records/after.cast in s3://{BUCKET}/records at {s3.url} failed: NoSuchBucket" in warnings[0]
    assert "NoSuchBucket" in warnings[0] and "re-creating it (versioning on, default encryption)" in warnings[0]
    assert warnings[1] == f"re-created bucket '{BUCKET}' at {s3.url}; uploads resume"


def test_interrupted_multipart_upload_starts_over_in_the_recreated_bucket(
        s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The local state of an interrupted multipart upload names an upload S3 lost with the bucket:
    the retry re-creates the bucket and sends the whole recording again."""
    caplog.set_level(logging.INFO, logger="teleport_storage_s3.storage")
    source, dest = tmp_path / "spool.cast", tmp_path / "out.cast"
    digest = _write_random(source, 24 * MiB)
    proxy = CuttableProxy(s3.server.port)

    async def main() -> None:
        storage = await open_storage(_uri(proxy.url, BUCKET), tmp_path)
        storage.part_concurrency = 1
        try:
            proxy.cut_after(10 * MiB)
            with pytest.raises(StorageUnavailable):
                await storage.upload("sess-gone", source)
            assert list((tmp_path / STATE_DIR).glob("*.json")), "the interrupted upload's state is kept"
            s3.restart_empty()
            proxy.restore()
            caplog.clear()
            await storage.upload("sess-gone", source)
            await storage.download("sess-gone", dest)
        finally:
            await storage.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()
    assert _sha256(dest) == digest
    assert_recreated_like_at_open(s3)
    assert len(healing_warnings(caplog)) == 2
    assert not list((tmp_path / STATE_DIR).glob("*.json"))
    assert s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_bucket_that_cannot_be_recreated_fails_naming_it_then_heals(
        s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CreateBucket refused (credentials without s3:CreateBucket): the upload fails with
    StorageUnavailable naming the bucket and what to do; once allowed, the next try heals."""
    caplog.set_level(logging.INFO, logger="teleport_storage_s3.storage")
    source, dest = tmp_path / "rec.cast", tmp_path / "out.cast"
    digest = _write_random(source, 1000)

    def deny(**_: Any) -> tuple[botocore.awsrequest.AWSResponse, dict[str, Any]]:
        error = {"Code": "AccessDenied", "Message": "Access Denied"}
        response = botocore.awsrequest.AWSResponse(s3.url, 403, {}, None)
        return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}

    async def main() -> None:
        storage = await open_storage(_uri(s3.url, BUCKET), tmp_path)
        try:
            s3.restart_empty()
            storage.client.meta.events.register("before-call.s3.CreateBucket", deny, unique_id="deny")
            caplog.clear()
            with pytest.raises(StorageUnavailable) as info:
                await storage.upload("sess-denied", source)
            message = str(info.value)
            assert message.startswith(f"bucket '{BUCKET}' is gone from {s3.url} and could not be re-created "
                                      f"(these credentials may not create it (s3:CreateBucket): create bucket "
                                      f"'{BUCKET}' with versioning on): "), message
            assert "AccessDenied (HTTP 403)" in message, message
            warnings = healing_warnings(caplog)
            assert len(warnings) == 2 and "could not be re-created" in warnings[1], warnings
            # the operator grants s3:CreateBucket: the caller's next retry heals
            storage.client.meta.events.unregister("before-call.s3.CreateBucket", unique_id="deny")
            await storage.upload("sess-denied", source)
            await storage.download("sess-denied", dest)
        finally:
            await storage.close()

    asyncio.run(main())
    assert _sha256(dest) == digest
    assert_recreated_like_at_open(s3)


__all__ = ["aws_env"]  # the autouse fixture of dummy credentials, imported for pytest
