"""Recording uploads and session records, against a real auth server with real joined host
identities over mTLS. Only the host that owns a session's record (its ``session.start``) may end it
or upload its recording, once; identical re-uploads (a node's crash recovery) succeed. An upload
before the record exists is a transient 404; a host's permanent refusals (403, 409) are audited
(T3007W), kept under ``/upload_refusals`` and listed by ``tctl recordings ls --refused``. A recording
the storage lost is listed as ``missing``, and reading it says so."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tctl_helpers import STATIC_TOKEN, TctlCluster, tctl_cluster

from teleport_core.api.client import AuthClient, Credentials, register
from teleport_core.errors import AccessDenied, AlreadyExists, NotFound
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.state.audit import new_event
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

CLUSTER = "example.com"


class Cluster:
    def __init__(self, tctl: TctlCluster) -> None:
        self.tctl = tctl
        self.data_dir = tctl.data_dir
        self.address = tctl.addr

    def admin(self) -> AuthClient:
        return self.tctl.admin()

    def join(self, nodename: str) -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        body = {"token": STATIC_TOKEN, "role": "Node", "nodename": nodename, "public_key": keys.public_key_openssh(key)}
        answer = asyncio.run(register(self.address, body, [])).answer
        return LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"],
                             host_uuid=answer["host_uuid"])

    def as_user(self, name: str, roles: list[str]) -> AuthClient:
        key = keys.generate_private_key("ed25519")

        async def sign(admin: AuthClient) -> dict[str, Any]:
            await admin.upsert_role({"kind": "role", "version": "v5", "metadata": {"name": "session-writer"},
                                     "spec": {"allow": {"rules": [{"resources": ["session"],
                                                                   "verbs": ["create", "update"]}]}}})
            await admin.create_user(name, roles, {"logins": ["root"]})
            return await admin.sign_user_cert(name, keys.public_key_openssh(key))  # type: ignore[no-any-return]

        answer = call(self.admin(), sign)
        identity = LocalIdentity(keys.private_key_pem(key), answer["tls_cert"].encode(),
                                 tuple(p.encode() for p in answer["host_ca_pems"]), answer["ssh_cert"])
        return self.as_host(identity)

    def as_host(self, identity: LocalIdentity) -> AuthClient:
        return AuthClient(self.address, credentials=Credentials(identity.client_context(), identity, "test"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with tctl_cluster(tmp_path_factory.mktemp("uploads")) as tctl:
        yield Cluster(tctl)


def call(client: AuthClient, fn: Any) -> Any:
    async def main() -> Any:
        async with client:
            return await fn(client)

    return asyncio.run(main())


def session_event(kind: str, host: LocalIdentity, sid: str, **fields: Any) -> dict[str, Any]:
    values = {"sid": sid, "server_id": host.host_uuid, "cluster_name": CLUSTER, "user": "alice", "login": "root",
              "proto": "ssh", "session_recording": "node", **fields}
    return new_event(kind, **values).to_dict()


def emit(cluster: Cluster, host: LocalIdentity, event: dict[str, Any]) -> None:
    call(cluster.as_host(host), lambda c: c.emit_event(event))


def run_session(cluster: Cluster, host: LocalIdentity, sid: str, **end: Any) -> None:
    emit(cluster, host, session_event("session.start", host, sid))
    emit(cluster, host, session_event("session.end", host, sid, interactive=True, end_reason="exit", **end))


def denials(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    """The ``auth`` failure events naming ``reason`` (waiting for the first: auth's events reach the
    audit log through its spool)."""

    def found() -> list[dict[str, Any]]:
        page = call(cluster.admin(), lambda c: c.search_events(type="auth", limit=5000))
        return [e for e in page["events"] if reason in e.get("error", "")]

    return wait_for(found, what=f"an audited refusal: {reason}", timeout=30, interval=0.2)


def session_events(cluster: Cluster, sid: str) -> list[dict[str, Any]]:
    page = call(cluster.admin(), lambda c: c.search_events(sid=sid, limit=5000))
    return list(page["events"])


def logged_through(cluster: Cluster, sid: str, last: str) -> list[dict[str, Any]]:
    """The audit events of ``sid`` once its ``last`` event is in the log (events reach it in order)."""
    return wait_for(lambda: (lambda found: found if any(e["event"] == last for e in found) else None)(
        session_events(cluster, sid)), what=f"the {last} event of session {sid}", timeout=30, interval=0.2)


def upload(who: AuthClient, sid: str, path: Path) -> dict[str, Any]:
    return call(who, lambda c: c.upload_recording(sid, path))  # type: ignore[no-any-return]


def listing(cluster: Cluster) -> dict[str, dict[str, Any]]:
    sessions = call(cluster.admin(), lambda c: c.list_recordings(limit=1000))
    return {s["sid"]: s for s in sessions}


def stored(cluster: Cluster, sid: str, tmp: Path) -> bytes:
    dest = tmp / f"{sid}.download"
    call(cluster.admin(), lambda c: c.download_recording(sid, dest))
    return dest.read_bytes()


def cast(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    header = {"version": 2, "width": 80, "height": 24, "timestamp": int(time.time())}
    path.write_bytes(json.dumps(header).encode() + f'\n[0.1, "o", "{text}\\r\\n"]\n'.encode())
    return path


def refused(cluster: Cluster) -> list[dict[str, Any]]:
    return json.loads(cluster.tctl.ok("recordings", "ls", "--refused", "--format=json"))  # type: ignore[no-any-return]


def test_only_the_node_that_ran_the_session_uploads_it_once(cluster: Cluster, tmp_path: Path) -> None:
    alpha, beta = cluster.join("alpha"), cluster.join("beta")
    sid = str(uuid.uuid4())
    run_session(cluster, alpha, sid)
    recording = cast(tmp_path, "rec.cast", "hello")

    # another node: refused and audited, kept as a refusal, listed by tctl; nothing stored
    with pytest.raises(AccessDenied, match="was not started by host"):
        upload(cluster.as_host(beta), sid, recording)
    event = denials(cluster, f"session {sid} was not started by host {beta.host_uuid}")[-1]
    assert event["code"] == "T3007W" and event["path"] == f"/v1/sessions/{sid}/recording"
    assert event["user"] == f"{beta.host_uuid}.{CLUSTER}"
    [refusal] = [r for r in refused(cluster) if r["sid"] == sid]
    assert (refusal["host"], refusal["status"]) == (beta.host_uuid, 403)
    assert "was not started by host" in refusal["reason"]
    text = cluster.tctl.ok("recordings", "ls", "--refused")
    assert text.splitlines()[0].split() == ["Host", "Session", "Refused", "Status", "Reason"]
    assert any(line.startswith(beta.host_uuid) and sid in line and " 403 " in line for line in text.splitlines())

    # a node cannot claim the session by emitting a session.start in alpha's name
    with pytest.raises(AccessDenied, match="is not its own"):
        emit(cluster, beta, session_event("session.start", beta, sid, server_id=alpha.host_uuid))
    assert denials(cluster, f"server_id \"{alpha.host_uuid}\" is not its own")

    # neither the auth server's own identity nor a user (even one allowed to create sessions) uploads
    with pytest.raises(AccessDenied, match="was not started by host"):
        upload(cluster.admin(), sid, recording)
    with pytest.raises(AccessDenied, match="only the node that ran session"):
        upload(cluster.as_user("edna", ["session-writer"]), sid, recording)
    assert listing(cluster)[sid]["recording"] == "pending"

    # the node that ran it: stored; the same bytes again (crash recovery): accepted, unchanged
    first = upload(cluster.as_host(alpha), sid, recording)
    assert first["unchanged"] is False and first["size"] == recording.stat().st_size
    again = upload(cluster.as_host(alpha), sid, recording)
    assert again["unchanged"] is True
    entry = listing(cluster)[sid]
    assert (entry["recording"], entry["recorded"], entry["size"]) == ("uploaded", True, recording.stat().st_size)
    assert (entry["server_id"], entry["user"], entry["end_reason"]) == (alpha.host_uuid, "alice", "exit")

    # different content: never replaces the stored recording; refused for good, audited and kept
    other = cast(tmp_path, "other.cast", "forged")
    with pytest.raises(AlreadyExists, match="already stored"):
        upload(cluster.as_host(alpha), sid, other)
    assert denials(cluster, f"a different recording of session {sid} is already stored")
    assert any(r["sid"] == sid and r["host"] == alpha.host_uuid and r["status"] == 409 for r in refused(cluster))
    assert stored(cluster, sid, tmp_path) == recording.read_bytes()


def test_a_host_reusing_another_hosts_sid_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    victim, attacker = cluster.join("victim-node"), cluster.join("attacker-node")
    sid = str(uuid.uuid4())
    emit(cluster, victim, session_event("session.start", victim, sid))
    # the attacker starts "its own" session under the victim's session ID: refused, audited
    with pytest.raises(AccessDenied, match=f"session {sid} belongs to host {victim.host_uuid}"):
        emit(cluster, attacker, session_event("session.start", attacker, sid, user="mallory"))
    event = denials(cluster, f"session {sid} belongs to host {victim.host_uuid}")[-1]
    assert event["code"] == "T3007W" and event["user"] == f"{attacker.host_uuid}.{CLUSTER}"
    # nor may it end the victim's session (and so hide or rename it)
    with pytest.raises(AccessDenied, match="may not end it"):
        emit(cluster, attacker, session_event("session.end", attacker, sid, user="mallory"))
    assert denials(cluster, f"host {attacker.host_uuid} may not end it")
    assert sid not in listing(cluster)  # still running: the attacker's end did not complete it

    # the victim still works: ends its session and uploads; the attacker cannot upload it
    emit(cluster, victim, session_event("session.end", victim, sid, interactive=True, end_reason="exit"))
    logged = logged_through(cluster, sid, "session.end")
    assert all(e["server_id"] == victim.host_uuid for e in logged), logged  # nothing of the attacker's logged
    recording = cast(tmp_path, "victim.cast", "victim typed this")
    with pytest.raises(AccessDenied, match="was not started by host"):
        upload(cluster.as_host(attacker), sid, recording)
    assert any(r["sid"] == sid and r["host"] == attacker.host_uuid for r in refused(cluster))
    assert upload(cluster.as_host(victim), sid, recording)["unchanged"] is False
    entry = listing(cluster)[sid]
    assert (entry["server_id"], entry["server_hostname"], entry["user"]) == (victim.host_uuid, "victim-node", "alice")
    assert entry["recording"] == "uploaded"
    assert stored(cluster, sid, tmp_path) == recording.read_bytes()


def test_a_session_event_with_a_malformed_sid_is_refused(cluster: Cluster) -> None:
    node = cluster.join("malformed")
    with pytest.raises(AccessDenied, match="invalid session ID"):
        emit(cluster, node, session_event("session.start", node, "../../etc"))
    event = denials(cluster, f"access denied to host \"{node.host_uuid}.{CLUSTER}\": event \"session.start\"")[-1]
    assert event["code"] == "T3007W"
    sid = str(uuid.uuid4())
    run_session(cluster, node, sid)  # the node still works
    assert listing(cluster)[sid]["server_id"] == node.host_uuid


def test_a_second_end_of_an_ended_session_is_not_logged(cluster: Cluster) -> None:
    node = cluster.join("twice")
    sid = str(uuid.uuid4())
    run_session(cluster, node, sid)
    # after a crash the node emits a node_restart end although its normal end got through
    emit(cluster, node, session_event("session.end", node, sid, end_reason="node_restart"))
    emit(cluster, node, session_event("session.data", node, sid, tx=1, rx=1))  # logged after it, if it were
    ends = [e for e in logged_through(cluster, sid, "session.data") if e["event"] == "session.end"]
    assert [e["end_reason"] for e in ends] == ["exit"]
    assert listing(cluster)[sid]["end_reason"] == "exit"


def test_an_upload_before_the_session_start_is_a_transient_404(cluster: Cluster, tmp_path: Path) -> None:
    gamma = cluster.join("gamma")
    sid = str(uuid.uuid4())
    recording = cast(tmp_path, "early.cast", "early")
    with pytest.raises(NotFound, match=f"no record of session {sid} has reached auth yet"):
        upload(cluster.as_host(gamma), sid, recording)
    assert not any(r["sid"] == sid for r in refused(cluster))  # transient: not kept as a refusal
    run_session(cluster, gamma, sid)  # the node's spool delivers its session.start, then the end
    assert upload(cluster.as_host(gamma), sid, recording)["unchanged"] is False
    assert listing(cluster)[sid]["recording"] == "uploaded"


def test_a_recording_lost_by_the_storage_is_listed_missing(cluster: Cluster, tmp_path: Path) -> None:
    node = cluster.join("lossy")
    sid = str(uuid.uuid4())
    run_session(cluster, node, sid)
    recording = cast(tmp_path, "lost.cast", "soon lost")
    upload(cluster.as_host(node), sid, recording)
    [kept] = list(cluster.data_dir.rglob(f"{sid}.cast"))
    kept.unlink()  # the storage loses it

    entry = listing(cluster)[sid]
    assert (entry["recording"], entry["recorded"]) == ("missing", False)
    [row] = [line for line in cluster.tctl.ok("recordings", "ls").splitlines() if line.startswith(sid)]
    assert row.split()[-1] == "missing"
    with pytest.raises(NotFound, match=f"the recording of session {sid} is missing from the session storage"):
        stored(cluster, sid, tmp_path)
    # the node re-uploads the same bytes (e.g. from a backup): restored, listed as uploaded again
    assert upload(cluster.as_host(node), sid, recording)["unchanged"] is False
    assert listing(cluster)[sid]["recording"] == "uploaded"
    assert stored(cluster, sid, tmp_path) == recording.read_bytes()


def test_tctl_recordings_ls_lists_like_the_api(cluster: Cluster) -> None:
    node = cluster.join("listed")
    sid = str(uuid.uuid4())
    run_session(cluster, node, sid)
    as_json = {s["sid"]: s for s in json.loads(cluster.tctl.ok("recordings", "ls", "--format=json", "--last=1h"))}
    assert as_json[sid] == listing(cluster)[sid]
    assert as_json[sid]["recording"] == "pending"
    text = cluster.tctl.ok("recordings", "ls")
    assert text.splitlines()[0].split()[-1] == "Recording"
    assert json.loads(cluster.tctl.ok("recordings", "ls", "--format=json", "--to-utc=2001-01-02T00:00:00Z")) == []
    assert "--limit" in cluster.tctl.error("recordings", "ls", "--limit=0")
