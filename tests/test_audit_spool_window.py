"""An audit spool's delivery window: several events in flight at once to a sink that batches its
durable writes (group commit), still delivered in order, at least once, with progress recorded only
past what was delivered."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from teleport_core.api.client import ConnectionProblem
from teleport_core.state.audit import AuditEvent, AuditQuery, new_event
from teleport_core.state.audit_spool import AuditSpool, FanOutSpool
from tests.test_audit_spool import Log


class Sink:
    """Queues each event the moment it is handed over (in call order), then stores it after a
    yield, like a sink whose writer thread commits a batch; counts how many were in flight."""

    def __init__(self, fail_uid: str = ""):
        self.order: list[str] = []
        self.stored: dict[str, dict] = {}
        self.handed: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_uid = fail_uid

    async def send(self, event):
        self.handed.append(event["uid"])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if event["uid"] == self.fail_uid:
                self.fail_uid = ""  # fails once, then works
                raise ConnectionProblem("the sink is down for a moment")
            if event["uid"] not in self.stored:
                self.order.append(event["uid"])
            self.stored[event["uid"]] = event
        finally:
            self.in_flight -= 1


def test_a_window_hands_events_over_together_in_order(tmp_path):
    sink = Sink()

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", sink.send, Log(), window=16)
        events = [new_event("exec", command=f"cmd {i}") for i in range(100)]
        for event in events:
            await spool.emit(event)
        assert await spool.deliver() == 100
        assert spool.backlog() == 0
        return events

    events = asyncio.run(scenario())
    assert sink.order == [event.uid for event in events]  # the order of the spool
    assert sink.handed == sink.order  # each handed over once, in order
    assert 1 < sink.most_in_flight <= 16


def test_window_one_delivers_one_at_a_time(tmp_path):
    sink = Sink()

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", sink.send, Log())
        for i in range(10):
            await spool.emit(new_event("exec", command=str(i)))
        return await spool.deliver()

    assert asyncio.run(scenario()) == 10
    assert sink.most_in_flight == 1


def test_a_failure_inside_a_window_keeps_progress_before_it_and_resends_the_rest(tmp_path):
    events = [new_event("exec", command=f"cmd {i}") for i in range(20)]
    sink = Sink(fail_uid=events[5].uid)
    log = Log()

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", sink.send, log, retry=0.01, max_retry=0.02, window=8)
        for event in events:
            await spool.emit(event)
        with pytest.raises(ConnectionProblem):
            await spool.deliver()
        assert spool.backlog() == 15  # the 5 before the failed one are recorded as delivered
        first_pass = len(sink.handed)
        runner = asyncio.create_task(spool.run())  # retries from the failed event on
        for _ in range(500):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.01)
        runner.cancel()
        return spool.backlog(), first_pass

    backlog, first_pass = asyncio.run(scenario())
    assert backlog == 0
    assert set(sink.stored) == {event.uid for event in events}  # every event, stored once by uid
    uids = [event.uid for event in events]
    assert 8 <= first_pass < 20 and sink.handed[:first_pass] == uids[:first_pass]  # in order, a window ahead
    assert sink.handed[first_pass:] == uids[5:]  # the retry starts at the failed one
    assert [uid for uid in sink.order if uid == events[5].uid] == [events[5].uid]


def everything() -> AuditQuery:
    now = dt.datetime.now(dt.UTC)
    return AuditQuery(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1), limit=1000)


@pytest.mark.parametrize("window", [0, -3])
def test_a_window_below_one_is_refused(tmp_path, window):
    with pytest.raises(ValueError, match="at least 1"):
        AuditSpool(tmp_path / "spool", Sink().send, Log(), window=window)
    with pytest.raises(ValueError, match="at least 1"):
        FanOutSpool(tmp_path / "fan", {"a": Sink().send}, Log(), primary="a", window=window)


def test_a_window_into_the_json_log_stores_every_event_durably_once(tmp_path):
    """The real audit_json sink (one write + fsync per batch): 200 events emitted concurrently
    with read-your-writes are all in the log when their emits return, each once, in order."""
    from teleport_audit_json.filelog import FileAuditLog

    async def scenario():
        sink = FileAuditLog(tmp_path / "log", "auth-1")

        async def send(data):
            await sink.emit(AuditEvent.from_dict(data))

        spool = FanOutSpool(tmp_path / "spool", {"json": send}, Log(), primary="json", window=64)
        runner = asyncio.create_task(spool.run())
        events = [new_event("cert.create", user=f"u{i}", cert_type="user") for i in range(200)]
        await asyncio.gather(*(spool.emit(event, wait_delivered=60) for event in events))
        assert spool.backlog() == 0
        page = await sink.search(everything())
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await sink.close()
        reopened = FileAuditLog(tmp_path / "log", "auth-1")  # what is on disk
        again = await reopened.search(everything())
        await reopened.close()
        return events, page, again

    events, page, again = asyncio.run(scenario())
    uids = [event.uid for event in events]
    assert sorted(e.uid for e in page.events) == sorted(uids)
    assert [e.uid for e in again.events] == [e.uid for e in page.events]
    assert len({e.uid for e in again.events}) == 200
