"""teleport_authorize at the proxy's real call site: a policy plugin loaded in the proxy denies
``tsh ssh`` to a node the roles allow. The nodes here are plain OpenSSH sshd, which knows nothing
of plugins: the proxy's decision is the only one a policy gets there. The refusal names the
plugin's reason and is audited; another user still gets through."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from proxy_helpers import LOGIN, Env, running_env

from teleport_core import hookimpl
from teleport_core.policy.access import SSH, AccessRequest, Decision
from teleport_core.state.nodes import MatchStrength, NodeInfo, NodeMatch
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password 123"


class NoSshdForMallory:
    """The policy: mallory may not reach nodes labelled group=real (the sshd nodes). And a lookup
    (a CMDB, say): the name ``db-primary`` means the node ``sshd-two``."""

    @hookimpl
    def teleport_node_candidates(self, target: str, nodes: Sequence[NodeInfo]) -> list[NodeMatch]:
        if target != "db-primary":
            return []
        return [NodeMatch(node, MatchStrength.STRONG) for node in nodes if node.nodename == "sshd-two"]

    @hookimpl
    def teleport_authorize(self, request: AccessRequest) -> Decision | None:
        if request.verb == SSH and request.identity.name == "mallory" and request.labels.get("group") == "real":
            return Decision.deny("policy: mallory may not reach group=real nodes")
        return None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory, second_factor="off", plugin_objects=[("no_sshd", NoSshdForMallory())]) as e:
        e.signup("mallory", ["dev"], [LOGIN], PASSWORD)
        e.signup("carol", ["dev"], [LOGIN], PASSWORD)
        yield e


@pytest.mark.hook_call_site("teleport_authorize")
def test_a_plugin_in_the_proxy_denies_a_route_the_roles_allow(env: Env, tmp_path: Path) -> None:
    for user in ("mallory", "carol"):
        (tmp_path / user).mkdir()
        assert env.login(tmp_path / user, user).returncode == 0
    refused = env.tsh(tmp_path / "mallory", "ssh", f"{LOGIN}@sshd-node", "echo", "reached")
    assert refused.returncode != 0 and "reached" not in refused.stdout
    assert "policy: mallory may not reach group=real nodes" in refused.stderr
    allowed = env.tsh(tmp_path / "carol", "ssh", f"{LOGIN}@sshd-node", "echo", "reached")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "reached", allowed.stderr

    def audited() -> list[dict[str, object]]:
        events = env.call("search_events")["events"]
        return [e for e in events if e.get("event") == "auth" and e.get("user") == "mallory"
                and "policy: mallory may not reach group=real nodes" in str(e.get("error", ""))]

    [denial] = wait_for(audited, what="the proxy's audited refusal")
    assert denial["code"] == "T3007W"


@pytest.mark.hook_call_site("teleport_node_candidates")
def test_a_lookup_plugin_in_the_proxy_names_a_node(env: Env, tmp_path: Path) -> None:
    """teleport_node_candidates at its real call site: ``tsh ssh db-primary`` reaches the node the
    plugin proposes (sshd-two: its port is in the session's SSH_CONNECTION)."""
    two = next(n for n in env.call("get_nodes") if n["nodename"] == "sshd-two")
    port = two["addr"].rpartition(":")[2]
    assert env.login(tmp_path, "carol").returncode == 0
    reached = env.tsh(tmp_path, "ssh", f"{LOGIN}@db-primary", "echo", "$SSH_CONNECTION")
    assert reached.returncode == 0, reached.stderr
    assert reached.stdout.split()[3] == port
    unknown = env.tsh(tmp_path, "ssh", f"{LOGIN}@db-replica", "true")
    assert unknown.returncode != 0 and "db-replica is offline or does not exist" in unknown.stderr
