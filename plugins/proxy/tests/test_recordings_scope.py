"""Recordings are scoped: a node's and a proxy's own identities can neither list nor read
session recordings (403, audited); a proxy reads only for a user whose certificate it forwards
and who may; a proxy emits only its own event types, stamped by auth. The victim, an auditor
using tsh through the proxy, still lists and plays. One teleport process runs auth, proxy and
our node (which records); tsh runs as a subprocess; the attacker uses the hosts' key files."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, one_process_config

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import AccessDenied
from teleport_core.pki.identity import LocalIdentity
from teleport_core.plugins import make_plugins
from teleport_core.state.audit import new_event
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "scope-host"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("recordings-scope")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.signup("audrey", ["access", "auditor"], [LOGIN], PASSWORD)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), what="the node's heartbeat")
        yield e


def home(env: Env, tmp_path_factory: pytest.TempPathFactory, user: str) -> Path:
    folder = tmp_path_factory.mktemp(f"{user}-tsh")
    result = env.login(folder, user)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def audrey(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return home(env, tmp_path_factory, "audrey")


@pytest.fixture(scope="module")
def alice(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return home(env, tmp_path_factory, "alice")


@pytest.fixture(scope="module")
def sid(env: Env, audrey: Path) -> str:
    """A recorded interactive session of audrey's, once uploaded."""
    result = env.tsh(audrey, "ssh", "-t", f"{LOGIN}@{NODENAME}", stdin="echo scoped-$((6*7))\nexit\n", timeout=120)
    assert result.returncode == 0, result.stderr

    def uploaded() -> str:
        listing = env.tsh(audrey, "recordings", "ls", "--format=json")
        assert listing.returncode == 0, listing.stderr
        return next((s["sid"] for s in json.loads(listing.stdout) if s["interactive"] and s["recorded"]), "")

    return wait_for(uploaded, what="the uploaded recording", interval=0.3)


def as_host(env: Env, role: str, fn: Any) -> Any:
    async def body() -> Any:
        async with AuthClient(env.auth_addr, [load_identity_dir(env.root / "auth" / "keys" / role)]) as client:
            return await fn(client)

    return asyncio.run(body())


def host_name(env: Env, role: str) -> str:
    return f"{(env.root / 'auth' / 'keys' / role / 'host_uuid').read_text().strip()}.{CLUSTER}"


def user_cert(folder: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(LocalIdentity.load(folder / "profiles" / "127.0.0.1").tls_cert_pem.decode())


def events(env: Env, **query: Any) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            return list((await admin.search_events(limit=5000, **query))["events"])

    return asyncio.run(body())


def refusals(env: Env, user: str, needle: str) -> list[dict[str, Any]]:
    return [e for e in events(env, type="auth") if e.get("user") == user and needle in e.get("error", "")]


@pytest.mark.parametrize("role", ["node", "proxy"])
def test_host_identities_cannot_list_or_read_recordings(env: Env, sid: str, role: str, tmp_path: Path) -> None:
    reason = ("a proxy reads recordings only for a user whose certificate it forwards" if role == "proxy"
              else "system role Node does not allow")
    with pytest.raises(AccessDenied, match=reason):
        as_host(env, role, lambda c: c.list_recordings())
    with pytest.raises(AccessDenied, match=reason):
        as_host(env, role, lambda c: c.download_recording(sid, tmp_path / "stolen.cast"))
    assert not (tmp_path / "stolen.cast").exists()
    audited = refusals(env, host_name(env, role), reason)
    assert {"/v1/sessions", f"/v1/sessions/{sid}/recording"} <= {e["path"] for e in audited}
    assert all(e["code"] == "T3007W" for e in audited)


def test_a_proxy_reads_only_for_a_forwarded_user_who_may(env: Env, sid: str, audrey: Path, alice: Path,
                                                         tmp_path: Path) -> None:
    listed = as_host(env, "proxy", lambda c: c.list_recordings(user_cert=user_cert(audrey)))
    assert sid in {s["sid"] for s in listed}
    size = as_host(env, "proxy", lambda c: c.download_recording(sid, tmp_path / "ok.cast", user_cert=user_cert(audrey)))
    assert size > 0 and b"scoped-42" in (tmp_path / "ok.cast").read_bytes()
    with pytest.raises(AccessDenied, match='access denied to user "alice": no role allows read on session'):
        as_host(env, "proxy", lambda c: c.download_recording(sid, tmp_path / "no.cast", user_cert=user_cert(alice)))
    assert refusals(env, "alice", "no role allows read on session")

    # the victim, through the proxy with tsh: lists and plays
    listing = env.tsh(audrey, "recordings", "ls", "--format=json")
    assert listing.returncode == 0 and sid in listing.stdout, listing.stderr
    played = env.tsh(audrey, "play", sid, "--format=json")
    assert played.returncode == 0 and "scoped-42" in played.stdout, played.stderr


def test_a_proxy_emits_only_its_own_event_types_stamped(env: Env) -> None:
    proxy = host_name(env, "proxy")
    login = new_event("user.login", user="admin", method="local", success=True).to_dict()
    with pytest.raises(AccessDenied, match='a Proxy may not emit "user.login" events'):
        as_host(env, "proxy", lambda c: c.emit_event(login))
    start = new_event("session.start", sid=str(uuid.uuid4()), user="alice", login="root").to_dict()
    with pytest.raises(AccessDenied, match='a Proxy may not emit "session.start" events'):
        as_host(env, "proxy", lambda c: c.emit_event(start))
    assert refusals(env, proxy, 'may not emit "user.login"') and refusals(env, proxy, 'may not emit "session.start"')

    tunnel = new_event("reverse_tunnel.connect", host_id="some-node", server_hostname="auth",
                       server_role="Auth").to_dict()
    as_host(env, "proxy", lambda c: c.emit_event(tunnel))  # durable when answered
    kept = [e for e in events(env, type="reverse_tunnel.connect") if e["uid"] == tunnel["uid"]]
    assert (kept[0]["server_id"], kept[0]["server_role"], kept[0]["server_hostname"]) == (
        proxy.split(".")[0], "Proxy", NODENAME)
    stored = {e["uid"] for e in events(env)}
    assert login["uid"] not in stored and start["uid"] not in stored
