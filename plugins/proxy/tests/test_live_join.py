"""Joining live sessions (issue 16, Teleport's RFD 43): ``tsh join`` as observer, peer and
moderator through the proxy, a moderated session that waits for its moderator, and refusals.

Real cluster (auth, proxy and node in one process), real ``tsh`` processes on pseudo-terminals.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from proxy_helpers import LOGIN, Env, one_process_config

from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.terminal import Terminal

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a long enough password 123"
NODENAME = "party-node"
JOINER = {"kind": "role", "version": "v7", "metadata": {"name": "joiner"},
          "spec": {"allow": {"node_labels": {"*": "*"},
                             "join_sessions": [{"name": "watch", "roles": ["access", "moderated", "paused"], "kinds": ["ssh"],
                                                "modes": ["observer", "peer", "moderator"]}]}}}
MODERATED = {"kind": "role", "version": "v7", "metadata": {"name": "moderated"},
             "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                                "require_session_join": [{"name": "needs a moderator",
                                                          "filter": 'contains(user.roles, "joiner")',
                                                          "kinds": ["ssh"], "modes": ["moderator"], "count": 1,
                                                          "on_leave": "terminate"}]}}}

PAUSED = {"kind": "role", "version": "v7", "metadata": {"name": "paused"},
          "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                             "require_session_join": [{"name": "held without a moderator",
                                                       "filter": 'contains(user.roles, "joiner")',
                                                       "kinds": ["ssh"], "modes": ["moderator"], "count": 1,
                                                       "on_leave": "pause"}]}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("live-join")
    with start_cluster(one_process_config(root, NODENAME), make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.call("upsert_role", JOINER)
        e.call("upsert_role", MODERATED)
        e.call("upsert_role", PAUSED)
        e.signup("alice", ["access"], [LOGIN], PASSWORD)
        e.signup("bob", ["access", "joiner"], [LOGIN], PASSWORD)
        e.signup("mallory", ["access"], [LOGIN], PASSWORD)
        e.signup("carol", ["moderated"], [LOGIN], PASSWORD)
        e.signup("dave", ["paused"], [LOGIN], PASSWORD)
        deadline = time.monotonic() + 60
        while not e.call("get_nodes") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield e


@pytest.fixture(scope="module")
def homes(env: Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {user: env.logged_in(tmp_path_factory, user) for user in ("alice", "bob", "mallory", "carol", "dave")}


def tsh_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "teleport_core.cli.tsh", *args]


def tsh_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "TELEPORT_HOME": str(home)}
    env.pop("SSH_AUTH_SOCK", None)
    return env


def shell(home: Path) -> Terminal:
    return Terminal(tsh_argv("ssh", "-t", f"{LOGIN}@{NODENAME}"), tsh_env(home))


def session_id(term: Terminal) -> str:
    """The ID of the session ``term`` runs a shell in (the node sets TELEPORT_SESSION)."""
    for attempt in range(30):
        term.type(f'echo "SID-$((40+{attempt}))-$TELEPORT_SESSION-END"')
        try:
            end = term.expect(b"-END\r", timeout=3)
        except AssertionError:
            assert term.proc.poll() is None, term.seen
            continue
        line = term.seen[:end].rsplit(b"SID-", 1)[1]
        return line.split(b"-", 1)[1].removesuffix(b"-END\r").decode()
    raise AssertionError(f"the shell never answered: {term.seen[-2000:]!r}")


def join(home: Path, sid: str, mode: str) -> Terminal:
    return Terminal(tsh_argv("join", f"--mode={mode}", sid), tsh_env(home))


def events(env: Env, kind: str, sid: str) -> list[dict[str, Any]]:
    import asyncio

    async def body() -> dict[str, Any]:
        async with env.admin() as admin:
            return await admin.search_events(limit=5000)

    page = asyncio.run(body())
    return [e for e in page["events"] if e.get("event") == kind and e.get("sid") == sid]


def wait_events(env: Env, kind: str, sid: str, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = events(env, kind, sid)
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no {kind} event for {sid}")


def test_observer_sees_output_from_join_and_peer_types(env: Env, homes: dict[str, Path]) -> None:
    alice = shell(homes["alice"])
    try:
        sid = session_id(alice)
        alice.type("echo before-$((1+1))-join")
        alice.expect(b"before-2-join\r")
        bob = join(homes["bob"], sid, "observer")
        try:
            bob.expect(b"Teleport > Joining session with participant mode: observer")
            mark = alice.expect(b"Teleport > User bob joined the session with participant mode: observer.")
            alice.type("echo after-$((3+4))-join")
            alice.expect(b"after-7-join\r", since=mark)
            bob.expect(b"after-7-join\r")
            assert b"before-2-join" not in bob.seen  # from the moment they joined, not before
            bob.send(b"echo observer-typed\r")  # an observer's input is dropped
            alice.type("echo still-$((2*5))")
            bob.expect(b"still-10\r")
            assert b"observer-typed" not in alice.seen
            bob.send(b"\x03")  # Ctrl-C: an observer leaves
            assert bob.wait() == 0
            alice.expect(b"Teleport > User bob left the session.")
        finally:
            bob.close()
        peer = join(homes["bob"], sid, "peer")
        try:
            mark = alice.expect(b"User bob joined the session with participant mode: peer.", since=mark)
            peer.expect(b"Joining session with participant mode: peer")
            time.sleep(0.5)  # the peer's input is connected once its join is through
            peer.send(b"echo typed-by-$((6*7))-peer\r")
            alice.expect(b"typed-by-42-peer\r", since=mark)
            peer.expect(b"typed-by-42-peer\r")
            alice.type("exit")
            assert peer.wait() == 0  # the session's end ends every participant's tsh join
        finally:
            peer.close()
        assert alice.wait() == 0
    finally:
        alice.close()
    joined = wait_events(env, "session.join", sid, 2)
    assert {(e["user"], e["participant_mode"], e["code"]) for e in joined} == {
        ("bob", "observer", "T2001I"), ("bob", "peer", "T2001I")}
    left = wait_events(env, "session.leave", sid, 2)
    assert {e["code"] for e in left} == {"T2003I"}
    assert all(e["login"] == LOGIN for e in joined + left)


def test_moderated_session_waits_for_moderator_who_terminates_it(env: Env, homes: dict[str, Path]) -> None:
    carol = shell(homes["carol"])
    try:
        carol.expect(b"Teleport > Waiting for required participants...")
        sid = carol.seen.split(b"Creating session with ID: ", 1)[1].split(b"\r", 1)[0].decode()
        carol.type("echo too-early-$((5*5))")  # no shell yet: dropped
        time.sleep(1)
        assert b"too-early-25" not in carol.seen
        observer = join(homes["bob"], sid, "observer")  # an observer does not fulfil the policy
        try:
            carol.expect(b"User bob joined the session with participant mode: observer.")
            time.sleep(1)
            assert b"Connecting to" not in carol.seen
            moderator = join(homes["bob"], sid, "moderator")
            try:
                moderator.expect(b"t: Forcefully terminate the session")
                carol.expect(b"Teleport > Connecting to")
                for attempt in range(30):
                    carol.type(f"echo moderated-$((60+{attempt}))-run")
                    try:
                        carol.expect(f"moderated-{60 + attempt}-run\r".encode(), timeout=3)
                        break
                    except AssertionError:
                        continue
                moderator.expect(b"moderated-")
                moderator.send(b"t")
                carol.expect(b"Teleport > User bob forcefully terminated the session.")
                carol.wait()
                moderator.wait()
                observer.wait()
                assert observer.closed and moderator.closed
            finally:
                moderator.close()
        finally:
            observer.close()
    finally:
        carol.close()
    end = wait_events(env, "session.end", sid)[0]
    assert end["end_reason"] == "terminated" and end["terminated_by"] == "bob"
    modes = {e["participant_mode"] for e in wait_events(env, "session.join", sid, 2)}
    assert modes == {"observer", "moderator"}


def test_moderated_user_cannot_run_an_unwatched_command(env: Env, homes: dict[str, Path]) -> None:
    result = env.tsh(homes["carol"], "ssh", f"{LOGIN}@{NODENAME}", "echo", "unwatched")
    assert result.returncode != 0
    assert "requires moderation" in result.stderr
    assert "unwatched" not in result.stdout


def _join_channel(node: paramiko.Transport, sid: str, mode: str, window: int | None = None) -> paramiko.Channel:
    """A session channel on ``node`` asking to join ``sid`` in ``mode`` (as tsh join does), before its shell."""
    from teleport_core.tsh.join import MODE_ENV, SESSION_ENV

    channel = node.open_session(window_size=window, timeout=30)
    channel.set_environment_variable(SESSION_ENV, sid)
    channel.set_environment_variable(MODE_ENV, mode)
    channel.get_pty("xterm", 80, 24)
    return channel


def _node_join(home: Path, sid: str, mode: str) -> tuple[bool, str]:
    """Join as the attacker would: straight to the node with the join principal (no listing)."""
    from teleport_core.tsh import sshclient
    from teleport_core.tsh.join import JOIN_PRINCIPAL
    from teleport_core.tsh.profile import Profile

    profile = Profile.load(home)
    proxy, node = sshclient.connect_node(profile, JOIN_PRINCIPAL, NODENAME)
    try:
        channel = _join_channel(node, sid, mode)
        try:
            channel.invoke_shell()
        except (paramiko.SSHException, EOFError):
            said = b""
            time.sleep(0.2)
            while channel.recv_stderr_ready():
                said += channel.recv_stderr(4096)
            return False, said.decode()
        # a join-only connection may do nothing else: no command, no port forwarding
        other = node.open_session(timeout=30)
        with pytest.raises(paramiko.SSHException):
            other.exec_command("id")
        with pytest.raises(paramiko.ChannelException):
            node.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=30)
        return True, ""
    finally:
        node.close()
        proxy.close()


def test_user_without_join_sessions_cannot_see_or_join(env: Env, homes: dict[str, Path]) -> None:
    alice = shell(homes["alice"])
    try:
        sid = session_id(alice)
        listed = env.tsh(homes["mallory"], "sessions", "ls", "--format=json")
        assert sid not in listed.stdout
        refused = env.tsh(homes["mallory"], "join", sid)
        assert refused.returncode != 0 and "not found" in refused.stderr
        ok, why = _node_join(homes["mallory"], sid, "observer")  # straight to the node: refused there too
        assert not ok and "no role allows joining" in why
        ok, why = _node_join(homes["bob"], "00000000-0000-4000-8000-000000000000", "observer")
        assert not ok and "no such interactive session" in why
        ok, why = _node_join(homes["bob"], sid, "spectator")
        assert not ok and "unknown mode" in why
        ok, _ = _node_join(homes["bob"], sid, "observer")
        assert ok
        alice.type("exit")
        alice.wait()
    finally:
        alice.close()
    refusals = wait_events(env, "session.join", sid, 1)
    failed = [e for e in refusals if e["user"] == "mallory"]
    assert failed and failed[0]["code"] == "T2001W" and "no role allows joining" in failed[0]["error"]
    assert not [e for e in refusals if e["user"] == "mallory" and e["code"] == "T2001I"]


def test_join_flags_are_checked(env: Env, homes: dict[str, Path]) -> None:
    bad = env.tsh(homes["bob"], "join", "--mode=spectator", "00000000-0000-4000-8000-000000000000")
    assert bad.returncode != 0 and "invalid choice: 'spectator'" in bad.stderr
    bad = env.tsh(homes["bob"], "join", "../../etc")
    assert bad.returncode != 0 and "invalid session ID" in bad.stderr


def wait_running(term: Terminal, tag: str) -> None:
    """Type until the (just started) shell answers."""
    for attempt in range(30):
        term.type(f"echo {tag}-$((60+{attempt}))-run")
        try:
            term.expect(f"{tag}-{60 + attempt}-run\r".encode(), timeout=3)
            return
        except AssertionError:
            assert term.proc.poll() is None, term.seen
    raise AssertionError(f"the shell never answered: {term.seen[-2000:]!r}")


def test_moderator_leaving_pauses_or_terminates(env: Env, homes: dict[str, Path]) -> None:
    dave = shell(homes["dave"])  # on_leave: pause
    try:
        dave.expect(b"Waiting for required participants...")
        sid = dave.seen.split(b"Creating session with ID: ", 1)[1].split(b"\r", 1)[0].decode()
        moderator = join(homes["bob"], sid, "moderator")
        try:
            dave.expect(b"Teleport > Connecting to")
            wait_running(dave, "first")
            moderator.send(b"\x03")  # the moderator leaves: paused
            moderator.wait()
        finally:
            moderator.close()
        mark = dave.expect(b"Teleport > Session paused, Waiting for required participants...")
        dave.type("echo held-$((8*8))-input")  # held while paused
        time.sleep(1)
        assert b"held-64-input\r\n" not in dave.seen[mark:]
        again = join(homes["bob"], sid, "moderator")
        try:
            dave.expect(b"Teleport > Resuming session...", since=mark)
            wait_running(dave, "resumed")
            dave.type("exit")
            dave.wait()
        finally:
            again.close()
    finally:
        dave.close()
    assert wait_events(env, "session.end", sid)[0]["end_reason"] == "exit"

    carol = shell(homes["carol"])  # on_leave: terminate
    try:
        carol.expect(b"Waiting for required participants...")
        sid = carol.seen.split(b"Creating session with ID: ", 1)[1].split(b"\r", 1)[0].decode()
        moderator = join(homes["bob"], sid, "moderator")
        try:
            wait_running(carol, "mod")
            moderator.send(b"\x03")
            moderator.wait()
        finally:
            moderator.close()
        carol.expect(b"Required participants left; terminating the session")
        carol.wait()
    finally:
        carol.close()
    end = wait_events(env, "session.end", sid)[0]
    assert end["end_reason"] == "terminated" and "terminated_by" not in end


def test_an_observer_that_stops_reading_is_removed_not_the_owner_stalled(env: Env, homes: dict[str, Path]) -> None:
    from teleport_core.tsh import sshclient
    from teleport_core.tsh.join import JOIN_PRINCIPAL
    from teleport_core.tsh.profile import Profile

    alice = shell(homes["alice"])
    proxy, node = sshclient.connect_node(Profile.load(homes["bob"]), JOIN_PRINCIPAL, NODENAME)
    try:
        sid = session_id(alice)
        _join_channel(node, sid, "observer", window=65536).invoke_shell()  # and never read
        mark = alice.expect(b"User bob joined the session")
        # more than the observer's window and its 1 MiB buffer: the owner gets all of it regardless
        alice.type("head -c 3000000 /dev/zero | tr '\\0' x | fold -w 100000; echo bulk-$((5*9))-done")
        alice.expect(b"bulk-45-done\r", timeout=120, since=mark)
        alice.expect(b"Teleport > User bob left the session.", since=mark)
        alice.type("exit")
        alice.wait()
    finally:
        node.close()
        proxy.close()
        alice.close()
    left = wait_events(env, "session.leave", sid)
    assert left[0]["reason"] == "fell behind"


def test_a_command_session_cannot_be_joined(env: Env, homes: dict[str, Path]) -> None:
    import json
    import subprocess

    command = subprocess.Popen(tsh_argv("ssh", f"{LOGIN}@{NODENAME}", "sleep 30"), env=tsh_env(homes["alice"]),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        found: list[dict[str, Any]] = []
        while not found and time.monotonic() < deadline:
            listed = env.tsh(homes["bob"], "sessions", "ls", "--format=json")
            found = [t["spec"] for t in json.loads(listed.stdout or "[]")
                     if t["spec"].get("command") == "sleep 30"]
            time.sleep(0.3)
        assert found, "the command's session was not listed"
        refused = env.tsh(homes["bob"], "join", found[0]["session_id"])
        assert refused.returncode != 0 and "is not interactive" in refused.stderr
        ok, why = _node_join(homes["bob"], found[0]["session_id"], "observer")  # and at the node
        assert not ok and "no such interactive session" in why
    finally:
        command.kill()
        command.wait()

def test_a_lock_ends_an_observer_and_refuses_its_join(env: Env, homes: dict[str, Path]) -> None:
    alice = shell(homes["alice"])
    try:
        sid = session_id(alice)
        bob = join(homes["bob"], sid, "observer")
        try:
            mark = alice.expect(b"User bob joined the session")
            env.call("upsert_lock", {"kind": "lock", "version": "v2", "metadata": {"name": "stop-bob"},
                                     "spec": {"target": {"user": "bob"}, "message": "bob is locked"}})
            bob.wait(60)
            assert bob.closed and b"bob is locked" in bob.seen
            alice.expect(b"Teleport > User bob left the session.", since=mark)
        finally:
            bob.close()
        refused = env.tsh(homes["bob"], "join", sid)
        assert refused.returncode != 0
        alice.type("echo alice-still-$((9*9))")
        alice.expect(b"alice-still-81\r", since=mark)  # the owner carries on
        alice.type("exit")
        alice.wait()
    finally:
        alice.close()
        env.call("delete_lock", "stop-bob")

