"""Auth worker processes (``auth_service.workers: N``, issue 17): real ``teleport start`` processes
sharing one listening socket on SQLite. The attacker: lock a user (or delete it) through one
connection, then at once ask for certificates over fresh connections, which the kernel spreads
over every worker: none may be issued. The same for a CA rotation phase changed through one
connection: no worker accepts a certificate of the keys it dropped, or signs with the keys of the
phase it left. Also: the key is validated, a backend without a change marker is refused, a killed
worker is replaced, and one stop ends every worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from teleport_auth.issuer import verify_ssh_cert
from teleport_auth.workers import watch_cas

from teleport_core.api.client import AuthClient, ConnectionProblem, Credentials, load_identity_dir, register
from teleport_core.config.load import parse_config
from teleport_core.errors import (
    AccessDenied,
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    NotFound,
    TeleportError,
)
from teleport_core.pki import keys
from teleport_core.pki.certs import CertType
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.state.audit import new_event
from teleport_core.state.backend import Item
from teleport_core.state.backends.sqlite import open_backend
from teleport_core.state.change_feed import ChangeFeed, open_change_feed
from teleport_core.testing.processes import TeleportProcess, child_pids, free_port, pid_alive
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

SUBJECT = keys.public_key_openssh(keys.generate_private_key("ed25519"))
WORKERS = 3
ROUNDS = 12  # lock, then certificates through fresh connections, then unlock
WARM = 12  # connections opened before the rounds, spread over the workers by the kernel
FRESH = 4  # fresh connections (each accepted by whichever worker the kernel picks) per round
CA_ROUNDS = 6  # rounds of the user CA's phases: a rotation rolled back, then one completed
UPLOAD_ROUNDS = 24  # sessions whose recording two connections (any worker each) upload at once
CA_PHASES = ("init", "update_clients", "rollback", "standby", "init", "update_clients", "update_servers", "standby")


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeleportProcess]:
    addr = f"127.0.0.1:{free_port()}"
    config = {"auth_service": {"cluster_name": "workers.example", "listen_addr": addr, "workers": WORKERS,
                               "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path_factory.mktemp("workers"), "auth", config)
    process.start(timeout=180)
    try:
        yield process
    finally:
        process.stop()


def admin(auth: TeleportProcess) -> AuthClient:
    return AuthClient(auth.config["auth_service"]["listen_addr"], [load_identity_dir(auth.data_dir / "keys" / "auth")])


async def fresh_certs(auth: TeleportProcess, user: str) -> list[Any]:
    """``FRESH`` certificate requests for ``user`` at once, each on its own new connection: the
    answers, or the exceptions raised."""

    async def one() -> Any:
        async with admin(auth) as client:
            return await client.sign_user_cert(user, SUBJECT, ttl="1h")

    return await asyncio.gather(*(one() for _ in range(FRESH)), return_exceptions=True)


def spool_writers(auth: TeleportProcess) -> set[int]:
    """The pids whose own audit spool (``<folder>.<pid>``: a worker's) holds events: workers that
    served requests."""
    found = set()
    for events in (auth.data_dir / "log" / "auth-audit-spool").glob("*.*/events.jsonl"):
        suffix = events.parent.name.rpartition(".")[2]
        if suffix.isdigit() and events.stat().st_size > 0:
            found.add(int(suffix))
    return found


@pytest.mark.parametrize(("value", "message"), [
    (0, r"^auth_service.workers: expected 1 to 64 auth processes, got 0$"),
    (-3, r"^auth_service.workers: expected 1 to 64 auth processes, got -3$"),
    (65, r"^auth_service.workers: expected 1 to 64 auth processes, got 65$"),
    ("two", r"^auth_service.workers: expected an integer"),
    (True, r"^auth_service.workers: expected an integer"),
    (2.5, r"^auth_service.workers: expected an integer"),
])
def test_the_workers_key_is_validated(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"auth_service": {"workers": value}, "proxy_service": {"enabled": False},
                      "ssh_service": {"enabled": False}}, make_plugins())


def test_one_worker_is_the_default_and_several_parse() -> None:
    sections = {"proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    assert parse_config({"auth_service": {}, **sections}, make_plugins()).settings("auth_service").workers == 1
    parsed = parse_config({"auth_service": {"workers": 64}, **sections}, make_plugins())
    assert parsed.settings("auth_service").workers == 64


def test_a_ca_change_by_any_connection_is_pending_until_a_reload_that_began_after_it(tmp_path: Path) -> None:
    """The count a request waits for (``CAChanges``): a commit of either CA document of the cluster
    is pending at the next catch-up, and only a reload counted after it clears it."""

    async def body() -> None:
        backend = await open_backend(None, tmp_path)
        try:
            feed = open_change_feed(backend)
            assert isinstance(feed, ChangeFeed)
            changes = watch_cas(feed, "c.example")
            assert changes.pending() == 0
            await backend.put(Item(b"/authorities/user/c.example", b"{}"))
            await backend.put(Item(b"/nodes/n1", b"{}"))
            assert changes.pending() == 1
            assert changes.pending() == 1  # still: nothing applied it
            changes.applied = changes.seen  # what a reload that began now records when it ends
            assert changes.pending() == 0
            await backend.put(Item(b"/authorities/host/c.example", b"{}"))
            await backend.put(Item(b"/roles/r", b"{}"))
            assert changes.pending() == 2
            changes.applied = 1  # a reload that began before this change does not clear it
            assert changes.pending() == 2
            feed.close()
        finally:
            await backend.close()

    asyncio.run(body())


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_a_backend_without_a_change_marker_is_refused(tmp_path: Path) -> None:
    """LMDB (the example plugin) has no marker a worker could check before trusting its caches:
    several workers on it could issue a certificate to a user locked a moment ago."""
    config = {"teleport": {"storage": {"type": "lmdb", "path": str(tmp_path / "lmdb")}},
              "auth_service": {"cluster_name": "lmdb.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "workers": 2},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path, "auth", config)
    with pytest.raises(TeleportError, match="exited with 1"):
        process.start(timeout=120)
    assert "auth_service.workers: 2 auth worker processes need the sqlite backend" in process.log()
    assert "LmdbBackend has none" in process.log()


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_a_lock_or_a_deletion_through_one_worker_holds_at_once_in_every_other(auth: TeleportProcess) -> None:
    """Attacker: the moment a lock (or the user's deletion) is answered, ask every worker for a
    certificate over connections already open (no handshake between the answer and the request,
    well inside the backend watchers' 0.1 s poll); none is issued. After the unlock, certificates
    are issued again."""
    leader = auth.proc.pid if auth.proc is not None else 0
    workers = child_pids(leader)
    assert len(workers) == WORKERS - 1

    async def body() -> None:
        async with admin(auth) as client:
            await client.create_user("target", ["access"], {"logins": ["root"]})
            warm = [admin(auth) for _ in range(WARM)]  # each its own kept-alive connection, on any worker
            try:
                for each in warm:
                    assert (await each.sign_user_cert("target", SUBJECT, ttl="1h"))["ssh_cert"]
                for round_ in range(ROUNDS):
                    name = f"w-lock-{round_}"
                    await client.upsert_lock({"kind": "lock", "version": "v2", "metadata": {"name": name},
                                              "spec": {"target": {"user": "target"}, "message": "locked now"}})
                    answers = await asyncio.gather(*(each.sign_user_cert("target", SUBJECT, ttl="1h")
                                                     for each in warm), return_exceptions=True)
                    answers += await fresh_certs(auth, "target")
                    issued = [a for a in answers if not isinstance(a, BaseException)]
                    assert not issued, f"round {round_}: {len(issued)} certificates issued to a locked user"
                    assert all(isinstance(a, AccessDenied) and "locked now" in str(a) for a in answers), answers
                    await client.delete_lock(name)
                    answers = await asyncio.gather(*(each.sign_user_cert("target", SUBJECT, ttl="1h")
                                                     for each in warm), return_exceptions=True)
                    assert all(isinstance(a, dict) and a["ssh_cert"] for a in answers), answers
                await client.delete_user("target")
                answers = await asyncio.gather(*(each.sign_user_cert("target", SUBJECT, ttl="1h") for each in warm),
                                               return_exceptions=True)
                assert all(isinstance(a, NotFound) for a in answers), answers
            finally:
                for each in warm:
                    await each.close()

    asyncio.run(body())
    served = spool_writers(auth)
    assert served & set(workers), f"no worker served a request: spools of {served}, workers {workers}"


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_every_worker_writes_one_audit_log_each_event_once_and_pages_are_complete(auth: TeleportProcess) -> None:
    """Several processes append to the same JSON log (one day file, ``flock`` around append and
    dedup) and its search index: every certificate's ``cert.create`` event is found exactly once,
    also when the search is read in small pages through cursors."""
    import datetime as dt

    leader = auth.proc.pid if auth.proc is not None else 0
    now = dt.datetime.now(dt.UTC)
    window = {"type": "cert.create", "since": (now - dt.timedelta(minutes=10)).isoformat(),
              "until": (now + dt.timedelta(minutes=10)).isoformat()}

    async def body() -> tuple[list[str], list[str]]:
        async with admin(auth) as client:
            await client.create_user("audited", ["access"], {"logins": ["root"]})
            warm = [admin(auth) for _ in range(WARM)]
            try:
                answers = []
                for _ in range(4):  # 4 x WARM certificates over connections on every worker
                    answers += await asyncio.gather(*(each.sign_user_cert("audited", SUBJECT, ttl="1h")
                                                      for each in warm))
            finally:
                for each in warm:
                    await each.close()
            expected = sorted(a["tls_cert"] for a in answers)
            seen: list[str] = []
            cursor = ""
            while True:  # small pages: the cursor must neither skip nor repeat an event
                page = await client.search_events(**window, user="audited", limit=7, cursor=cursor)
                seen += [event["uid"] for event in page["events"]]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            return expected, seen

    expected, uids = asyncio.run(body())
    assert len(expected) == 4 * WARM
    assert len(uids) == len(expected) and len(set(uids)) == len(uids)
    assert spool_writers(auth) & set(child_pids(leader)), "the events did not come from several processes"


def signed_by(answer: dict[str, Any], ca: dict[str, Any]) -> bool:
    """Whether both certificates of ``answer`` come from the active keys of ``ca`` (a CA's API form:
    the active keys first)."""
    try:
        tls = x509.load_pem_x509_certificate(answer["tls_cert"].encode())
        tls.verify_directly_issued_by(x509.load_pem_x509_certificate(ca["tls_certs"][0].encode()))
        verify_ssh_cert(answer["ssh_cert"], [ca["ssh_public_keys"][0]], cert_type=CertType.USER, principal="root")
    except Exception:
        return False
    return True


def stored_user_ca(db: sqlite3.Connection) -> bytes:
    """The user CA's document as committed in the backend's SQLite file."""
    row = db.execute("SELECT value FROM kv WHERE key = ?", (b"/authorities/user/workers.example",)).fetchone()
    return bytes(row[0])


async def committed(db: sqlite3.Connection, before: bytes, rotating: asyncio.Task[Any]) -> None:
    """Return once the rotation is committed (its answer comes later: after its audit event and the
    answering worker's reload, longer than the other workers' 0.1 s watcher poll)."""
    while stored_user_ca(db) == before and not rotating.done():
        await asyncio.sleep(0.001)


class Holder:
    """A user certificate of one CA key set, sent over ``WARM`` kept-alive connections (spread over
    the workers while those keys are trusted) and over new ones."""

    def __init__(self, auth: TeleportProcess, answer: dict[str, Any], key_pem: bytes) -> None:
        identity = LocalIdentity(key_pem, answer["tls_cert"].encode(),
                                 tuple(pem.encode() for pem in answer["host_ca_pems"]), answer["ssh_cert"])
        self.auth = auth
        self.credentials = Credentials(identity.client_context(), identity, "test")
        self.warm = [self.client() for _ in range(WARM)]

    def client(self) -> AuthClient:
        return AuthClient(self.auth.config["auth_service"]["listen_addr"], credentials=self.credentials, timeout=20)

    async def open(self) -> None:
        for each in self.warm:
            await each.status()  # accepted now: the connection stays open in the client's pool

    async def present(self) -> list[Any]:
        """The answers to a call over every warm connection and ``FRESH`` new ones (or the errors)."""

        async def fresh() -> Any:
            async with self.client() as client:
                return await client.status()

        return list(await asyncio.gather(*(each.status() for each in self.warm), *(fresh() for _ in range(FRESH)),
                                         return_exceptions=True))

    async def close(self) -> None:
        for each in self.warm:
            await each.close()


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_a_ca_phase_change_through_one_worker_holds_at_once_in_every_other(auth: TeleportProcess) -> None:
    """Attacker: the moment a rotation phase change of the user CA is answered, present a user
    certificate of the keys it dropped (``standby``, after a rollback and after a completed
    rotation) over connections opened earlier on every worker and over new ones, and ask every
    worker for certificates: none accepts the dropped keys' certificate, and every certificate
    comes from the keys the new phase signs with (a lagging worker would sign with the previous
    phase's: the old keys after ``update_clients``, the new ones after ``rollback``). The requests
    go out the moment the change is committed (read from the SQLite file), before its answer."""
    holder_key = keys.generate_private_key("ed25519")
    holder_public = keys.public_key_openssh(holder_key.public_key())

    db = sqlite3.connect(f"file:{auth.data_dir / 'backend' / 'sqlite.db'}?mode=ro", uri=True,
                         isolation_level=None)

    async def body() -> None:
        async with admin(auth) as client:
            with contextlib.suppress(AlreadyExists):
                await client.create_user("rotated", ["access", "editor"], {"logins": ["root"]})
            warm = [admin(auth) for _ in range(WARM)]
            holders: dict[str, Holder] = {}  # a CA's TLS certificate -> a user certificate it signed
            try:
                for each in warm:
                    assert (await each.sign_user_cert("rotated", SUBJECT, ttl="1h"))["ssh_cert"]
                before = await client.get_cert_authority("user")
                for round_ in range(CA_ROUNDS):
                    for phase in CA_PHASES:
                        step = f"round {round_}, {phase}"
                        dropped = before["tls_certs"][1:] if phase == "standby" else []
                        document = stored_user_ca(db)
                        rotating = asyncio.create_task(
                            client.rotate_cert_authority("user", mode="manual", phase=phase))
                        await committed(db, document, rotating)
                        # standby keeps the signing keys and drops the others: present theirs; else sign
                        presented = await asyncio.gather(*(holders[pem].present() for pem in dropped if pem in holders))
                        signed, fresh = ([], []) if dropped else await asyncio.gather(
                            asyncio.gather(*(each.sign_user_cert("rotated", SUBJECT, ttl="1h") for each in warm),
                                           return_exceptions=True),
                            fresh_certs(auth, "rotated"))
                        await rotating
                        ca = await client.get_cert_authority("user")
                        assert sorted(set(before["tls_certs"]) - set(ca["tls_certs"])) == sorted(dropped), step
                        answers = [*signed, *fresh]
                        wrong = [a if isinstance(a, BaseException) else "from other keys" for a in answers
                                 if not (isinstance(a, dict) and signed_by(a, ca))]
                        assert not wrong, f"{step}: {len(wrong)} of {len(answers)} certificates not from the " \
                                          f"phase's signing keys: {wrong[:3]}"
                        accepted = [a if isinstance(a, BaseException) else "accepted" for found in presented
                                    for a in found if not isinstance(a, AuthenticationFailed | ConnectionProblem)]
                        assert not accepted, f"{step}: {len(accepted)} calls with a certificate of the dropped " \
                                             f"keys not refused: {accepted[:3]}"
                        assert not dropped or (presented and all(found for found in presented)), step
                        for pem in dropped:
                            await holders.pop(pem).close()
                        active = ca["tls_certs"][0]
                        if active not in holders:
                            answer = await client.sign_user_cert("rotated", holder_public, ttl="1h")
                            holders[active] = Holder(auth, answer, keys.private_key_pem(holder_key))
                            await holders[active].open()
                        before = ca
            finally:
                for each in warm:
                    await each.close()
                for holder in holders.values():
                    await holder.close()

    try:
        asyncio.run(body())
    finally:
        db.close()


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_two_uploads_of_one_recording_at_once_through_the_workers_store_one(auth: TeleportProcess,
                                                                           tmp_path: Path) -> None:
    """A node uploads two different recordings of one session at the same moment over two new
    connections (each accepted by any worker): one is stored, the other refused for good
    (409 ``recordings are never replaced``); the stored bytes are the ones whose upload said so."""
    addr = auth.config["auth_service"]["listen_addr"]
    key = keys.generate_private_key("ed25519")

    async def body() -> None:
        async with admin(auth) as client:
            token = (await client.create_token(["node"], "10m"))["token"]
        joined = await register(addr, {"token": token, "role": "Node", "nodename": "uploader",
                                       "public_key": keys.public_key_openssh(key.public_key())}, [])
        answer = joined.answer
        node = LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(pem.encode() for pem in answer["host_ca_pems"]), answer["ssh_cert"],
                             host_uuid=answer["host_uuid"])
        credentials = Credentials(node.client_context(), node, "test")

        def connection() -> AuthClient:
            return AuthClient(addr, credentials=credentials, timeout=60)

        async def upload(sid: str, path: Path) -> Any:
            async with connection() as each:
                return await each.upload_recording(sid, path)

        async with connection() as events:
            for round_ in range(UPLOAD_ROUNDS):
                sid = str(uuid.uuid4())
                fields: dict[str, Any] = {"sid": sid, "server_id": node.host_uuid,
                                          "cluster_name": "workers.example", "user": "alice", "login": "root",
                                          "proto": "ssh", "session_recording": "node"}
                await events.emit_event(new_event("session.start", **fields).to_dict())
                await events.emit_event(new_event("session.end", interactive=True, end_reason="exit",
                                                  **fields).to_dict())
                paths = [tmp_path / f"{sid}-{i}.cast" for i in (0, 1)]
                for i, path in enumerate(paths):
                    path.write_text(f'{{"version": 2, "width": 80, "height": 24}}\n[0.1, "o", "take {i}"]\n')
                answers = await asyncio.gather(*(upload(sid, path) for path in paths), return_exceptions=True)
                stored = [i for i, a in enumerate(answers) if isinstance(a, dict) and not a.get("unchanged")]
                refused = [a for a in answers if isinstance(a, AlreadyExists)]
                assert len(stored) == 1 and len(refused) == 1, f"round {round_}: {answers}"
                assert "recordings are never replaced" in str(refused[0])
                kept = (auth.data_dir / "log" / "records" / f"{sid}.cast").read_bytes()  # the file storage
                assert kept == paths[stored[0]].read_bytes(), f"round {round_}: the stored recording was replaced"

    asyncio.run(body())
    assert list((auth.data_dir / "log" / "upload-locks").iterdir()) == []  # no lock file left behind


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_a_killed_worker_is_replaced_and_a_stop_ends_every_worker(auth: TeleportProcess) -> None:
    leader = auth.proc.pid if auth.proc is not None else 0
    before = child_pids(leader)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: len(set(child_pids(leader)) - {victim}) == WORKERS - 1 and not pid_alive(victim),
                        "a new worker in place of the killed one", timeout=120)
    assert replaced
    wait_for(lambda: "auth_service worker restarted" in auth.log(), "the restart logged", timeout=120)

    async def body() -> list[Any]:
        return await fresh_certs(auth, "nobody-here")

    answers = asyncio.run(body())  # every worker answers (here: 404, no such user)
    assert all(isinstance(a, NotFound) for a in answers), answers
    workers = child_pids(leader)
    auth.stop()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in workers)


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_a_graceful_reload_replaces_the_leader_and_every_worker(tmp_path: Path) -> None:
    """SIGHUP: the new leader starts its own workers on the inherited socket; the old leader's
    workers drain (SIGQUIT) and exit with it; certificates are issued throughout."""
    addr = f"127.0.0.1:{free_port()}"
    config = {"auth_service": {"cluster_name": "reload.example", "listen_addr": addr, "workers": 2,
                               "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path, "auth", config)
    process.start(timeout=180)
    new_leader = 0
    try:
        assert process.proc is not None
        old_leader = process.proc.pid
        old_workers = child_pids(old_leader)
        assert len(old_workers) == 1

        async def certs() -> list[Any]:
            async with admin(process) as client:
                with contextlib.suppress(AlreadyExists):
                    await client.create_user("reloaded", ["access"], {"logins": ["root"]})
            return await fresh_certs(process, "reloaded")

        assert all(isinstance(a, dict) for a in asyncio.run(certs()))
        os.kill(old_leader, signal.SIGHUP)
        successors = wait_for(lambda: [pid for pid in child_pids(old_leader) if pid not in old_workers],
                              "the new leader", timeout=60)
        new_leader = successors[0]
        wait_for(lambda: not pid_alive(old_leader), "the old leader's exit after its drain", timeout=240)
        assert not any(pid_alive(pid) for pid in old_workers)
        new_workers = wait_for(lambda: child_pids(new_leader), "the new leader's worker", timeout=60)
        assert len(new_workers) == 1 and not set(new_workers) & set(old_workers)
        assert all(isinstance(a, dict) for a in asyncio.run(certs()))
        assert "reload ignored" not in process.log()
    finally:
        if new_leader and pid_alive(new_leader):
            workers = child_pids(new_leader)
            os.kill(new_leader, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(pid_alive(pid) for pid in (new_leader, *workers)):
                time.sleep(0.2)
            assert not any(pid_alive(pid) for pid in (new_leader, *workers))
        process.stop()
