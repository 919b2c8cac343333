"""Locks end to end (issue 11): auth and proxy in one teleport process, our node in its own
``teleport start`` process, tsh and the OpenSSH client as the users, tctl as the admin.

- a user in the middle of interactive sessions (``tsh ssh -t`` through the proxy, OpenSSH
  ``ssh -tt`` straight to the node) is locked with ``tctl lock``: both end within 5 s with the
  lock's message; tsh ssh, the proxy's web API and the
  auth API then refuse the user (each refusal audited T3007W with the message);
  ``tctl rm lock/NAME`` restores access;
- a deleted user's certificates (still valid) fail on the next ``tsh ssh``, OpenSSH ``ssh``
  straight to the node and API call, audited;
- locks on a login and on the node itself refuse OpenSSH logins at the node.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import CLUSTER, LOGIN, NodeEnv, cluster_with_node

from teleport_core.api.client import AuthClient, load_profile
from teleport_core.errors import AccessDenied
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"
NODENAME = "lock-node"
NODE_TOKEN = "lock-node-token-0123456789abcdef"
TELEPORT = str(Path(sys.executable).with_name("teleport"))
CREATED = re.compile(r'^Created a lock with name "([0-9a-f-]{36})"\.\n$')


LockEnv = NodeEnv


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockEnv]:
    with cluster_with_node(tmp_path_factory.mktemp("locks"), LockEnv, NODENAME, NODE_TOKEN,
                           {"env": "test"}) as e:
        for user in ("mallory", "leaver", "alice"):
            e.signup(user, ["access"], [LOGIN], PASSWORD)
        yield e


def tctl(env: LockEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "-c", str(env.auth_yaml), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def lock(env: LockEnv, *args: str) -> str:
    result = tctl(env, "lock", *args)
    assert result.returncode == 0, result.stderr
    match = CREATED.match(result.stdout)
    assert match, result.stdout
    return match.group(1)


def unlock(env: LockEnv, name: str) -> None:
    result = tctl(env, "rm", f"lock/{name}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'lock "{name}" has been deleted\n'


def logged_in(env: LockEnv, tmp_path: Path, user: str) -> Path:
    home = tmp_path / f"{user}-tsh"
    result = env.tsh(home, "login", f"--proxy={env.web}", f"--user={user}", "--insecure", stdin=f"{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    return home


def tsh_echo(env: LockEnv, home: Path, word: str = "hello") -> subprocess.CompletedProcess[str]:
    return env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "echo", word)


def api_as(env: LockEnv, home: Path) -> Any:
    """``get_nodes`` at auth with the tsh profile's own certificate (AccessDenied when refused)."""

    async def body() -> Any:
        async with AuthClient(env.auth_addr, [load_profile(home)]) as client:
            return await client.get_nodes()

    return asyncio.run(body())


