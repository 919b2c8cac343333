"""Recording uploads are authorized: only the host whose ``session.start`` names the session may
upload its recording, once; identical re-uploads (a node's crash recovery) succeed, anything
else is refused (403 or 409) and audited. Real auth server, real joined host identities over mTLS."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from teleport_core import keys
from teleport_core.audit import new_event
from teleport_core.client import AuthClient, Credentials, load_identity_dir, register
from teleport_core.errors import AccessDenied, AlreadyExists
from teleport_core.identity import LocalIdentity
from teleport_core.testing.cluster import ClusterHandle, start_cluster

pytestmark = pytest.mark.timeout(180)

CLUSTER = "uploads.test"
TOKEN = "static-upload-token-0123456789abcd"


class Cluster:
    def __init__(self, handle: ClusterHandle, data_dir: Path) -> None:
        self.handle = handle
        self.data_dir = data_dir
        self.address: str = handle.process.services["auth_service"].address

    def admin(self) -> AuthClient:
        return AuthClient(self.address, [load_identity_dir(self.data_dir / "keys" / "auth")])

    def join(self, nodename: str) -> LocalIdentity:
        key = keys.generate_private_key("ed25519")
        body = {"token": TOKEN, "role": "Node", "nodename": nodename, "public_key": keys.public_key_openssh(key)}
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
    data_dir = tmp_path_factory.mktemp("uploads")
    config = {"teleport": {"data_dir": str(data_dir), "nodename": "auth1"},
              "auth_service": {"cluster_name": CLUSTER, "listen_addr": "127.0.0.1:0", "tokens": [f"node:{TOKEN}"]},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config) as handle:
        yield Cluster(handle, data_dir)


def call(client: AuthClient, fn: Any) -> Any:
    async def main() -> Any:
        async with client:
            return await fn(client)

    return asyncio.run(main())


def session_start(host: LocalIdentity, sid: str, server_id: str = "") -> dict[str, Any]:
    return new_event("session.start", sid=sid, server_id=server_id or host.host_uuid, cluster_name=CLUSTER,
                     user="alice", login="root", proto="ssh").to_dict()


def denials(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    page = call(cluster.admin(), lambda c: c.search_events(type="auth", limit=5000))
    return [e for e in page["events"] if reason in e.get("error", "")]


def upload(cluster: Cluster, who: AuthClient, sid: str, path: Path) -> dict[str, Any]:
    return call(who, lambda c: c.upload_recording(sid, path))  # type: ignore[no-any-return]


def stored(cluster: Cluster, sid: str, tmp: Path) -> bytes:
    dest = tmp / f"{sid}.download"
    call(cluster.admin(), lambda c: c.download_recording(sid, dest))
    return dest.read_bytes()


def test_only_the_node_that_started_the_session_uploads_it_once(cluster: Cluster, tmp_path: Path) -> None:
    alpha, beta = cluster.join("alpha"), cluster.join("beta")
    sid = str(uuid.uuid4())
    call(cluster.as_host(alpha), lambda c: c.emit_event(session_start(alpha, sid)))
    recording = tmp_path / "rec.cast"
    header = {"version": 2, "width": 80, "height": 24, "timestamp": int(time.time())}
    recording.write_bytes(json.dumps(header).encode() + b'\n[0.1, "o", "hello\\r\\n"]\n')

    # another node: refused and audited, nothing stored
    with pytest.raises(AccessDenied, match="was not started by host"):
        upload(cluster, cluster.as_host(beta), sid, recording)
    event = denials(cluster, f"session {sid} was not started by host {beta.host_uuid}")[-1]
    assert event["code"] == "T3007W" and event["path"] == f"/v1/sessions/{sid}/recording"
    assert event["user"] == f"{beta.host_uuid}.{CLUSTER}"

    # a node cannot claim the session by emitting a session.start in alpha's name
    with pytest.raises(AccessDenied, match="is not its own"):
        call(cluster.as_host(beta), lambda c: c.emit_event(session_start(beta, sid, server_id=alpha.host_uuid)))
    assert denials(cluster, f"server_id \"{alpha.host_uuid}\" is not its own")

    # neither the auth server's own identity nor a user (even an editor) uploads recordings
    with pytest.raises(AccessDenied, match="was not started by host"):
        upload(cluster, cluster.admin(), sid, recording)
    with pytest.raises(AccessDenied, match="only the node that ran session"):
        upload(cluster, cluster.as_user("edna", ["session-writer"]), sid, recording)

    # the node that ran it: stored; the same bytes again (crash recovery): accepted, unchanged
    # a header whose start time is far from the session.start: the search finds nothing
    skewed = tmp_path / "skewed.cast"
    skewed.write_bytes(json.dumps({**header, "timestamp": header["timestamp"] - 3 * 86400}).encode() + b"\n")
    with pytest.raises(AccessDenied, match="no session.start of session"):
        upload(cluster, cluster.as_host(alpha), sid, skewed)

    first = upload(cluster, cluster.as_host(alpha), sid, recording)
    assert first["unchanged"] is False and first["size"] == recording.stat().st_size
    again = upload(cluster, cluster.as_host(alpha), sid, recording)
    assert again["unchanged"] is True

    # different content: never replaces the stored recording
    other = tmp_path / "other.cast"
    other.write_bytes(json.dumps(header).encode() + b'\n[0.1, "o", "forged\\r\\n"]\n')
    with pytest.raises(AlreadyExists, match="already stored"):
        upload(cluster, cluster.as_host(alpha), sid, other)
    assert denials(cluster, f"a different recording of session {sid} is already stored")
    assert stored(cluster, sid, tmp_path) == recording.read_bytes()


def test_a_session_without_session_start_cannot_be_uploaded(cluster: Cluster, tmp_path: Path) -> None:
    gamma = cluster.join("gamma")
    sid = str(uuid.uuid4())
    recording = tmp_path / "rec.cast"
    recording.write_bytes(b'{"version": 2, "width": 80, "height": 24}\n')
    with pytest.raises(AccessDenied, match="no session.start of session"):
        upload(cluster, cluster.as_host(gamma), sid, recording)
    assert denials(cluster, f"no session.start of session {sid}")
