"""Access requests end to end (issue 18): auth and proxy in one teleport process, a node labelled
``env=prod`` in its own ``teleport start`` process, ``tsh`` as the users and ``tctl`` as the admin
(subprocesses).

- alice (role ``dev``: ``env=test`` nodes, may request ``dba`` for at most 60 s) asks for ``dba``;
  the request is pending and she cannot reach the ``env=prod`` node; bob (may review ``dba``)
  approves with a reason; ``tsh login --request-id`` gives alice certificates carrying ``dba`` and
  the request's ID, which reach the node; once the access expires she is refused (tsh, and
  OpenSSH straight to the node with the same certificate) without logging in;
- a denied request (decided while ``tsh request create`` waits) grants nothing and cannot be
  assumed; alice cannot review her own request, bob cannot undo a denial;
- a threshold of two approvals: one reviewer's approval leaves the request pending, a second
  reviewer's approves it, and the waiting ``tsh request create`` assumes the roles;
- ``tctl request approve`` (the admin), ``tsh request drop`` (back to the base roles), and
  ``tctl rm access_request/ID``: an approved request deleted stops granting at once, even with
  the certificates in hand;
- every step audited with its code (T5000I, T5001I, T5002I, T5003I), every refusal as ``auth`` T3007W;
- ``tsh login --request-roles`` logs in, waits and assumes; ``--request-nowait`` with a valid profile
  asks no password;
- attackers: another user's approved request cannot be assumed (nor seen), a role the user's
  roles do not let them request is refused, a body naming another user is ignored; the proxy
  routes answer bad bodies, queries and paths with a 400 naming the field;
- a role with ``request_access: reason`` makes ``tsh login`` request the requestable roles and ask
  why (its ``request_prompt``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from proxy_helpers import CLUSTER, LOGIN, NodeEnv, background_tsh, cluster_with_node

from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a long enough password 123"
NODENAME = "prod-node"
NODE_TOKEN = "prod-node-token-0123456789abcdef"
TELEPORT = str(Path(sys.executable).with_name("teleport"))
#: alice's elevated access lasts this long: long enough for the steps between the request and the
#: elevated session, short enough to wait for its end in the test
ACCESS = "60s"
REQUEST_ID = re.compile(r"^Request ID:\s+([0-9a-f-]{36})$", re.MULTILINE)
LOGINS = "{{internal.logins}}"


RequestEnv = NodeEnv


def _role(name: str, allow: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": {"allow": allow}}


ROLES = [
    _role("dev", {"logins": [LOGINS], "node_labels": {"env": "test"},
                  "request": {"roles": ["dba"], "max_duration": ACCESS}}),
    _role("dev-strict", {"logins": [LOGINS], "node_labels": {"env": "test"},
                         "request": {"roles": ["dba"], "thresholds": [{"approve": 2, "deny": 1}]}}),
    _role("dev-long", {"logins": [LOGINS], "node_labels": {"env": "test"}, "request": {"roles": ["dba"]}}),
    _role("dba", {"logins": [LOGINS], "node_labels": {"env": "prod"}}),
    _role("dba-reviewer", {"review_requests": {"roles": ["dba"]}}),
]
USERS = {"alice": ["dev"], "dave": ["dev-strict"], "frank": ["dev-long"], "bob": ["dba-reviewer"],
         "erin": ["dba-reviewer"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RequestEnv]:
    with cluster_with_node(tmp_path_factory.mktemp("requests"), RequestEnv, NODENAME, NODE_TOKEN,
                           {"env": "prod"}) as e:
        for role in ROLES:
            e.call("upsert_role", role)
        for user, roles in USERS.items():
            e.signup(user, roles, [LOGIN], PASSWORD)
        yield e


# -- helpers -------------------------------------------------------------------------------------------------


def login(env: RequestEnv, home: Path, user: str) -> Path:
    result = env.tsh(home, "login", f"--proxy={env.web}", f"--user={user}", "--insecure", stdin=f"{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    return home


def ok(env: RequestEnv, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = env.tsh(home, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def refused(env: RequestEnv, home: Path, *args: str) -> str:
    """``tsh args`` fails with one ``ERROR:`` line; that line."""
    result = env.tsh(home, *args)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    return result.stderr.strip().splitlines()[-1]


def tctl(env: RequestEnv, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(env.auth_yaml), *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def prod_echo(env: RequestEnv, home: Path, word: str) -> subprocess.CompletedProcess[str]:
    return env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo", word)


def reaches_prod(env: RequestEnv, home: Path, word: str) -> bool:
    result = prod_echo(env, home, word)
    if result.returncode == 0:
        assert result.stdout == f"{word}\n"
        return True
    assert word not in result.stdout
    return False


def openssh(env: RequestEnv, home: Path, tmp_path: Path, word: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH ``ssh`` straight to the node with the tsh profile's key and certificate."""
    folder = home / "profiles" / "127.0.0.1"
    known = tmp_path / "known_hosts"
    known.write_text(env.call("get_cert_authority", "host")["known_hosts"])
    argv = ["ssh", "-F", "/dev/null", "-p", str(env.node_port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={NODENAME}.{CLUSTER}",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(folder / "id"),
            "-o", f"CertificateFile={folder / 'id-cert.pub'}", f"{LOGIN}@127.0.0.1", "echo", word]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def status(env: RequestEnv, home: Path) -> dict[str, Any]:
    return json.loads(ok(env, home, "status", "--format=json").stdout)["active"]


def cert_requests(home: Path) -> list[str]:
    """The ``teleport-active-requests`` extension of the profile's SSH certificate."""
    from cryptography.hazmat.primitives.serialization import ssh

    from teleport_core.policy.requests import parse_active_requests

    cert = ssh.load_ssh_public_identity((home / "profiles" / "127.0.0.1" / "id-cert.pub").read_bytes())
    assert isinstance(cert, ssh.SSHCertificate)
    ext = {k.decode(): v for k, v in cert.extensions.items()}
    return list(parse_active_requests(ext.get("teleport-active-requests")))


def request_doc(env: RequestEnv, request_id: str) -> dict[str, Any]:
    return dict(yaml.safe_load(tctl(env, "requests", "get", request_id, "--format=yaml").stdout)[0])


def pending_of(env: RequestEnv, user: str, seen: set[str]) -> str:
    """The ID of ``user``'s new pending request (one not in ``seen``), once auth has it. Polled
    through the admin API (what ``tctl requests ls`` reads): a tctl process per poll, every 50 ms
    while tsh starts and logs in, cost more CPU than the rest of the wait."""

    def find() -> str:
        docs = (env.call("call", "GET", "/v1/access_requests") or {}).get("items") or []
        found = [d["metadata"]["name"] for d in docs if d["spec"]["user"] == user
                 and d["spec"]["state"] == "PENDING" and d["metadata"]["name"] not in seen]
        return found[0] if found else ""

    return str(wait_for(find, f"{user}'s pending request", timeout=60))


def events(env: RequestEnv, kind: str, **match: Any) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            return list((await admin.search_events(type=kind, limit=5000))["events"])

    return [e for e in asyncio.run(body()) if all(e.get(k) == v for k, v in match.items())]


def denied(env: RequestEnv, user: str, text: str) -> list[dict[str, Any]]:
    return [e for e in events(env, "auth", user=user) if text in str(e.get("error", ""))]


# -- the tests -----------------------------------------------------------------------------------------------------


def test_approved_request_elevates_until_the_access_expires(env, tmp_path):
    alice = login(env, tmp_path / "alice", "alice")
    bob = login(env, tmp_path / "bob", "bob")
    assert not reaches_prod(env, alice, "before")

    created = ok(env, alice, "request", "create", "--roles=dba", "--reason=fix the orders table", "--nowait")
    request_id = REQUEST_ID.search(created.stdout).group(1)  # type: ignore[union-attr]
    assert "Status:         PENDING" in created.stdout
    assert "tsh login --request-id=<request-id>" in created.stdout
    mine = json.loads(ok(env, alice, "request", "ls", "--format=json").stdout)
    assert [(d["metadata"]["name"], d["spec"]["state"], d["spec"]["roles"]) for d in mine] == [
        (request_id, "PENDING", ["dba"])]
    assert not reaches_prod(env, alice, "pending")  # a pending request grants nothing

    listed = ok(env, bob, "request", "ls", "--reviewable").stdout
    assert request_id in listed and "alice" in listed and "PENDING" in listed
    review = ok(env, bob, "request", "review", "--approve", request_id, "--reason=ticket OPS-42")
    assert review.stderr == "Successfully submitted review.  Request state: APPROVED\n"

    assumed = ok(env, alice, "login", f"--request-id={request_id}")  # no password: the profile is valid
    assert f"Active requests:    {request_id}" in assumed.stdout
    now = status(env, alice)
    assert "dba" in now["roles"] and "dev" in now["roles"] and now["active_requests"] == [request_id]
    assert cert_requests(alice) == [request_id]
    doc = request_doc(env, request_id)
    assert doc["spec"]["state"] == "APPROVED" and doc["spec"]["resolve_reason"] == "ticket OPS-42"
    access_ends = dt.datetime.fromisoformat(doc["spec"]["expires"].replace("Z", "+00:00"))
    # the certificates expire with the access
    assert dt.datetime.fromisoformat(now["valid_until"].replace("Z", "+00:00")) <= access_ends
    assert reaches_prod(env, alice, "elevated")
    shown = ok(env, alice, "request", "show", request_id).stdout
    assert "Status:         APPROVED" in shown and "  Reviewer: bob" in shown and '"ticket OPS-42"' in shown

    # past the access expiry: refused, without logging in again (tsh, and OpenSSH at the node itself)
    wait_for(lambda: dt.datetime.now(dt.UTC) > access_ends + dt.timedelta(seconds=1), "the access expiry",
             timeout=120)
    assert not reaches_prod(env, alice, "expired")
    direct = openssh(env, alice, tmp_path, "expired")
    assert direct.returncode == 255 and "expired" not in direct.stdout, direct.stderr

    # audited: created (T5000I), reviewed by bob (T5002I), approved (T5001I)
    made = events(env, "access_request.create", id=request_id)
    assert [(e["code"], e["user"], e["roles"]) for e in made] == [("T5000I", "alice", ["dba"])]
    reviews = events(env, "access_request.review", id=request_id)
    assert [(e["code"], e["reviewer"], e["proposed_state"]) for e in reviews] == [("T5002I", "bob", "APPROVED")]
    updates = events(env, "access_request.update", id=request_id)
    assert ("T5001I", "APPROVED") in [(e["code"], e["state"]) for e in updates]
    # the elevated session's events carry the request
    sessions = [e for e in events(env, "session.start") if e.get("user") == "alice"]
    assert any(request_id in (e.get("access_requests") or ()) for e in sessions), sessions


def test_denied_request_grants_nothing_and_nobody_reviews_their_own(env, tmp_path):
    alice = login(env, tmp_path / "alice", "alice")
    bob = login(env, tmp_path / "bob", "bob")
    seen = {d["metadata"]["name"] for d in yaml.safe_load(tctl(env, "requests", "ls", "--format=yaml").stdout) or []}
    with background_tsh(alice, "request", "create", "--roles=dba", "--reason=again") as waiting:
        request_id = pending_of(env, "alice", seen)
        own = refused(env, alice, "request", "review", "--approve", request_id, "--reason=trust me")
        assert own.startswith("ERROR: ") and "own request" in own, own
        wait_for(lambda: denied(env, "alice", f"review of access request {request_id}"),
                 "alice's audited self-review", timeout=30)
        assert request_doc(env, request_id)["spec"]["state"] == "PENDING"
        review = ok(env, bob, "request", "review", "--deny", request_id, "--reason=not during the freeze")
        assert review.stderr == "Successfully submitted review.  Request state: DENIED\n"
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1, (out, err)
    assert "Waiting for request approval..." in err
    assert f'ERROR: request {request_id} has been set to DENIED, reason="not during the freeze"' in err

    assumed = refused(env, alice, "login", f"--request-id={request_id}")
    assert f"access request {request_id} is DENIED, not APPROVED" in assumed
    assert "dba" not in status(env, alice)["roles"]
    assert not reaches_prod(env, alice, "denied")
    undo = refused(env, bob, "request", "review", "--approve", request_id, "--reason=changed my mind")
    assert "DENIED" in undo, undo  # a denied request never changes state again
    assert request_doc(env, request_id)["spec"]["state"] == "DENIED"
    wait_for(lambda: denied(env, "alice", f"certificate reissue refused: access request {request_id} is DENIED"),
             "the audited refused reissue", timeout=30)
    updates = events(env, "access_request.update", id=request_id)
    assert [(e["code"], e["state"]) for e in updates] == [("T5001I", "DENIED")]


def test_a_threshold_of_two_approvals_needs_two_reviewers(env, tmp_path):
    dave = login(env, tmp_path / "dave", "dave")
    bob = login(env, tmp_path / "bob", "bob")
    erin = login(env, tmp_path / "erin", "erin")
    seen = {d["metadata"]["name"] for d in yaml.safe_load(tctl(env, "requests", "ls", "--format=yaml").stdout) or []}
    with background_tsh(dave, "request", "create", "--roles=dba", "--reason=migration",
                             "--reviewers=bob,erin") as waiting:
        request_id = pending_of(env, "dave", seen)
        first = ok(env, bob, "request", "review", "--approve", request_id, "--reason=ok by me")
        assert first.stderr == "Successfully submitted review.  Request state: PENDING\n"
        doc = request_doc(env, request_id)
        assert doc["spec"]["state"] == "PENDING" and doc["spec"]["suggested_reviewers"] == ["bob", "erin"]
        again = refused(env, bob, "request", "review", "--approve", request_id)  # one review per reviewer
        assert "already reviewed" in again, again
        second = ok(env, erin, "request", "review", "--approve", request_id, "--reason=second")
        assert second.stderr == "Successfully submitted review.  Request state: APPROVED\n"
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, (out, err)
    assert 'Approval received, reason="second"' in err
    assert f"Active requests:    {request_id}" in out and "dba" in out
    assert reaches_prod(env, dave, "two-approvals")
    reviews = events(env, "access_request.review", id=request_id)
    assert sorted(e["reviewer"] for e in reviews) == ["bob", "erin"]
    assert {e["code"] for e in reviews} == {"T5002I"}


def test_admin_approval_drop_and_deletion_stop_the_elevation(env, tmp_path):
    frank = login(env, tmp_path / "frank", "frank")
    created = ok(env, frank, "request", "create", "--roles=dba", "--reason=on call", "--nowait")
    request_id = REQUEST_ID.search(created.stdout).group(1)  # type: ignore[union-attr]
    listed = tctl(env, "requests", "ls").stdout
    row = next(line for line in listed.splitlines() if line.startswith(request_id))
    assert "frank" in row and "roles=dba" in row and "PENDING" in row and '"on call"' in row
    tctl(env, "request", "approve", request_id, "--reason=paged")  # Teleport's alias spelling
    got = tctl(env, "requests", "get", request_id).stdout
    assert "Status:               APPROVED" in got and 'Resolve Reason:       "paged"' in got

    ok(env, frank, "login", f"--request-id={request_id}")
    assert reaches_prod(env, frank, "paged")
    dropped = ok(env, frank, "request", "drop")
    assert "Dropping all active access requests..." in dropped.stdout and "Active requests" not in dropped.stdout
    assert status(env, frank)["roles"] == ["dev-long"] and cert_requests(frank) == []
    assert not reaches_prod(env, frank, "dropped")
    ok(env, frank, "login", f"--request-id={request_id}")  # still approved: assumed again
    assert reaches_prod(env, frank, "again")

    removed = tctl(env, "rm", f"access_request/{request_id}")
    assert removed.stdout == f'access_request "{request_id}" has been deleted\n'
    # the certificates are still valid, but the request is gone: refused at once
    wait_for(lambda: not reaches_prod(env, frank, "deleted"), "the deleted request to stop granting", timeout=30)
    assert status(env, frank)["active_requests"] == [request_id]
    assert [e["code"] for e in events(env, "access_request.update", id=request_id)] == ["T5001I"]
    assert [e["code"] for e in events(env, "access_request.delete", id=request_id)] == ["T5003I"]
    # certificates carrying a deleted request get nothing more, not even a drop: a new login starts over
    stuck = refused(env, frank, "request", "drop")
    assert "log in again with tsh login" in stuck, stuck
    fresh = login(env, frank, "frank")
    assert status(env, fresh)["roles"] == ["dev-long"] and status(env, fresh)["active_requests"] == []


# -- attackers and bad input ---------------------------------------------------------------------------------------


def web_as(home: Path) -> Any:
    """An httpx client of the proxy's web API presenting the tsh profile's certificate."""
    import httpx

    from teleport_core.tsh.profile import Profile
    from teleport_core.tsh.web import tls_context

    profile = Profile.load(home)
    return httpx.Client(base_url=f"https://{profile.web_addr}", verify=tls_context(True, profile), timeout=30)


def test_nobody_assumes_or_creates_requests_for_someone_else(env, tmp_path):
    dave = login(env, tmp_path / "dave", "dave")
    alice = login(env, tmp_path / "alice", "alice")
    created = ok(env, dave, "request", "create", "--roles=dba", "--reason=mine", "--nowait")
    daves = REQUEST_ID.search(created.stdout).group(1)  # type: ignore[union-attr]
    tctl(env, "request", "approve", daves, "--reason=for dave only")

    # alice presents dave's approved request: not hers, refused and audited
    stolen = refused(env, alice, "login", f"--request-id={daves}")
    assert f'no access request "{daves}" of user "alice"' in stolen, stolen
    wait_for(lambda: denied(env, "alice", f'certificate reissue refused: no access request "{daves}"'),
             "the audited refusal", timeout=30)
    assert "dba" not in status(env, alice)["roles"] and not reaches_prod(env, alice, "stolen")
    # she cannot see it either (404, as for an ID that does not exist)
    assert "not found" in refused(env, alice, "request", "show", daves).lower()
    # a role her roles do not let her request
    assert "dba-reviewer" in refused(env, alice, "request", "create", "--roles=dba-reviewer", "--nowait")
    # the user of a request is the certificate's, never the body's
    with web_as(alice) as web:
        made = web.post(f"/v1/webapi/sites/{CLUSTER}/accessrequest", json={"roles": ["dba"], "user": "dave"})
        assert made.status_code == 200, made.text
        assert made.json()["spec"]["user"] == "alice"
        # and the reissue is for the caller: alice's certificate with dave's request is refused at the API too
        from teleport_core.pki import keys
        from teleport_core.tsh.profile import Profile

        public = keys.public_key_openssh(keys.load_private_key(Profile.load(alice).identity.key_pem))
        again = web.post(f"/v1/webapi/sites/{CLUSTER}/certs/reissue",
                         json={"public_key": public, "access_requests": [daves]})
        assert again.status_code == 403, again.text


def test_web_api_refuses_bad_bodies_with_a_400_naming_the_field(env, tmp_path):
    alice = login(env, tmp_path / "alice", "alice")
    site = f"/v1/webapi/sites/{CLUSTER}"
    some_id = "bc8ca931-fec9-4b15-9a6f-20c13c5641a9"
    cases = [
        ("POST", f"{site}/accessrequest", {}, "roles: required"),
        ("POST", f"{site}/accessrequest", {"roles": []}, "roles: at least 1 items"),
        ("POST", f"{site}/accessrequest", {"roles": "dba"}, "roles: expected a list"),
        ("POST", f"{site}/accessrequest", {"roles": ["d\x1bba"]}, "roles[0]: control characters are not allowed"),
        ("POST", f"{site}/accessrequest", {"roles": ["dba"], "reason": "r" * 4097},
         "reason: at most 4096 characters"),
        ("POST", f"{site}/accessrequest", {"roles": ["dba"], "suggested_reviewers": [1]},
         "suggested_reviewers[0]: expected a string"),
        ("POST", f"{site}/accessrequest", {"roles": ["dba"], "dry_run": "yes"}, "dry_run: expected true or false"),
        ("GET", f"{site}/accessrequest?state=MAYBE", None, "state: expected '', 'PENDING', 'APPROVED' or 'DENIED'"),
        ("GET", f"{site}/accessrequest/not-an-id", None, "request_id: at least 36 characters"),
        ("GET", f"{site}/accessrequest/{some_id.upper()}", None, "request_id: must match"),
        ("POST", f"{site}/accessrequest/{some_id}/review", {"proposed_state": "MAYBE"},
         "proposed_state: expected 'APPROVED' or 'DENIED'"),
        ("POST", f"{site}/accessrequest/{some_id}/review", {"reason": "x"}, "proposed_state: required"),
        ("POST", f"{site}/certs/reissue", {"access_requests": []}, "public_key: required"),
        ("POST", f"{site}/certs/reissue", {"public_key": "k", "access_requests": ["x"]}, "access_requests[0]: "),
        ("POST", f"{site}/certs/reissue", {"public_key": "k", "access_requests": "x"},
         "access_requests: expected a list"),
        ("POST", f"{site}/certs/reissue", {"public_key": "k", "drop_access_requests": 1},
         "drop_access_requests: expected true or false"),
    ]
    with web_as(alice) as web:
        for method, path, payload, message in cases:
            answer = web.request(method, path, json=payload)
            assert answer.status_code == 400, (path, payload, answer.text)
            assert answer.json()["error"].startswith(message), (path, payload, answer.text)
        wrong = web.get("/v1/webapi/sites/elsewhere/accessrequest")
        assert wrong.status_code == 404, wrong.text
    with env.web_client() as anonymous:  # no client certificate: 401 before the body is read
        answer = anonymous.post(f"{site}/accessrequest", json={"roles": ["dba"]})
        assert answer.status_code == 401, answer.text


def test_login_with_request_roles_waits_then_assumes(env, tmp_path):
    home = tmp_path / "frank-login"
    seen = {d["metadata"]["name"] for d in yaml.safe_load(tctl(env, "requests", "ls", "--format=yaml").stdout) or []}
    environ = {**os.environ, "TELEPORT_HOME": str(home)}
    environ.pop("SSH_AUTH_SOCK", None)
    waiting = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "login", f"--proxy={env.web}",
                                "--user=frank", "--insecure", "--request-roles=dba", "--request-reason=deploy"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environ)
    try:
        assert waiting.stdin is not None
        waiting.stdin.write(f"{PASSWORD}\n")
        waiting.stdin.flush()
        request_id = pending_of(env, "frank", seen)
        tctl(env, "requests", "approve", request_id, "--reason=go")
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 0, (out, err)
    assert 'Approval received, reason="go"' in err and f"Active requests:    {request_id}" in out
    assert reaches_prod(env, home, "logged-in-elevated")

    # logged in already: --request-nowait creates the request without a password and returns
    later = ok(env, home, "login", "--request-roles=dba", "--request-nowait")
    other = REQUEST_ID.search(later.stdout).group(1)  # type: ignore[union-attr]
    assert other != request_id and request_doc(env, other)["spec"]["state"] == "PENDING"
    assert status(env, home)["active_requests"] == [request_id]
    tctl(env, "requests", "deny", other, "--reason=one is enough")
    assert request_doc(env, other)["spec"]["state"] == "DENIED"


