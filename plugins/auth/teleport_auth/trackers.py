"""Live sessions' trackers in cluster state: ``/session_trackers/<sid>`` -> the tracker's JSON.

Each item expires with its tracker (``expires``, 1 h from the host's last write: the backend
hides expired items), so a tracker whose host died disappears by itself. Updates are
compare-and-swap on the item's revision (``CompareFailed``, a 412, when it moved meanwhile).
Who may write and who sees what: :mod:`teleport_auth.api.trackers`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import attrs

from teleport_core.errors import AlreadyExists, NotFound
from teleport_core.state.backend import Backend, Item, range_end
from teleport_core.state.trackers import TTL, SessionTracker

PREFIX = b"/session_trackers/"
#: the furthest a host may set a tracker's expiry (it extends it while the session runs)
MAX_TTL = TTL


def _key(sid: str) -> bytes:
    return PREFIX + sid.encode()


def _load(item: Item) -> SessionTracker:
    tracker = SessionTracker.from_dict(json.loads(item.value))
    return attrs.evolve(tracker, revision=item.revision)


def _item(tracker: SessionTracker, revision: str = "") -> Item:
    data = attrs.evolve(tracker, revision="").to_dict()
    return Item(_key(tracker.session_id), json.dumps(data).encode(), tracker.expires, revision)


class TrackerStore:
    """The trackers of one cluster (every auth server shares them through the backend)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def create(self, tracker: SessionTracker) -> SessionTracker:
        try:
            item = await self.backend.create(_item(tracker))
        except AlreadyExists:
            raise AlreadyExists(f"session tracker {tracker.session_id} already exists") from None
        return attrs.evolve(tracker, revision=item.revision)

    async def get(self, sid: str) -> SessionTracker:
        try:
            return _load(await self.backend.get(_key(sid)))
        except NotFound:
            raise NotFound(f"session {sid} not found (it ended, or never ran)") from None

    async def list(self) -> list[SessionTracker]:
        items = await self.backend.get_range(PREFIX, range_end(PREFIX))
        return sorted((_load(item) for item in items), key=lambda t: t.created)

    async def update(self, tracker: SessionTracker) -> SessionTracker:
        """Replace the tracker if its stored revision is still ``tracker.revision`` (else ``CompareFailed``)."""
        try:
            item = await self.backend.conditional_update(_item(tracker, tracker.revision))
        except NotFound:
            raise NotFound(f"session {tracker.session_id} not found (it ended, or its tracker expired)") from None
        return attrs.evolve(tracker, revision=item.revision)

    async def delete(self, sid: str) -> None:
        try:
            await self.backend.delete(_key(sid))
        except NotFound:
            raise NotFound(f"session {sid} not found (it ended, or never ran)") from None


def clamp_expiry(tracker: SessionTracker, now: dt.datetime | None = None) -> SessionTracker:
    """A host's tracker with its expiry at most :data:`MAX_TTL` from now."""
    now = now or dt.datetime.now(dt.UTC)
    return attrs.evolve(tracker, expires=min(tracker.expires, now + MAX_TTL))


def trackers_of(service: Any) -> TrackerStore:
    """The service's tracker store (made on first use)."""
    store: TrackerStore | None = getattr(service, "_session_trackers", None)
    if store is None:
        store = TrackerStore(service.backend)
        service._session_trackers = store
    return store
