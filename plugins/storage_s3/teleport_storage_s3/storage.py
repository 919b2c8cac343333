"""Session recordings in S3 (or an S3-compatible store): ``s3://bucket/prefix?region=...``.

Each recording is the object ``<prefix>/<session_id>.cast``.

* Uploads smaller than :data:`MULTIPART_THRESHOLD` are one PutObject; larger ones use a
  multipart upload with parts of :data:`PART_SIZE` (more if the file would need over 10,000
  parts), a few parts in flight at once. Either way the object becomes visible only when the
  PUT or CompleteMultipartUpload succeeds, so a reader never sees a partial recording.
* Multipart uploads are resumable: the upload ID and the ETags of finished parts are kept in
  a small state file under ``<data_dir>/s3-uploads/``. A retried upload of the same,
  unchanged source lists the parts S3 holds (ListParts), skips those it recorded, and sends
  the rest. A changed source (size, mtime or inode) aborts the old upload and starts over.
* Every part and single PUT carries Content-MD5, so S3 refuses corrupted bodies.
* Server-side encryption is requested (``AES256``, or ``aws:kms`` with ``sse_kms_key``)
  unless ``disablesse=true``.
* Every failure talking to S3 (unreachable endpoint, timeouts, 5xx, throttling, missing
  credentials, access denied, missing bucket) raises :class:`StorageUnavailable`: the
  recording is intact at its source and the call can be retried later, so callers keep the
  local spool file. Invalid session IDs raise ``InvalidSessionID``; a missing recording on
  download raises ``NotFound``.
* boto3 calls block; they run in worker threads (``asyncio.to_thread``).
* Chunks of a recording in progress (sync recording modes) are the objects
  ``<prefix>/<session_id>.chunks/<index, nine digits>`` (one PutObject each, with Content-MD5; a
  stored chunk is compared by its ETag, never replaced); completing a recording reads them in
  order into a temp file under ``<data_dir>/s3-uploads/``, uploads it as any recording, and
  deletes them (DeleteObjects). Listing recordings does not see them (the listing stops at
  ``/``).

At open the bucket is checked with HeadBucket: an unreachable endpoint raises
:class:`StorageUnavailable` naming the URL and the failure; a missing bucket is created as
Teleport does (private, versioning on, default encryption unless ``disablesse``); access
denied on HeadBucket is logged and tolerated (write-only credentials), as in Teleport.

A bucket that vanishes later (S3 emptied or restored without it: ``NoSuchBucket``) is re-created
the same way by the next upload, with a WARN each time, and that upload is tried once more; when
it cannot be re-created the upload fails with :class:`StorageUnavailable` naming the bucket (the
callers keep the recording and retry with backoff).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import attrs
import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from teleport_core.errors import AlreadyExists, ConfigError, NotFound, TeleportError
from teleport_core.state.sessions import (
    ChunkInfo,
    Completed,
    InvalidSessionID,
    RecordingInfo,
    SessionStorage,
    check_session_id,
    chunk_name,
)

from .uri import CONFIG_KEY, S3Location, parse_uri

log = logging.getLogger(__name__)

MiB = 1 << 20
SUFFIX = ".cast"
CHUNKS_SUFFIX = ".chunks"
#: Files at least this big are sent as multipart uploads.
MULTIPART_THRESHOLD = 8 * MiB
#: The smallest part size (S3's minimum is 5 MiB; every part but the last has this size).
PART_SIZE = 8 * MiB
#: S3's limit on the number of parts of one upload.
MAX_PARTS = 10_000
#: Parts of one upload sent at once (each holds one part in memory).
PART_CONCURRENCY = 4
#: Download and copy chunk size.
CHUNK = MiB
STATE_DIR = "s3-uploads"
STATE_VERSION = 1

_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
)

# One uploader per object key at a time in this process (a data_dir belongs to one process):
# striped locks, so that no per-key lock has to be created and forgotten.
_KEY_LOCKS = tuple(threading.Lock() for _ in range(64))


def _key_lock(bucket: str, key: str) -> threading.Lock:
    digest = hashlib.sha256(f"{bucket}/{key}".encode()).digest()
    return _KEY_LOCKS[digest[0] % len(_KEY_LOCKS)]


class StorageUnavailable(TeleportError):
    """S3 could not take or give a recording right now; the source is intact, retry later.

    Raised for network failures, timeouts, 5xx and throttling, but also for missing
    credentials, access denied and a vanished bucket: all leave the recording in the
    caller's spool, and an operator fix (or S3 coming back) makes the retry succeed.
    """


class BucketGone(StorageUnavailable):
    """S3 answered NoSuchBucket: the bucket vanished (an emptied or restored S3, a deletion).
    An upload re-creates it (:meth:`S3SessionStorage.heal_bucket`) and tries once more."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = err.get("Code", "?")
        message = err.get("Message") or ""
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    return f"{type(exc).__name__}: {exc}"


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


