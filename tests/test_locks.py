"""teleport_core.policy.locks: the lock resource and the matching every component uses."""

from __future__ import annotations

import datetime as dt

import pytest

from teleport_core.policy.locks import (
    InvalidLock,
    Lock,
    LockTarget,
    cert_issued,
    lock_in_force,
    lock_message,
    lock_to_dict,
    new_lock,
    parse_lock,
)

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


def lock(message: str = "", expires: dt.datetime | None = None, **target: object) -> Lock:
    return new_lock(LockTarget(**target), message, expires=expires, now=NOW - dt.timedelta(minutes=5))  # type: ignore[arg-type]


def test_each_target_kind_matches_only_its_own_access():
    user, role, login, node = (lock(user="joe"), lock(role="dev"), lock(login="root"), lock(node="uuid-1"))
    locks = [user, role, login, node]
    assert lock_in_force(locks, user="joe", now=NOW) is user
    assert lock_in_force(locks, user="ann", roles=("access", "dev"), now=NOW) is role
    assert lock_in_force(locks, user="ann", roles=("access",), login="root", now=NOW) is login
    assert lock_in_force(locks, user="ann", roles=("access",), login="ann", node="uuid-1", now=NOW) is node
    assert lock_in_force(locks, user="ann", roles=("access",), login="ann", node="uuid-2", now=NOW) is None
    # an empty login or node never matches a lock on a login or node
    assert lock_in_force([lock(login="root")], user="ann", now=NOW) is None
    assert lock_in_force([lock(node="uuid-1")], user="ann", now=NOW) is None
    # names are exact: no prefixes, no case folding
    assert lock_in_force([lock(user="joe")], user="joey", now=NOW) is None
    assert lock_in_force([lock(user="joe")], user="Joe", now=NOW) is None


def test_expired_locks_never_match():
    ended = lock(user="joe", expires=NOW - dt.timedelta(seconds=1))
    at_now = lock(user="joe", expires=NOW)
    later = lock(user="joe", expires=NOW + dt.timedelta(seconds=1))
    assert lock_in_force([ended, at_now], user="joe", now=NOW) is None
    assert lock_in_force([ended, at_now, later], user="joe", now=NOW) is later
    assert ended.expired(NOW) and at_now.expired(NOW) and not later.expired(NOW)


def test_issued_before_spares_later_certificates_only():
    deleted_at = NOW - dt.timedelta(minutes=1)
    gone = lock("user \"joe\" was deleted", user="joe", issued_before=deleted_at)
    assert lock_in_force([gone], user="joe", issued=deleted_at - dt.timedelta(hours=2), now=NOW) is gone
    assert lock_in_force([gone], user="joe", issued=deleted_at, now=NOW) is gone
    assert lock_in_force([gone], user="joe", issued=deleted_at + dt.timedelta(seconds=1), now=NOW) is None
    assert lock_in_force([gone], user="joe", issued=None, now=NOW) is gone  # unknown issue time: locked
    # an SSH certificate is back-dated a minute: its issue time is valid_after plus that minute
    assert cert_issued(int(deleted_at.timestamp()) - 60) == deleted_at


def test_times_are_whole_seconds_and_an_expiry_is_never_earlier():
    early = NOW + dt.timedelta(seconds=10, microseconds=1)
    made = new_lock(LockTarget(user="joe", issued_before=early), expires=early, now=early)
    assert made.expires == NOW + dt.timedelta(seconds=11)
    assert made.created == made.target.issued_before == NOW + dt.timedelta(seconds=10)
    assert parse_lock(lock_to_dict(made)) == made


def test_message_is_teleports():
    assert lock_message(lock("on leave", user="joe")) == 'lock targeting User:"joe" is in force: on leave'
    assert lock_message(lock(role="dev")) == 'lock targeting Role:"dev" is in force'
    assert lock_message(lock(login="root")).startswith('lock targeting Login:"root"')
    assert lock_message(lock(node="abc")).startswith('lock targeting Node:"abc"')


def test_resource_round_trip():
    original = lock("stolen laptop", expires=NOW + dt.timedelta(hours=1), user="joe")
    original = Lock(original.name, original.target, original.message, original.expires, original.created, "admin")
    doc = lock_to_dict(original)
    assert doc["kind"] == "lock" and doc["version"] == "v2"
    assert doc["metadata"] == {"name": original.name, "expires": "2026-05-01T13:00:00Z"}
    assert doc["spec"]["target"] == {"user": "joe"}
    assert doc["spec"]["message"] == "stolen laptop"
    assert parse_lock(doc) == original
    gone = lock(user="joe", issued_before=NOW)
    assert parse_lock(lock_to_dict(gone)).target.issued_before == NOW
    # Teleport's newer name for a node target
    assert parse_lock({"kind": "lock", "version": "v2", "metadata": {"name": "x"},
                       "spec": {"target": {"server_id": "uuid-1"}}}).target.node == "uuid-1"


@pytest.mark.parametrize(("doc", "error"), [
    ({"metadata": {"name": "x"}, "spec": {}}, "spec.target: a lock needs a target"),
    ({"metadata": {"name": "x"}, "spec": {"target": {"user": "a", "role": "b"}}}, "targets one thing"),
    ({"metadata": {"name": "x"}, "spec": {"target": {"cluster": "a"}}}, "spec.target.cluster: unknown target"),
    ({"metadata": {"name": "x"}, "spec": {"target": {"user": 3}}}, "spec.target.user: expected a string"),
    ({"metadata": {"name": "a/b"}, "spec": {"target": {"user": "a"}}}, "metadata.name"),
    ({"metadata": {"name": "x", "expires": "tomorrow"}, "spec": {"target": {"user": "a"}}}, "metadata.expires"),
    ({"metadata": {"name": "x", "expires": "2026-01-01T00:00:00"}, "spec": {"target": {"user": "a"}}},
     "with a zone"),
    ({"kind": "role", "metadata": {"name": "x"}, "spec": {"target": {"user": "a"}}}, "kind: expected lock"),
])
def test_invalid_documents_name_the_key(doc, error):
    with pytest.raises(InvalidLock, match=error):
        parse_lock(doc)
