"""Locks at the proxy, in front of an OpenSSH ``sshd`` node that knows nothing of locks: a locked
user's live sessions through the proxy (``tsh ssh -t`` and OpenSSH ``ssh -tt -J``) are cut within
5 s, the cut is audited (T3007W with the lock's message), and new connections are refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, profile_ssh_config, running_env

from teleport_core.policy.locks import LockTarget, lock_to_dict, new_lock
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory, second_factor="off") as e:
        e.signup("carol", ["dev"], [LOGIN], PASSWORD)
        yield e


class Session:
    """An interactive session driven through pipes; ``text`` is all it wrote (stdout and stderr)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_proxy_cuts_locked_users_sessions_to_an_openssh_node(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "carol-tsh"
    assert env.login(home, "carol").returncode == 0
    config = profile_ssh_config(home, tmp_path / "ssh_config")
    proc_env = {**os.environ, "TELEPORT_HOME": str(home)}
    proc_env.pop("SSH_AUTH_SOCK", None)
    sessions = [
        Session([sys.executable, "-m", "teleport_core.cli.tsh", "ssh", "-t", f"{LOGIN}@sshd-node"], proc_env),
        Session(["ssh", "-tt", "-F", str(config), "-J", f"carol@127.0.0.1:{env.ssh_port}",
                 f"{LOGIN}@sshd-node.{CLUSTER}"], proc_env),
    ]
    try:
        for session in sessions:
            session.type("echo ready-$((6*7))")
            wait_for(lambda session=session: "ready-42" in session.text, "the session to answer", timeout=60)
        lock = new_lock(LockTarget(user="carol"), "laptop reported stolen")
        env.call("upsert_lock", lock_to_dict(lock))
        for session in sessions:
            session.proc.wait(timeout=5)  # cut within 5 s of the lock
    finally:
        for session in sessions:
            session.kill()

    message = 'lock targeting User:"carol" is in force: laptop reported stolen'
    refused = env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "echo", "again")
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr

    def cuts() -> list[dict[str, Any]]:
        async def body() -> list[dict[str, Any]]:
            async with env.admin() as admin:
                page = await admin.search_events(type="auth", user="carol", limit=1000)
            return [e for e in page["events"] if e.get("error") == message]

        found = asyncio.run(body())
        return found if len(found) >= 3 else []  # the two cut sessions and the refused tsh ssh

    events = wait_for(cuts, "the proxy's audited cuts and refusal", timeout=60)
    assert {e["code"] for e in events} == {"T3007W"}
    assert {e.get("server_id") for e in events} == {env.proxy.identity.host_uuid}

    env.call("delete_lock", lock.name)
    back = wait_for(lambda: (r := env.tsh(home, "ssh", f"{LOGIN}@sshd-node", "echo", "back")).returncode == 0 and r,
                    "access restored", timeout=30)
    assert back.stdout == "back\n"
