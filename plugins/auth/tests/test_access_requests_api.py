"""Access requests against a real auth server over mTLS: create, list, review with thresholds,
resolve, delete, certificates reissued with approved roles, and the attacker's side (self-approval,
reviewers without the right, a forged requester, unrequestable roles, someone else's or an
unapproved request in a reissue, a deleted request's certificate). Every step audited; the
``teleport_access_request_changed`` hook hears each change at its real call site."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from teleport_core import hookimpl
from teleport_core.api.client import AuthClient, load_identity_dir, load_tls
from teleport_core.errors import AccessDenied, NotFound, TeleportError
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.policy.requests import ACTIVE_REQUESTS_OID, EXT_ACTIVE_REQUESTS
from teleport_core.testing.cluster import start_cluster

pytestmark = pytest.mark.e2e  # a real auth server

ROLES = """
kind: role
version: v5
metadata: {name: dev}
spec:
  allow:
    logins: [dev]
    node_labels: {env: dev}
    request: {roles: [dba, "^db-.*$", "ops-*"], suggested_reviewers: [bob]}
  deny:
    request: {roles: [db-root]}
---
kind: role
version: v5
metadata: {name: dev2}
spec:
  allow:
    request:
      roles: [dba]
      thresholds: [{name: two, approve: 2, deny: 1}]
---
kind: role
version: v5
metadata: {name: dev-short}
spec:
  allow:
    request: {roles: [dba], max_duration: 90s}
  options: {request_access: reason, request_prompt: "name the ticket"}
---
kind: role
version: v5
metadata: {name: dev-blink}
spec:
  allow:
    request: {roles: [dba], max_duration: 3s}
---
kind: role
version: v5
metadata: {name: dba}
spec:
  allow: {logins: [dba], node_labels: {env: prod}}
---
kind: role
version: v5
metadata: {name: db-ro}
spec:
  allow: {logins: [ro]}
---
kind: role
version: v5
metadata: {name: db-root}
spec:
  allow: {logins: [root]}
---
kind: role
version: v5
metadata: {name: reviewer}
spec:
  allow:
    review_requests: {roles: [dba, "db-*"]}
---
kind: role
version: v5
metadata: {name: half-reviewer}
spec:
  allow:
    review_requests: {roles: [db-ro]}
---
kind: role
version: v5
metadata: {name: no-dba-reviewer}
spec:
  allow:
    review_requests: {roles: ["*"]}
  deny:
    review_requests: {roles: [dba]}
"""

PROXY_TOKEN = "static-proxy-token-0123456789abcdef"
USERS = {"alice": ["dev"], "bob": ["reviewer"], "dave": ["reviewer"], "carol": ["half-reviewer"],
         "erin": ["dev2"], "frank": ["dev-short"], "gina": ["no-dba-reviewer"],
         "hank": ["dev-blink"]}


class RecordChanges:
    """A notification plugin in the running auth service: records every change it hears."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    @hookimpl
    def teleport_access_request_changed(self, request, change):
        with self.lock:
            self.seen.append((request.id, change, request.state))


class Broken:
    """A plugin whose hook fails: logged, and changes nothing."""

    @hookimpl
    def teleport_access_request_changed(self, request, change):
        raise RuntimeError("notification service down")