def test_request_access_reason_makes_login_request_the_roles_and_ask_why(env, tmp_path):
    env.call("upsert_role", {"kind": "role", "version": "v7", "metadata": {"name": "dev-ask"},
                             "spec": {"options": {"request_access": "reason", "request_prompt": "Ticket number?"},
                                      "allow": {"logins": [LOGINS], "node_labels": {"env": "test"},
                                                "request": {"roles": ["dba"]}}}})
    env.signup("gail", ["dev-ask"], [LOGIN], PASSWORD)
    home = tmp_path / "gail"
    seen = {d["metadata"]["name"] for d in yaml.safe_load(tctl(env, "requests", "ls", "--format=yaml").stdout) or []}
    environ = {**os.environ, "TELEPORT_HOME": str(home)}
    environ.pop("SSH_AUTH_SOCK", None)
    waiting = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "login", f"--proxy={env.web}",
                                "--user=gail", "--insecure"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environ)
    try:
        assert waiting.stdin is not None
        waiting.stdin.write(f"{PASSWORD}\nOPS-7\n")  # the password, then the reason the prompt asks for
        waiting.stdin.flush()
        request_id = pending_of(env, "gail", seen)
        doc = request_doc(env, request_id)
        assert doc["spec"]["roles"] == ["dba"] and doc["spec"]["request_reason"] == "OPS-7"
        tctl(env, "requests", "approve", request_id)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert waiting.returncode == 0, (out, err)
    assert "Your roles require an access request at login (request_access: reason): requesting dba" in err
    assert "Ticket number?: " in err and f"Active requests:    {request_id}" in out
    assert reaches_prod(env, home, "asked")
