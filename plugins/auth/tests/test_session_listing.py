"""The recordings listing joins a session's events only from the host that started it."""

from __future__ import annotations

import datetime as dt

from teleport_auth.recordings import session_entry

from teleport_core.audit import new_event

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
SINCE, UNTIL = T0 - dt.timedelta(hours=1), T0 + dt.timedelta(hours=1)
SID = "6f1f2a56-8c1e-4a53-9a8e-0d6b3c1a2b3c"


def event(kind: str, server: str, minutes: int, **fields):
    return new_event(kind, when=T0 + dt.timedelta(minutes=minutes), sid=SID, server_id=server, **fields)


def test_the_owners_events_make_the_entry():
    entry = session_entry([event("session.start", "victim", 0, user="alice"),
                           event("session.end", "victim", 5, user="alice", login="root"),
                           event("session.upload", "victim", 6, size=123)], SINCE, UNTIL)
    assert entry is not None
    assert (entry["user"], entry["login"], entry["server_id"]) == ("alice", "root", "victim")
    assert entry["recorded"] and entry["size"] == 123
    assert entry["duration_seconds"] == 300


def test_another_hosts_end_and_upload_are_ignored():
    # the attacker's forged end comes first and claims another user; its upload claims a size
    events = [event("session.start", "victim", 0, user="alice"),
              event("session.end", "attacker", 1, user="mallory", login="nobody"),
              event("session.upload", "attacker", 2, size=1),
              event("session.end", "victim", 5, user="alice", login="root")]
    entry = session_entry(events, SINCE, UNTIL)
    assert entry is not None
    assert (entry["user"], entry["login"], entry["server_id"]) == ("alice", "root", "victim")
    assert not entry["recorded"]


def test_an_end_only_from_another_host_lists_nothing():
    events = [event("session.start", "victim", 0, user="alice"),
              event("session.end", "attacker", 1, user="mallory")]
    assert session_entry(events, SINCE, UNTIL) is None


def test_window_and_recording_off():
    ended_late = [event("session.start", "n", 0), event("session.end", "n", 120)]
    assert session_entry(ended_late, SINCE, UNTIL) is None
    off = [event("session.start", "n", 0), event("session.end", "n", 1, session_recording="off")]
    assert session_entry(off, SINCE, UNTIL) is None
