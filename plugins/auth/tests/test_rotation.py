"""CA rotation: the phase state machine, the auto schedule, and atomic phase changes in a real backend."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from teleport_auth import tctl_rotate
from teleport_auth.authority import (
    CAKeys,
    CAType,
    CertAuthority,
    RotationMode,
    RotationPhase,
    generate_authority,
)
from teleport_auth.issuer import CertType, InvalidCertificate, issue_ssh_user_cert, issue_tls_host_cert, verify_ssh_cert
from teleport_auth.rotation import (
    RotateRequest,
    RotationError,
    Rotator,
    check_transition,
    due_phase,
    next_deadline,
    rotation_status,
    server_keys,
    server_signing_ca,
    signed_by,
    transition,
)
from teleport_auth.service import ca_key
from teleport_auth.tctl import UsageError

from teleport_core.cli.common import CliContext
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity
from teleport_core.state.audit import AuditEvent
from teleport_core.state.backend import Backend, Item

CLUSTER = "example.com"
NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)

STANDBY, INIT, UPDATE_CLIENTS, UPDATE_SERVERS, ROLLBACK = (
    RotationPhase.STANDBY,
    RotationPhase.INIT,
    RotationPhase.UPDATE_CLIENTS,
    RotationPhase.UPDATE_SERVERS,
    RotationPhase.ROLLBACK,
)
PATH = {STANDBY: [], INIT: [INIT], UPDATE_CLIENTS: [INIT, UPDATE_CLIENTS],
        UPDATE_SERVERS: [INIT, UPDATE_CLIENTS, UPDATE_SERVERS], ROLLBACK: [INIT, ROLLBACK]}


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return generate_authority(CAType.USER, CLUSTER, now=NOW)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    return generate_authority(CAType.HOST, CLUSTER, now=NOW)


@pytest.fixture(scope="module")
def fresh() -> CAKeys:
    return CAKeys.generate(CLUSTER, now=NOW)


HOOK = make_plugins(entry_points=False, extra=[]).hook


def step(ca: CertAuthority, phase: RotationPhase, fresh: CAKeys, **kwargs: Any) -> CertAuthority:
    return transition(ca, phase, now=NOW, new_keys=fresh if phase is INIT else None, **kwargs)


def walk(ca: CertAuthority, phase: RotationPhase, fresh: CAKeys, **kwargs: Any) -> CertAuthority:
    for each in PATH[phase]:
        ca = step(ca, each, fresh, **kwargs)
    return ca


def ssh_user_cert(ca: CertAuthority) -> str:
    identity = Identity("alice", roles=("access",), logins=("root",), cluster=CLUSTER)
    key = keys.generate_private_key("ed25519")
    return issue_ssh_user_cert(ca, HOOK, public_key=key.public_key(), identity=identity, now=NOW).data.decode()


def accepted(cert: str, trusted: CertAuthority) -> bool:
    try:
        verify_ssh_cert(cert, trusted, cert_type=CertType.USER, principal="root", now=NOW)
    except InvalidCertificate:
        return False
    return True


# -- the state machine ------------------------------------------------------------------------------


def test_each_phase_signs_and_trusts_the_keys_of_teleports_rotation(user_ca: CertAuthority, fresh: CAKeys) -> None:
    old = user_ca.active
    init = step(user_ca, INIT, fresh, grace_period=3 * HOUR)
    assert (init.active, init.additional_trusted, server_keys(init)) == (old, fresh, old)
    assert init.trusted == (old, fresh)
    assert (init.rotation.phase, init.rotation.started, init.rotation.grace_period) == (INIT, NOW, 3 * HOUR)

    clients = step(init, UPDATE_CLIENTS, fresh)
    assert (clients.active, clients.additional_trusted, server_keys(clients)) == (fresh, old, old)
    servers = step(clients, UPDATE_SERVERS, fresh)
    assert (servers.active, servers.additional_trusted, server_keys(servers)) == (fresh, old, fresh)

    done = transition(servers, STANDBY, now=NOW + HOUR)
    assert (done.active, done.additional_trusted, done.trusted) == (fresh, None, (fresh,))
    assert (done.rotation.phase, done.rotation.started, done.rotation.last_rotated) == (STANDBY, None, NOW + HOUR)

    old_cert, new_cert = ssh_user_cert(user_ca), ssh_user_cert(clients)
    assert [accepted(old_cert, ca) for ca in (init, clients, servers, done)] == [True, True, True, False]
    assert [accepted(new_cert, ca) for ca in (user_ca, init, clients, servers, done)] == [False, True, True, True, True]


@pytest.mark.parametrize("start", [INIT, UPDATE_CLIENTS, UPDATE_SERVERS])
def test_rollback_puts_the_old_keys_back_and_standby_drops_the_new(
    user_ca: CertAuthority, fresh: CAKeys, start: RotationPhase
) -> None:
    rotating = walk(user_ca, start, fresh, mode=RotationMode.AUTO)
    back = step(rotating, ROLLBACK, fresh, mode=RotationMode.AUTO)
    assert (back.active, back.additional_trusted, server_keys(back)) == (user_ca.active, fresh, user_ca.active)
    assert back.rotation.mode is RotationMode.MANUAL  # a rollback never proceeds by itself
    done = step(back, STANDBY, fresh)
    assert (done.active, done.additional_trusted) == (user_ca.active, None)
    assert (done.rotation.phase, done.rotation.last_rotated) == (STANDBY, None)  # never rotated
    assert accepted(ssh_user_cert(user_ca), done)
    assert not accepted(ssh_user_cert(attrs.evolve(user_ca, active=fresh)), done)


@pytest.mark.parametrize(
    ("phase", "target", "message"),
    [
        (STANDBY, UPDATE_SERVERS, "cannot move the user CA from standby to update_servers: next phase is init"),
        (STANDBY, UPDATE_CLIENTS, "cannot move the user CA from standby to update_clients: next phase is init"),
        (STANDBY, STANDBY, "cannot move the user CA from standby to standby: next phase is init"),
        (STANDBY, ROLLBACK,
         "cannot move the user CA from standby to rollback: next phase is init (no rotation is in progress)"),
        (INIT, INIT, "cannot move the user CA from init to init: next phase is update_clients or rollback"),
        (INIT, UPDATE_SERVERS,
         "cannot move the user CA from init to update_servers: next phase is update_clients or rollback"),
        (INIT, STANDBY, "cannot move the user CA from init to standby: next phase is update_clients or rollback"),
        (UPDATE_CLIENTS, STANDBY,
         "cannot move the user CA from update_clients to standby: next phase is update_servers or rollback"),
        (UPDATE_SERVERS, INIT,
         "cannot move the user CA from update_servers to init: next phase is standby or rollback"),
        (ROLLBACK, UPDATE_CLIENTS, "cannot move the user CA from rollback to update_clients: next phase is standby"),
        (ROLLBACK, ROLLBACK, "cannot move the user CA from rollback to rollback: next phase is standby"),
    ],
)
def test_invalid_transitions_are_refused_with_the_allowed_next_phase(
    user_ca: CertAuthority, fresh: CAKeys, phase: RotationPhase, target: RotationPhase, message: str
) -> None:
    ca = walk(user_ca, phase, fresh)
    with pytest.raises(RotationError) as caught:
        step(ca, target, fresh)
    assert str(caught.value) == message


def test_a_rotation_without_its_second_key_set_is_refused(user_ca: CertAuthority, fresh: CAKeys) -> None:
    broken = attrs.evolve(walk(user_ca, INIT, fresh), additional_trusted=None)
    with pytest.raises(RotationError, match="inconsistent"):
        check_transition(broken, UPDATE_CLIENTS)


def test_init_needs_new_keys_with_private_halves(user_ca: CertAuthority, fresh: CAKeys) -> None:
    with pytest.raises(ValueError, match="new key set"):
        transition(user_ca, INIT, now=NOW)
    with pytest.raises(ValueError, match="new key set"):
        transition(user_ca, INIT, now=NOW, new_keys=fresh.without_secrets())


def test_a_manual_step_takes_an_auto_rotation_over(user_ca: CertAuthority, fresh: CAKeys) -> None:
    auto = step(user_ca, INIT, fresh, mode=RotationMode.AUTO)
    assert step(auto, UPDATE_CLIENTS, fresh, mode=RotationMode.AUTO).rotation.mode is RotationMode.AUTO
    assert step(auto, UPDATE_CLIENTS, fresh, mode=RotationMode.MANUAL).rotation.mode is RotationMode.MANUAL


def test_a_rotating_ca_survives_storage_with_both_private_keys(host_ca: CertAuthority, fresh: CAKeys) -> None:
    clients = walk(host_ca, UPDATE_CLIENTS, fresh, mode=RotationMode.AUTO, grace_period=HOUR)
    stored = CertAuthority.from_json(clients.to_json())
    assert stored == clients
    assert stored.additional_trusted is not None and stored.additional_trusted.has_secrets
    # servers' certificates still come from the old keys in update_clients
    signer = server_signing_ca(stored)
    key = keys.generate_private_key("ed25519")
    cert = issue_tls_host_cert(signer, HOOK, public_key=key.public_key(), host_uuid="abc", role="Node", now=NOW)
    assert signed_by(cert.data, host_ca.active) and not signed_by(cert.data, fresh)
    assert server_signing_ca(host_ca) is host_ca


# -- the auto schedule ---------------------------------------------------------------------------------


def test_auto_mode_moves_at_a_third_two_thirds_and_the_end_of_the_grace_period(
    user_ca: CertAuthority, fresh: CAKeys
) -> None:
    ca = step(user_ca, INIT, fresh, mode=RotationMode.AUTO, grace_period=30 * HOUR)
    expected = [(UPDATE_CLIENTS, NOW + 10 * HOUR), (UPDATE_SERVERS, NOW + 20 * HOUR), (STANDBY, NOW + 30 * HOUR)]
    for target, when in expected:
        assert next_deadline(ca) == when
        assert due_phase(ca, when - dt.timedelta(seconds=1)) is None
        assert due_phase(ca, when) is target
        ca = transition(ca, target, now=when, mode=ca.rotation.mode)
    assert ca.rotation.phase is STANDBY and ca.rotation.last_rotated == NOW + 30 * HOUR
    assert next_deadline(ca) is None and due_phase(ca, NOW + 1000 * HOUR) is None


def test_manual_rotations_and_rollbacks_never_move_by_themselves(user_ca: CertAuthority, fresh: CAKeys) -> None:
    manual = step(user_ca, INIT, fresh, mode=RotationMode.MANUAL, grace_period=HOUR)
    assert due_phase(manual, NOW + 1000 * HOUR) is None
    back = step(step(user_ca, INIT, fresh, mode=RotationMode.AUTO, grace_period=HOUR), ROLLBACK, fresh)
    assert due_phase(back, NOW + 1000 * HOUR) is None


def test_a_zero_grace_period_makes_every_phase_due_at_once(user_ca: CertAuthority, fresh: CAKeys) -> None:
    ca = step(user_ca, INIT, fresh, mode=RotationMode.AUTO, grace_period=dt.timedelta(0))
    seen = []
    while (target := due_phase(ca, NOW)) is not None:
        seen.append(target)
        ca = transition(ca, target, now=NOW, mode=ca.rotation.mode)
    assert seen == [UPDATE_CLIENTS, UPDATE_SERVERS, STANDBY]


def test_status_reports_state_and_schedule(user_ca: CertAuthority, fresh: CAKeys) -> None:
    assert rotation_status(user_ca.rotation) == {
        "phase": "standby", "mode": "manual", "grace_period": 30 * 3600, "started": None, "last_rotated": None,
        "state": "standby", "schedule": None,
    }
    auto = step(user_ca, INIT, fresh, mode=RotationMode.AUTO, grace_period=3 * HOUR)
    status = rotation_status(auto.rotation)
    assert (status["phase"], status["mode"], status["state"], status["grace_period"]) == ("init", "auto",
                                                                                          "in_progress", 3 * 3600)
    assert status["schedule"] == {
        "update_clients": (NOW + HOUR).isoformat(),
        "update_servers": (NOW + 2 * HOUR).isoformat(),
        "standby": (NOW + 3 * HOUR).isoformat(),
    }
    assert rotation_status(step(user_ca, INIT, fresh).rotation)["schedule"] is None  # manual


# -- requests --------------------------------------------------------------------------------------------


def test_requests_default_to_init_auto_and_30h() -> None:
    request = RotateRequest.parse("all")
    assert request == RotateRequest((CAType.USER, CAType.HOST), INIT, RotationMode.AUTO, 30 * HOUR)
    manual = RotateRequest.parse("host", phase="update_clients", mode="manual", grace_period="90m")
    assert manual == RotateRequest((CAType.HOST,), UPDATE_CLIENTS, RotationMode.MANUAL, 1.5 * HOUR)
    assert RotateRequest.parse("user", grace_period="0").grace_period == dt.timedelta(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"ca_type": "db"}, 'unknown certificate authority type "db": expected user, host, all'),
        ({"ca_type": "user", "phase": "done"},
         'unknown rotation phase "done": expected standby, init, update_clients, update_servers, rollback'),
        ({"ca_type": "user", "mode": "later"}, 'unknown rotation mode "later": expected manual, auto'),
        ({"ca_type": "user", "grace_period": "soon"}, 'invalid grace period "soon": expected a duration like "30h"'),
        ({"ca_type": "user", "grace_period": "-1h"}, "the grace period must not be negative"),
        ({"ca_type": "user", "grace_period": "1.5s"}, "the grace period must be a whole number of seconds"),
        ({"ca_type": "user", "grace_period": "87601h"},
         "the grace period must not exceed the CA certificates' lifetime (87600h0m0s)"),
        ({"ca_type": 'us"er\n'}, 'unknown certificate authority type "us\\"er\\n": expected user, host, all'),
    ],
)
def test_bad_requests_say_what_is_wrong(args: dict[str, str], message: str) -> None:
    ca_type = args.pop("ca_type")
    with pytest.raises(RotationError) as caught:
        RotateRequest.parse(ca_type, **args)
    assert str(caught.value) == message


# -- the backend: atomic phase changes among several auth servers ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class Server:
    """One auth server's rotator (several may share a backend) with the events it emitted."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self.events: list[AuditEvent] = []
        self.applied = 0

        async def emit(event: AuditEvent) -> None:
            self.events.append(event)

        async def on_change() -> None:
            self.applied += 1

        self.rotator = Rotator(backend, CLUSTER, emit=emit, on_change=on_change, now=clock, max_wait=0.2)

    def phases(self) -> list[tuple[str, str, str]]:
        return [(e.fields["ca_type"], e.fields["previous_phase"], e.fields["phase"]) for e in self.events]


