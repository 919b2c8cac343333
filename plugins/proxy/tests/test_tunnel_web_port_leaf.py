"""A leaf cluster joined through the root's web port only (TLS routing, issue 19).

The root (a ``teleport start`` process: auth and proxy) runs with ``proxy_listener_mode: multiplex``:
it has no tunnel port. The leaf's ``trusted_cluster`` gives ``tunnel_addr`` = the root's web address,
so the leaf's proxy dials it in TLS with ALPN ``teleport-reversetunnel`` (``--insecure``: the root's
web certificate is self-signed; the root proxy is authenticated by its SSH host certificate inside).
A root user reaches the leaf's node with ``tsh ssh --cluster``. Pointed at the port the root does not
open, the leaf says so in its log (an ERROR, once) and keeps trying until the address is corrected."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from test_trusted_clusters_e2e import LEAF, LOGIN, ROOT, Env, joined

from teleport_core.config.load import Flags
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def multiplex(config: dict[str, Any]) -> None:
    """The root with no tunnel port."""
    del config["proxy_service"]["tunnel_listen_addr"]
    config["proxy_service"]["proxy_listener_mode"] = "multiplex"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with joined(tmp_path_factory, root_config=multiplex, leaf_flags=Flags(insecure=True),
                tunnel_addr=lambda root: root.web) as e:
        yield e


def test_the_leaf_tunnels_to_the_roots_web_port(env: Env) -> None:
    agent = env.leaf_handle.process.services["proxy_service"].clusters.agents[ROOT]
    assert agent.tls and str(agent.tunnel_addr) == env.root.web
    found = json.loads(env.tsh("clusters", "--format=json").stdout)
    assert {c["cluster_name"]: c["status"] for c in found} == {ROOT: "online", LEAF: "online"}
    connects = wait_for(lambda: [e for e in env.root.events("reverse_tunnel.connect")
                                 if e.get("leaf_cluster") == LEAF], "the tunnel's connect event at the root")
    assert connects[0]["tunnel_type"] == "proxy"
    # the root has no tunnel port: the web port (ALPN teleport-reversetunnel) is the only way in
    found_ssh = httpx.get(f"https://{env.root.web}/webapi/find", verify=False, timeout=30).json()["proxy"]["ssh"]
    assert found_ssh["tunnel_listen_addr"] == "" and found_ssh["ssh_tunnel_public_addr"] == ""


def test_tsh_ssh_to_the_leaf_node_through_the_web_port_tunnel(env: Env) -> None:
    done = env.tsh("ls", f"--cluster={LEAF}", "--format=json")
    assert done.returncode == 0, done.stderr
    assert [n["nodename"] for n in json.loads(done.stdout)] == ["leaf-node"]
    done = env.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@leaf-node", "echo", "hello through the web port")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello through the web port\n"
    starts = wait_for(lambda: [e for e in env.leaf.events("session.start") if e.get("user") == "alice"],
                      "the leaf's session.start")
    assert starts[0]["cluster_name"] == LEAF and starts[0]["user_cluster"] == ROOT


def test_a_tunnel_addr_the_root_does_not_open_is_logged_once_and_retried(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """(Last: it points the trust at a closed port, then back at the web address.)"""
    caplog.set_level(logging.DEBUG, logger="teleport")
    proxy = env.leaf_handle.process.services["proxy_service"]
    before = proxy.clusters.agents[ROOT]
    closed = f"127.0.0.1:{env.root_process.tunnel_port}"  # a tunnel port: the multiplex root has none
    tc = json.loads(env.leaf.ok("get", f"trusted_cluster/{ROOT}", "--format=json"))[0]
    tc["spec"]["tunnel_addr"] = closed
    env.leaf.ok("create", "-f", "-", input=yaml.safe_dump(tc))
    agent = wait_for(lambda: (a := proxy.clusters.agents.get(ROOT)) is not before and a,
                     "the leaf to dial the new tunnel_addr")
    expected = (f"connection refused at {closed}: is the root proxy's tunnel port open? "
                "with proxy_listener_mode: multiplex, set tunnel_addr to its web address")

    def reasons(level: int) -> list[str]:
        return [r.msg.get("reason") for r in caplog.records
                if r.levelno == level and isinstance(r.msg, dict) and r.msg.get("proxy", "").startswith(ROOT)]

    wait_for(lambda: agent.reconnects >= 3, "three refused attempts")
    assert reasons(logging.ERROR) == [expected]  # once; the agent keeps trying
    line = next(r for r in caplog.records if r.levelno == logging.ERROR and isinstance(r.msg, dict)
                and r.msg.get("reason") == expected)
    assert line.msg["event"] == "cannot open the reverse tunnel, will keep retrying"
    assert expected in reasons(logging.DEBUG) and agent.last_error == expected and agent.stopped is False
    assert proxy.diagnostics()["trusted_clusters"] == [{"name": ROOT, "enabled": True, "tunnel_addr": closed,
                                                        "connected": False, "last_error": expected}]
    wait_for(lambda: env.clusters().get(LEAF) == "offline", "the leaf offline at the root")  # as Teleport shows it
    # the operator follows the hint: the web address; the leaf dials it without a restart
    tc["spec"]["tunnel_addr"] = env.root.web
    env.leaf.ok("create", "-f", "-", input=yaml.safe_dump(tc))
    wait_for(lambda: (a := proxy.clusters.agents.get(ROOT)) is not agent and a is not None and a.connected.is_set(),
             "the tunnel through the web address", timeout=120)
    wait_for(env.leaf_online, "the leaf online again")
    assert reasons(logging.ERROR) == [expected]