def openssh_argv(env: LockEnv, home: Path, tmp_path: Path, *args: str) -> list[str]:
    """OpenSSH ``ssh`` straight to the node's port with the tsh profile's key and certificate."""
    folder = home / "profiles" / "127.0.0.1"
    known = tmp_path / "known_hosts"
    known.write_text(env.call("get_cert_authority", "host")["known_hosts"])
    return ["ssh", "-F", "/dev/null", "-p", str(env.node_port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={NODENAME}.{CLUSTER}",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(folder / "id"),
            "-o", f"CertificateFile={folder / 'id-cert.pub'}", f"{LOGIN}@127.0.0.1", *args]


def openssh(env: LockEnv, home: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(openssh_argv(env, home, tmp_path, *args), capture_output=True, text=True, timeout=60,
                          check=False)


def denials(env: LockEnv, user: str, message: str) -> list[dict[str, Any]]:
    return [e for e in _events(env, user) if e["event"] == "auth" and message in str(e.get("error", ""))]


def _events(env: LockEnv, user: str) -> list[dict[str, Any]]:
    async def body() -> list[dict[str, Any]]:
        async with env.admin() as admin:
            return list((await admin.search_events(type="auth", user=user, limit=5000))["events"])

    return asyncio.run(body())


class Collector:
    """Reads a pipe on a thread; ``text`` is everything read so far."""

    def __init__(self, stream: Any) -> None:
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def test_lock_ends_a_live_session_with_its_message_and_refuses_the_user_until_removed(env, tmp_path):
    home = logged_in(env, tmp_path, "mallory")
    proc_env = {**os.environ, "TELEPORT_HOME": str(home)}
    proc_env.pop("SSH_AUTH_SOCK", None)
    sessions = [  # tsh ssh -t through the proxy, and OpenSSH ssh -tt straight to the node
        subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", "-t", f"{LOGIN}@{NODENAME}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=proc_env),
        subprocess.Popen(openssh_argv(env, home, tmp_path, "-tt"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=proc_env),
    ]
    message = 'lock targeting User:"mallory" is in force: Account under review'
    try:
        outputs = [(Collector(s.stdout), Collector(s.stderr)) for s in sessions]
        for session, (out, _) in zip(sessions, outputs, strict=True):
            assert session.stdin is not None
            session.stdin.write(b"echo ready-$((6*7))\n")
            session.stdin.flush()
            wait_for(lambda out=out: "ready-42" in out.text, "the interactive session to answer", timeout=60)

        name = lock(env, "--user=mallory", "--message=Account under review")
        for session, (out, err) in zip(sessions, outputs, strict=True):
            session.wait(timeout=5)  # the session ends within 5 s of the lock
            out.thread.join(5)
            err.thread.join(5)
            assert session.returncode != 0
            assert message in out.text + err.text, (out.text, err.text)  # shown to the user
    finally:
        for session in sessions:
            if session.poll() is None:
                session.kill()
                session.wait(10)

    refused = tsh_echo(env, home)
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr
    with pytest.raises(AccessDenied) as api_refused:
        api_as(env, home)
    assert str(api_refused.value) == message
    again = env.tsh(tmp_path / "again", "login", f"--proxy={env.web}", "--user=mallory", "--insecure",
                    stdin=f"{PASSWORD}\n")
    assert again.returncode != 0 and message in again.stderr, again.stderr  # no new certificates

    # refused at the node (the live session), at the proxy, and at auth: all audited with the message
    audited = wait_for(lambda: (found := denials(env, "mallory", message))
                       and {e.get("server_id") for e in found} >= {env.node_uuid} and len(found) >= 3 and found,
                       "the node's, proxy's and auth's audited refusals", timeout=60)
    assert {e["code"] for e in audited} == {"T3007W"}

    # another user is untouched
    alice = logged_in(env, tmp_path, "alice")
    assert tsh_echo(env, alice, "alice-ok").stdout == "alice-ok\n"

    unlock(env, name)
    restored = wait_for(lambda: (r := tsh_echo(env, home, "back")).returncode == 0 and r, "access restored",
                        timeout=30)
    assert restored.stdout == "back\n"
    assert api_as(env, home)


def test_deleted_user_outstanding_certificates_fail_on_the_next_command(env, tmp_path):
    home = logged_in(env, tmp_path, "leaver")
    assert tsh_echo(env, home, "before").stdout == "before\n"
    assert openssh(env, home, tmp_path, "echo", "direct").stdout == "direct\n"

    env.call("delete_user", "leaver")
    message = 'lock targeting User:"leaver" is in force: user "leaver" was deleted'
    refused = wait_for(lambda: (r := tsh_echo(env, home, "after")).returncode != 0 and r, "tsh ssh refused",
                       timeout=30)
    assert message in refused.stderr, refused.stderr
    direct = openssh(env, home, tmp_path, "echo", "after")
    assert direct.returncode == 255 and "after" not in direct.stdout, direct.stderr
    with pytest.raises(AccessDenied, match=re.escape(message)):
        api_as(env, home)
    audited = wait_for(lambda: (found := denials(env, "leaver", message))
                       and env.node_uuid in {e.get("server_id") for e in found} and found,
                       "the node's audited refusal of the deleted user", timeout=60)
    assert {e["code"] for e in audited} == {"T3007W"}


def test_login_and_node_locks_refuse_openssh_logins_at_the_node(env, tmp_path):
    home = logged_in(env, tmp_path, "alice")
    assert openssh(env, home, tmp_path, "echo", "ok").stdout == "ok\n"
    for target, shown in ((f"--login={LOGIN}", f'Login:"{LOGIN}"'), (f"--node={env.node_uuid}",
                                                                      f'Node:"{env.node_uuid}"')):
        name = lock(env, target, "--ttl=10m")
        try:
            refused = wait_for(lambda: (r := openssh(env, home, tmp_path, "echo", "x")).returncode == 255 and r,
                               f"the node refusing under {target}", timeout=30)
            assert "x" not in refused.stdout
            message = f"lock targeting {shown} is in force"
            wait_for(lambda message=message: denials(env, "alice", message), f"the audited refusal ({target})",
                     timeout=60)
        finally:
            unlock(env, name)
        wait_for(lambda: openssh(env, home, tmp_path, "echo", "ok").stdout == "ok\n", "access restored", timeout=30)