async def store_cas(backend: Backend, user_ca: CertAuthority, host_ca: CertAuthority) -> None:
    for ca in (user_ca, host_ca):
        await backend.create(Item(ca_key(ca.kind, CLUSTER), ca.to_json()))


async def phase_of(backend: Backend, kind: CAType) -> RotationPhase:
    return CertAuthority.from_json((await backend.get(ca_key(kind, CLUSTER))).value).rotation.phase


RunWithBackend = Callable[[Callable[[Backend], Awaitable[Any]]], Any]


def test_two_auth_servers_starting_a_rotation_at_once_change_the_phase_once(
    with_backend: RunWithBackend, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    async def body(backend: Backend) -> None:
        await store_cas(backend, user_ca, host_ca)
        clock = Clock()
        one, two = Server(backend, clock), Server(backend, clock)
        request = RotateRequest.parse("all", mode="manual")
        results = await asyncio.gather(one.rotator.rotate(request, actor="a"), two.rotator.rotate(request, actor="b"),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], RotationError), results
        assert "from init to init" in str(errors[0])
        assert sorted(one.phases() + two.phases()) == [("host", "standby", "init"), ("user", "standby", "init")]
        stored = CertAuthority.from_json((await backend.get(ca_key(CAType.USER, CLUSTER))).value)
        assert stored.additional_trusted is not None and stored.active == user_ca.active

    with_backend(body)


