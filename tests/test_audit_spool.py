"""The audit outbox of nodes and proxies: durable on emit, delivered in order once auth answers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

from teleport_core.api.client import ConnectionProblem
from teleport_core.errors import AccessDenied
from teleport_core.state.audit import new_event
from teleport_core.state.audit_spool import AuditSpool
from tests.conftest import ROOT


class Log:
    def __init__(self):
        self.warnings = []
        self.errors = []

    def warning(self, message, **kw):
        self.warnings.append((message, kw))

    def error(self, message, **kw):
        self.errors.append((message, kw))


class Auth:
    """Stands in for the auth API's emit_event: down until told otherwise, then stores by uid."""

    def __init__(self):
        self.up = False
        self.stored: dict[str, dict] = {}
        self.order: list[str] = []

    async def send(self, event):
        if not self.up:
            raise ConnectionProblem("cannot reach auth server at 127.0.0.1:3025: connection refused")
        if event["uid"] not in self.stored:
            self.order.append(event["uid"])
        self.stored[event["uid"]] = event


def test_events_wait_on_disk_while_auth_is_down_then_arrive_in_order(tmp_path):
    auth, log = Auth(), Log()

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", auth.send, log, retry=0.05, max_retry=0.1)
        runner = asyncio.create_task(spool.run())
        events = [new_event("exec", user="joe", command=f"cmd {i}") for i in range(50)]
        await asyncio.gather(*(spool.emit(e) for e in events[:25]))
        for event in events[25:]:
            await spool.emit(event)
        await asyncio.sleep(0.3)
        assert spool.backlog() == 50 and not auth.stored
        auth.up = True
        for _ in range(100):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        runner.cancel()
        return events

    events = asyncio.run(scenario())
    assert auth.order[:25] and set(auth.order) == {e.uid for e in events}
    assert [auth.stored[u]["command"] for u in auth.order[25:]] == [f"cmd {i}" for i in range(25, 50)]
    assert log.warnings and log.warnings[0][0] == "audit events not delivered, will retry"
    assert log.warnings[-1][1]["backlog"] == 50  # the operator sees the backlog grow
    assert oct((tmp_path / "spool" / "events.jsonl").stat().st_mode & 0o777) == "0o600"


