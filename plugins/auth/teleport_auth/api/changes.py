"""The auth API, change notification: a long poll servers use to follow roles, CAs and locks."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from pydantic import Field
from starlette.requests import Request

from teleport_auth.api.core import APIBase, BadRequest, Operation, endpoint, query
from teleport_core.api.schema import Query, Reply, Word
from teleport_core.policy.access import Identity
from teleport_core.state.backend import range_end


class ChangesQuery(Query):
    kind: Word = Field("", description="role, cert_authority or lock (required)")
    version: Word = Field("", description="the version the caller has; the call waits while it is current")
    timeout: float = Field(30.0, allow_inf_nan=False, description="seconds to wait at most (0..60, clamped)")


class ChangesReply(Reply):
    kind: str
    version: str


class ChangesAPI(APIBase):
    """Change notification routes."""

    # -- change notification (long poll) ------------------------------------------------------------

    @endpoint(None, None)
    async def changes(self, request: Request, identity: Identity | None) -> Any:
        """Long poll: the version of a kind's state; waits (up to ``timeout`` s) while it equals ``version``.

        Servers cache roles and CA keys and call this in a loop, so a change takes effect within
        a round trip, without re-login and without polling the data itself.
        """
        assert identity is not None
        params = query(request, ChangesQuery)
        kind = params.kind
        if kind not in CHANGE_PREFIXES:
            raise BadRequest(f"kind: expected one of {', '.join(sorted(CHANGE_PREFIXES))}")
        await self.authorize(request, identity, "read", kind)
        timeout = min(max(params.timeout, 0.0), 60.0)
        seen = params.version
        prefix = CHANGE_PREFIXES[kind]
        backend = self.service.backend
        async with backend.watch([prefix]) as watcher:
            await anext(watcher)  # INIT: every change from here on is seen
            current = await state_version(backend, prefix)
            if current == seen:  # wait for a change, the timeout, or the server stopping (as at a timeout)
                waits = [asyncio.ensure_future(anext(watcher)), asyncio.ensure_future(self.service.stopping.wait())]
                try:
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
                current = await state_version(backend, prefix)
        return {"kind": kind, "version": current}


CHANGE_PREFIXES = {"role": b"/roles/", "cert_authority": b"/authorities/", "lock": b"/locks/"}


async def state_version(backend: Any, prefix: bytes) -> str:
    """A token that changes whenever any item under ``prefix`` is written or deleted."""

    items = await backend.get_range(prefix, range_end(prefix))
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.key + b"\0" + item.revision.encode() + b"\n")
    return digest.hexdigest()[:32]


ROUTES: list[Operation] = [
    Operation("/v1/changes", "GET", "changes", "Long poll until roles, CAs or locks change (kind, version, timeout)",
              query=ChangesQuery, response=ChangesReply),
]

