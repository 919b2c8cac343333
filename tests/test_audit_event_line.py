"""``event_line`` (what the audit spool holds and the JSON log stores) is byte for byte
``event_line_slowly`` (``to_dict`` through the JSON encoder) for any event, and ``new_uid`` is
``str(uuid.uuid4())``: random version-4 UUIDs, never repeated, none shared with a forked child."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import threading
import uuid
from zoneinfo import ZoneInfo

import pytest

from teleport_core.state import audit
from teleport_core.state.audit import AuditEvent, event_line, event_line_slowly, new_event, new_uid


def _same(e: AuditEvent) -> bytes:
    try:
        expected = event_line_slowly(e)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            event_line(e)
        return b""
    assert event_line(e) == expected, e
    return expected


def test_event_line_is_the_slow_encoding_for_any_time_and_field() -> None:
    rnd = random.Random(23)
    epoch = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
    values: list[object] = ["alice", "", 'q"uote', "back\\slash", "é\u0000", "\ud83d", "x\u2028", 5, -0.5, 1e300,
                            None, True, [1, "a", None], {"nested": {"user": "n"}}, {3: "int key"}]
    times = [epoch + dt.timedelta(microseconds=rnd.randrange(300 * 365 * 86_400 * 10**6)) for _ in range(6000)]
    times += [t.replace(microsecond=us) for t in times[:500] for us in (0, 999, 1000, 999_000, 999_999)]
    times += [t.astimezone(ZoneInfo("Asia/Kolkata")) for t in times[:300]]
    times += [dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
              dt.datetime(2024, 5, 1, 12, 0, 0, 123_456)]  # naive: local time, as to_dict reads it
    for i, when in enumerate(times):
        fields = {k: rnd.choice(values) for k in rnd.sample(["user", "sid", "login", "addr.remote", "x"], i % 4)}
        _same(AuditEvent(rnd.choice(["exec", "é\n", ""]), "T3002I", rnd.choice([f"u-{i}", 'u"\\']), when, fields))


@pytest.mark.parametrize("fields", [
    {"time": "forged", "user": "u"},  # a fixed field's name in fields: to_dict lets it win, and so does this
    {"event": "other"},
    {"sid": "s"}.items().mapping,  # not a dict
    {"n": math.nan},  # refused (ValueError) both ways
    {"o": object()},  # TypeError both ways
])
def test_unusual_events_take_the_slow_encoding(fields: object) -> None:
    _same(AuditEvent("exec", "T3002I", "u1", dt.datetime(2024, 5, 1, tzinfo=dt.UTC), fields))  # type: ignore[arg-type]
    _same(AuditEvent(5, "T3002I", "u1", dt.datetime(2024, 5, 1, tzinfo=dt.UTC), {}))  # type: ignore[arg-type]


def test_a_cycle_is_a_value_error() -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(ValueError):
        event_line(AuditEvent("exec", "T3002I", "u1", dt.datetime(2024, 5, 1, tzinfo=dt.UTC), {"d": cycle}))


def test_new_uid_is_a_version_4_uuid_never_repeated() -> None:
    seen = {new_uid() for _ in range(20_000)}
    assert len(seen) == 20_000
    for text in list(seen)[:2000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every bit but the six fixed ones varies: a uid is as unguessable as uuid4's
    ones = 0
    for text in seen:
        ones |= uuid.UUID(text).int
    fixed = (0xF000 << 64) | (0xC000 << 48)
    assert ones | fixed == (1 << 128) - 1
    e = new_event("exec", user="alice")
    assert uuid.UUID(e.uid).version == 4 and e.code == "T3002I" and e.fields == {"user": "alice"}


def test_new_uid_from_threads_never_repeats() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def take(mine: list[str]) -> None:
        mine.extend(new_uid() for _ in range(5000))

    threads = [threading.Thread(target=take, args=(mine,)) for mine in out]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [u for mine in out for u in mine]
    assert len(set(every)) == len(every) == 20_000


def test_a_forked_child_makes_its_own_uids() -> None:
    new_uid()  # the parent holds fresh uids now
    assert audit._UIDS, "expected uids made ahead in the parent"
    ahead = set(audit._UIDS)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the uids it makes must not be the parent's next ones
        try:
            os.write(write, "\n".join(new_uid() for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        child = set(handle.read().decode().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 300 and not child & ahead
    parent = {new_uid() for _ in range(300)}
    assert not parent & child