def test_a_refused_change_of_all_cas_writes_none_of_them(
    with_backend: RunWithBackend, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    async def body(backend: Backend) -> None:
        await store_cas(backend, user_ca, host_ca)
        server = Server(backend, Clock())
        await server.rotator.rotate(RotateRequest.parse("user", mode="manual"), actor="admin")
        before = await backend.get(ca_key(CAType.HOST, CLUSTER))
        with pytest.raises(RotationError, match="cannot move the user CA from init to init"):
            await server.rotator.rotate(RotateRequest.parse("all", mode="manual"), actor="admin")
        assert (await backend.get(ca_key(CAType.HOST, CLUSTER))).revision == before.revision
        assert await phase_of(backend, CAType.HOST) is STANDBY
        assert server.phases() == [("user", "standby", "init")]

    with_backend(body)


def test_two_auth_servers_advancing_an_auto_rotation_emit_each_phase_once(
    with_backend: RunWithBackend, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    async def body(backend: Backend) -> None:
        await store_cas(backend, user_ca, host_ca)
        clock = Clock()
        one, two = Server(backend, clock), Server(backend, clock)
        await one.rotator.rotate(RotateRequest.parse("user", grace_period="30h"), actor="admin")
        clock.now += 31 * HOUR  # overdue: every remaining phase at once
        await asyncio.gather(one.rotator.advance_due("a"), two.rotator.advance_due("b"))
        assert await phase_of(backend, CAType.USER) is STANDBY
        assert sorted(one.phases() + two.phases()) == sorted([
            ("user", "standby", "init"), ("user", "init", "update_clients"),
            ("user", "update_clients", "update_servers"), ("user", "update_servers", "standby"),
        ])
        assert await phase_of(backend, CAType.HOST) is STANDBY

    with_backend(body)


def test_the_auto_task_follows_the_injected_clock(
    with_backend: RunWithBackend, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    async def body(backend: Backend) -> None:
        await store_cas(backend, user_ca, host_ca)
        clock = Clock()
        server = Server(backend, clock)
        task = asyncio.create_task(server.rotator.run_auto("auth"))
        try:
            await server.rotator.rotate(RotateRequest.parse("host", grace_period="30h"), actor="admin")
            await asyncio.sleep(0.3)
            assert await phase_of(backend, CAType.HOST) is INIT  # not due yet
            clock.now += 10 * HOUR
            server.rotator.wake()
            await until(lambda: len(server.events) == 2, "update_clients at a third of the grace period")
            clock.now += 20 * HOUR
            server.rotator.wake()
            await until(lambda: server.applied == 3, "update_servers and standby, both overdue, in one go")
        finally:
            task.cancel()
        assert server.phases() == [("host", "standby", "init"), ("host", "init", "update_clients"),
                                   ("host", "update_clients", "update_servers"), ("host", "update_servers", "standby")]
        assert {e.code for e in server.events} == {"TCA01I"}
        assert {e.fields["user"] for e in server.events[1:]} == {"auth"}
        assert await phase_of(backend, CAType.HOST) is STANDBY

    with_backend(body)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_the_watcher_applies_changes_written_by_another_auth_server(
    with_backend: RunWithBackend, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    async def body(backend: Backend) -> None:
        await store_cas(backend, user_ca, host_ca)
        clock = Clock()
        watching, writer = Server(backend, clock), Server(backend, clock)
        task = asyncio.create_task(watching.rotator.watch())
        try:
            await until(lambda: watching.applied >= 1, "the watcher's first (init) event")
            start = watching.applied
            await writer.rotator.rotate(RotateRequest.parse("user", mode="manual"), actor="other")
            await until(lambda: watching.applied > start, "the watcher to apply the other server's change")
        finally:
            task.cancel()
        assert watching.events == []  # only the writer audits its change

    with_backend(body)


# -- tctl auth rotate (arguments are checked before connecting) ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--phase=later"], "tctl auth rotate: argument --phase: invalid choice: 'later'"),
        (["--type=db"], "tctl auth rotate: argument --type: invalid choice: 'db'"),
        (["--grace-period=soon"], '--grace-period: expected a duration like "30h" or "90m", got "soon"'),
        (["--grace-period=-1h"], '--grace-period: must not be negative, got "-1h"'),
        (["--grace-period=0.5s"], '--grace-period: must be whole seconds, got "0.5s"'),
    ],
)
def test_tctl_auth_rotate_checks_its_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        tctl_rotate.main(argv, CliContext("tctl", "auth"))
    assert str(caught.value).startswith(message)