def test_acknowledged_events_survive_kill_9(tmp_path):
    child = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from teleport_core.state.audit import new_event
        from teleport_core.state.audit_spool import AuditSpool

        async def never(event):
            raise OSError("auth is down")

        async def main():
            spool = AuditSpool(Path({str(tmp_path / 'spool')!r}), never, None)
            for i in range(100000):
                event = new_event("exec", user="joe", command=str(i))
                await spool.emit(event)
                print(event.uid, flush=True)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    acknowledged = [proc.stdout.readline().strip() for _ in range(200)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    auth = Auth()
    auth.up = True

    async def deliver():
        spool = AuditSpool(tmp_path / "spool", auth.send, Log())
        await spool.deliver()
        assert spool.backlog() == 0

    asyncio.run(deliver())
    assert set(acknowledged) <= set(auth.stored)  # every acknowledged event, none lost


def test_crash_after_sending_resends_and_the_uid_keeps_it_once(tmp_path):
    auth = Auth()
    auth.up = True

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", auth.send, Log())
        for i in range(3):
            await spool.emit(new_event("exec", command=str(i)))
        await spool.deliver()
        (tmp_path / "spool" / "sent").write_text("0\n")  # as if the progress mark was lost in a crash
        again = AuditSpool(tmp_path / "spool", auth.send, Log())
        assert await again.deliver() == 3

    asyncio.run(scenario())
    assert len(auth.order) == 3  # resent, stored once (the sink deduplicates by uid)


def test_torn_last_line_is_skipped(tmp_path):
    auth = Auth()
    auth.up = True

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", auth.send, Log())
        await spool.emit(new_event("exec", command="whole"))
        with open(tmp_path / "spool" / "events.jsonl", "ab") as handle:
            handle.write(json.dumps({"event": "exec"}).encode()[:10])  # a crash mid-append
        assert await spool.deliver() == 1

    asyncio.run(scenario())
    assert [e["command"] for e in auth.stored.values()] == ["whole"]


def test_a_refused_event_is_dropped_once_and_does_not_block_the_queue(tmp_path):
    auth, log = Auth(), Log()
    auth.up = True
    sent: list[str] = []
    store = auth.send

    async def send(event):
        sent.append(event["uid"])
        if event["event"] == "user.login":  # what auth answers a node's forged login: 403
            raise AccessDenied('access denied to host "h.c": a Node may not emit "user.login" events')
        await store(event)

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", send, log, retry=0.05, max_retry=0.1)
        runner = asyncio.create_task(spool.run())
        before = new_event("exec", command="before")
        forged = new_event("user.login", user="admin")
        after = new_event("exec", command="after")
        for event in (before, forged, after):
            await spool.emit(event)
        for _ in range(100):
            if spool.backlog() == 0 and len(auth.stored) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for (wrong) retries to show
        runner.cancel()
        return spool, before, forged, after

    spool, before, forged, after = asyncio.run(scenario())
    assert auth.order == [before.uid, after.uid]
    assert sent.count(forged.uid) == 1 and spool.refused == 1 and spool.backlog() == 0
    assert [(m, kw["uid"], kw["event_type"]) for m, kw in log.errors] == [
        ("audit event refused by the auth server, dropped", forged.uid, "user.login")]
    assert "user.login" in log.errors[0][1]["reason"] and not log.warnings


def test_emit_can_wait_for_delivery_and_the_pending_gauge_is_shared(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from teleport_core.state.audit_spool import export_pending

    auth = Auth()
    auth.up = True

    async def scenario():
        spool = AuditSpool(tmp_path / "a", auth.send, Log(), retry=0.05, max_retry=0.1)
        other = AuditSpool(tmp_path / "b", auth.send, Log())
        registry = CollectorRegistry()
        export_pending(registry, "auth", spool)
        export_pending(registry, "node", other)  # a second service of the same process: one gauge
        runner = asyncio.create_task(spool.run())
        for i in range(5):
            event = new_event("exec", command=str(i))
            await spool.emit(event, wait_delivered=30)
            assert event.uid in auth.stored  # read-your-writes: delivered when emit returns
        await other.emit(new_event("exec", command="waiting"))  # no sender: stays pending
        text = generate_latest(registry).decode()
        runner.cancel()
        return text

    text = asyncio.run(scenario())
    assert 'teleport_audit_events_pending{service="auth"} 0.0' in text
    assert 'teleport_audit_events_pending{service="node"} 1.0' in text


def test_a_torn_tail_is_cut_at_open_so_later_events_stay_whole(tmp_path):
    auth = Auth()
    auth.up = True

    async def scenario():
        spool = AuditSpool(tmp_path / "spool", auth.send, Log())
        await spool.emit(new_event("exec", command="before"))
        with open(tmp_path / "spool" / "events.jsonl", "ab") as handle:
            handle.write(b'{"event":"exec","comm')  # a crash mid-append: never acknowledged
        again = AuditSpool(tmp_path / "spool", auth.send, Log())  # the next start
        await again.emit(new_event("exec", command="after"))
        assert await again.deliver() == 2

    asyncio.run(scenario())
    lines = (tmp_path / "spool" / "events.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["command"] for line in lines] == ["before", "after"]
    assert [e["command"] for e in auth.stored.values()] == ["before", "after"]


class BoundLog(Log):
    """A log with structlog's bind: what each destination's WARN is bound with."""

    def __init__(self, bound=None, parent=None):
        super().__init__()
        self.bound = bound or {}
        self.parent = parent

    def bind(self, **kw):
        return BoundLog({**self.bound, **kw}, self)

    def warning(self, message, **kw):
        (self.parent or self).warnings.append((message, {**self.bound, **kw}))


def test_fan_out_one_queue_per_sink_a_failing_sink_holds_back_no_other(tmp_path):
    """Auth's spool: each sink has its own durable queue and sender. While one sink fails, the
    other gets every event at once; the failing one is reported by its name, keeps its events on
    disk, and gets them in order, exactly once, when it works again. Events an older single-queue
    spool left go to both."""
    from teleport_core.state.audit_spool import FanOutSpool, destination_key

    good, bad, log = Auth(), Auth(), BoundLog()
    good.up = True
    leftover = new_event("exec", user="joe", command="left by an older version")
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "events.jsonl").write_bytes(json.dumps(leftover.to_dict()).encode() + b"\n")

    async def scenario():
        spool = FanOutSpool(tmp_path / "spool", {"file:///var/log/a": good.send, "syslog://siem": bad.send}, log,
                            primary="file:///var/log/a", retry=0.05, max_retry=0.1)
        runner = asyncio.create_task(spool.run())
        events = [new_event("exec", user="joe", command=f"cmd {i}") for i in range(30)]
        for event in events:
            await spool.emit(event, wait_delivered=2.0)  # waits for the primary only
        assert [uid for uid in good.order if uid != leftover.uid] == [e.uid for e in events]
        await asyncio.sleep(0.3)
        assert not bad.stored and spool.backlog() >= 30 and spool.failing
        assert (tmp_path / "spool" / destination_key("syslog://siem") / "events.jsonl").stat().st_size > 0
        bad.up = True
        spool.nudge()
        for _ in range(100):
            if spool.backlog() == 0:
                break
            await asyncio.sleep(0.05)
        runner.cancel()
        return events

    events = asyncio.run(scenario())
    assert sorted(bad.order) == sorted([leftover.uid, *(e.uid for e in events)])
    assert [u for u in bad.order if u != leftover.uid] == [e.uid for e in events]  # in order, once each
    assert leftover.uid in good.stored
    warned = [kw for message, kw in log.warnings if message == "audit events not delivered, will retry"]
    assert "syslog://siem" in {kw["destination"] for kw in warned}  # the failure is that sink's
    assert "file:///var/log/a" not in {kw["destination"] for kw in warned}
