"""The auth API, streamed recordings (``session_recording: node-sync`` / ``proxy-sync``).

* ``PUT /v1/sessions/{sid}/recording/chunks?index=N``: the host that owns the session (its
  record's owner, as for uploads: :func:`teleport_auth.uploads.upload_refusal`) sends chunk ``N``
  of the recording while the session runs (a byte range of the final asciicast file: whole event
  lines; chunk 0 starts with the header). At most :data:`CHUNK_MAX_BODY` bytes. Idempotent per
  index (a retried chunk is not stored twice; other bytes under a stored index: 409). Chunks go
  in order: one whose predecessor is missing is refused (409). Refusals of another host (403) are
  audited and kept as upload refusals.
* ``POST /v1/sessions/{sid}/recording/complete`` ``{"chunks": n, "partial": bool}``: the owner
  says the session ended; auth assembles the chunks into the recording (as an upload stores it)
  and marks the record uploaded (``partial`` when the host was lost mid-session and completed
  what auth received: the record's ``recording.partial``, the listing's ``recording_partial``).
* ``GET /v1/sessions/{sid}/recording/stream?offset=B``: the recording so far from byte ``B`` (at
  most :data:`STREAM_MAX` bytes), for ``tsh play --follow`` and the web player: ``read`` on
  ``session`` as for a recording (for the caller or the user a proxy forwarded; the first read,
  offset 0, is audited as ``session.recording.access``). Headers: ``X-Teleport-Recording``
  (``streaming`` or ``complete``), ``X-Teleport-Session`` (``running`` or ``ended``),
  ``X-Teleport-Next-Offset``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from teleport_auth import recordings
from teleport_auth.api.core import APIBase, BadRequest, Operation, body, endpoint, query
from teleport_core.api.schema import Body, Query, Reply, read_body
from teleport_core.errors import AccessDenied, AlreadyExists, NotFound
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.recording.stream import SYNC_MODES
from teleport_core.state.sessions import MAX_CHUNKS, check_session_id

#: the largest chunk a host may send (the streaming recorder sends at most 1 MiB of output, whose
#: JSON is at most six times that)
CHUNK_MAX_BODY = 8 << 20
#: the most one read of a recording in progress returns
STREAM_MAX = 4 << 20
RECORDING_HEADER = "X-Teleport-Recording"
SESSION_HEADER = "X-Teleport-Session"
NEXT_OFFSET_HEADER = "X-Teleport-Next-Offset"


class ChunkQuery(Query):
    index: int = Field(ge=0, lt=MAX_CHUNKS, description="the chunk's number, from 0, in order")


class ChunkReply(Reply):
    index: int
    size: int
    unchanged: bool


class CompleteRequest(Body):
    chunks: int = Field(ge=1, lt=MAX_CHUNKS, description="how many chunks the host sent")
    partial: bool = Field(False, description="true: the host lost the session (a crash): complete what auth received")


class CompleteReply(Reply):
    stored: str
    size: int
    chunks: int
    partial: bool
    unchanged: bool


class StreamQuery(Query):
    offset: int = Field(0, ge=0, description="the first byte wanted (what the caller has so far)")


def check_chunk(index: int, data: bytes) -> None:
    """A 400 naming what is wrong with a chunk's body."""
    if not data:
        raise BadRequest(f"chunk {index}: the body is empty")
    if not data.endswith(b"\n"):
        raise BadRequest(f"chunk {index}: expected whole asciicast lines (the body must end with a newline)")
    if index == 0:
        first = data.split(b"\n", 1)[0]
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("version") != 2:
            raise BadRequest("chunk 0: expected the asciicast v2 header as its first line "
                             '({"version": 2, "width": ..., "height": ...})')


