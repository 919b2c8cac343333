"""teleport_authorize at its real call sites on the node: a policy plugin installed where the
node runs (a separate ``teleport start`` process, configured through ``plugins:``) denies an SSH
login and a port forward that the roles allow; the refusals are audited with the plugin's
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
                top={"plugins": {"node_policy_plugin": {"no_root": ["mallory"], "no_forwarding": ["mallory"]}}},
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
