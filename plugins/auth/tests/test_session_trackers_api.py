"""``/v1/session_trackers`` against a real auth server with real joined host and user identities
over mTLS: only the host running a session writes its tracker (compare-and-swap on its revision),
users never write one, and users see only the sessions they are in, may join, or a
``session_tracker`` rule shows them. Every refusal is audited. The keeper extends a tracker's
expiry while its session runs and removes it at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import structlog
from tctl_helpers import STATIC_TOKEN, TctlCluster, tctl_cluster

from teleport_core.api.client import AuthClient, Credentials, register
from teleport_core.errors import AccessDenied, AlreadyExists, CompareFailed, NotFound, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.state.trackers import Participant, SessionTracker, TrackerKeeper
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def role(name: str, allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "role", "version": "v6", "metadata": {"name": name},
            "spec": {"allow": allow or {}, "deny": deny or {}}}


ROLES = [
    role("dev", {"logins": ["root"]}),
    role("watcher", {"join_sessions": [{"name": "w", "roles": ["dev"], "kinds": ["ssh"], "modes": ["observer"]}]}),
    role("watch-ops", {"join_sessions": [{"roles": ["ops"], "kinds": ["ssh"], "modes": ["observer"]}]}),
    role("lister", {"rules": [{"resources": ["session_tracker"], "verbs": ["list", "read"]}]}),
    role("hide-root", deny={"rules": [{"resources": ["session_tracker"], "verbs": ["list", "read"],
                                       "where": 'equals(tracker.login, "root")'}]}),
    # a rule cannot make a user a writer: trackers are the hosts'
    role("writer", {"rules": [{"resources": ["session_tracker"], "verbs": ["create", "update", "delete"]}]}),
]


class Cluster:
    def __init__(self, tctl: TctlCluster) -> None:
        self.tctl = tctl
        self.address = tctl.addr
        call(self.admin(), self._setup)

    async def _setup(self, admin: AuthClient) -> None:
        for doc in ROLES:
            await admin.upsert_role(doc)

    def admin(self) -> AuthClient:
        return self.tctl.admin()

    def join(self, nodename: str, role_name: str = "Node", token: str = STATIC_TOKEN) -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        body = {"token": token, "role": role_name, "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        answer = asyncio.run(register(self.address, body, [])).answer
        return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                             host_uuid=answer["host_uuid"])

    def user(self, name: str, roles: list[str]) -> AuthClient:
        key = keys.generate_private_key("ed25519")

        async def sign(admin: AuthClient) -> dict[str, Any]:
            await admin.create_user(name, roles, {"logins": ["root"]})
            return await admin.sign_user_cert(name, keys.public_key_openssh(key))  # type: ignore[no-any-return]

        answer = call(self.admin(), sign)
        identity = LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                                 tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"])
        return self.client(identity)

    def client(self, identity: LocalIdentity) -> AuthClient:
        return AuthClient(self.address, credentials=Credentials(identity.client_context(), identity, "test"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with tctl_cluster(tmp_path_factory.mktemp("trackers")) as tctl:
        yield Cluster(tctl)


def call(client: AuthClient, fn: Any) -> Any:
    async def main() -> Any:
        async with client:
            return await fn(client)

    return asyncio.run(main())


def tracker(server_id: str, owner: str = "alice", roles: tuple[str, ...] = ("dev",), login: str = "root",
            **fields: Any) -> SessionTracker:
    return SessionTracker(str(uuid.uuid4()), server_id, owner, login, hostname="node-a", owner_roles=roles,
                          participants=[Participant(str(uuid.uuid4()), owner)], **fields)


def denied(cluster: Cluster, reason: str) -> None:
    """Wait for the ``auth`` failure event naming ``reason`` (auth's events reach the log through its spool)."""

    def found() -> list[dict[str, Any]]:
        page = call(cluster.admin(), lambda c: c.search_events(type="auth", limit=5000))
        return [e for e in page["events"] if reason in e.get("error", "")]

    wait_for(found, what=f"an audited refusal: {reason}", timeout=30, interval=0.2)


def test_node_writes_its_tracker_by_compare_and_swap(cluster: Cluster) -> None:
    node = cluster.join("node-a")
    mine = tracker(node.host_uuid)

    async def run(c: AuthClient) -> None:
        created = SessionTracker.from_dict(await c.create_session_tracker(mine.to_dict()))
        assert created.revision and created.session_id == mine.session_id
        with pytest.raises(AlreadyExists):
            await c.create_session_tracker(mine.to_dict())
        read = SessionTracker.from_dict(await c.get_session_tracker(mine.session_id))
        assert read == mine and read.revision == created.revision
        moved = SessionTracker.from_dict(await c.update_session_tracker(
            read.with_participant(Participant("p2", "bob", "observer")).to_dict()))
        assert moved.users == ["alice", "bob"]
        with pytest.raises(CompareFailed):  # a write from the old revision: read again
            await c.update_session_tracker(read.to_dict())
        stale = read.to_dict()
        del stale["metadata"]["revision"]
        with pytest.raises(TeleportError, match="metadata.revision: required"):
            await c.update_session_tracker(stale)
        bad = mine.to_dict()
        bad["spec"]["state"] = "paused"
        with pytest.raises(TeleportError, match="spec.state: expected one of pending, running, terminated"):
            await c.create_session_tracker(bad)
        await c.delete_session_tracker(mine.session_id)
        with pytest.raises(NotFound):
            await c.get_session_tracker(mine.session_id)

    call(cluster.client(node), run)


def test_a_node_cannot_write_another_nodes_tracker(cluster: Cluster) -> None:
    victim, attacker = cluster.join("victim"), cluster.join("attacker")
    theirs = tracker(victim.host_uuid)
    call(cluster.client(victim), lambda c: c.create_session_tracker(theirs.to_dict()))

    async def attack(c: AuthClient) -> None:
        with pytest.raises(AccessDenied, match="only the trackers of sessions on itself"):
            await c.create_session_tracker(tracker(victim.host_uuid).to_dict())  # a session "on" the victim
        current = theirs
        with pytest.raises(NotFound):  # a node cannot even read another node's trackers
            await c.get_session_tracker(theirs.session_id)
        assert await c.list_session_trackers() == []

        for forged in (attrs.evolve(current, revision="1"),  # as it is
                       attrs.evolve(current, server_id=attacker.host_uuid, revision="1")):  # moved onto itself
            with pytest.raises(AccessDenied):
                await c.update_session_tracker(forged.to_dict())
        with pytest.raises(AccessDenied):
            await c.delete_session_tracker(theirs.session_id)

    call(cluster.client(attacker), attack)
    denied(cluster, f"not of {victim.host_uuid}")
    assert call(cluster.client(victim), lambda c: c.get_session_tracker(theirs.session_id))["spec"]["state"] == "running"
    call(cluster.client(victim), lambda c: c.delete_session_tracker(theirs.session_id))


def test_users_never_write_trackers(cluster: Cluster) -> None:
    node = cluster.join("node-u")
    theirs = tracker(node.host_uuid, owner="mallory")
    call(cluster.client(node), lambda c: c.create_session_tracker(theirs.to_dict()))
    mallory = cluster.user("mallory", ["dev", "writer"])

    async def attack(c: AuthClient) -> None:
        with pytest.raises(AccessDenied, match="users never do"):
            await c.create_session_tracker(tracker(node.host_uuid, owner="mallory").to_dict())
        current = SessionTracker.from_dict(await c.get_session_tracker(theirs.session_id))  # her own: visible
        with pytest.raises(AccessDenied, match="users never do"):
            await c.update_session_tracker(current.to_dict())
        with pytest.raises(AccessDenied, match="users never do"):
            await c.delete_session_tracker(theirs.session_id)

    call(mallory, attack)
    denied(cluster, 'user "mallory": only the host running a session')


def test_proxy_writes_only_for_agentless_nodes(cluster: Cluster) -> None:
    token = call(cluster.admin(), lambda c: c.create_token(["Proxy"]))["token"]
    proxy = cluster.join("proxy-1", "Proxy", token)
    node = cluster.join("node-p")
    with pytest.raises(AccessDenied, match="a proxy writes only the trackers of sessions on agentless OpenSSH"):
        call(cluster.client(proxy), lambda c: c.create_session_tracker(tracker(node.host_uuid).to_dict()))
    sshd = str(uuid.uuid4())  # an agentless OpenSSH node (tctl create): the proxy runs its sessions
    call(cluster.admin(), lambda c: c.create_resources([{
        "kind": "node", "sub_kind": "openssh", "version": "v2", "metadata": {"name": sshd},
        "spec": {"addr": "127.0.0.1:22", "hostname": "plain-sshd"}}]))
    theirs = tracker(sshd)

    async def relay(c: AuthClient) -> None:
        created = SessionTracker.from_dict(await c.create_session_tracker(theirs.to_dict()))
        await c.update_session_tracker(attrs.evolve(created, state="terminated").to_dict())
        await c.delete_session_tracker(theirs.session_id)

    call(cluster.client(proxy), relay)
    with pytest.raises(AccessDenied):  # a node may not write for the agentless node
        call(cluster.client(node), lambda c: c.create_session_tracker(tracker(sshd).to_dict()))


def test_who_sees_which_session(cluster: Cluster) -> None:
    node = cluster.join("node-s")
    dev_session = tracker(node.host_uuid, owner="dana", roles=("dev",), login="ubuntu")
    root_session = tracker(node.host_uuid, owner="dana", roles=("dev",), login="root")
    ops_session = tracker(node.host_uuid, owner="olga", roles=("ops",), login="ubuntu")
    for t in (dev_session, root_session, ops_session):
        call(cluster.client(node), lambda c, t=t: c.create_session_tracker(t.to_dict()))
    ids = {dev_session.session_id, root_session.session_id, ops_session.session_id}

    def seen(client: AuthClient) -> set[str]:
        return {t["spec"]["session_id"] for t in call(client, lambda c: c.list_session_trackers())} & ids

    assert seen(cluster.user("dana", ["dev"])) == {dev_session.session_id, root_session.session_id}  # her own
    assert seen(cluster.user("wally", ["watcher"])) == {dev_session.session_id, root_session.session_id}  # may join
    assert seen(cluster.user("lisa", ["lister"])) == ids  # a session_tracker list rule: all
    assert seen(cluster.user("hugo", ["lister", "hide-root"])) == {dev_session.session_id, ops_session.session_id}
    nobody = cluster.user("nora", ["dev"])
    assert seen(nobody) == set()  # no permission: nothing (a listing, not a 403)
    with pytest.raises(NotFound):
        call(nobody, lambda c: c.get_session_tracker(ops_session.session_id))
    denied(cluster, f'user "nora": session {ops_session.session_id} is not visible')
    assert call(cluster.user("wendy", ["watcher"]),
                lambda c: c.list_session_trackers(kind="ssh", state="pending")) == []
    for t in (dev_session, root_session, ops_session):
        call(cluster.client(node), lambda c, t=t: c.delete_session_tracker(t.session_id))


def test_keeper_creates_extends_and_removes(cluster: Cluster) -> None:
    node = cluster.join("node-k")
    mine = tracker(node.host_uuid)

    async def run(c: AuthClient) -> None:
        keeper = TrackerKeeper(c, asyncio.get_running_loop(), structlog.get_logger(),
                               ttl=dt.timedelta(seconds=30), extend_every=dt.timedelta(seconds=1),
                               activity_every=dt.timedelta(hours=1))
        task = asyncio.create_task(keeper.run())
        session = keeper.start_session(mine)
        first = await _until(lambda: c.get_session_tracker(mine.session_id))
        participant = session.add_participant("bob", "observer")
        for _ in range(100):  # typing: no write of its own
            session.touch(participant.id)

        async def extended() -> dict[str, Any] | None:
            now = await c.get_session_tracker(mine.session_id)
            if now["spec"]["expires"] > first["spec"]["expires"] and len(now["spec"]["participants"]) == 2:
                return now
            return None

        later = await _until(extended)
        assert SessionTracker.from_dict(later).expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=31)
        session.set_state("terminated")
        session.end()

        async def gone() -> bool | None:
            try:
                await c.get_session_tracker(mine.session_id)
            except NotFound:
                return True
            return None

        await _until(gone)
        assert not keeper.sessions
        task.cancel()

    call(cluster.client(node), run)


