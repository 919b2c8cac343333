"""teleport_authorize at its real call sites on the node: a policy plugin installed where the
node runs (a separate ``teleport start`` process, configured through ``plugins:``) denies an SSH
login, a port forward and a join of a live session that the roles allow; the refusals are audited with the plugin's
reason, and what the plugin does not deny still works (real OpenSSH client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import Auth, Node, run, ssh_argv

from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def policed(auth: Auth, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    node = Node(auth, tmp_path_factory.mktemp("policed"), nodename="policed",
                top={"plugins": {"node_policy_plugin": {"no_root": ["mallory"], "no_forwarding": ["mallory"],
                                                        "no_join": ["mallory"]}}},
                env={"TELEPORT_PLUGINS": "node_policy_plugin", "PYTHONPATH": str(HERE)}).start()
    yield node
    node.stop()


@pytest.mark.hook_call_site("teleport_authorize", "teleport_config_section", "teleport_config_loaded")
def test_a_plugin_where_the_node_runs_denies_a_login_the_roles_allow(
        auth: Auth, policed: Node, tmp_path: Path, os_user: str) -> None:
    mallory = auth.user(tmp_path, "mallory", ["access"], ["root", os_user])
    victim = auth.user(tmp_path, "victor", ["access"], ["root"])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    argv = lambda key, login, *rest: ssh_argv(tmp_path, policed.port, key, login, *rest,  # noqa: E731
                                              host_alias="policed.node.test")
    refused = run(argv(mallory, "root", "id -un"))
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert run(argv(mallory, os_user, "id -un")).stdout.strip() == os_user  # the policy is about root only
    assert run(argv(victim, "root", "id -un")).stdout.strip() == "root"  # and about mallory only
    denials = wait_for(lambda: [e for e in auth.events(type="auth", user="mallory")
                                if "policy: mallory may not log in as root" in e.get("error", "")],
                       what="the audited refusal")
    assert denials[0]["code"] == "T3007W" and denials[0]["login"] == "root"
    assert denials[0]["server_hostname"] == "policed"


def test_a_plugin_denies_a_port_forward_the_roles_allow(auth: Auth, policed: Node, tmp_path: Path,
                                                        os_user: str) -> None:
    mallory = auth.user(tmp_path, "mallory", ["access"], ["root", os_user])
    victim = auth.user(tmp_path, "victor", ["access"], ["root"])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    target = f"127.0.0.1:{policed.port}"  # ssh -W: a direct-tcpip channel to the node's own port
    forward = lambda key, login: run(ssh_argv(tmp_path, policed.port, key, login, "-W", target,  # noqa: E731
                                              host_alias="policed.node.test"), input="")
    refused = forward(mallory, os_user)
    assert refused.returncode != 0 and "SSH-2.0" not in refused.stdout
    allowed = forward(victim, "root")
    assert allowed.stdout.startswith("SSH-2.0-"), allowed.stderr  # the victim's forward reached the port
    failures = wait_for(lambda: [e for e in auth.events(type="port", user="mallory")
                                 if f"policy: mallory may not forward to {target}" in e.get("error", "")],
                        what="the audited forward refusal")
    assert failures[0]["code"] == "T3003E"


def test_a_plugin_denies_a_join_the_roles_allow(auth: Auth, policed: Node, tmp_path: Path, os_user: str) -> None:
    """Joining with plain OpenSSH (SetEnv TELEPORT_SESSION and TELEPORT_SSH_JOIN_MODE, the session's
    own login): walter joins victor's session; mallory, whom the roles allow as well, is refused by
    the plugin, told why on stderr, and audited."""
    import subprocess

    auth.run(lambda admin: admin.upsert_role({
        "kind": "role", "version": "v7", "metadata": {"name": "watch-access"},
        "spec": {"allow": {"join_sessions": [{"name": "w", "roles": ["access"], "kinds": ["ssh"],
                                              "modes": ["observer"]}]}}}))
    victim = auth.user(tmp_path, "victor", ["access"], [os_user])
    walter = auth.user(tmp_path, "walter", ["access", "watch-access"], [os_user])
    mallory = auth.user(tmp_path, "mallory", ["access", "watch-access"], [os_user])
    (tmp_path / "known_hosts").write_text(auth.known_hosts())
    argv = lambda key, *rest: ssh_argv(tmp_path, policed.port, key, os_user, *rest,  # noqa: E731
                                       host_alias="policed.node.test")
    owner = subprocess.Popen(argv(victim, "-tt", "echo SID=$TELEPORT_SESSION; for i in $(seq 1 600); "
                                                 "do echo tick-$i; sleep 0.1; done"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = ""
        while not line.startswith("SID="):
            line = owner.stdout.readline()
            assert line, "the owner's session ended"
        sid = line.strip()[4:]
        join_env = ["-o", f"SetEnv=TELEPORT_SESSION={sid} TELEPORT_SSH_JOIN_MODE=observer"]
        refused = run([*argv(mallory, "-tt", *join_env)], input="")
        # the node sends its reason on stderr before it fails the shell request, but OpenSSH's client
        # exits on the failure without always writing out what it buffered: the reason is checked in
        # the audit event below (tsh join reads it first and shows it: test_live_join)
        assert refused.returncode == 255 and "shell request failed" in refused.stderr
        watcher = subprocess.Popen(argv(walter, "-tt", *join_env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert watcher.stdout is not None
            seen = ""
            while "tick-" not in seen:
                seen = watcher.stdout.readline()
                assert seen, "the observer's session ended"
        finally:
            watcher.kill()
            watcher.wait()
    finally:
        owner.kill()
        owner.wait()
    failures = wait_for(lambda: [e for e in auth.events(type="session.join", user="mallory")
                                 if "policy: mallory may not join" in e.get("error", "")],
                        what="the audited join refusal")
    assert failures[0]["code"] == "T2001W" and failures[0]["sid"] == sid
    assert wait_for(lambda: [e for e in auth.events(type="session.join", user="walter") if e["code"] == "T2001I"],
                    what="walter's join")

