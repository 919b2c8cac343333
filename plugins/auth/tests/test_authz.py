"""RoleAuthorizer: user RBAC from the role snapshot, the host policy, cache invalidation."""

from __future__ import annotations

import asyncio
from typing import Any

from teleport_auth.authz import HOST_POLICIES, RoleAuthorizer, decide_host, host_uuid
from teleport_auth.rolestore import RoleStore

from teleport_core.policy.access import AccessRequest, Decision, Identity, IdentityKind, decide
from teleport_core.policy.roles import parse_role

CLUSTER = "example.com"
NODE_UUID = "5c3f7e1a-2b0d-4a7e-9c1b-0d9e8f7a6b5c"


def user(name: str = "joe", roles: tuple[str, ...] = ("access",), **traits: list[str]) -> Identity:
    return Identity(name, IdentityKind.USER, roles=roles, traits=traits)


def host(role: str, uuid: str = NODE_UUID) -> Identity:
    return Identity(f"{uuid}.{CLUSTER}", IdentityKind.HOST, roles=(role,), cluster=CLUSTER)


def req(identity: Identity, verb: str, kind: str, name: str = "", **extra: Any) -> AccessRequest:
    return AccessRequest(identity, verb, kind, name, **extra)


def make_role(name: str, **spec: Any) -> Any:
    return parse_role({"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec})


def test_user_rules_and_logins(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.ensure_builtin()
        authz = RoleAuthorizer(store)
        joe = user(logins=["root"])
        # before any load, everything is refused with a reason
        assert authz.decide(req(joe, "list", "node")).reason == 'access denied to user "joe": roles are not loaded yet'
        await authz.load(joe)
        assert authz.decide(req(joe, "list", "node")) == Decision.allow('role "access" allows list on node')
        denied = authz.decide(req(joe, "create", "role"))
        assert denied == Decision.deny('access denied to user "joe": no role allows create on role (access)')
        ssh = authz.decide(req(joe, "ssh", "node", NODE_UUID, labels={"env": "prod"}, login="root"))
        assert ssh.allowed and ssh.reason == 'role "access" allows login "root" on this node'
        other = authz.decide(req(joe, "ssh", "node", NODE_UUID, login="admin"))
        assert other.reason == 'access denied to user "joe": no role allows login "admin" (access)'
        assert not authz.decide(req(joe, "ssh", "session", login="root")).allowed
        # the kernel's combination: our deny wins over another plugin's allow
        assert decide(req(joe, "create", "role"), [Decision.allow("x"), denied]) == denied
        rs = await authz.roleset_for(joe)
        assert rs.all_logins == ["root"]

    with_backend(body)


def test_missing_role_denies_everything(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.ensure_builtin()
        authz = RoleAuthorizer(store)
        ghost = user(roles=("access", "deny-prod"), logins=["root"])
        await authz.load(ghost)
        decision = authz.decide(req(ghost, "ssh", "node", login="root", labels={"env": "prod"}))
        assert decision == Decision.deny('access denied to user "joe": role "deny-prod" does not exist')
        assert not authz.decide(req(ghost, "list", "node")).allowed
        nobody = user(roles=())
        assert authz.decide(req(nobody, "list", "node")).reason == (
            'access denied to user "joe": no role allows list on node (no roles)'
        )

    with_backend(body)


def test_local_writes_invalidate_the_snapshot(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        authz = RoleAuthorizer(store)
        ann = user("ann", roles=("dev",))
        await store.create(make_role("dev", allow={"rules": [{"resources": ["node"], "verbs": ["read"]}]}))
        await authz.load(ann)
        assert authz.decide(req(ann, "read", "node")).allowed
        await store.upsert(make_role("dev", deny={"rules": [{"resources": ["node"], "verbs": ["*"]}]}))
        await authz.load(ann)
        assert (
            authz.decide(req(ann, "read", "node")).reason
            == 'access denied to user "ann": role "dev" denies read on node'
        )
        await store.delete("dev")
        await authz.load(ann)
        assert authz.decide(req(ann, "read", "node")).reason == 'access denied to user "ann": role "dev" does not exist'

    with_backend(body)


def test_without_watcher_every_load_rereads(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        other_server = RoleStore(backend)  # writes that never reach our listener
        authz = RoleAuthorizer(store)
        ann = user("ann", roles=("dev",))
        await other_server.create(make_role("dev"))
        await authz.load(ann)
        assert not authz.decide(req(ann, "read", "node")).allowed
        await other_server.upsert(make_role("dev", allow={"rules": [{"resources": ["node"], "verbs": ["read"]}]}))
        await authz.load(ann)
        assert authz.decide(req(ann, "read", "node")).allowed

    with_backend(body)


def test_watcher_keeps_the_snapshot_and_invalidates_on_remote_writes(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        other_server = RoleStore(backend)
        authz = RoleAuthorizer(store)
        reads = 0
        original = store.list

        async def counting_list() -> Any:
            nonlocal reads
            reads += 1
            return await original()

        store.list = counting_list  # type: ignore[method-assign]
        ann = user("ann", roles=("dev",))
        await other_server.create(make_role("dev"))
        task = asyncio.create_task(authz.watch(retry_delay=0.01))
        try:
            for _ in range(500):
                if authz.watching:
                    break
                await asyncio.sleep(0.01)
            assert authz.watching
            await authz.load(ann)
            await authz.load(ann)
            await authz.load(ann)
            assert reads == 1  # the snapshot is reused while valid
            assert not authz.decide(req(ann, "read", "node")).allowed
            await other_server.upsert(make_role("dev", allow={"rules": [{"resources": ["node"], "verbs": ["read"]}]}))
            for _ in range(500):
                await authz.load(ann)
                if authz.decide(req(ann, "read", "node")).allowed:
                    break
                await asyncio.sleep(0.01)
            assert authz.decide(req(ann, "read", "node")).allowed
            assert reads >= 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not authz.watching

    with_backend(body)


def test_rolesets_are_cached_per_roles_and_traits(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.ensure_builtin()
        authz = RoleAuthorizer(store)
        await authz.load()
        a = authz.roleset(user(logins=["root"]))
        assert authz.roleset(user(logins=["root"])) is a
        assert authz.roleset(user(logins=["ubuntu"])).all_logins == ["ubuntu"]

    with_backend(body)


# -- hosts -----------------------------------------------------------------------------------------


def test_host_uuid() -> None:
    assert host_uuid(host("Node")) == NODE_UUID
    assert host_uuid(Identity(f"{NODE_UUID}.other", IdentityKind.HOST, roles=("Node",))) == NODE_UUID


def test_node_policy() -> None:
    node = host("Node")
    for kind in ("node", "role", "user", "cert_authority"):
        assert decide_host(req(node, "read", kind)).allowed, kind
    assert decide_host(req(node, "update", "node", NODE_UUID)) == Decision.allow(
        "system role Node allows update on node"
    )
    other = decide_host(req(node, "update", "node", "another-uuid"))
    assert other == Decision.deny(
        f'access denied to host "{NODE_UUID}.{CLUSTER}": a Node may update only its own node ("{NODE_UUID}")'
    )
    assert decide_host(req(node, "create", "event")).allowed
    assert decide_host(req(node, "update", "session")).allowed
    assert decide_host(req(node, "create", "user")).reason == (
        f'access denied to host "{NODE_UUID}.{CLUSTER}": system role Node does not allow create on user'
    )
    assert not decide_host(req(node, "delete", "node", NODE_UUID)).allowed
    assert not decide_host(req(node, "read", "token")).allowed
    assert decide_host(req(node, "ssh", "node", login="root")).reason.endswith("hosts cannot log in over SSH")


def test_proxy_auth_and_unknown_system_roles() -> None:
    proxy = host("Proxy")
    assert decide_host(req(proxy, "list", "node")).allowed
    assert decide_host(req(proxy, "read", "user_token")).allowed
    assert decide_host(req(proxy, "update", "proxy", NODE_UUID)).allowed
    assert not decide_host(req(proxy, "update", "node", NODE_UUID)).allowed
    assert not decide_host(req(proxy, "delete", "user")).allowed
    auth = host("Auth")
    for verb, kind in (("delete", "role"), ("create", "user"), ("update", "cert_authority"), ("list", "event")):
        assert decide_host(req(auth, verb, kind)).allowed
    assert not decide_host(req(auth, "ssh", "node", login="root")).allowed
    stranger = host("Admin")
    assert decide_host(req(stranger, "read", "node")).reason.endswith(
        "no system role (Node, Proxy or Auth) in its certificate"
    )
    assert set(HOST_POLICIES) == {"Node", "Proxy", "Auth"}


def test_authorizer_routes_hosts_to_the_host_policy(with_backend: Any) -> None:
    async def body(backend: Any) -> None:
        authz = RoleAuthorizer(RoleStore(backend))
        # hosts need no role snapshot
        assert authz.decide(req(host("Node"), "read", "role")).allowed
        assert not authz.decide(req(host("Node"), "delete", "role")).allowed
        # a host identity claiming user roles gets nothing from them
        await RoleStore(backend).ensure_builtin()
        await authz.load()
        fake = Identity(f"{NODE_UUID}.{CLUSTER}", IdentityKind.HOST, roles=("editor",))
        assert not authz.decide(req(fake, "create", "role")).allowed

    with_backend(body)


def test_where_rules_read_the_request_item(with_backend: Any) -> None:
    """The preset access role: a user's own sessions only (participants from the request's attributes);
    a filtered listing is allowed and each item decided; a deny rule with where refuses only its items."""

    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.ensure_builtin()
        await store.create(make_role("no-root-sessions", deny={"rules": [
            {"resources": ["session"], "verbs": ["read"], "where": 'equals(session.login, "root")'}]}))
        authz = RoleAuthorizer(store)
        alice = user("alice")
        await authz.load(alice)

        def item(*participants: str, login: str = "ubuntu") -> dict[str, Any]:
            return {"session": {"participants": list(participants), "login": login}}

        assert authz.decide(req(alice, "read", "session", "s1", attributes=item("alice"))).allowed
        theirs = authz.decide(req(alice, "read", "session", "s2", attributes=item("bob")))
        assert theirs.reason == ('access denied to user "alice": no role allows read on session (access): '
                                 'role "access" only where contains(session.participants, user.metadata.name)')
        assert not authz.decide(req(alice, "read", "session", "s3")).allowed  # no record: no participants
        assert authz.decide(req(alice, "list", "session", filtered=True)).allowed
        assert not authz.decide(req(alice, "list", "session")).allowed  # an unfiltered listing: refused
        assert not authz.decide(req(alice, "list", "event", filtered=True)).allowed
        # a deny rule with where: only the matching item
        both = user("alice", roles=("access", "no-root-sessions"))
        await authz.load(both)
        assert authz.decide(req(both, "read", "session", attributes=item("alice"))).allowed
        assert authz.decide(req(both, "read", "session", attributes=item("alice", login="root"))).reason == (
            'access denied to user "alice": role "no-root-sessions" denies read on session where '
            'equals(session.login, "root")')
        # the user's own fields: traits and roles
        await store.create(make_role("team-events", allow={"rules": [
            {"resources": ["event"], "verbs": ["list"],
             "where": 'contains(user.spec.traits["teams"], "sec") && equals(event.type, "user.login")'}]}))
        sec, dev = user("s", roles=("team-events",), teams=["sec"]), user("d", roles=("team-events",), teams=["dev"])
        await authz.load(sec)
        login_event = {"event": {"type": "user.login", "code": "T1000I", "user": "x"}}
        assert authz.decide(req(sec, "list", "event", attributes=login_event)).allowed
        assert not authz.decide(req(dev, "list", "event", attributes=login_event)).allowed
        assert not authz.decide(req(sec, "list", "event", attributes={"event": {"type": "session.start"}})).allowed
        # hosts keep their fixed policy
        assert authz.decide(req(host("Auth"), "list", "session", filtered=True)).allowed

    with_backend(body)


def test_decide_alike_is_each_items_decision_or_none(with_backend: Any) -> None:
    """A listing decides once what its items cannot change (``decide_alike``): only when no ``where``
    rule of the user's roles names the verb on the kind, and then exactly what ``decide`` gives each
    item. A ``where`` rule, allow or deny, in any role makes it decide per item (None); a host is always
    decided per item; a user whose role is missing is denied alike."""

    async def body(backend: Any) -> None:
        store = RoleStore(backend)
        await store.ensure_builtin()
        await store.create(make_role("no-root-events", allow={"rules": [{"resources": ["event"], "verbs": ["list"]}]},
                                     deny={"rules": [{"resources": ["event"], "verbs": ["list"],
                                                      "where": 'equals(event.user, "root")'}]}))
        await store.create(make_role("own-events", allow={"rules": [
            {"resources": ["event"], "verbs": ["list"], "where": "equals(event.user, user.metadata.name)"}]}))
        await store.create(make_role("all-but-events", allow={"rules": [{"resources": ["*"], "verbs": ["*"]}]},
                                     deny={"rules": [{"resources": ["event"], "verbs": ["list"]}]}))
        authz = RoleAuthorizer(store)
        items = [(f"uid-{i}", {"event": {"type": kind, "code": "T0000I", "user": who}})
                 for i, (kind, who) in enumerate([("exec", "root"), ("exec", "ann"), ("user.login", "bob"),
                                                  ("session.start", "")])]
        cases = {("auditor",): True, ("access",): False, ("no-root-events",): None, ("auditor", "no-root-events"): None,
                 ("own-events",): None, ("all-but-events",): True, ("auditor", "all-but-events"): True,
                 ("missing-role",): True}
        for roles, alike in cases.items():
            ann = user("ann", roles=roles)
            await authz.load(ann)
            once = authz.decide_alike(ann, "list", "event")
            each = [authz.decide(req(ann, "list", "event", name, attributes=attributes)) for name, attributes in items]
            if alike is None:
                assert once is None, roles
                assert len({d.allowed for d in each}) == 2, roles  # the items do differ: per item was needed
            else:
                assert once is not None and all(d == once for d in each), (roles, once, each)
        assert authz.decide_alike(host("Auth"), "list", "event") is None

    with_backend(body)
