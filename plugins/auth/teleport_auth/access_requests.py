"""Access requests in cluster state: ``/access_requests/<id>`` -> the request as JSON.

:class:`AccessRequestStore` writes with compare-and-swap on the item's revision, so two
reviews racing on one request (on one auth server or several sharing the backend) never lose
one. The stored item outlives the request by :data:`SWEEP_GRACE`; :meth:`AccessRequestStore.sweep`
(a task of the auth service) deletes each request once it lapsed (a pending one at its request
TTL, an approved one at its access expiry, a denied one at its request TTL) and reports it
``expired`` (``access_request.update`` T5001I and the ``teleport_access_request_changed`` hook).

:class:`Announcer` calls ``teleport_access_request_changed`` of every plugin after each stored
change, in order, on a worker thread: a slow or failing plugin is logged, and never holds up
or fails the API call that made the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

from teleport_core.errors import CompareFailed, NotFound
from teleport_core.logs import get_logger
from teleport_core.policy.requests import (
    AccessRequest,
    InvalidAccessRequest,
    State,
    check_id,
    parse_access_request,
    request_to_dict,
)
from teleport_core.state.backend import Backend, Item, range_end

PREFIX = b"/access_requests/"
#: how long a lapsed request's item stays for the sweeper to report it
SWEEP_GRACE = dt.timedelta(hours=1)
#: the sweeper looks at least this often (requests created on another auth server)
SWEEP_EVERY = 30.0
#: compare-and-swap attempts of one change before giving up (409)
ATTEMPTS = 8


def request_key(request_id: str) -> bytes:
    return PREFIX + check_id(request_id, "id").encode()


def _item(request: AccessRequest, revision: str = "") -> Item:
    return Item(request_key(request.id), json.dumps(request_to_dict(request), sort_keys=True).encode(),
                request.stored_until() + SWEEP_GRACE, revision)


class AccessRequestStore:
    """Access requests under ``/access_requests/<id>``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._log = get_logger("auth")
        self._wake = asyncio.Event()

    async def create(self, request: AccessRequest) -> AccessRequest:
        await self.backend.create(_item(request))
        self._wake.set()
        return request

    async def _read(self, request_id: str) -> tuple[AccessRequest, Item]:
        try:
            item = await self.backend.get(request_key(request_id))
        except (NotFound, InvalidAccessRequest):
            raise NotFound(f"access request {json.dumps(request_id)} not found") from None
        return parse_access_request(json.loads(item.value), f"backend key {item.key.decode(errors='replace')}"), item

    async def get(self, request_id: str) -> AccessRequest:
        return (await self._read(request_id))[0]

    async def list(self) -> list[AccessRequest]:
        """Every stored request, oldest first (an unreadable item is logged and skipped)."""
        items = await self.backend.get_range(PREFIX, range_end(PREFIX))
        out = []
        for item in items:
            try:
                out.append(parse_access_request(json.loads(item.value)))
            except (ValueError, InvalidAccessRequest) as exc:
                self._log.error("unreadable access request in cluster state", key=item.key.decode(errors="replace"),
                                error=str(exc))
        return sorted(out, key=lambda r: (r.created, r.id))

    async def change(self, request_id: str,
                     mutate: Callable[[AccessRequest], AccessRequest]) -> tuple[AccessRequest, AccessRequest]:
        """Apply ``mutate`` to the stored request and write the result if nobody wrote in between
        (else read again and retry); ``(before, after)``. ``mutate`` may raise to refuse."""
        for _ in range(ATTEMPTS):
            before, item = await self._read(request_id)
            after = mutate(before)
            try:
                await self.backend.conditional_update(_item(after, item.revision))
            except CompareFailed:
                continue
            except NotFound:
                raise NotFound(f"access request {json.dumps(request_id)} not found") from None
            self._wake.set()
            return before, after
        raise CompareFailed(f"access request {json.dumps(request_id)} is changing too often, try again")

    async def delete(self, request_id: str) -> AccessRequest:
        """Delete a request; the request as it was."""
        request, item = await self._read(request_id)
        try:
            await self.backend.conditional_delete(item.key, item.revision)
        except (NotFound, CompareFailed):
            raise NotFound(f"access request {json.dumps(request_id)} not found") from None
        return request

    async def sweep(self, lapsed: Callable[[AccessRequest], Awaitable[None]],
                    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        """Delete each request once it lapsed and call ``lapsed(request)`` for it (once: the delete
        is conditional, so of several auth servers one reports it). A task, until cancelled."""
        while True:
            wait = SWEEP_EVERY
            try:
                moment = now()
                for request in await self.list():
                    ends = request.stored_until()
                    if ends > moment:
                        wait = min(wait, (ends - moment).total_seconds())
                        continue
                    try:
                        item = await self.backend.get(request_key(request.id))
                        await self.backend.conditional_delete(item.key, item.revision)
                    except (NotFound, CompareFailed):
                        continue
                    await lapsed(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("access request sweep failed, will retry", error=f"{type(exc).__name__}: {exc}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.05))


def change_of(request: AccessRequest) -> str:
    """What a review did to a request: ``approved``, ``denied`` or (still pending) ``reviewed``."""
    return {State.APPROVED: "approved", State.DENIED: "denied"}.get(request.state, "reviewed")


class Announcer:
    """Calls ``teleport_access_request_changed`` of each plugin, in order, off the event loop."""

    def __init__(self, plugins: Any, log: Any) -> None:
        self.plugins = plugins
        self.log = log
        self._queue: asyncio.Queue[tuple[AccessRequest, str]] = asyncio.Queue()

    def announce(self, request: AccessRequest, change: str) -> None:
        """Queue one change (never blocks, never fails)."""
        self._queue.put_nowait((request, change))

    async def run(self) -> None:
        """Deliver the queued changes (a task for the auth service's lifetime)."""
        while True:
            request, change = await self._queue.get()
            await asyncio.to_thread(self._deliver, request, change)

    def _deliver(self, request: AccessRequest, change: str) -> None:
        caller = self.plugins.hook.teleport_access_request_changed
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            args = {"request": request, "change": change}
            try:
                impl.function(**{name: args[name] for name in impl.argnames})
            except Exception as exc:
                label = self.plugins.info_for(impl.plugin_name).label
                self.log.error(f"{label}: hook teleport_access_request_changed failed: {type(exc).__name__}: {exc}",
                               request=request.id, change=change)