async def _until(probe: Any, timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            try:
                value = await probe()
            except NotFound:
                value = None
            if value:
                return value
            await asyncio.sleep(0.1)


def test_keeper_never_blocks_a_session_when_auth_is_unreachable(cluster: Cluster) -> None:
    """Auth gone (nothing listens): every session-side call returns at once, the pass fails quietly
    (logged once) and keeps the work for the next try; nothing is lost or raised."""
    import socket


    node = cluster.join("node-away")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    logged: list[str] = []

    class Log:
        def warning(self, message: str, **fields: Any) -> None:
            logged.append(message)

        def info(self, message: str, **fields: Any) -> None:
            logged.append(message)

    async def run() -> None:
        client = AuthClient(dead, credentials=Credentials(node.client_context(), node, "test"), timeout=2.0)
        keeper = TrackerKeeper(client, asyncio.get_running_loop(), Log(), retry=60)
        session = keeper.start_session(tracker(node.host_uuid))
        participant = session.add_participant("bob", "observer")
        session.touch(participant.id)
        session.resize(100, 30)
        await asyncio.sleep(0)
        await keeper.flush()  # fails: kept
        await keeper.flush()
        assert keeper.sessions and not session.created
        assert session.tracker.terminal_size == "100:30" and len(session.tracker.participants) == 2
        assert logged.count("cannot update the session tracker in auth; sessions go on, retrying") == 1
        await client.close()

    asyncio.run(run())


def test_keeper_removes_a_tracker_a_crash_left(cluster: Cluster) -> None:
    """A node restarted after a crash removes the trackers of the sessions the crash cut short."""
    node = cluster.join("node-crashed")
    left = tracker(node.host_uuid)

    async def run(c: AuthClient) -> None:
        await c.create_session_tracker(left.to_dict())
        keeper = TrackerKeeper(c, asyncio.get_running_loop(), structlog.get_logger())
        keeper.remove(left.session_id)
        keeper.remove(str(uuid.uuid4()))  # one auth never had: nothing to do
        await asyncio.sleep(0)
        await keeper.flush()
        assert not keeper.sessions
        with pytest.raises(NotFound):
            await c.get_session_tracker(left.session_id)

    call(cluster.client(node), run)


def test_keeper_takes_back_a_tracker_whose_creation_answer_was_lost(cluster: Cluster) -> None:
    """The create got through but its answer did not (409 on the retry): the keeper makes auth's
    copy its own again (compare-and-swap) instead of retrying forever."""
    node = cluster.join("node-lost-answer")
    mine = tracker(node.host_uuid)

    async def run(c: AuthClient) -> None:
        await c.create_session_tracker(attrs.evolve(mine, terminal_size="1:1").to_dict())  # the "lost" first try
        keeper = TrackerKeeper(c, asyncio.get_running_loop(), structlog.get_logger())
        task = asyncio.create_task(keeper.run())
        session = keeper.start_session(attrs.evolve(mine, terminal_size="80:24"))

        async def ours() -> bool | None:
            return (await c.get_session_tracker(mine.session_id))["spec"]["terminal_size"] == "80:24" or None

        await _until(ours)
        assert session.created
        session.end()
        await keeper.stop()
        task.cancel()

    call(cluster.client(node), run)
