"""The auth API, session recordings: upload (the node that ran the session), list, read."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth import recording_search, recordings
from teleport_auth.api.core import RECORDING_MAX_BODY, APIBase, Operation, body, endpoint, query
from teleport_core.api.schema import Body, Name, OptionalName, Query, Reply, Timestamp
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    NotFound,
)
from teleport_core.policy.access import Identity, IdentityKind


class RecordingsQuery(Query):
    since: Timestamp = Field("", description="RFC 3339; default a day before until; no zone means UTC")
    until: Timestamp = Field("", description="RFC 3339; default now")
    limit: int = Field(50, ge=1, le=1000, description="sessions at most, newest first")
    user: OptionalName = Field("", description="only the sessions of this user (a participant)")
    node: OptionalName = Field("", description="only the sessions on this node (its hostname or UUID)")
    search: str = Field("", max_length=1024, description="only the sessions whose recording shows this text (a "
                        "phrase, case-insensitive, 3 to 256 characters; needs read on session too)")


class UploadReply(Reply):
    stored: str
    size: int
    unchanged: bool


class _SessionFacts(Reply):
    """Who ran a session, where, and what (the fields of ended and active sessions alike)."""

    sid: str
    proto: str
    user: str
    participants: list[str]
    login: str
    server_id: str
    server_hostname: str
    interactive: bool
    command: str


class SessionEntry(_SessionFacts):
    """A session that ended: who, where, when, and whether its recording was uploaded."""

    session_recording: str
    start: str
    end: str
    duration_seconds: float
    recorded: bool
    size: int
    end_reason: str = Field(description="exit, interrupted (the node stopped) or node_restart (a crash cut it)")
    recording: str = Field(description="uploaded, pending (not uploaded yet), missing (uploaded, but the session "
                                       "storage has no such recording) or off (not recorded)")
    snippet: str = Field("", description="with search: the recording's text around the first match")
    highlights: list[list[int]] = Field(default_factory=list,
                                        description="with search: [start, end) of each match in snippet")
    recording_partial: bool = Field(False, description="a streamed recording (node-sync, proxy-sync) completed as "
                                    "far as auth received it: its host was lost mid-session")


class SessionsReply(Reply):
    sessions: list[SessionEntry]


class RefusalsQuery(Query):
    host: OptionalName = Field("", description="only this host's refusals (a host UUID)")
    limit: int = Field(1000, ge=1, le=100_000, description="refusals at most, newest first")


class UploadRefusalEntry(Reply):
    """A recording auth refused for good: which host, which session, when, why."""

    host: str
    sid: str
    reason: str
    status: int
    time: str
    size: int


class RefusalsReply(Reply):
    refusals: list[UploadRefusalEntry]


class ReindexBody(Body):
    """Which recordings to index again: ``sids``, or with ``all`` the next ``limit`` stored
    recordings after ``after`` (by session ID)."""

    sids: list[Name] = Field(default_factory=list, max_length=100)
    all: bool = False
    after: str = Field("", max_length=256)
    limit: int = Field(20, ge=1, le=100)


class ReindexFailure(Reply):
    sid: str
    error: str


class ReindexReply(Reply):
    indexed: int
    truncated: int = Field(description="recordings whose text was cut at the cap (the first MAX_TEXT characters)")
    failed: list[ReindexFailure]
    next: str = Field(description="with all: the after of the next call; empty when done")


class SessionsAPI(APIBase):
    """Session recording routes."""

    # -- session recordings ------------------------------------------------------------------------

    @endpoint("create", "session")
    async def upload_recording(self, request: Request, identity: Identity | None) -> Any:
        """A node streams a finished recording (asciicast v2); stored through the session storage.

        Only the host that owns the session's record (its ``session.start``) may upload it, once (an
        identical re-upload is a no-op): see :mod:`teleport_auth.uploads` for the answers."""
        import asyncio
        import tempfile
        from pathlib import Path

        from teleport_auth.authz import host_uuid
        from teleport_auth.session_records import UPLOADED, records_of
        from teleport_auth.uploads import digest, no_record, upload_refusal
        from teleport_core.state.sessions import check_session_id

        assert identity is not None
        sid = check_session_id(request.path_params["sid"])
        uploader = host_uuid(identity) if identity.kind is IdentityKind.HOST else ""
        records = records_of(self.service)
        record = await records.get(sid) if uploader else None
        if uploader and record is None:
            raise no_record(sid)  # transient: the node retries
        reason = upload_refusal(record, uploader, sid)
        if reason:
            await self._refuse_upload(request, identity, uploader, sid, reason, 403, 0)
            raise AccessDenied(reason)
        assert record is not None
        storage = await self.service.ctx.resources.session_storage()
        size = 0
        with tempfile.TemporaryDirectory(prefix="teleport-upload-") as tmp:
            path = Path(tmp) / f"{sid}.cast"
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    out.write(chunk)
            sha256 = await asyncio.to_thread(digest, path)
            try:
                state = record.recording
                if state.state == UPLOADED and state.sha256 != sha256:
                    raise AlreadyExists(f"a different recording of session {sid} is already stored: "
                                        "recordings are never replaced")
                if state.state == UPLOADED and await storage.stat(sid) is not None:
                    return {"stored": sid, "size": size, "unchanged": True}
                stored = await self._upload_gate.store(storage, sid, path, sha256)
                await records.uploaded(sid, size, sha256)
                if stored:  # searchable by its text (teleport_auth.recording_search), in the background
                    recording_search.index_later(self.service, sid, path)
            except AlreadyExists as exc:
                await self._refuse_upload(request, identity, uploader, sid, str(exc), 409, size)
                raise
        return {"stored": sid, "size": size, "unchanged": not stored}

    async def _refuse_upload(self, request: Request, identity: Identity, uploader: str, sid: str, reason: str,
                             status: int, size: int) -> None:
        """Audit a permanent upload refusal and keep it under ``/upload_refusals`` (a host's only)."""
        import datetime as dt

        from teleport_auth.uploads import UploadRefusal, UploadRefusals

        await self.audit_denial(request, identity, reason)
        if uploader:
            refusal = UploadRefusal(uploader, sid, reason, status, dt.datetime.now(dt.UTC), size)
            await UploadRefusals(self.service.backend).add(refusal)

    @endpoint("list", "session")
    async def list_upload_refusals(self, request: Request, identity: Identity | None) -> Any:
        """The recordings auth refused for good (``tctl recordings ls --refused``), newest first."""
        from teleport_auth.uploads import UploadRefusals

        params = query(request, RefusalsQuery)
        found = await UploadRefusals(self.service.backend).list(params.host)
        return {"refusals": [r.to_dict() for r in found[:params.limit]]}

    @endpoint(None, None)
    async def list_recordings(self, request: Request, identity: Identity | None) -> Any:
        """Sessions that ended in a window (``since``, ``until``, ``limit``): ``list`` on ``session``
        for the caller, or for the user whose certificate a proxy forwarded (teleport_auth.recordings);
        with a ``where:`` rule, only the sessions it allows (each checked with its record). With
        ``search``, only those whose recording shows the text and that the caller may also ``read``,
        each with a snippet (teleport_auth.recording_search)."""
        from teleport_auth.session_records import SessionRecord
        from teleport_core.state.recording_index import search_phrase

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        await self.authorize(request, acting, "list", "session", filtered=True)
        params = query(request, RecordingsQuery)
        since, until, limit = recordings.window(params.model_dump())
        phrase = search_phrase(params.search) if params.search else ""
        matches: set[str] | None = None
        if phrase:
            index = recording_search.recording_index(self.service)  # SearchUnsupported (400) naming why
            matches = set(await index.search(phrase, recording_search.MATCH_MAX))

        may_read, may_list = self.item_decider(acting, "read", "session"), self.item_decider(acting, "list", "session")

        def keep(record: SessionRecord) -> bool:
            if matches is not None and record.sid not in matches:
                return False
            if params.user and params.user != record.user and params.user not in record.participants:
                return False
            if params.node and params.node not in (record.server_hostname, record.server_id):
                return False
            attributes = recordings.session_attributes(record)
            if matches is not None and not may_read(record.sid, attributes):
                return False  # a match shows the recording's text: reading it must be allowed too
            return may_list(record.sid, attributes)

        found = await recordings.list_sessions(self, since, until, limit, keep) if matches != set() else []
        if phrase and found:
            await recording_search.snippets_for(self.service, phrase, found)
        return {"sessions": found}

    @endpoint("update", "session")
    async def reindex_recordings(self, request: Request, identity: Identity | None) -> Any:
        """Index recordings again for search (``tctl recordings reindex``), from the session storage,
        a batch per call; :class:`SearchUnsupported` (400) when the backend keeps no index. Hosts
        other than auth servers are refused (403, audited): a node's ``update`` on ``session`` is
        for its own uploads."""
        from teleport_core.errors import TeleportError
        from teleport_core.state.sessions import check_session_id

        assert identity is not None
        if identity.kind is IdentityKind.HOST and "Auth" not in identity.roles:  # a node may update sessions
            reason = (f"access denied to host {identity.name!r}: only auth servers and users whose roles allow "
                      "update on session may reindex recordings")
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        params = body(request, ReindexBody)
        recording_search.recording_index(self.service)
        if params.all == bool(params.sids):
            raise TeleportError("reindex: give either sids or all")
        sids = [check_session_id(sid) for sid in params.sids]
        following = ""
        if params.all:
            storage = await self.service.ctx.resources.session_storage()
            stored = sorted(info.session_id for info in await storage.list() if info.session_id > params.after)
            sids = stored[:params.limit]
            following = sids[-1] if len(stored) > params.limit else ""
        indexed = truncated = 0
        failed = []
        for sid in sids:
            try:
                _, cut = await recording_search.index_stored(self.service, sid)
            except (TeleportError, ValueError, OSError) as exc:
                failed.append({"sid": sid, "error": str(exc)})
                recording_search.counted(self.service, False)
                continue
            recording_search.counted(self.service, True)
            indexed += 1
            truncated += int(cut)
        return {"indexed": indexed, "truncated": truncated, "failed": failed, "next": following}

    @endpoint(None, None)
    async def read_recording(self, request: Request, identity: Identity | None) -> Any:
        """The asciicast v2 recording of a session: ``read`` on ``session`` (audited as
        ``session.recording.access``), for the caller or the user a proxy forwarded."""
        import shutil
        import tempfile
        from pathlib import Path

        from starlette.background import BackgroundTask
        from starlette.responses import FileResponse

        from teleport_auth.session_records import records_of
        from teleport_core.state.sessions import check_session_id

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        sid = check_session_id(request.path_params["sid"])
        record = await records_of(self.service).get(sid)
        await self.authorize(request, acting, "read", "session", sid,
                             attributes=recordings.session_attributes(record))
        storage = await self.service.ctx.resources.session_storage()
        tmp = tempfile.mkdtemp(prefix="teleport-recording-")
        path = Path(tmp) / f"{sid}.cast"
        try:
            await storage.download(sid, path)
        except NotFound:
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotFound(await recordings.not_stored(self, sid)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        await self.service.emit(self.event("session.recording.access", sid=sid, user=acting.name))
        return FileResponse(path, media_type="application/x-asciicast", filename=f"{sid}.cast",
                            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


ROUTES: list[Operation] = [
    Operation("/v1/sessions/{sid}/recording", "PUT", "upload_recording",
              "Upload a finished session recording (asciicast v2 body; only the node that started the session, once)",
              response=UploadReply, max_body=RECORDING_MAX_BODY, media="application/x-asciicast"),
    Operation("/v1/sessions", "GET", "list_recordings",
              "Sessions that ended in a window (since, until, limit; user, node), newest first (list on session)",
              query=RecordingsQuery, response=SessionsReply),
    Operation("/v1/sessions/reindex", "POST", "reindex_recordings",
              "Index stored recordings again for text search (update on session; a batch per call)",
              body=ReindexBody, response=ReindexReply),
    Operation("/v1/sessions/{sid}/recording", "GET", "read_recording",
              "Download a session recording, asciicast v2 (read on session; audited)", media="application/x-asciicast"),
    Operation("/v1/upload_refusals", "GET", "list_upload_refusals",
              "Recordings refused for good (403/409), newest first (host, limit; list on session)",
              query=RefusalsQuery, response=RefusalsReply),
]
