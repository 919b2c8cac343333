"""Locks at the auth server: ``tctl lock``/``get locks``/``rm lock``, the auth API refusing a locked
identity (audited T3007W with the lock's message), no certificates for a locked user, and a
deleted user's outstanding certificates refused at once. A real auth server; tctl as a subprocess."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from typing import Any

import pytest
import yaml
from tctl_helpers import tctl_cluster

from teleport_core.api.client import AuthClient, load_tls
from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

pytestmark = pytest.mark.e2e  # real processes end to end

CREATED = re.compile(r'^Created a lock with name "([0-9a-f-]{36})"\.\n$')


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with tctl_cluster(tmp_path_factory.mktemp("tctl-locks")) as c:
        yield c


def user_identity(cluster, name: str) -> LocalIdentity:
    """Certificates for ``name`` (signed by the admin), as an API identity."""
    key = keys.generate_private_key("ed25519")
    certs = cluster.call("sign_user_cert", name, keys.public_key_openssh(key), "1h")
    return LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                         tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])


def as_user(cluster, identity: LocalIdentity, method: str, *args: Any) -> Any:
    async def body() -> Any:
        async with AuthClient(cluster.addr, [load_tls(identity.client_context())]) as client:
            return await getattr(client, method)(*args)

    return asyncio.run(body())


def events(cluster, kind: str, **query: Any) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    page = cluster.call("search_events", type=kind, since=(now - dt.timedelta(minutes=10)).isoformat(),
                        until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000, **query)
    return list(page["events"])


def ensure_user(cluster, name: str, roles=("access",)) -> None:
    if name not in {u["metadata"]["name"] for u in cluster.call("get_users")}:
        cluster.call("create_user", name, list(roles), {"logins": [name]})


@pytest.mark.parametrize(("args", "error"), [
    ((), "specify what to lock: one of --user, --role, --login or --node"),
    (("--user=joe", "--role=dev"), "--user and --role: a lock targets one thing"),
    (("--user=",), "--user: must not be empty"),
    (("--user=joe", "--ttl=soon"), '--ttl: expected a duration like "30m" or "1h", got "soon"'),
    (("--user=joe", "--ttl=0s"), '--ttl: must be positive'),
    (("--user=joe", "--ttl=1h", "--expires=2099-01-01T00:00:00Z"), "--ttl and --expires: give one or the other"),
    (("--user=joe", "--expires=tomorrow"), '--expires: expected an RFC 3339 time'),
    (("--user=joe", "--expires=2001-01-01T00:00:00Z"), "is in the past"),
    (("--cluster=x",), "unrecognized arguments: --cluster=x"),
])
def test_tctl_lock_bad_input_is_one_clear_error(cluster, args, error):
    line = cluster.error("lock", *args)
    assert error in line, line


def test_tctl_rm_and_get_of_a_missing_lock(cluster):
    assert 'lock "no-such-lock" not found' in cluster.error("rm", "lock/no-such-lock")
    assert 'lock "no-such-lock" not found' in cluster.error("get", "lock/no-such-lock")


def test_locked_user_is_refused_by_the_api_and_gets_no_certificates_until_unlocked(cluster):
    ensure_user(cluster, "joe")
    joe = user_identity(cluster, "joe")
    assert as_user(cluster, joe, "get_nodes") == []

    out = cluster.ok("lock", "--user=joe", "--message=Suspicious activity, talk to security", "--ttl=1h")
    match = CREATED.match(out)
    assert match, out
    name = match.group(1)
    docs = list(yaml.safe_load_all(cluster.ok("get", "locks")))
    mine = [d for d in docs if d["metadata"]["name"] == name]
    assert len(mine) == 1
    assert mine[0]["kind"] == "lock" and mine[0]["version"] == "v2"
    assert mine[0]["spec"]["target"] == {"user": "joe"}
    assert mine[0]["spec"]["message"] == "Suspicious activity, talk to security"
    assert mine[0]["spec"]["created_by"].endswith(".example.com")  # tctl on the auth host: its identity
    assert "expires" in mine[0]["metadata"]
    assert json.loads(cluster.ok("get", f"lock/{name}", "--format=json")) == mine

    message = 'lock targeting User:"joe" is in force: Suspicious activity, talk to security'
    with pytest.raises(AccessDenied) as refused:
        as_user(cluster, joe, "get_nodes")
    assert str(refused.value) == message
    with pytest.raises(AccessDenied, match=re.escape(message)):  # no new certificates either
        user_identity(cluster, "joe")
    denials = [e for e in events(cluster, "auth", user="joe") if e["error"] == message]
    assert len(denials) >= 2 and {e["code"] for e in denials} == {"T3007W"}
    created = [e for e in events(cluster, "lock.created") if e["name"] == name]
    assert created and created[0]["code"] == "TLK00I" and created[0]["target"] == {"user": "joe"}

    assert cluster.ok("rm", f"lock/{name}") == f'lock "{name}" has been deleted\n'
    assert as_user(cluster, joe, "get_nodes") == []  # the same certificate works again
    user_identity(cluster, "joe")
    deleted = [e for e in events(cluster, "lock.deleted") if e["name"] == name]
    assert deleted and deleted[0]["code"] == "TLK01I"


def test_role_lock_refuses_every_holder_of_the_role(cluster):
    ensure_user(cluster, "ann")
    ann = user_identity(cluster, "ann")
    name = CREATED.match(cluster.ok("lock", "--role=access")).group(1)  # type: ignore[union-attr]
    try:
        with pytest.raises(AccessDenied, match=re.escape('lock targeting Role:"access" is in force')):
            as_user(cluster, ann, "get_nodes")
    finally:
        cluster.ok("rm", f"lock/{name}")
    assert as_user(cluster, ann, "get_nodes") == []


def test_deleted_user_outstanding_certificates_fail_and_a_recreated_user_works(cluster):
    ensure_user(cluster, "leaver")
    old = user_identity(cluster, "leaver")
    assert as_user(cluster, old, "get_nodes") == []
    cluster.call("delete_user", "leaver")
    message = 'lock targeting User:"leaver" is in force: user "leaver" was deleted'
    with pytest.raises(AccessDenied) as refused:
        as_user(cluster, old, "get_nodes")
    assert str(refused.value) == message
    assert [e["code"] for e in events(cluster, "auth", user="leaver") if e["error"] == message] == ["T3007W"]
    locks = [d for d in yaml.safe_load_all(cluster.ok("get", "locks")) if d["spec"]["target"].get("user") == "leaver"]
    assert len(locks) == 1 and "issued_before" in locks[0]["spec"]["target"]
    expires = dt.datetime.fromisoformat(locks[0]["metadata"]["expires"].replace("Z", "+00:00"))
    # 30 h from the deletion, rounded up to a whole second (a lock never ends early)
    assert dt.timedelta(hours=29) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=30, seconds=1)

    # a user created again under the name gets new certificates that work; the old ones stay refused
    import time

    time.sleep(1.1)  # certificates carry whole seconds: a new one is issued after the deletion's second
    cluster.call("create_user", "leaver", ["access"], {"logins": ["leaver"]})
    new = user_identity(cluster, "leaver")
    assert as_user(cluster, new, "get_nodes") == []
    with pytest.raises(AccessDenied, match=re.escape(message)):
        as_user(cluster, old, "get_nodes")


def test_locked_node_is_refused_by_the_api_but_still_follows_locks(cluster):
    from tctl_helpers import STATIC_TOKEN

    from teleport_core.api.client import register

    async def body() -> tuple[str, list[Any], str]:
        async with cluster.admin() as admin:
            pin = (await admin.status())["ca_pin"]
        key = keys.generate_private_key("ed25519")
        joined = await register(cluster.addr, {"token": STATIC_TOKEN, "role": "Node", "nodename": "locked-node",
                                               "public_key": keys.public_key_openssh(key)}, [pin])
        a = joined.answer
        identity = LocalIdentity(keys.private_key_pem(key), a["tls_cert"].encode(),
                                 tuple(p.encode() for p in a["host_ca_pems"]), a["ssh_cert"], tuple(a["known_hosts"]),
                                 a["host_uuid"])
        heartbeat = {"uuid": identity.host_uuid, "nodename": "locked-node", "addr": "127.0.0.1:3022"}
        async with AuthClient(cluster.addr, [load_tls(identity.client_context())]) as node:
            await node.upsert_node(heartbeat)
            name = CREATED.match(await asyncio.to_thread(  # type: ignore[union-attr]
                cluster.ok, "lock", f"--node={identity.host_uuid}", "--message=decommissioned")).group(1)
            with pytest.raises(AccessDenied) as refused:
                await node.upsert_node(heartbeat)
            locks = await node.get_locks()  # a locked node still learns of locks (to end its own sessions)
            await node.wait_for_change("lock", "", timeout=0)
            await asyncio.to_thread(cluster.ok, "rm", f"lock/{name}")
            await node.upsert_node(heartbeat)
        return str(refused.value), locks, identity.host_uuid

    reason, locks, uuid = asyncio.run(body())
    assert reason == f'lock targeting Node:"{uuid}" is in force: decommissioned'
    assert {"node": uuid} in [lk["spec"]["target"] for lk in locks]
    assert [e["code"] for e in events(cluster, "auth", user=f"{uuid}.example.com") if e["error"] == reason] == [
        "T3007W"]
