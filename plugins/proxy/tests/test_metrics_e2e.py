"""End to end: a real cluster's ``/metrics`` after heartbeats, a refused and a good login, and
sessions through the proxy (one teleport process: auth, proxy and our node; tsh as a
subprocess). Every counter that should move did, the session gauges went back to zero, and
every metric docs/metrics.md lists and examples/grafana/teleport.json queries is in the scrape.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_helpers import CLUSTER, LOGIN, Env, one_process_config, profile_ssh_config

from teleport_core.metrics import Metrics
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.metrics import (
    Scrape,
    base_name,
    dashboard_expressions,
    documented,
    expression_metrics,
    sample_names,
    scrape,
    total,
)
from teleport_core.testing.prerequisites import missing
from teleport_core.testing.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "a long enough password 123"
NODENAME = "metrics-node"
USER = "metrics-user"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("metrics")
    config = one_process_config(root, NODENAME)
    config["teleport"]["diag_addr"] = "127.0.0.1:0"
    with start_cluster(config, make_plugins(), timeout=120) as cluster:
        e = Env(root, cluster, cluster)
        e.signup(USER, ["access"], [LOGIN], PASSWORD)
        wait_for(lambda: e.call("get_nodes"), "the node in the inventory", timeout=60)
        yield e


def diag(env: Env) -> str:
    url = env.auth_handle.diag_url
    assert url is not None
    return str(url)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def histograms() -> set[str]:
    from prometheus_client import CollectorRegistry

    return {f.name for f in Metrics(CollectorRegistry()).registry.collect() if f.type == "histogram"}


def test_heartbeats_were_sent_received_and_counted(env: Env) -> None:
    samples = scrape(diag(env))
    for kind in ("node", "proxy"):  # each sent one when it started, and auth took it
        assert total(samples, "teleport_heartbeats_sent_total", type=kind) >= 1
        assert total(samples, "teleport_heartbeats_received_total", type=kind) >= 1
        assert total(samples, "teleport_connected_resources", type=kind) == 1
        assert total(samples, "heartbeats_missed_total", type=kind) == 0
    assert total(samples, "auth_generate_requests_total") >= 2  # the proxy's and the node's joins
    assert total(samples, "auth_generate_seconds_count") == total(samples, "auth_generate_requests_total")
    assert total(samples, "teleport_certificates_issued_total", kind="host", format="ssh") >= 2
    assert total(samples, "teleport_reverse_tunnels_connected", type="node") == 0
    assert total(samples, "reverse_tunnels_connected") == 0  # the old name, still there


def test_logins_sessions_bytes_backend_and_audit_move(env: Env, tmp_path: Path) -> None:
    url = diag(env)
    before = scrape(url)
    home = tmp_path / "tsh"
    refused = env.tsh(home, "login", f"--proxy={env.web}", f"--user={USER}", "--insecure", stdin="wrong password\n")
    assert refused.returncode != 0
    logged_in = env.tsh(home, "login", f"--proxy={env.web}", f"--user={USER}", "--insecure",
                        stdin=f"{PASSWORD}\n")
    assert logged_in.returncode == 0, logged_in.stderr
    after_login = scrape(url)
    assert moved(before, after_login, "failed_login_attempts_total") == 1
    assert moved(before, after_login, "user_login_total") == 1
    assert moved(before, after_login, "teleport_certificates_issued_total", kind="user", format="ssh") == 1
    assert moved(before, after_login, "teleport_certificates_issued_total", kind="user", format="tls") == 1

    output = "x" * 100_000
    ran = env.tsh(home, "ssh", f"{LOGIN}@{NODENAME}", "printf", output)
    assert ran.returncode == 0 and ran.stdout == output, ran.stderr
    with_tty = env.tsh(home, "ssh", "-t", f"{LOGIN}@{NODENAME}", "true")
    assert with_tty.returncode == 0, with_tty.stderr
    unknown = env.tsh(home, "ssh", f"{LOGIN}@no-such-node", "true")
    assert unknown.returncode != 0

    def sessions_over() -> Scrape | None:
        samples = scrape(url)
        return samples if (total(samples, "teleport_sessions_active") == 0
                           and total(samples, "proxy_ssh_sessions_total") == 0) else None

    after = wait_for(sessions_over, "every session gauge back to 0", timeout=30, interval=0.2)
    assert moved(before, after, "teleport_sessions_total", service="node", kind="exec") == 1
    assert moved(before, after, "teleport_sessions_total", service="node", kind="interactive") == 1
    assert moved(before, after, "teleport_sessions_total", service="proxy") == 2
    assert total(after, "server_interactive_sessions_total") == 0
    assert moved(before, after, "teleport_connect_to_node_attempts_total") == 3
    assert moved(before, after, "failed_connect_to_node_attempts_total") == 1
    assert moved(before, after, "tx") > len(output)  # the command's output, encrypted, through the proxy
    assert moved(before, after, "rx") > 0
    # the backend behind auth: every request counted and timed
    assert moved(before, after, "backend_requests") > 0
    assert moved(before, after, "backend_read_seconds_count", req="get") > 0
    # auth's audit: the logins and the sessions' events, each timed
    assert moved(before, after, "teleport_audit_emit_events") >= 3  # the refused login, cert.create, the login
    assert moved(before, after, "teleport_audit_emit_seconds_count") == moved(before, after,
                                                                              "teleport_audit_emit_events")
    assert total(after, "audit_failed_emit_events") == 0


def test_openssh_sftp_and_port_forward_through_the_proxy(env: Env, tmp_path: Path) -> None:
    """OpenSSH's sftp and ``ssh -W`` (a direct-tcpip channel to the node) through ``-J`` the
    proxy's SSH port: the node counts an sftp and a port-forward session, the proxy two
    direct-tcpip ones."""
    if not (shutil.which("ssh") and shutil.which("sftp")):
        missing("OpenSSH ssh and sftp are not installed (apt-get install openssh-client)")
    url = diag(env)
    home = tmp_path / "tsh"
    logged_in = env.tsh(home, "login", f"--proxy={env.web}", f"--user={USER}", "--insecure",
                        stdin=f"{PASSWORD}\n")
    assert logged_in.returncode == 0, logged_in.stderr
    config = profile_ssh_config(home, tmp_path / "ssh_config")
    jump = ["-F", str(config), "-J", f"{USER}@127.0.0.1:{env.ssh_port}"]
    target = f"{LOGIN}@{NODENAME}.{CLUSTER}"
    plain_env = {**os.environ, "SSH_AUTH_SOCK": ""}
    before = scrape(url)
    (tmp_path / "batch").write_text("ls /\n")
    listed = subprocess.run(["sftp", *jump, "-b", str(tmp_path / "batch"), target], capture_output=True, text=True,
                            timeout=60, check=False, env=plain_env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    port = url.rpartition(":")[2]  # the diag endpoint is the port forward's destination
    forwarded = subprocess.run(["ssh", *jump, "-W", f"127.0.0.1:{port}", target],
                               input="GET /healthz HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=60,
                               check=False, env=plain_env)
    assert '{"status":"ok"}' in forwarded.stdout, forwarded.stderr[-2000:]

    def sessions_over() -> Scrape | None:
        samples = scrape(url)
        return samples if total(samples, "teleport_sessions_active") == 0 else None

    after = wait_for(sessions_over, "every session gauge back to 0", timeout=30, interval=0.2)
    assert moved(before, after, "teleport_sessions_total", service="node", kind="sftp") == 1
    assert moved(before, after, "teleport_sessions_total", service="node", kind="port-forward") == 1
    assert moved(before, after, "teleport_sessions_total", service="proxy", kind="direct-tcpip") == 2
    assert moved(before, after, "teleport_sessions_total", service="proxy") == 2


def test_every_documented_and_dashboard_metric_is_exported(env: Env) -> None:
    names = sample_names(scrape(diag(env)))
    kinds = histograms()
    exported = {base_name(name, kinds) for name in names}
    missing = documented(ROOT / "docs" / "metrics.md") - exported
    assert not missing, f"docs/metrics.md lists metrics /metrics does not export: {sorted(missing)}"
    for expr in dashboard_expressions(ROOT / "examples" / "grafana" / "teleport.json"):
        for name in expression_metrics(expr):
            assert name in names, f"the dashboard queries {name}, which /metrics does not export ({expr})"