class StreamingAPI(APIBase):
    """Streamed recording routes."""

    async def _owned_record(self, request: Request, identity: Identity, sid: str, size: int = 0) -> Any:
        """The record of ``sid`` if ``identity`` is the host that owns it: else 404 (no record yet:
        transient) or 403 (audited, kept as an upload refusal)."""
        from teleport_auth.authz import host_uuid
        from teleport_auth.session_records import records_of
        from teleport_auth.uploads import no_record, upload_refusal

        uploader = host_uuid(identity) if identity.kind is IdentityKind.HOST else ""
        record = await records_of(self.service).get(sid) if uploader else None
        if uploader and record is None:
            raise no_record(sid)
        reason = upload_refusal(record, uploader, sid)
        if reason:
            await self._refuse_upload(request, identity, uploader, sid, reason, 403, size)  # type: ignore[attr-defined]
            raise AccessDenied(reason)
        return record

    @endpoint("create", "session")
    async def put_recording_chunk(self, request: Request, identity: Identity | None) -> Any:
        """One chunk of a recording in progress, from the host running the session."""
        from teleport_auth.session_records import UPLOADED

        assert identity is not None
        sid = check_session_id(request.path_params["sid"])
        index = query(request, ChunkQuery).index
        # the body first (bounded): a refusal then reaches a client still sending it, not a cut connection
        data = await read_body(request, CHUNK_MAX_BODY)
        record = await self._owned_record(request, identity, sid, len(data))
        if record.session_recording not in SYNC_MODES:
            raise AlreadyExists(f"session {sid} is recorded {record.session_recording or 'node'} (not streamed): "
                                "its recording is uploaded once it ends")
        if record.recording.state == UPLOADED:
            raise AlreadyExists(f"the recording of session {sid} is complete: it takes no more chunks")
        check_chunk(index, data)
        storage = await self.service.ctx.resources.session_storage()
        if index > 0 and await storage.stat_chunk(sid, index - 1) is None:
            raise AlreadyExists(f"chunk {index} of session {sid} arrived before chunk {index - 1}: "
                                "send the chunks in order")
        stored = await storage.put_chunk(sid, index, data)
        if index == 0 and stored:
            from teleport_auth.streamed import streaming

            await streaming(self.service, sid)  # auth completes it should its host be lost (streamed.py)
        return {"index": index, "size": len(data), "unchanged": not stored}

    @endpoint("create", "session")
    async def complete_recording(self, request: Request, identity: Identity | None) -> Any:
        """Assemble a streamed recording once its session ended (or its host was lost)."""
        from teleport_auth.session_records import UPLOADED
        from teleport_auth.streamed import finish

        assert identity is not None
        sid = check_session_id(request.path_params["sid"])
        wanted = body(request, CompleteRequest)
        record = await self._owned_record(request, identity, sid)
        state = record.recording
        if state.state == UPLOADED:
            return {"stored": sid, "size": state.size, "chunks": wanted.chunks, "partial": state.partial,
                    "unchanged": True}
        storage = await self.service.ctx.resources.session_storage()
        chunks = await storage.list_chunks(sid)
        contiguous = sum(1 for n, c in enumerate(chunks) if c.index == n)
        if not wanted.partial and contiguous != wanted.chunks:
            raise AlreadyExists(f"auth holds {contiguous} chunks of session {sid} in order, the host sent "
                                f"{wanted.chunks}: send the missing chunks first")
        partial = wanted.partial or contiguous < len(chunks)
        done = await finish(self.service, storage, record, partial)
        return {"stored": sid, "size": done.size, "chunks": done.chunks, "partial": partial,
                "unchanged": not done.sha256}

    @endpoint(None, None)
    async def read_recording_stream(self, request: Request, identity: Identity | None) -> Any:
        """The recording of a session from a byte offset, while it runs or after (``read`` on ``session``)."""
        from teleport_auth.session_records import UPLOADED, records_of

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        sid = check_session_id(request.path_params["sid"])
        offset = query(request, StreamQuery).offset
        record = await records_of(self.service).get(sid)
        await self.authorize(request, acting, "read", "session", sid,
                             attributes=recordings.session_attributes(record))
        if record is None:
            raise NotFound(f"no recording of session {sid}: auth has no record of such a session (yet)")
        storage = await self.service.ctx.resources.session_storage()
        complete = record.recording.state == UPLOADED
        data = b""
        if complete:
            data = await self._read_final(storage, sid, offset)
        elif storage.streaming:
            data = await self._read_chunks(storage, sid, offset)
            if not data:  # completed between the record read and the listing
                record = await records_of(self.service).get(sid) or record
                if record.recording.state == UPLOADED:
                    complete = True
                    data = await self._read_final(storage, sid, offset)
        if offset == 0:
            await self.service.emit(self.event("session.recording.access", sid=sid, user=acting.name))
        return Response(data, media_type="application/x-asciicast", headers={
            RECORDING_HEADER: "complete" if complete else "streaming",
            SESSION_HEADER: "ended" if record.end is not None else "running",
            NEXT_OFFSET_HEADER: str(offset + len(data))})

    @staticmethod
    async def _read_chunks(storage: Any, sid: str, offset: int) -> bytes:
        out = bytearray()
        start = 0
        for n, chunk in enumerate(await storage.list_chunks(sid)):
            if chunk.index != n or len(out) >= STREAM_MAX:
                break
            end = start + chunk.size
            if end > offset:
                data = await storage.read_chunk(sid, chunk.index)
                out += data[max(0, offset - start):]
            start = end
        return bytes(out[:STREAM_MAX])

    @staticmethod
    async def _read_final(storage: Any, sid: str, offset: int) -> bytes:
        info = await storage.stat(sid)
        if info is None or info.size <= offset:
            return b""
        tmp = tempfile.mkdtemp(prefix="teleport-follow-")
        try:
            path = Path(tmp) / f"{sid}.cast"
            await storage.download(sid, path)
            with open(path, "rb") as src:
                src.seek(offset)
                return src.read(STREAM_MAX)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


ROUTES: list[Operation] = [
    Operation("/v1/sessions/{sid}/recording/chunks", "PUT", "put_recording_chunk",
              "Send one chunk of a recording in progress (sync modes; only the host running the session; in order, "
              "idempotent per index)", query=ChunkQuery, response=ChunkReply, max_body=CHUNK_MAX_BODY,
              media="application/x-asciicast"),
    Operation("/v1/sessions/{sid}/recording/complete", "POST", "complete_recording",
              "Assemble a streamed recording from its chunks (only the host that ran the session)",
              body=CompleteRequest, response=CompleteReply),
    Operation("/v1/sessions/{sid}/recording/stream", "GET", "read_recording_stream",
              "The recording so far from a byte offset, while the session runs or after (read on session; the "
              "first read audited)", query=StreamQuery, media="application/x-asciicast"),
]
