"""Access requests at a real node (``teleport start``) with the real OpenSSH client: alice's base
certificate is refused; once bob approves her request, the reissued certificate logs in (its session
events carry the request ID); deleting the request ends her live session and refuses the certificate
at once (a lock on the request), and an expired request's session is ended at the expiry."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Auth, Node, run, ssh_argv

from teleport_core.api.client import AuthClient, load_tls
from teleport_core.files import write_private, write_public
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity

pytestmark = pytest.mark.e2e


def roles(login: str) -> list[dict[str, Any]]:
    def role(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec}

    return [
        role("ar-dev", {"allow": {"request": {"roles": ["ar-dba"]}}}),
        role("ar-dev-short", {"allow": {"request": {"roles": ["ar-dba"], "max_duration": "15s"}}}),
        role("ar-dba", {"allow": {"logins": [login], "node_labels": {"*": "*"}}}),
        role("ar-reviewer", {"allow": {"review_requests": {"roles": ["ar-dba"]}}}),
    ]


def api_identity(auth: Auth, name: str) -> LocalIdentity:
    key = keys.generate_private_key("ed25519")
    certs = auth.run(lambda admin: admin.sign_user_cert(name, keys.public_key_openssh(key), "1h"))
    return LocalIdentity(keys.private_key_pem(key), certs["tls_cert"].encode(),
                         tuple(p.encode() for p in certs["host_ca_pems"]), certs["ssh_cert"])


def call(auth: Auth, identity: LocalIdentity, method: str, path: str, body: Any = None) -> Any:
    async def main() -> Any:
        async with AuthClient(auth.addr, [load_tls(identity.client_context())]) as client:
            return await client.call(method, path, body)

    return asyncio.run(main())


def approved_certificate(auth: Auth, tmp: Path, user: str, reviewer: str) -> tuple[str, Path]:
    """``user`` requests ar-dba, ``reviewer`` approves, ``user`` reissues: (request ID, key path)."""
    mine, theirs = api_identity(auth, user), api_identity(auth, reviewer)
    request_id = call(auth, mine, "POST", "/v1/access_requests", {"roles": ["ar-dba"], "reason": "incident"})[
        "metadata"]["name"]
    call(auth, theirs, "POST", f"/v1/access_requests/{request_id}/reviews", {"proposed_state": "APPROVED"})
    key = keys.generate_private_key("ed25519")
    certs = call(auth, mine, "POST", "/v1/certs/reissue",
                 {"public_key": keys.public_key_openssh(key), "access_requests": [request_id]})
    assert "ar-dba" in certs["roles"] and certs["active_requests"] == [request_id]
    path = tmp / f"{user}-elevated"
    write_private(path, keys.private_key_openssh(key))
    write_public(tmp / f"{user}-elevated-cert.pub", certs["ssh_cert"] + "\n")
    return request_id, path


def live_session(tmp: Path, node: Node, key: Path, login: str) -> subprocess.Popen[str]:
    """A session that prints a line, then waits (until the node ends it)."""
    proc = subprocess.Popen(ssh_argv(tmp, node.port, key, login, "echo started; exec sleep 600"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    return proc


def ended(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode != 0
    return stderr


def wait_events(auth: Auth, predicate: Any, what: str, **query: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found = [e for e in auth.events(**query) if predicate(e)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no event: {what}"
        time.sleep(0.2)


def test_an_elevated_certificate_works_until_its_request_is_deleted(auth: Auth, node: Node, tmp_path: Path,
                                                                    os_user: str) -> None:
    for role in roles(os_user):
        auth.run(lambda admin, role=role: admin.upsert_role(role))
    base = auth.user(tmp_path, "ar-alice", ["ar-dev"], [os_user])
    auth.user(tmp_path, "ar-bob", ["ar-reviewer"], [])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    refused = run(ssh_argv(tmp_path, node.port, base, os_user, "echo should-not-run"))
    assert refused.returncode == 255 and "should-not-run" not in refused.stdout  # base roles: no login

    request_id, elevated = approved_certificate(auth, tmp_path, "ar-alice", "ar-bob")
    ok = run(ssh_argv(tmp_path, node.port, elevated, os_user, "echo elevated"))
    assert ok.returncode == 0 and ok.stdout.strip() == "elevated", ok.stderr
    starts = wait_events(auth, lambda e: e.get("user") == "ar-alice", "session.start of ar-alice",
                         type="session.start")
    assert starts[-1]["access_requests"] == [request_id]

    session = live_session(tmp_path, node, elevated, os_user)
    auth.run(lambda admin: admin.call("DELETE", f"/v1/access_requests/{request_id}"))
    assert f'lock targeting AccessRequest:"{request_id}" is in force' in ended(session)
    again = run(ssh_argv(tmp_path, node.port, elevated, os_user, "echo should-not-run"))
    assert again.returncode == 255 and "should-not-run" not in again.stdout
    wait_events(auth, lambda e: request_id in e.get("error", "") and e.get("user") == "ar-alice",
                "the refusal of the locked certificate", type="auth")


def test_an_expired_request_ends_the_session_and_refuses_the_certificate(auth: Auth, node: Node, tmp_path: Path,
                                                                         os_user: str) -> None:
    for role in roles(os_user):
        auth.run(lambda admin, role=role: admin.upsert_role(role))
    auth.user(tmp_path, "ar-frank", ["ar-dev-short"], [os_user])
    auth.user(tmp_path, "ar-bob", ["ar-reviewer"], [])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    request_id, elevated = approved_certificate(auth, tmp_path, "ar-frank", "ar-bob")
    session = live_session(tmp_path, node, elevated, os_user)
    assert f"access request {request_id} has expired" in ended(session, timeout=90)  # ended at the access expiry
    again = run(ssh_argv(tmp_path, node.port, elevated, os_user, "echo should-not-run"))
    assert again.returncode == 255 and "should-not-run" not in again.stdout
