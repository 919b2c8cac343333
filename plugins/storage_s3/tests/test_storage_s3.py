"""teleport-storage-s3 against a real S3-compatible HTTP server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from storage_s3_helpers import CuttableProxy, MotoServer
from teleport_storage_s3.storage import (
    STATE_DIR,
    S3SessionStorage,
    StorageUnavailable,
    open_storage,
    part_size_for,
)

from teleport_core.errors import ConfigError, NotFound
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_session_storage
from teleport_core.testing.session_suite import SessionStorageConformance

MiB = 1 << 20
_counter = itertools.count()

# The fixtures live here, not in a conftest.py: other plugins' tests import "conftest" by name.


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials from the standard chain (env), and no profile files from the host."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the module's tests (each test uses its own bucket)."""
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket_name() -> str:
    """A bucket name no other test uses (the moto server is shared by the module)."""
    return f"rec-{os.getpid()}-{next(_counter)}"


def _uri(endpoint: str, bucket: str, prefix: str = "records", extra: str = "") -> str:
    return f"s3://{bucket}/{prefix}?region=us-east-1&endpoint={endpoint}&insecure=true{extra}"


def _client(server: MotoServer) -> Any:
    return boto3.client("s3", region_name="us-east-1", endpoint_url=server.url)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _write_random(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` in chunks; return their sha256."""
    digest = hashlib.sha256()
    seed = os.urandom(MiB)
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            chunk = hashlib.sha256(counter.to_bytes(8, "big")).digest() + seed
            chunk = chunk[: min(len(chunk), size - written)]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            counter += 1
    return digest.hexdigest()


class TestS3Conformance(SessionStorageConformance):
    """The kernel's session-storage conformance suite, through the installed plugin."""

    @pytest.fixture
    def teleport_sessions_uri(self, moto_server: MotoServer, bucket_name: str) -> str:
        return _uri(moto_server.url, bucket_name)


def test_plugin_registers_s3_scheme() -> None:
    spec = make_plugins().session_storage("s3")
    assert spec.factory == "teleport_storage_s3.storage:open_storage"


def test_missing_bucket_is_created_with_versioning_and_encryption(
    moto_server: MotoServer, bucket_name: str, tmp_path: Path
) -> None:
    client = _client(moto_server)

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name), tmp_path)
        await storage.close()

    asyncio.run(main())
    client.head_bucket(Bucket=bucket_name)
    assert client.get_bucket_versioning(Bucket=bucket_name)["Status"] == "Enabled"
    rules = client.get_bucket_encryption(Bucket=bucket_name)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_existing_bucket_is_used_as_is(moto_server: MotoServer, bucket_name: str, tmp_path: Path) -> None:
    client = _client(moto_server)
    client.create_bucket(Bucket=bucket_name)
    client.put_object(Bucket=bucket_name, Key="records/old-1.cast", Body=b"old")
    client.put_object(Bucket=bucket_name, Key="records/nested/x.cast", Body=b"not ours")
    client.put_object(Bucket=bucket_name, Key="other/y.cast", Body=b"not ours")
    client.put_object(Bucket=bucket_name, Key="records/notes.txt", Body=b"not a recording")

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name), tmp_path)
        try:
            assert [(i.session_id, i.size) for i in await storage.list()] == [("old-1", 3)]
        finally:
            await storage.close()

    asyncio.run(main())
    assert "Versions" not in client.list_object_versions(Bucket=bucket_name, Prefix="zzz")
    with pytest.raises(client.exceptions.ClientError):
        client.get_bucket_encryption(Bucket=bucket_name)


@pytest.mark.parametrize(
    ("extra", "size", "expected"),
    [
        ("", 1000, "AES256"),
        ("", 9 * MiB, "AES256"),
        ("&sse_kms_key=alias/recordings", 1000, "aws:kms"),
        ("&sse_kms_key=alias/recordings", 9 * MiB, "aws:kms"),
        ("&disablesse=true", 1000, None),
        ("&disablesse=true", 9 * MiB, None),
    ],
)
def test_server_side_encryption_requested_unless_disabled(
    moto_server: MotoServer, bucket_name: str, tmp_path: Path, extra: str, size: int, expected: str | None
) -> None:
    client = _client(moto_server)
    client.create_bucket(Bucket=bucket_name)  # no default encryption
    source = tmp_path / "rec.cast"
    _write_random(source, size)

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name, extra=extra), tmp_path)
        try:
            await storage.upload("sse-1", source)
        finally:
            await storage.close()

    asyncio.run(main())
    head = client.head_object(Bucket=bucket_name, Key="records/sse-1.cast")
    assert head["ContentLength"] == size
    assert head.get("ServerSideEncryption") == expected
    if expected == "aws:kms":
        assert "alias/recordings" in head["SSEKMSKeyId"]


def test_100_mib_recording_round_trip_streams(moto_server: MotoServer, bucket_name: str, tmp_path: Path) -> None:
    source, dest = tmp_path / "big.cast", tmp_path / "big.out"
    digest = _write_random(source, 100 * MiB)
    peak = 0

    async def main() -> None:
        nonlocal peak
        storage = await open_storage(_uri(moto_server.url, bucket_name, prefix=""), tmp_path)
        try:
            tracemalloc.start()
            await storage.upload("big", source)
            await storage.download("big", dest)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            [info] = await storage.list()
            assert (info.session_id, info.size) == ("big", 100 * MiB)
        finally:
            await storage.close()

    asyncio.run(main())
    assert _sha256(dest) == digest
    assert _client(moto_server).head_object(Bucket=bucket_name, Key="big.cast")["ETag"].endswith('-13"')
    # Parts in flight (4 x 8 MiB, plus copies made while signing and hashing), never the file.
    assert peak < 80 * MiB, f"peak traced memory {peak / MiB:.0f} MiB"
    assert not list((tmp_path / STATE_DIR).iterdir()), "the state of a finished upload is removed"


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[CuttableProxy]:
    link = CuttableProxy(moto_server.port)
    try:
        yield link
    finally:
        link.close()


@pytest.mark.parametrize("answers_lost", [False, True], ids=["answers-recorded", "answers-lost"])
def test_outage_mid_upload_then_resume(
    moto_server: MotoServer, proxy: CuttableProxy, bucket_name: str, tmp_path: Path, answers_lost: bool
) -> None:
    """S3 becomes unreachable in the middle of a multipart upload, then comes back.

    With ``answers_lost`` the local state forgets the parts S3 acknowledged (as if the answers
    were lost in the outage, or the process died before recording them): the retry still
    recognises them on S3 by their MD5 ETags.
    """
    size = 48 * MiB
    source, dest = tmp_path / "spool.cast", tmp_path / "out.cast"
    digest = _write_random(source, size)
    uri = _uri(proxy.url, bucket_name)
    client = _client(moto_server)

    async def first_attempt() -> None:
        storage = await open_storage(uri, tmp_path)
        storage.part_concurrency = 1  # parts in order, so the cut lands in part 3
        try:
            proxy.cut_after(20 * MiB)
            with pytest.raises(StorageUnavailable) as info:
                await storage.upload("sess-outage", source)
            assert "sess-outage.cast" in str(info.value) and proxy.url in str(info.value)
            assert proxy.is_cut
            # Cut off entirely, every call fails the same retryable way.
            with pytest.raises(StorageUnavailable):
                await storage.list()
            with pytest.raises(StorageUnavailable):
                await storage.upload("sess-outage", source)
        finally:
            await storage.close()

    asyncio.run(first_attempt())
    # Nothing visible yet: the object appears only on CompleteMultipartUpload.
    assert client.list_objects_v2(Bucket=bucket_name).get("KeyCount") == 0
    [upload] = client.list_multipart_uploads(Bucket=bucket_name)["Uploads"]
    done = client.list_parts(Bucket=bucket_name, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
    assert [p["PartNumber"] for p in done] == [1, 2], "parts 1 and 2 made it before the cut"
    assert _sha256(source) == digest, "the source is untouched"
    [state_file] = (tmp_path / STATE_DIR).glob("*.json")
    state = json.loads(state_file.read_text())
    assert sorted(state["parts"]) == ["1", "2"]
    if answers_lost:
        state["parts"] = {}
        state_file.write_text(json.dumps(state))

    proxy.restore()
    before = proxy.bytes_up

    async def retry() -> None:
        storage = await open_storage(uri, tmp_path)  # a new process would reopen the same way
        try:
            await storage.upload("sess-outage", source)
            await storage.download("sess-outage", dest)
        finally:
            await storage.close()

    asyncio.run(retry())
    resent = proxy.bytes_up - before
    assert _sha256(dest) == digest
    # Every part S3 held (answered or not before the cut) is kept; only the rest is sent again.
    assert resent < size - len(done) * 8 * MiB + MiB, f"sent {resent} bytes again"
    assert client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == []
    assert not list((tmp_path / STATE_DIR).glob("*.json"))


def test_changed_source_restarts_the_upload(
    moto_server: MotoServer, proxy: CuttableProxy, bucket_name: str, tmp_path: Path
) -> None:
    source, dest = tmp_path / "spool.cast", tmp_path / "out.cast"
    _write_random(source, 24 * MiB)
    uri = _uri(proxy.url, bucket_name)
    client = _client(moto_server)

    async def main() -> None:
        storage = await open_storage(uri, tmp_path)
        try:
            proxy.cut_after(10 * MiB)
            with pytest.raises(StorageUnavailable):
                await storage.upload("sess-changed", source)
            proxy.restore()
            digest = _write_random(source, 20 * MiB)  # rewritten before the retry
            await storage.upload("sess-changed", source)
            await storage.download("sess-changed", dest)
            assert _sha256(dest) == digest
        finally:
            await storage.close()

    asyncio.run(main())
    assert client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) == [], "the stale upload is aborted"


def test_outage_mid_download_leaves_no_file(
    moto_server: MotoServer, proxy: CuttableProxy, bucket_name: str, tmp_path: Path
) -> None:
    source, out = tmp_path / "rec.cast", tmp_path / "out"
    digest = _write_random(source, 24 * MiB)
    out.mkdir()

    async def main() -> None:
        storage = await open_storage(_uri(proxy.url, bucket_name), tmp_path)
        try:
            await storage.upload("sess-dl", source)
            proxy.cut_after(10 * MiB, upward=False)
            with pytest.raises(StorageUnavailable, match="downloading"):
                await storage.download("sess-dl", out / "rec.cast")
            assert list(out.iterdir()) == [], "no partial download, no temp file"
            proxy.restore()
            await storage.download("sess-dl", out / "rec.cast")
        finally:
            await storage.close()

    asyncio.run(main())
    assert _sha256(out / "rec.cast") == digest


def test_list_follows_every_page(moto_server: MotoServer, bucket_name: str, tmp_path: Path) -> None:
    client = _client(moto_server)
    client.create_bucket(Bucket=bucket_name)
    for n in range(23):
        client.put_object(Bucket=bucket_name, Key=f"p/sess-{n:02d}.cast", Body=b"x" * n)

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name, prefix="p"), tmp_path)
        storage.list_page_size = 5
        try:
            listed = await storage.list()
        finally:
            await storage.close()
        assert sorted((i.session_id, i.size) for i in listed) == [(f"sess-{n:02d}", n) for n in range(23)]

    asyncio.run(main())


def test_unreachable_endpoint_at_open_names_the_url(tmp_path: Path) -> None:
    from storage_s3_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"

    async def main() -> None:
        await open_session_storage(make_plugins(), _uri(url, "some-bucket"), tmp_path)

    with pytest.raises(StorageUnavailable) as info:
        asyncio.run(main())
    message = str(info.value)
    assert url in message and "some-bucket" in message and "connect" in message.lower()


def test_missing_credentials_are_reported(
    moto_server: MotoServer, bucket_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    async def main() -> None:
        await open_storage(_uri(moto_server.url, bucket_name), tmp_path)

    with pytest.raises(StorageUnavailable, match="no AWS credentials"):
        asyncio.run(main())


def test_operations_after_close_fail(moto_server: MotoServer, bucket_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name), tmp_path)
        await storage.close()
        with pytest.raises(Exception, match="closed"):
            await storage.list()
        with pytest.raises(Exception, match="closed"):
            await storage.download("x", tmp_path / "x")

    asyncio.run(main())


def test_download_missing_is_not_found_without_leaving_files(
    moto_server: MotoServer, bucket_name: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name), tmp_path)
        try:
            with pytest.raises(NotFound, match="nope"):
                await storage.download("nope", out / "nope.cast")
        finally:
            await storage.close()

    asyncio.run(main())
    assert list(out.iterdir()) == []


def test_part_size_grows_for_huge_files() -> None:
    assert part_size_for(100 * MiB) == 8 * MiB
    big = 200 * 1024 * MiB  # 200 GiB needs parts over 8 MiB to stay within 10,000
    size = part_size_for(big)
    assert size % MiB == 0 and size > 8 * MiB and -(-big // size) <= 10_000


def test_storage_class_is_the_kernel_interface() -> None:
    from teleport_core.state.sessions import SessionStorage

    assert issubclass(S3SessionStorage, SessionStorage)


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("s3:///prefix", "names no bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ab/x", "not a valid S3 bucket name"),
        ("s3://192.168.1.1/x", "not a valid S3 bucket name"),
        ("s3://key:secret@bucket/x", "credentials are never put in the URI"),
        ("s3://bucket:9000/x", "takes no port"),
        ("s3://bucket/x?regoin=us-east-1", "unknown parameter 'regoin'"),
        ("s3://bucket/x?region=us-east-1&region=eu-west-1", "given twice"),
        ("s3://bucket/x?region=", "has no value"),
        ("s3://bucket/x?region=US East", "not an AWS region"),
        ("s3://bucket/x?insecure=maybe", "insecure='maybe'"),
        ("s3://bucket/x?disablesse=yes", "disablesse='yes'"),
        ("s3://bucket/x?path_style=2", "path_style='2'"),
        ("s3://bucket/x?disablesse=true&sse_kms_key=k", "both sse_kms_key and disablesse"),
        ("s3://bucket/x?acl=everyone", "not a canned ACL"),
        ("s3://bucket/x?endpoint=http://127.0.0.1:9000", "add insecure=true"),
        ("s3://bucket/x?endpoint=https://s3.example:9000&insecure=true", "is https"),
        ("s3://bucket/x?endpoint=ftp://host", "expected http(s)://host"),
        ("s3://bucket/x?endpoint=http://h:99999&insecure=true", "endpoint="),
        ("s3://bucket/x?endpoint=https://u:p@host", "carries credentials"),
        ("s3://bucket/x?endpoint=https://host/path", "no path"),
        ("s3://bucket/a/../b", "'..' segments"),
        ("s3://bucket/x#frag", "fragment"),
        ("s3://bucket/x?just-a-word", "cannot parse the query"),
    ],
)
def test_bad_uris_are_config_errors(uri: str, complaint: str, tmp_path: Path) -> None:
    async def main() -> None:
        await open_session_storage(make_plugins(), uri, tmp_path)

    with pytest.raises(ConfigError) as info:
        asyncio.run(main())
    assert info.value.path == "teleport.storage.audit_sessions_uri"
    assert complaint in str(info.value)


def test_canned_acl_is_sent(moto_server: MotoServer, bucket_name: str, tmp_path: Path) -> None:
    client = _client(moto_server)
    client.create_bucket(Bucket=bucket_name)
    source = tmp_path / "rec.cast"
    source.write_bytes(b"public")

    async def main() -> None:
        storage = await open_storage(_uri(moto_server.url, bucket_name, extra="&acl=public-read"), tmp_path)
        try:
            await storage.upload("acl-1", source)
        finally:
            await storage.close()

    asyncio.run(main())
    grants = client.get_object_acl(Bucket=bucket_name, Key="records/acl-1.cast")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/global/AllUsers") and g["Permission"] == "READ" for g in grants)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "s3://rec/a/b/",
            {"bucket": "rec", "prefix": "a/b", "endpoint": None, "path_style": False, "region": None},
        ),
        ("s3://rec", {"prefix": "", "insecure": False, "disable_sse": False, "use_fips_endpoint": None}),
        (
            "s3://rec/p?endpoint=minio.local:9000&insecure=1&region=eu-west-1",
            {"endpoint": "http://minio.local:9000", "insecure": True, "path_style": True, "region": "eu-west-1"},
        ),
        ("s3://rec/p?endpoint=minio.local:9000", {"endpoint": "https://minio.local:9000", "insecure": False}),
        (
            "s3://rec/p?endpoint=https://s3.example/&path_style=false",
            {"endpoint": "https://s3.example", "path_style": False},
        ),
        ("s3://rec/p?disablesse=TRUE&use_fips_endpoint=f", {"disable_sse": True, "use_fips_endpoint": False}),
        (
            "s3://rec/p?sse_kms_key=arn:aws:kms:us-east-1:1:key/k&acl=private",
            {"sse_kms_key": "arn:aws:kms:us-east-1:1:key/k", "acl": "private"},
        ),
    ],
)
def test_good_uris_parse(uri: str, expected: dict[str, Any]) -> None:
    from teleport_storage_s3.uri import parse_uri

    location = parse_uri(uri)
    assert {name: getattr(location, name) for name in expected} == expected
