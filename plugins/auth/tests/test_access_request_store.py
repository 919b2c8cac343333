"""The access request store on the real SQLite backend (compare-and-swap changes, the sweeper that
removes lapsed requests and reports them once) and the announcer of
``teleport_access_request_changed`` (in order; a failing plugin is logged and the others still hear)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest
from teleport_auth.access_requests import AccessRequestStore, Announcer, change_of

from teleport_core import hookimpl
from teleport_core.errors import NotFound
from teleport_core.logs import get_logger
from teleport_core.plugins import make_plugins
from teleport_core.policy.requests import InvalidAccessRequest, Review, State, apply_review, new_request


def _request(user="alice", roles=("dba",), ttl=dt.timedelta(hours=1), access=dt.timedelta(hours=4)):
    now = dt.datetime.now(dt.UTC)
    return new_request(user, list(roles), reason="r", access_expires=now + access, request_ttl=ttl, now=now)


def test_changes_are_stored_and_a_refused_change_writes_nothing(with_backend):
    async def body(backend):
        store = AccessRequestStore(backend)
        created = await store.create(_request())
        review = Review("bob", State.APPROVED, "fine", ("reviewer",))
        before, after = await store.change(created.id, lambda r: apply_review(r, review))
        assert before.state == State.PENDING and after.state == State.APPROVED
        assert (await store.get(created.id)) == after
        with pytest.raises(InvalidAccessRequest, match="already APPROVED"):
            await store.change(created.id, lambda r: apply_review(r, Review("dave", State.DENIED)))
        assert (await store.get(created.id)).state == State.APPROVED
        assert [r.id for r in await store.list()] == [created.id]
        assert (await store.delete(created.id)).id == created.id
        with pytest.raises(NotFound):
            await store.get(created.id)
        with pytest.raises(NotFound):
            await store.get("../locks/x")

    with_backend(body)


def test_concurrent_reviews_are_both_kept(with_backend):
    """Two reviews racing on one request (threshold 2): compare-and-swap keeps both, and it is approved."""
    from teleport_core.policy.roles import Threshold

    async def body(backend):
        store = AccessRequestStore(backend)
        now = dt.datetime.now(dt.UTC)
        request = new_request("alice", ["dba"], thresholds=[Threshold("two", 2, 2)],
                              access_expires=now + dt.timedelta(hours=1), now=now)
        await store.create(request)
        await asyncio.gather(*(store.change(request.id, lambda r, who=who: apply_review(r, Review(who, State.APPROVED)))
                               for who in ("bob", "dave")))
        stored = await store.get(request.id)
        assert sorted(r.author for r in stored.reviews) == ["bob", "dave"] and stored.state == State.APPROVED

    with_backend(body)


def test_the_sweeper_removes_a_lapsed_request_and_reports_it_once(with_backend, clock):
    async def body(backend):
        store = AccessRequestStore(backend)
        lapsing = await store.create(_request(ttl=dt.timedelta(minutes=5)))
        staying = await store.create(_request(user="erin"))
        reported = []

        async def lapsed(request):
            reported.append(request.id)

        clock.advance(minutes=6)
        task = asyncio.create_task(store.sweep(lapsed, now=clock))
        while not reported:
            await asyncio.sleep(0.02)
        second = asyncio.create_task(store.sweep(lapsed, now=clock))  # another auth server sweeping too
        await asyncio.sleep(0.2)
        for running in (task, second):
            running.cancel()
        await asyncio.gather(task, second, return_exceptions=True)
        assert reported == [lapsing.id]
        assert [r.id for r in await store.list()] == [staying.id]

    with_backend(body)


class Recorder:
    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    @hookimpl
    def teleport_access_request_changed(self, request, change):
        self.heard.append((request.id, change))


class Failing:
    @hookimpl
    def teleport_access_request_changed(self, request, change):
        raise RuntimeError("webhook down")


def test_hook_teleport_access_request_changed(caplog):
    """The announcer calls every plugin's hook in order of the changes, off the event loop; a plugin
    that raises is logged with its name and the others still hear every change."""
    recorder = Recorder()
    plugins = make_plugins(objects=[("recorder", recorder), ("failing", Failing())])
    request = _request()
    approved = apply_review(request, Review("bob", State.APPROVED))

    async def main():
        announcer = Announcer(plugins, get_logger("auth"))
        task = asyncio.create_task(announcer.run())
        announcer.announce(request, "created")
        announcer.announce(approved, change_of(approved))
        while len(recorder.heard) < 2:
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert recorder.heard == [(request.id, "created"), (request.id, "approved")]
    failures = [r.getMessage() for r in caplog.records if "webhook down" in r.getMessage()]
    assert len(failures) == 2 and all("failing" in text for text in failures)
