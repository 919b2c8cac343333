"""The auth API, session recordings: upload (the node that ran the session), list, read."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import RECORDING_MAX_BODY, APIBase, Operation, endpoint, query
from teleport_core.access import Identity, IdentityKind
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    NotFound,
)
from teleport_core.schema import Query, Reply, Timestamp


class RecordingsQuery(Query):
    since: Timestamp = Field("", description="RFC 3339; default a day before until; no zone means UTC")
    until: Timestamp = Field("", description="RFC 3339; default now")
    limit: int = Field(50, ge=1, le=1000, description="sessions at most, newest first")


class UploadReply(Reply):
    stored: str
    size: int
    unchanged: bool


class SessionEntry(Reply):
    """A session that ended: who, where, when, and whether its recording was uploaded."""

    sid: str
    proto: str
    user: str
    participants: list[str]
    login: str
    server_id: str
    server_hostname: str
    interactive: bool
    command: str
    session_recording: str
    start: str
    end: str
    duration_seconds: float
    recorded: bool
    size: int


class SessionsReply(Reply):
    sessions: list[SessionEntry]


class SessionsAPI(APIBase):
    """Session recording routes."""

    # -- session recordings ------------------------------------------------------------------------

    @endpoint("create", "session")
    async def upload_recording(self, request: Request, identity: Identity | None) -> Any:
        """A node streams a finished recording (asciicast v2); stored through the session storage.

        Only the host that emitted the session's ``session.start`` may upload it, once (an
        identical re-upload is a no-op): see :mod:`teleport_auth.uploads`."""
        import tempfile
        from pathlib import Path

        from teleport_auth.authz import host_uuid
        from teleport_auth.uploads import HEADER_MAX, header_start, session_hosts, upload_refusal
        from teleport_core.sessions import check_session_id

        assert identity is not None
        sid = check_session_id(request.path_params["sid"])
        uploader = host_uuid(identity) if identity.kind is IdentityKind.HOST else ""
        stream = request.stream()
        head = b""
        async for chunk in stream:  # the header line first: its timestamp narrows the audit search
            head += chunk
            if b"\n" in head or len(head) >= HEADER_MAX:
                break
        hosts = await session_hosts(self.service.audit, sid, header_start(head))
        reason = upload_refusal(hosts, uploader, sid)
        if reason:
            await self.audit_denial(request, identity, reason)
            raise AccessDenied(reason)
        storage = await self.service.ctx.resources.session_storage()
        size = len(head)
        with tempfile.TemporaryDirectory(prefix="teleport-upload-") as tmp:
            path = Path(tmp) / f"{sid}.cast"
            with open(path, "wb") as out:
                out.write(head)
                async for chunk in stream:
                    size += len(chunk)
                    out.write(chunk)
            try:
                stored = await self._upload_gate.store(storage, sid, path)
            except AlreadyExists as exc:
                await self.audit_denial(request, identity, str(exc))
                raise
        return {"stored": sid, "size": size, "unchanged": not stored}

    @endpoint(None, None)
    async def list_recordings(self, request: Request, identity: Identity | None) -> Any:
        """Sessions that ended in a window (``since``, ``until``, ``limit``): ``list`` on ``session``
        for the caller, or for the user whose certificate a proxy forwarded (teleport_auth.recordings)."""
        from teleport_auth import recordings

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        await self.authorize(request, acting, "list", "session")
        since, until, limit = recordings.window(query(request, RecordingsQuery).model_dump())
        return {"sessions": await recordings.list_sessions(self, since, until, limit)}

    @endpoint(None, None)
    async def read_recording(self, request: Request, identity: Identity | None) -> Any:
        """The asciicast v2 recording of a session: ``read`` on ``session`` (audited as
        ``session.recording.access``), for the caller or the user a proxy forwarded."""
        import shutil
        import tempfile
        from pathlib import Path

        from starlette.background import BackgroundTask
        from starlette.responses import FileResponse

        from teleport_auth import recordings
        from teleport_core.sessions import check_session_id

        assert identity is not None
        acting = await recordings.acting_identity(self, request, identity)
        sid = check_session_id(request.path_params["sid"])
        await self.authorize(request, acting, "read", "session", sid)
        storage = await self.service.ctx.resources.session_storage()
        tmp = tempfile.mkdtemp(prefix="teleport-recording-")
        path = Path(tmp) / f"{sid}.cast"
        try:
            await storage.download(sid, path)
        except NotFound:
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotFound(f"no recording of session {sid} (unknown, still running or not uploaded yet)") from None
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
              "Sessions that ended in a window (since, until, limit), newest first (list on session)",
              query=RecordingsQuery, response=SessionsReply),
    Operation("/v1/sessions/{sid}/recording", "GET", "read_recording",
              "Download a session recording, asciicast v2 (read on session; audited)", media="application/x-asciicast"),
]
