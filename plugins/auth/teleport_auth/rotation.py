"""Certificate authority rotation, as Teleport does it (``tctl auth rotate``).

A rotation replaces a CA's keys without a flag day. It moves through the phases
``standby -> init -> update_clients -> update_servers -> standby`` (or to ``rollback`` from
any phase in between, then ``standby``). Which key set signs and which are trusted:

================  ==================  ===================  ===================  ====================
phase             ``active`` (signs   ``additional_        host certificates    trusted
                  user certs)         trusted``            (``server_keys``)
================  ==================  ===================  ===================  ====================
standby           current             none                 current              current only
init              old                 new                  old                  old and new
update_clients    new                 old                  old                  old and new
update_servers    new                 old                  new                  old and new
standby (done)    new                 none                 new                  new only
rollback          old                 new                  old                  old and new
standby (after    old                 none                 old                  old only
rollback)
================  ==================  ===================  ===================  ====================

``init`` generates the new keys (same algorithms as the current ones) and distributes them as
trusted, so every party learns the new CA before anything is signed with it. In
``update_clients`` clients get certificates from the new keys (``tsh login`` and ``tctl auth
sign`` issue them); in ``update_servers`` servers get new host certificates. Host
certificates (the auth server's own, joins, ``POST /v1/certs/host`` renewals) always come from
:func:`server_keys`, the old keys until ``update_servers``, so a client that has not yet
learnt the new host CA keeps trusting the servers until then. Completing
(``standby``) drops the old keys: certificates they signed are refused from then on, by SSH
verification (the exported trusted keys) and by the auth API's mutual TLS. ``rollback`` makes
the old keys sign again and keeps the new ones trusted until ``standby``, so hosts that already
took new certificates can still connect while they are put back; then the new keys are dropped.

Modes: ``manual`` (an admin moves each phase with ``--manual --phase=...``; only the next
phase or ``rollback`` is accepted) and ``auto`` (``init`` now, then the auth service moves to
``update_clients`` at 1/3 of the grace period, ``update_servers`` at 2/3 and ``standby`` at
the end, all measured from ``started``; default grace period 30h; 0 rotates at once; in manual
mode the grace period lasts until the admin moves to ``standby``). A manual
phase change takes an auto rotation over (it stops advancing by itself); ``rollback`` always
leaves the rotation in manual mode. The grace period and mode of a rotation are set at ``init``.

Every phase change is one conditional write of the CA documents (``ca_type=all`` writes both
CAs in one atomic write), so auth servers sharing a backend never lose or repeat a change: the
loser of a race re-reads and re-checks the transition. The writer emits one
``cert_authority.rotate`` audit event per CA and phase. Every auth server watches the CA keys
and, on any change (its own or another's), reloads the CAs, re-issues its own host identity
unless it is still signed by :func:`server_keys` and trusts exactly the trusted host CAs
(``data_dir/keys/auth``, which ``tctl`` on the host uses), and swaps its TLS context
(its certificate and the trusted CAs of the moment) without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from teleport_auth.authority import (
    CA_VALIDITY,
    DEFAULT_GRACE_PERIOD,
    CAKeys,
    CAType,
    CertAuthority,
    Rotation,
    RotationMode,
    RotationPhase,
    ca_key,
)
from teleport_core.config.values import format_duration, parse_duration
from teleport_core.errors import CompareFailed, TeleportError, WatcherClosed
from teleport_core.logs import get_logger
from teleport_core.pki import keys
from teleport_core.pki.keys import KeyAlgorithm, PublicKey
from teleport_core.state.audit import AuditEvent, new_event
from teleport_core.state.backend import Action, Backend, Condition, Item, OpType

EVENT = "cert_authority.rotate"
"""The audit event of a phase change (code ``TCA01I``)."""

STANDBY = RotationPhase.STANDBY
INIT = RotationPhase.INIT
UPDATE_CLIENTS = RotationPhase.UPDATE_CLIENTS
UPDATE_SERVERS = RotationPhase.UPDATE_SERVERS
ROLLBACK = RotationPhase.ROLLBACK

NEXT_PHASES: dict[RotationPhase, tuple[RotationPhase, ...]] = {
    STANDBY: (INIT,),
    INIT: (UPDATE_CLIENTS, ROLLBACK),
    UPDATE_CLIENTS: (UPDATE_SERVERS, ROLLBACK),
    UPDATE_SERVERS: (STANDBY, ROLLBACK),
    ROLLBACK: (STANDBY,),
}
"""The phases a manual request may move to from each phase."""

AUTO_STEPS: dict[RotationPhase, tuple[RotationPhase, int]] = {
    INIT: (UPDATE_CLIENTS, 1),
    UPDATE_CLIENTS: (UPDATE_SERVERS, 2),
    UPDATE_SERVERS: (STANDBY, 3),
}
"""Auto mode: from phase -> (next phase, due at ``started + n/3 of the grace period``)."""

CA_TYPES: dict[str, tuple[CAType, ...]] = {
    "user": (CAType.USER,),
    "host": (CAType.HOST,),
    "all": (CAType.USER, CAType.HOST),
}
MAX_ATTEMPTS = 8
"""Conditional writes tried before giving up when other writers keep changing the CAs."""

Clock = Callable[[], dt.datetime]


class RotationError(TeleportError):
    """A rotation request that is malformed or not allowed in the current phase."""


# -- requests and changes --------------------------------------------------------------------------------


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise RotationError(f'unknown {what} {json.dumps(value)}: expected {", ".join(allowed)}')
    return value


@attrs.frozen
class RotateRequest:
    """What ``tctl auth rotate`` asks for: which CAs, the target phase, mode and grace period."""

    kinds: tuple[CAType, ...]
    phase: RotationPhase = INIT
    mode: RotationMode = RotationMode.AUTO
    grace_period: dt.timedelta = DEFAULT_GRACE_PERIOD

    @classmethod
    def parse(
        cls, ca_type: str, *, phase: str = "", mode: str = "", grace_period: str | dt.timedelta | None = None
    ) -> RotateRequest:
        """Validate the API's strings: ``ca_type`` user, host or all; ``phase`` defaults to
        ``init``, ``mode`` to ``auto``, ``grace_period`` (a duration such as ``30h``) to 30h."""
        kinds = CA_TYPES[_choice(ca_type, list(CA_TYPES), "certificate authority type")]
        target = RotationPhase(_choice(phase or INIT.value, [p.value for p in RotationPhase], "rotation phase"))
        how = RotationMode(_choice(mode or RotationMode.AUTO.value, [m.value for m in RotationMode], "rotation mode"))
        if grace_period is None or grace_period == "":
            grace = DEFAULT_GRACE_PERIOD
        elif isinstance(grace_period, dt.timedelta):
            grace = grace_period
        else:
            try:
                grace = parse_duration(grace_period)
            except ValueError:
                raise RotationError(
                    f'invalid grace period {json.dumps(grace_period)}: expected a duration like "30h"') from None
        if grace < dt.timedelta(0):
            raise RotationError("the grace period must not be negative")
        if grace % dt.timedelta(seconds=1):
            raise RotationError("the grace period must be a whole number of seconds")
        if grace > CA_VALIDITY:
            raise RotationError(f"the grace period must not exceed the CA certificates' lifetime "
                                f"({format_duration(CA_VALIDITY)})")
        return cls(kinds, target, how, grace)


@attrs.frozen
class PhaseChange:
    """One CA moved from ``previous`` to ``current`` rotation state."""

    kind: CAType
    previous: Rotation
    current: Rotation

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind.value,
            "previous_phase": self.previous.phase.value,
            **rotation_status(self.current),
        }

    def event(self, cluster_name: str, actor: str) -> AuditEvent:
        return new_event(
            EVENT,
            cluster_name=cluster_name,
            user=actor,
            ca_type=self.kind.value,
            phase=self.current.phase.value,
            previous_phase=self.previous.phase.value,
            mode=self.current.mode.value,
            grace_period=format_duration(self.current.grace_period),
        )


# -- the state machine (pure) ------------------------------------------------------------------------


def check_transition(ca: CertAuthority, target: RotationPhase) -> None:
    """Raise :class:`RotationError` unless ``ca`` may move to ``target`` now."""
    current = ca.rotation.phase
    allowed = NEXT_PHASES[current]
    if target in allowed:
        if current is not STANDBY and ca.additional_trusted is None:
            raise RotationError(
                f"the {ca.kind.value} CA is in phase {current.value} but has no second key set; "
                "its stored state is inconsistent"
            )
        return
    expected = " or ".join(p.value for p in allowed)
    hint = " (no rotation is in progress)" if current is STANDBY and target is ROLLBACK else ""
    raise RotationError(
        f"cannot move the {ca.kind.value} CA from {current.value} to {target.value}: next phase is {expected}{hint}"
    )


def _algorithm(key: object, default: KeyAlgorithm) -> KeyAlgorithm:
    try:
        return keys.key_algorithm(cast(PublicKey, key))
    except keys.UnsupportedKey:
        return default


def new_keys_like(ca: CertAuthority, now: dt.datetime | None = None) -> CAKeys:
    """A new key set for ``ca`` with the same algorithms as its active keys (slow for RSA: run in a thread)."""
    ssh_alg = _algorithm(ca.active.ssh_public_key, KeyAlgorithm.ED25519)
    tls_alg = _algorithm(ca.active.tls_cert.public_key(), KeyAlgorithm.ECDSA_P256)
    return CAKeys.generate(ca.cluster_name, ssh_alg, tls_alg, now=now)


def transition(
    ca: CertAuthority,
    target: RotationPhase,
    *,
    now: dt.datetime,
    mode: RotationMode = RotationMode.MANUAL,
    grace_period: dt.timedelta = DEFAULT_GRACE_PERIOD,
    new_keys: CAKeys | None = None,
) -> CertAuthority:
    """``ca`` moved to ``target`` (see the module's table). ``init`` needs ``new_keys`` (with
    private keys) and takes ``mode`` and ``grace_period``; later phases keep the rotation's own,
    except that a manual request or ``rollback`` leaves it in manual mode."""
    check_transition(ca, target)
    rotation = ca.rotation
    if target is INIT:
        if new_keys is None or not new_keys.has_secrets:
            raise ValueError("starting a rotation needs a new key set with private keys")
        started = Rotation(INIT, mode, grace_period, now, rotation.last_rotated)
        return attrs.evolve(ca, additional_trusted=new_keys, rotation=started)
    manual = RotationMode.MANUAL if mode is RotationMode.MANUAL or target is ROLLBACK else rotation.mode
    moved = attrs.evolve(rotation, phase=target, mode=manual)
    old_new = ca.additional_trusted
    assert old_new is not None  # check_transition made sure
    if target is UPDATE_CLIENTS:  # the new keys start signing; the old stay trusted
        return attrs.evolve(ca, active=old_new, additional_trusted=ca.active, rotation=moved)
    if target is UPDATE_SERVERS:
        return attrs.evolve(ca, rotation=moved)
    if target is ROLLBACK:  # the old keys sign again; the new stay trusted until standby
        if rotation.phase is INIT:
            return attrs.evolve(ca, rotation=moved)
        return attrs.evolve(ca, active=old_new, additional_trusted=ca.active, rotation=moved)
    # standby: drop the second key set (the old keys after a rotation, the new after a rollback)
    completed = rotation.phase is UPDATE_SERVERS
    done = attrs.evolve(moved, started=None, last_rotated=now if completed else rotation.last_rotated)
    return attrs.evolve(ca, additional_trusted=None, rotation=done)


def schedule(rotation: Rotation) -> dict[RotationPhase, dt.datetime] | None:
    """When an auto rotation in progress moves to each later phase (None unless auto and in progress)."""
    if rotation.mode is not RotationMode.AUTO or rotation.phase not in AUTO_STEPS or rotation.started is None:
        return None
    return {target: rotation.started + rotation.grace_period * n / 3 for target, n in AUTO_STEPS.values()}


def due_phase(ca: CertAuthority, now: dt.datetime) -> RotationPhase | None:
    """The phase an auto rotation of ``ca`` should be in by ``now`` after its current one, if due."""
    times = schedule(ca.rotation)
    if times is None:
        return None
    target = AUTO_STEPS[ca.rotation.phase][0]
    return target if now >= times[target] else None


def next_deadline(ca: CertAuthority) -> dt.datetime | None:
    """When the next auto phase change of ``ca`` is due (None when it will not move by itself)."""
    times = schedule(ca.rotation)
    return None if times is None else times[AUTO_STEPS[ca.rotation.phase][0]]


def server_keys(ca: CertAuthority) -> CAKeys:
    """The key set servers' host certificates should come from in ``ca``'s phase: the old keys
    until ``update_servers`` (so clients that have not yet learnt the new CA still trust them)."""
    if ca.rotation.phase is UPDATE_CLIENTS and ca.additional_trusted is not None:
        return ca.additional_trusted
    return ca.active


def server_signing_ca(ca: CertAuthority) -> CertAuthority:
    """``ca`` with :func:`server_keys` as its signing keys (for issuing host certificates)."""
    chosen = server_keys(ca)
    if chosen is ca.active:
        return ca
    return attrs.evolve(ca, active=chosen, additional_trusted=ca.active)


def signed_by(cert_pem: bytes | str, ca_keys: CAKeys) -> bool:
    """Whether the X.509 certificate ``cert_pem`` was signed by ``ca_keys``' TLS CA."""
    try:
        raw = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        x509.load_pem_x509_certificate(raw).verify_directly_issued_by(ca_keys.tls_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def rotation_status(rotation: Rotation) -> dict[str, Any]:
    """The rotation state as the status and CA APIs report it (``Rotation.to_dict`` plus
    ``state`` and, for auto rotations in progress, the ``schedule``)."""
    times = schedule(rotation)
    out = rotation.to_dict()
    out["state"] = "standby" if rotation.phase is STANDBY else "in_progress"
    out["schedule"] = None if times is None else {phase.value: when.isoformat() for phase, when in times.items()}
    return out


# -- applying changes to the backend -----------------------------------------------------------------------


class Rotator:
    """Runs rotations of one cluster's CAs in the cluster-state backend.

    ``emit`` writes an audit event; ``on_change`` is awaited after every change this rotator
    writes or sees (from the watcher), to reload the CAs and swap certificates. ``now`` is
    the clock the rotation times come from (injectable for tests).
    """

    def __init__(
        self,
        backend: Backend,
        cluster_name: str,
        *,
        emit: Callable[[AuditEvent], Awaitable[None]],
        on_change: Callable[[], Awaitable[None]],
        now: Clock = lambda: dt.datetime.now(dt.UTC),
        max_wait: float = 10.0,
    ) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.emit = emit
        self.on_change = on_change
        self.now = now
        self.max_wait = max_wait
        self.log = get_logger("auth")
        self._wake = asyncio.Event()
        self._keys = {kind: ca_key(kind, cluster_name) for kind in CAType}

    async def load(self, kind: CAType) -> tuple[Item, CertAuthority]:
        item = await self.backend.get(self._keys[kind])
        return item, CertAuthority.from_json(item.value)

    async def rotate(self, request: RotateRequest, *, actor: str) -> list[PhaseChange]:
        """Move every CA of ``request`` to its phase in one atomic write, or none of them.

        Raises :class:`RotationError` when a CA may not move there (re-checked after a lost race).
        """
        fresh: dict[CAType, CAKeys] = {}
        for _attempt in range(MAX_ATTEMPTS):
            loaded = [await self.load(kind) for kind in request.kinds]
            for _item, ca in loaded:
                check_transition(ca, request.phase)
            now = self.now()
            if request.phase is INIT:
                for _item, ca in loaded:
                    if ca.kind not in fresh:
                        fresh[ca.kind] = await asyncio.to_thread(new_keys_like, ca, now)
            updated = [
                (item, ca, transition(ca, request.phase, now=now, mode=request.mode,
                                      grace_period=request.grace_period, new_keys=fresh.get(ca.kind)))
                for item, ca in loaded
            ]
            conditions = [Condition.revision_is(item.key, item.revision) for item, _, _ in updated]
            actions = [Action.put(Item(item.key, new.to_json())) for item, _, new in updated]
            try:
                await self.backend.atomic_write(conditions, actions)
            except CompareFailed:
                continue  # another auth server changed a CA meanwhile: re-read and re-check
            changes = [PhaseChange(ca.kind, ca.rotation, new.rotation) for _, ca, new in updated]
            await self._changed(changes, actor)
            return changes
        raise CompareFailed("the certificate authorities kept changing during the rotation; try again")

    async def advance_due(self, actor: str) -> tuple[list[PhaseChange], dt.datetime | None]:
        """Move every auto rotation whose next phase is due (one write per phase, several if
        overdue). Returns the changes and when the next one is due."""
        changes: list[PhaseChange] = []
        deadline: dt.datetime | None = None
        for kind in CAType:
            for _attempt in range(MAX_ATTEMPTS * 4):
                item, ca = await self.load(kind)
                target = due_phase(ca, self.now())
                if target is None:
                    when = next_deadline(ca)
                    if when is not None and (deadline is None or when < deadline):
                        deadline = when
                    break
                new = transition(ca, target, now=self.now(), mode=ca.rotation.mode)
                try:
                    await self.backend.conditional_update(Item(item.key, new.to_json(), revision=item.revision))
                except CompareFailed:
                    continue  # another auth server moved it: re-read and see what is still due
                changes.append(PhaseChange(kind, ca.rotation, new.rotation))
        if changes:
            await self._changed(changes, actor)
        return changes, deadline

    async def _changed(self, changes: list[PhaseChange], actor: str) -> None:
        for change in changes:
            self.log.info(
                "certificate authority rotation phase changed",
                type=change.kind.value,
                phase=change.current.phase.value,
                previous_phase=change.previous.phase.value,
                mode=change.current.mode.value,
                by=actor,
            )
            await self.emit(change.event(self.cluster_name, actor))
        await self._apply_quietly()
        self.wake()

    def wake(self) -> None:
        """Make :meth:`run_auto` look at the CAs now (after a change or a clock jump)."""
        self._wake.set()

    async def run_auto(self, actor: str, retry_delay: float = 1.0) -> None:
        """Advance auto rotations when due, for the auth service's lifetime (a task)."""
        while True:
            self._wake.clear()
            try:
                _, deadline = await self.advance_due(actor)
                wait = self.max_wait
                if deadline is not None:
                    wait = min(max((deadline - self.now()).total_seconds(), 0.01), self.max_wait)
            except Exception as exc:
                self.log.warning("automatic CA rotation failed, retrying", error=f"{type(exc).__name__}: {exc}")
                wait = retry_delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def watch(self, retry_delay: float = 1.0) -> None:
        """Apply CA changes made by any auth server sharing the backend (a task for the service's lifetime)."""
        wanted = set(self._keys.values())
        while True:
            try:
                async with self.backend.watch(list(wanted)) as watcher:
                    async for event in watcher:
                        if event.type is OpType.INIT or event.item.key in wanted:
                            await self._apply_quietly()
                            self.wake()
            except WatcherClosed as exc:
                self.log.info("CA watcher closed, reopening", reason=str(exc))
            except Exception as exc:
                self.log.warning("CA watcher failed, reopening", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(retry_delay)

    async def _apply_quietly(self) -> None:
        try:
            await self.on_change()
        except Exception as exc:
            self.log.error("could not apply a CA change", error=f"{type(exc).__name__}: {exc}")