@contextlib.contextmanager
def _s3_errors(what: str, where: str) -> Iterator[None]:
    """Turn botocore failures into :class:`StorageUnavailable` naming ``what`` failed ``where``."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise StorageUnavailable(
            f"{what} in {where}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, ~/.aws/credentials, or give the host an instance or task role)"
        ) from None
    except botocore.exceptions.ClientError as exc:
        kind = BucketGone if _error_code(exc) == "NoSuchBucket" else StorageUnavailable
        raise kind(f"{what} in {where} failed: {_describe(exc)}") from exc
    except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError) as exc:
        raise StorageUnavailable(f"{what} in {where} failed: {_describe(exc)}") from exc


@attrs.define
class _UploadState:
    """What is persisted about one multipart upload in progress."""

    bucket: str
    key: str
    upload_id: str
    part_size: int
    source: dict[str, int]
    parts: dict[int, str] = attrs.field(factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "bucket": self.bucket,
                "key": self.key,
                "upload_id": self.upload_id,
                "part_size": self.part_size,
                "source": self.source,
                "parts": {str(n): etag for n, etag in sorted(self.parts.items())},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _UploadState | None:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                return None
            return cls(
                bucket=str(data["bucket"]),
                key=str(data["key"]),
                upload_id=str(data["upload_id"]),
                part_size=int(data["part_size"]),
                source={str(k): int(v) for k, v in data["source"].items()},
                parts={int(n): str(etag) for n, etag in data["parts"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _source_identity(info: os.stat_result) -> dict[str, int]:
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "dev": info.st_dev, "ino": info.st_ino}


def part_size_for(size: int, minimum: int = PART_SIZE) -> int:
    """The part size for a file of ``size`` bytes: ``minimum``, or more to stay within 10,000 parts."""
    needed = -(-size // MAX_PARTS)
    return max(minimum, -(-needed // MiB) * MiB)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


async def open_storage(uri: str, data_dir: Path) -> S3SessionStorage:
    """Factory of the ``s3`` scheme: parse ``uri``, build the client, check (or create) the bucket."""
    location = parse_uri(uri)
    state_dir = Path(data_dir) / STATE_DIR
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(CONFIG_KEY, f"cannot keep S3 upload state in {state_dir}: {exc}") from exc
    try:
        client = await asyncio.to_thread(make_client, location)  # loads botocore's models: slow, blocking
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ConfigError(CONFIG_KEY, f"cannot make an S3 client for {location.display}: {exc}") from exc
    storage = S3SessionStorage(location, state_dir, client=client)
    try:
        await asyncio.to_thread(storage.ensure_bucket)
    except BaseException:
        await storage.close()
        raise
    return storage


def make_client(location: S3Location) -> Any:
    """A boto3 S3 client for ``location``, with credentials from the standard AWS chain."""
    config = _CLIENT_CONFIG.merge(
        botocore.config.Config(
            s3={"addressing_style": "path" if location.path_style else "auto"},
            use_fips_endpoint=location.use_fips_endpoint,
        )
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        region_name=location.region,
        endpoint_url=location.endpoint,
        use_ssl=not location.insecure,
        config=config,
    )


class S3SessionStorage(SessionStorage):
    """Recordings as objects under one bucket prefix. Open with :func:`open_storage`."""

    def __init__(
        self,
        location: S3Location,
        state_dir: Path,
        *,
        client: Any = None,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_concurrency: int = PART_CONCURRENCY,
    ) -> None:
        self.location = location
        self.state_dir = state_dir
        #: The boto3 S3 client (thread-safe; every call is made in a worker thread).
        self.client = client if client is not None else make_client(location)
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.part_concurrency = part_concurrency
        #: Keys per ListObjectsV2 page (None: the server's default, 1,000 on S3).
        self.list_page_size: int | None = None
        self._closed = False

    # -- paths -------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The location for messages: ``s3://bucket/prefix at endpoint``."""
        return self.location.display

    def key(self, session_id: str) -> str:
        """The object key of ``session_id``'s recording (``InvalidSessionID`` for unsafe IDs)."""
        if self._closed:
            raise TeleportError(f"session storage {self.where} is closed")
        name = check_session_id(session_id) + SUFFIX
        return f"{self.location.prefix}/{name}" if self.location.prefix else name

    def _state_path(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.location.bucket}/{key}".encode()).hexdigest()[:32]
        return self.state_dir / f"{digest}.json"

    # -- bucket ------------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Check the bucket with HeadBucket; create it (as Teleport does) when it does not exist."""
        bucket = self.location.bucket
        endpoint = self.location.endpoint or "the AWS S3 endpoint"
        try:
            self.client.head_bucket(Bucket=bucket)
            return
        except botocore.exceptions.NoCredentialsError:
            raise StorageUnavailable(
                f"cannot check bucket {bucket!r} at {endpoint}: no AWS credentials found "
                "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, or an instance role)"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(
                f"cannot reach S3 at {endpoint} to check bucket {bucket!r}: {_describe(exc)}"
            ) from exc
        except botocore.exceptions.ClientError as exc:
            status = _status(exc)
            if status == 403:
                log.warning(
                    "access denied checking bucket %r at %s; assuming it exists and these credentials may only "
                    "write recordings",
                    bucket,
                    endpoint,
                )
                return
            if status == 301:
                headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                actual = headers.get("x-amz-bucket-region", "another region")
                raise ConfigError(
                    CONFIG_KEY, f"bucket {bucket!r} is in {actual}, not {self.location.region}: set region={actual}"
                ) from None
            if status != 404:
                raise StorageUnavailable(f"checking bucket {bucket!r} at {endpoint} failed: {_describe(exc)}") from exc
        self._create_bucket()

    def heal_bucket(self, failure: BucketGone) -> None:
        """Re-create the bucket an upload found gone, as :meth:`ensure_bucket` creates a missing
        one at open (versioning, default encryption); a WARN each time. When it cannot be
        re-created (credentials without ``s3:CreateBucket``, S3 down), :class:`StorageUnavailable`
        naming the bucket: the recording stays in the caller's spool and is retried."""
        bucket, endpoint = self.location.bucket, self.location.endpoint or "AWS"
        log.warning("bucket %r is gone from %s (%s): re-creating it (versioning on%s), then uploading again",
                    bucket, endpoint, failure, "" if self.location.disable_sse else ", default encryption")
        try:
            self._create_bucket(announce=False)
        except StorageUnavailable as exc:
            denied = isinstance(exc.__cause__, botocore.exceptions.ClientError) and _status(exc.__cause__) == 403
            hint = (f"these credentials may not create it (s3:CreateBucket): create bucket {bucket!r} with "
                    "versioning on" if denied else "S3 refused or did not answer")
            log.warning("bucket %r is gone from %s and could not be re-created: %s; recordings wait and are retried",
                        bucket, endpoint, exc)
            raise StorageUnavailable(f"bucket {bucket!r} is gone from {endpoint} and could not be re-created "
                                     f"({hint}): {exc}") from exc
        log.warning("re-created bucket %r at %s; uploads resume", bucket, endpoint)

    def _create_bucket(self, *, announce: bool = True) -> None:
        bucket = self.location.bucket
        if announce:
            log.warning("bucket %r does not exist at %s: creating it", bucket, self.location.endpoint or "AWS")
        args: dict[str, Any] = {"Bucket": bucket}
        region = self.location.region or self.client.meta.region_name
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with _s3_errors(f"creating missing bucket {bucket!r}", self.where):
            try:
                self.client.create_bucket(**args)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) == "BucketAlreadyOwnedByYou":
                    return  # another of our servers created it meanwhile: leave its settings alone
                raise
            self.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            if not self.location.disable_sse:
                default: dict[str, str] = {"SSEAlgorithm": self.location.sse_args["ServerSideEncryption"]}
                if self.location.sse_kms_key:
                    default["KMSMasterKeyID"] = self.location.sse_kms_key
                self.client.put_bucket_encryption(
                    Bucket=bucket,
                    ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": default}]},
                )

    def _object_args(self) -> dict[str, str]:
        args = dict(self.location.sse_args)
        if self.location.acl:
            args["ACL"] = self.location.acl
        return args

    # -- upload ------------------------------------------------------------------------------------

    async def upload(self, session_id: str, source: Path) -> None:
        """Store ``source`` as ``session_id``'s recording; :class:`StorageUnavailable` if S3 fails (retry)."""
        key = self.key(session_id)
        await asyncio.to_thread(self._upload, key, Path(source))

    def _upload(self, key: str, source: Path) -> None:
        try:
            self._upload_once(key, source)
        except BucketGone as gone:  # S3 emptied or restored without it: re-create it, try once more
            self.heal_bucket(gone)
            self._upload_once(key, source)

    def _upload_once(self, key: str, source: Path) -> None:
        with open(source, "rb") as src:
            info = os.fstat(src.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise TeleportError(f"recording source {source} is not a regular file")
            if info.st_size < self.multipart_threshold:
                self._put_small(key, src, info.st_size)
                with contextlib.suppress(FileNotFoundError):
                    self._state_path(key).unlink()
            else:
                self._put_multipart(key, src, info)

    def _put_small(self, key: str, src: Any, size: int) -> None:
        data = src.read()
        if len(data) != size:
            raise TeleportError(f"recording source changed size while being read ({size} -> {len(data)} bytes)")
        with _s3_errors(f"uploading {key}", self.where):
            self.client.put_object(
                Bucket=self.location.bucket, Key=key, Body=data, ContentMD5=_md5_b64(data), **self._object_args()
            )

    def _put_multipart(self, key: str, src: Any, info: os.stat_result) -> None:
        state_path = self._state_path(key)
        with _key_lock(self.location.bucket, key):
            state = self._resume_or_start(key, state_path, src.fileno(), info)
            self._send_parts(src, state, state_path, info.st_size)
            parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(state.parts.items())]
            with _s3_errors(f"completing the upload of {key}", self.where):
                try:
                    self.client.complete_multipart_upload(
                        Bucket=state.bucket, Key=key, UploadId=state.upload_id, MultipartUpload={"Parts": parts}
                    )
                except botocore.exceptions.ClientError as exc:
                    if _error_code(exc) in ("NoSuchUpload", "InvalidPart"):
                        # The upload expired or was aborted (or completed with the answer lost):
                        # the state is useless, the next attempt starts over.
                        state_path.unlink(missing_ok=True)
                    raise
            state_path.unlink(missing_ok=True)

    def _resume_or_start(self, key: str, state_path: Path, src_fd: int, info: os.stat_result) -> _UploadState:
        bucket = self.location.bucket
        identity = _source_identity(info)
        part_size = part_size_for(info.st_size, self.part_size)
        try:
            state = _UploadState.from_json(state_path.read_text())
        except FileNotFoundError:
            state = None
        if state is not None:
            if (state.bucket, state.key, state.source, state.part_size) == (bucket, key, identity, part_size):
                listed = self._list_parts(state)
                if listed is not None:
                    state.parts = self._reusable_parts(state, listed, src_fd, info.st_size)
                    _write_state(state_path, state)
                    log.info(
                        "resuming upload of %s in %s: %d of %d parts already there",
                        key,
                        self.where,
                        len(state.parts),
                        -(-info.st_size // part_size),
                    )
                    return state
            else:
                log.info("source of %s changed since its interrupted upload: starting over", key)
                with contextlib.suppress(StorageUnavailable), _s3_errors("aborting a stale upload", self.where):
                    self.client.abort_multipart_upload(Bucket=state.bucket, Key=state.key, UploadId=state.upload_id)
        with _s3_errors(f"starting the upload of {key}", self.where):
            created = self.client.create_multipart_upload(Bucket=bucket, Key=key, **self._object_args())
        state = _UploadState(bucket, key, str(created["UploadId"]), part_size, identity)
        _write_state(state_path, state)
        return state

    @staticmethod
    def _reusable_parts(state: _UploadState, listed: dict[int, str], fd: int, size: int) -> dict[int, str]:
        """The parts S3 holds that match the source: recorded with the same ETag, or unrecorded
        (their answer was lost in the outage) but with an ETag equal to the local part's MD5."""
        reusable = {n: etag for n, etag in state.parts.items() if listed.get(n) == etag}
        for number, etag in listed.items():
            offset = (number - 1) * state.part_size
            if number in reusable or offset >= size:
                continue
            data = os.pread(fd, min(state.part_size, size - offset), offset)
            if etag.strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest():
                reusable[number] = etag
        return reusable

    def _list_parts(self, state: _UploadState) -> dict[int, str] | None:
        """The parts S3 holds for ``state``'s upload, or None if the upload is gone."""
        parts: dict[int, str] = {}
        with _s3_errors(f"listing the parts of the upload of {state.key}", self.where):
            try:
                paginator = self.client.get_paginator("list_parts")
                for page in paginator.paginate(Bucket=state.bucket, Key=state.key, UploadId=state.upload_id):
                    for part in page.get("Parts", []):
                        parts[int(part["PartNumber"])] = str(part["ETag"])
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) == "NoSuchUpload":
                    log.info("interrupted upload of %s is gone from %s: starting over", state.key, self.where)
                    return None
                raise
        return parts

    def _send_parts(self, src: Any, state: _UploadState, state_path: Path, size: int) -> None:
        count = max(1, -(-size // state.part_size))
        todo = [n for n in range(1, count + 1) if n not in state.parts]
        lock = threading.Lock()
        fd = src.fileno()

        def send(number: int) -> None:
            offset = (number - 1) * state.part_size
            length = min(state.part_size, size - offset)
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise TeleportError(f"recording source shrank while being uploaded (part {number})")
            with _s3_errors(f"uploading part {number} of {count} of {state.key}", self.where):
                answer = self.client.upload_part(
                    Bucket=state.bucket,
                    Key=state.key,
                    UploadId=state.upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentMD5=_md5_b64(data),
                )
            with lock:
                state.parts[number] = str(answer["ETag"])
                _write_state(state_path, state)

        if not todo:
            return
        with ThreadPoolExecutor(max_workers=self.part_concurrency, thread_name_prefix="s3-part") as pool:
            pending: set[Future[None]] = set()
            queue = iter(todo)
            failed: BaseException | None = None
            while True:
                while failed is None and len(pending) < self.part_concurrency:
                    number = next(queue, None)
                    if number is None:
                        break
                    pending.add(pool.submit(send, number))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    exc = future.exception()
                    if exc is not None and failed is None:
                        failed = exc
            if failed is not None:
                raise failed

    # -- download and list -------------------------------------------------------------------------

    async def download(self, session_id: str, dest: Path) -> None:
        """Stream ``session_id``'s recording to ``dest`` (replaced atomically); ``NotFound`` if none."""
        key = self.key(session_id)
        await asyncio.to_thread(self._download, key, session_id, Path(dest))

    def _download(self, key: str, session_id: str, dest: Path) -> None:
        with _s3_errors(f"downloading {key}", self.where):
            try:
                answer = self.client.get_object(Bucket=self.location.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                    raise NotFound(f"no recording of session {session_id} in {self.where}") from None
                raise
            body = answer["Body"]
            try:
                fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in body.iter_chunks(CHUNK):
                            out.write(chunk)
                    os.replace(temp, dest)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temp)
                    raise
            finally:
                body.close()

    async def list(self) -> builtins.list[RecordingInfo]:
        """Every recording under the prefix (ListObjectsV2, all pages)."""
        if self._closed:
            raise TeleportError(f"session storage {self.where} is closed")
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[RecordingInfo]:
        prefix = f"{self.location.prefix}/" if self.location.prefix else ""
        found: builtins.list[RecordingInfo] = []
        with _s3_errors("listing recordings", self.where):
            paginator = self.client.get_paginator("list_objects_v2")
            paging = {"PageSize": self.list_page_size} if self.list_page_size else {}
            pages = paginator.paginate(
                Bucket=self.location.bucket, Prefix=prefix, Delimiter="/", PaginationConfig=paging
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(prefix) :]
                    if not name.endswith(SUFFIX):
                        continue
                    session_id = name[: -len(SUFFIX)]
                    try:
                        check_session_id(session_id)
                    except InvalidSessionID:
                        continue
                    found.append(RecordingInfo(session_id, int(item["Size"]), item["LastModified"]))
        return found

    async def stat(self, session_id: str) -> RecordingInfo | None:
        """The recording's size and time (HeadObject), None when the object (or the bucket) is absent."""
        key = self.key(session_id)
        return await asyncio.to_thread(self._stat, key, session_id)

    def _stat(self, key: str, session_id: str) -> RecordingInfo | None:
        answer = self._head(key)
        return None if answer is None else RecordingInfo(session_id, int(answer["ContentLength"]),
                                                         answer["LastModified"])

    def _head(self, key: str) -> dict[str, Any] | None:
        """HeadObject of ``key``: its answer, None when the object (or the bucket) is absent."""
        with _s3_errors(f"checking {key}", self.where):
            try:
                return dict(self.client.head_object(Bucket=self.location.bucket, Key=key))
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "NotFound", "404") or _status(exc) == 404:
                    return None
                raise

    # -- chunks (sync recording modes) -------------------------------------------------------------

    streaming = True

    def _chunks_prefix(self, session_id: str) -> str:
        if self._closed:
            raise TeleportError(f"session storage {self.where} is closed")
        name = check_session_id(session_id) + CHUNKS_SUFFIX + "/"
        return f"{self.location.prefix}/{name}" if self.location.prefix else name

    async def put_chunk(self, session_id: str, index: int, data: bytes) -> bool:
        key = self._chunks_prefix(session_id) + chunk_name(index)
        return await asyncio.to_thread(self._put_chunk, key, bytes(data))

    def _put_chunk(self, key: str, data: bytes) -> bool:
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        answer = self._head(key)
        if answer is not None:
            if str(answer.get("ETag", "")).strip('"') != md5 or int(answer["ContentLength"]) != len(data):
                raise AlreadyExists(f"chunk {key} is stored with other bytes: chunks are never replaced")
            return False
        with _s3_errors(f"storing chunk {key}", self.where):
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=data, ContentMD5=_md5_b64(data),
                                   **self._object_args())
        return True

    async def list_chunks(self, session_id: str) -> builtins.list[ChunkInfo]:
        prefix = self._chunks_prefix(session_id)
        return await asyncio.to_thread(self._list_chunks, prefix)

    def _list_chunks(self, prefix: str) -> builtins.list[ChunkInfo]:
        found: builtins.list[ChunkInfo] = []
        with _s3_errors("listing chunks", self.where):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(prefix):]
                    if len(name) == 9 and name.isdigit():
                        found.append(ChunkInfo(int(name), int(item["Size"])))
        return sorted(found, key=lambda c: c.index)

    async def stat_chunk(self, session_id: str, index: int) -> ChunkInfo | None:
        key = self._chunks_prefix(session_id) + chunk_name(index)
        return await asyncio.to_thread(self._stat_chunk, key, index)

    def _stat_chunk(self, key: str, index: int) -> ChunkInfo | None:
        answer = self._head(key)
        return None if answer is None else ChunkInfo(index, int(answer["ContentLength"]))

    async def read_chunk(self, session_id: str, index: int) -> bytes:
        key = self._chunks_prefix(session_id) + chunk_name(index)
        return await asyncio.to_thread(self._read_chunk, key, session_id, index)

    def _read_chunk(self, key: str, session_id: str, index: int) -> bytes:
        with _s3_errors(f"reading chunk {key}", self.where):
            try:
                answer = self.client.get_object(Bucket=self.location.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                    raise NotFound(f"no chunk {index} of session {session_id} in {self.where}") from None
                raise
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    async def delete_chunks(self, session_id: str) -> None:
        prefix = self._chunks_prefix(session_id)
        await asyncio.to_thread(self._delete_chunks, prefix)

    def _delete_chunks(self, prefix: str) -> None:
        keys = [prefix + chunk_name(c.index) for c in self._list_chunks(prefix)]
        with _s3_errors("deleting chunks", self.where):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start:start + 1000]]
                self.client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True})

    async def complete(self, session_id: str, work_dir: Path | None = None) -> Completed:
        """Assemble the chunks (the generic way) in the upload state directory: S3 uploads of a
        file, resumable as any."""
        return await super().complete(session_id, work_dir or self.state_dir)

    async def close(self) -> None:
        """Close the client's connections; later calls raise."""
        if not self._closed:
            self._closed = True
            close = getattr(self.client, "close", None)
            if close is not None:
                await asyncio.to_thread(close)


def _write_state(path: Path, state: _UploadState) -> None:
    """Replace the state file atomically (a crash leaves the old or the new one)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(state.to_json())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