class Cluster:
    def __init__(self, handle: Any, data_dir: Path, recorder: RecordChanges) -> None:
        self.handle = handle
        self.data_dir = data_dir
        self.addr = handle.process.services["auth_service"].address
        self.recorder = recorder
        self.identities: dict[str, LocalIdentity] = {}

    def admin(self) -> AuthClient:
        return AuthClient(self.addr, [load_identity_dir(self.data_dir / "keys" / "auth")])

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def main() -> Any:
            async with self.admin() as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(main())

    def sign(self, name: str) -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        certs = self.call("sign_user_cert", name, keys.public_key_openssh(key), "1h")
        identity = LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                                 tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])
        self.identities[name] = identity
        return identity

    def as_user(self, name: str | LocalIdentity, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        identity = self.identities[name] if isinstance(name, str) else name

        async def main() -> Any:
            async with AuthClient(self.addr, [load_tls(identity.client_context())]) as client:
                return await client.call(method, path, body, params)

        return asyncio.run(main())

    def events(self, kind: str, **query: Any) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        page = self.call("search_events", type=kind, since=(now - dt.timedelta(minutes=10)).isoformat(),
                         until=(now + dt.timedelta(minutes=1)).isoformat(), limit=1000, **query)
        return list(page["events"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("access-requests")
    config = {
        "teleport": {"data_dir": str(root / "data"), "nodename": "auth-1"},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0",
                         "tokens": [f"proxy:{PROXY_TOKEN}"]},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    recorder = RecordChanges()
    plugins = make_plugins(objects=[("broken_notifier", Broken()), ("record_changes", recorder)])
    with start_cluster(config, plugins, timeout=60) as handle:
        c = Cluster(handle, root / "data", recorder)
        c.call("create_resources", list(yaml.safe_load_all(ROLES)))
        for name, roles in USERS.items():
            c.call("create_user", name, roles, {"logins": [name]})
            c.sign(name)
        yield c


def create(cluster: Cluster, user: str, roles: list[str], reason: str = "need it", **more: Any) -> dict[str, Any]:
    return cluster.as_user(user, "POST", "/v1/access_requests", {"roles": roles, "reason": reason, **more})


def review(cluster: Cluster, user: str, request_id: str, state: str, reason: str = "ok") -> dict[str, Any]:
    return cluster.as_user(user, "POST", f"/v1/access_requests/{request_id}/reviews",
                           {"proposed_state": state, "reason": reason})


def reissue(cluster: Cluster, user: str | LocalIdentity, ids: list[str], **more: Any) -> tuple[dict[str, Any], Any]:
    key = keys.generate_private_key("ed25519")
    certs = cluster.as_user(user, "POST", "/v1/certs/reissue",
                            {"public_key": keys.public_key_openssh(key), "access_requests": ids, **more})
    return certs, key


def identity_of(certs: dict[str, Any], key: Any) -> LocalIdentity:
    return LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                         tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.hook_call_site("teleport_access_request_changed")
def test_request_approve_reissue_and_drop(cluster):
    """alice requests dba (pending, audited T5000I); bob approves (T5002I, T5001I); alice's reissued
    certificates carry dba and the request ID (SSH extension and X.509 attribute), expire with the
    access; drop gives back the base roles. The hook heard created and approved, after a failing
    plugin's exception was only logged."""
    access = create(cluster, "alice", ["dba"], "fix the replica", suggested_reviewers=["dave"])
    spec = access["spec"]
    assert access["kind"] == "access_request" and access["version"] == "v3"
    assert spec["state"] == "PENDING" and spec["user"] == "alice" and spec["roles"] == ["dba"]
    assert spec["suggested_reviewers"] == ["dave", "bob"] and spec["thresholds"] == [
        {"name": "default", "approve": 1, "deny": 1}]
    request_id = access["metadata"]["name"]

    with pytest.raises(AccessDenied, match="no access request|not APPROVED"):
        reissue(cluster, "alice", [request_id])  # pending: nothing yet

    approved = review(cluster, "bob", request_id, "APPROVED", "go ahead")
    assert approved["spec"]["state"] == "APPROVED" and approved["spec"]["resolve_reason"] == "go ahead"
    assert approved["spec"]["reviews"][0]["author"] == "bob"

    certs, key = reissue(cluster, "alice", [request_id])
    assert certs["roles"] == ["dev", "dba"] and certs["active_requests"] == [request_id]
    assert "dba" in certs["logins"]
    assert dt.datetime.fromisoformat(certs["valid_before"]) <= dt.datetime.fromisoformat(
        approved["spec"]["expires"].replace("Z", "+00:00"))
    tls = x509.load_pem_x509_certificate(certs["tls_cert"].encode())
    oid = x509.ObjectIdentifier(ACTIVE_REQUESTS_OID)
    assert [a.value for a in tls.subject.get_attributes_for_oid(oid)] == [request_id]
    from cryptography.hazmat.primitives.serialization import ssh

    parsed = ssh.load_ssh_public_identity(certs["ssh_cert"].encode())
    assert isinstance(parsed, ssh.SSHCertificate)
    assert parsed.extensions[EXT_ACTIVE_REQUESTS.encode()] == f'["{request_id}"]'.encode()

    # an API call made with the elevated certificate is audited with the request
    elevated = identity_of(certs, key)
    with pytest.raises(AccessDenied):
        cluster.as_user(elevated, "GET", "/v1/users")
    denial = [e for e in cluster.events("auth", user="alice") if e.get("path") == "/v1/users"][-1]
    assert denial["access_requests"] == [request_id]

    dropped, _ = reissue(cluster, elevated, [], drop_access_requests=True)
    assert dropped["roles"] == ["dev"] and dropped["active_requests"] == []
    # a reissue never outlives the certificate it is asked with (no renewal without a login)
    assert dt.datetime.fromisoformat(dropped["valid_before"]) <= tls.not_valid_after_utc
    base_end = x509.load_pem_x509_certificate(cluster.identities["alice"].tls_cert_pem).not_valid_after_utc
    assert dt.datetime.fromisoformat(reissue(cluster, "alice", [])[0]["valid_before"]) <= base_end

    codes = {e["code"] for e in cluster.events("access_request.create", user="alice")}
    assert codes == {"T5000I"}
    reviews = [e for e in cluster.events("access_request.review") if e["id"] == request_id]
    assert [(e["code"], e["reviewer"], e["proposed_state"]) for e in reviews] == [("T5002I", "bob", "APPROVED")]
    updates = [e for e in cluster.events("access_request.update") if e["id"] == request_id]
    assert [(e["code"], e["state"], e["updated_by"]) for e in updates] == [("T5001I", "APPROVED", "bob")]
    wait_for(lambda: (request_id, "approved", "APPROVED") in cluster.recorder.seen, "the approved announcement")
    assert [c for i, c, _ in cluster.recorder.seen if i == request_id] == ["created", "approved"]


def test_alice_cannot_approve_her_own_request(cluster):
    request_id = create(cluster, "alice", ["dba"])["metadata"]["name"]
    with pytest.raises(AccessDenied, match="cannot review their own request"):
        review(cluster, "alice", request_id, "APPROVED")
    assert cluster.as_user("alice", "GET", f"/v1/access_requests/{request_id}")["spec"]["state"] == "PENDING"
    assert any("cannot review their own request" in e["error"] for e in cluster.events("auth", user="alice"))


def test_reviewer_without_review_rights_is_refused_and_audited(cluster):
    """carol may review db-ro only, gina may review everything but dba (deny wins): both refused for
    a dba request, audited; a refused reviewer still sees the request only when she may review it."""
    request_id = create(cluster, "alice", ["dba"])["metadata"]["name"]
    with pytest.raises(NotFound):  # not hers, no role of it reviewable by her: as if absent, and audited
        review(cluster, "carol", request_id, "APPROVED")
    assert any(request_id in e["error"] for e in cluster.events("auth", user="carol"))
    with pytest.raises(AccessDenied, match='role "no-dba-reviewer" denies reviewing requests for role "dba"'):
        review(cluster, "gina", request_id, "APPROVED")
    with pytest.raises(NotFound):
        cluster.as_user("carol", "GET", f"/v1/access_requests/{request_id}")
    items = cluster.as_user("carol", "GET", "/v1/access_requests")["items"]
    assert request_id not in [i["metadata"]["name"] for i in items]
    assert cluster.as_user("alice", "GET", f"/v1/access_requests/{request_id}")["spec"]["reviews"] == []
    # a reviewer of half the roles sees the request, and is refused (403, audited) when reviewing it
    both = create(cluster, "alice", ["db-ro", "dba"])["metadata"]["name"]
    assert cluster.as_user("carol", "GET", f"/v1/access_requests/{both}")["spec"]["user"] == "alice"
    with pytest.raises(AccessDenied, match='user "carol" may not review requests for role "dba"'):
        review(cluster, "carol", both, "APPROVED")
    assert any("may not review requests for role" in e["error"] for e in cluster.events("auth", user="carol"))
    assert any("denies reviewing requests for role" in e["error"] for e in cluster.events("auth", user="gina"))


def test_the_user_field_of_the_body_is_ignored(cluster):
    access = cluster.as_user("alice", "POST", "/v1/access_requests", {"roles": ["dba"], "user": "bob"})
    assert access["spec"]["user"] == "alice"


@pytest.mark.parametrize(("roles", "error"), [
    (["db-root"], 'role \\\\"dev\\\\" denies requesting role \\\\"db-root\\\\"|denies requesting role'),
    (["editor"], "no role allows requesting role"),
    (["ops-1"], 'no such role "ops-1"'),
])
def test_an_unrequestable_role_is_refused(cluster, roles, error):
    with pytest.raises(TeleportError, match=error):
        create(cluster, "alice", roles)


def test_a_reason_is_required_when_a_role_says_so_and_access_is_capped(cluster):
    with pytest.raises(TeleportError, match="reason: required .*name the ticket"):
        create(cluster, "frank", ["dba"], reason="")
    access = create(cluster, "frank", ["dba"], reason="TICKET-1")
    created = dt.datetime.fromisoformat(access["spec"]["created"].replace("Z", "+00:00"))
    expires = dt.datetime.fromisoformat(access["spec"]["expires"].replace("Z", "+00:00"))
    assert expires - created <= dt.timedelta(seconds=90)


def test_a_threshold_of_two_needs_two_reviewers(cluster):
    request_id = create(cluster, "erin", ["dba"])["metadata"]["name"]
    first = review(cluster, "bob", request_id, "APPROVED")
    assert first["spec"]["state"] == "PENDING"
    with pytest.raises(TeleportError, match="already reviewed"):
        review(cluster, "bob", request_id, "APPROVED")
    second = review(cluster, "dave", request_id, "APPROVED")
    assert second["spec"]["state"] == "APPROVED"
    assert [r["author"] for r in second["spec"]["reviews"]] == ["bob", "dave"]


def test_a_denied_request_grants_nothing_and_stays_denied(cluster):
    request_id = create(cluster, "alice", ["dba"])["metadata"]["name"]
    assert review(cluster, "bob", request_id, "DENIED", "no")["spec"]["state"] == "DENIED"
    with pytest.raises(TeleportError, match="already DENIED"):
        review(cluster, "dave", request_id, "APPROVED")
    with pytest.raises(AccessDenied, match="is DENIED, not APPROVED"):
        reissue(cluster, "alice", [request_id])


def test_reissue_with_someone_elses_request_is_refused(cluster):
    request_id = create(cluster, "erin", ["dba"])["metadata"]["name"]
    review(cluster, "bob", request_id, "APPROVED")
    review(cluster, "dave", request_id, "APPROVED")
    with pytest.raises(AccessDenied, match="no access request .* of user \"alice\""):
        reissue(cluster, "alice", [request_id])
    with pytest.raises(AccessDenied, match="no access request"):
        reissue(cluster, "alice", ["not-a-request"])
    assert any("certificate reissue refused" in e["error"] for e in cluster.events("auth", user="alice"))


def test_admin_resolve_with_a_subset_and_delete_locks_the_certificates(cluster):
    """The admin approves only db-ro of a db-ro+dba request; alice's certificate with it works until
    the request is deleted: a lock on the request refuses it at once (auth API), audited."""
    request_id = create(cluster, "alice", ["db-ro", "dba"])["metadata"]["name"]
    with pytest.raises(AccessDenied):  # bob may review, not resolve as admin
        cluster.as_user("bob", "PUT", f"/v1/access_requests/{request_id}/state", {"state": "APPROVED"})
    resolved = cluster.call("call", "PUT", f"/v1/access_requests/{request_id}/state",
                            {"state": "APPROVED", "reason": "read only", "roles": ["db-ro"]})
    assert resolved["spec"]["state"] == "APPROVED" and resolved["spec"]["roles"] == ["db-ro"]
    certs, key = reissue(cluster, "alice", [request_id])
    assert certs["roles"] == ["dev", "db-ro"]
    elevated = identity_of(certs, key)
    assert cluster.as_user(elevated, "GET", f"/v1/access_requests/{request_id}")["spec"]["state"] == "APPROVED"
    with pytest.raises(AccessDenied):  # alice cannot delete requests
        cluster.as_user("alice", "DELETE", f"/v1/access_requests/{request_id}")
    assert cluster.call("call", "DELETE", f"/v1/access_requests/{request_id}") == {"deleted": request_id}
    with pytest.raises(AccessDenied, match=f"lock targeting AccessRequest:\"{request_id}\" is in force"):
        cluster.as_user(elevated, "GET", "/v1/access_requests")
    assert cluster.as_user("alice", "GET", "/v1/access_requests") is not None  # her base certificate works
    assert [e["code"] for e in cluster.events("access_request.delete") if e["id"] == request_id] == ["T5003I"]
    wait_for(lambda: (request_id, "deleted", "APPROVED") in cluster.recorder.seen, "the deleted announcement")


def test_hosts_cannot_request_and_bad_bodies_are_400(cluster):
    with pytest.raises(TeleportError, match="proposed_state"):
        review(cluster, "bob", "00000000-0000-4000-8000-000000000000", "MAYBE")
    with pytest.raises(TeleportError, match="roles"):
        cluster.as_user("alice", "POST", "/v1/access_requests", {"roles": []})
    with pytest.raises(NotFound):
        cluster.as_user("alice", "GET", "/v1/access_requests/no-such-id")
    with pytest.raises(TeleportError, match="reason: NUL characters are not allowed"):
        create(cluster, "alice", ["dba"], reason="a\x00b")
    request_id = create(cluster, "alice", ["dba"])["metadata"]["name"]
    with pytest.raises(TeleportError, match="reason: NUL characters are not allowed"):
        review(cluster, "bob", request_id, "APPROVED", "ok\x00")
    with pytest.raises(AccessDenied, match="only users request access"):
        cluster.call("call", "POST", "/v1/access_requests", {"roles": ["dba"]})


def test_listing_filters_and_visibility(cluster):
    mine = create(cluster, "erin", ["dba"])["metadata"]["name"]
    erin = cluster.as_user("erin", "GET", "/v1/access_requests")["items"]
    assert mine in [i["metadata"]["name"] for i in erin]
    assert {i["spec"]["user"] for i in erin} == {"erin"}
    bob = cluster.as_user("bob", "GET", "/v1/access_requests", params={"state": "PENDING", "user": "erin"})["items"]
    assert mine in [i["metadata"]["name"] for i in bob]
    assert {i["spec"]["state"] for i in bob} == {"PENDING"}
    admin = cluster.call("call", "GET", "/v1/access_requests")["items"]
    assert {"alice", "erin", "frank"} <= {i["spec"]["user"] for i in admin}


def test_a_proxy_forwards_the_users_certificate(cluster):
    """Through a proxy (its host certificate plus the user's forwarded one) the caller is the user:
    alice's request is hers, and her reissue through the proxy carries the approved roles."""
    from cryptography.hazmat.primitives import serialization

    from teleport_core.api.client import register

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with cluster.admin() as admin:
            pin = str((await admin.status())["ca_pin"])
        key = keys.generate_private_key("ed25519")
        joined = await register(cluster.addr, {"token": PROXY_TOKEN, "role": "Proxy", "nodename": "proxy-1",
                                               "public_key": keys.public_key_openssh(key)}, [pin])
        proxy = LocalIdentity(keys.private_key_pem(key), joined.answer["tls_cert"].encode(),
                              tuple(p.encode() for p in joined.answer["host_ca_pems"]), joined.answer["ssh_cert"])
        alice_der = x509.load_pem_x509_certificate(cluster.identities["alice"].tls_cert_pem).public_bytes(
            serialization.Encoding.DER)
        async with AuthClient(cluster.addr, [load_tls(proxy.client_context())]) as client:
            as_alice = client.for_user(alice_der)
            created = await as_alice.call("POST", "/v1/access_requests", {"roles": ["db-ro"], "reason": "via proxy"})
            await asyncio.to_thread(review, cluster, "bob", created["metadata"]["name"], "APPROVED")
            new_key = keys.generate_private_key("ed25519")
            certs = await as_alice.call("POST", "/v1/certs/reissue", {
                "public_key": keys.public_key_openssh(new_key), "access_requests": [created["metadata"]["name"]]})
        return created, certs

    created, certs = asyncio.run(scenario())
    assert created["spec"]["user"] == "alice"
    assert certs["username"] == "alice" and certs["roles"] == ["dev", "db-ro"]
    assert certs["active_requests"] == [created["metadata"]["name"]]


def test_access_capabilities(cluster):
    alice = cluster.as_user("alice", "GET", "/v1/access_capabilities")
    assert alice == {"requestable_roles": ["db-ro", "dba"], "suggested_reviewers": ["bob"],
                     "request_access": "optional", "request_prompt": ""}
    frank = cluster.as_user("frank", "GET", "/v1/access_capabilities")
    assert frank["requestable_roles"] == ["dba"] and frank["request_access"] == "reason"
    assert frank["request_prompt"] == "name the ticket"
    assert cluster.as_user("bob", "GET", "/v1/access_capabilities")["requestable_roles"] == []


def test_a_lapsed_request_is_removed_audited_and_announced(cluster):
    """hank's request lasts 3 s (max_duration): once lapsed, auth's sweeper removes it, audits
    access_request.update (T5001I, expired) and announces "expired"; it can no longer be reviewed."""
    request_id = create(cluster, "hank", ["dba"])["metadata"]["name"]
    wait_for(lambda: (request_id, "expired", "PENDING") in cluster.recorder.seen, "the expired announcement", 60)
    with pytest.raises(NotFound):
        cluster.as_user("hank", "GET", f"/v1/access_requests/{request_id}")
    with pytest.raises(NotFound):
        review(cluster, "bob", request_id, "APPROVED")
    updates = [e for e in cluster.events("access_request.update") if e["id"] == request_id]
    assert [(e["code"], e["expired"], e["state"]) for e in updates] == [("T5001I", True, "PENDING")]
