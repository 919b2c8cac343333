"""``tctl top``: the diagnostics view of a real process (its /metrics and /readyz), one snapshot when
not on a terminal, a live view on one (a pty), missing metrics as ``-``, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from teleport_auth.tctl_top import MISSING, Snapshot, parse_metrics

from teleport_core import __version__
from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.processes import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def process(tmp_path_factory):
    root = tmp_path_factory.mktemp("tctl-top")
    config = {"teleport": {"data_dir": str(root / "data"), "nodename": "auth-1", "diag_addr": "127.0.0.1:0"},
              "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        addr = handle.process.services["auth_service"].address

        async def sign() -> None:  # a user and its certificates: the counters move
            async with AuthClient(addr, [load_identity_dir(root / "data" / "keys" / "auth")]) as admin:
                await admin.create_user("topper", ["access"])
                await admin.sign_user_cert("topper", keys.public_key_openssh(keys.generate_private_key("ed25519")))

        asyncio.run(sign())
        yield handle


def tctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teleport_core.cli.tctl", "top", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def scraped_total(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_json_snapshot_matches_the_process_metrics(process):
    url = process.diag_url
    done = tctl(url, "--format=json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["Process"]["Version"] == __version__
    assert view["Process"]["Ready services"] == "all"
    issued = scraped_total(url, "teleport_certificates_issued_total")
    assert issued >= 2  # the user's SSH and TLS certificates
    assert view["Auth"]["Certificates issued"] == f"{issued:,.0f}"
    assert "user 2" in view["Auth"]["  by kind"]
    assert view["Backend and audit"]["Audit events emitted"] != MISSING
    reads = view["Backend and audit"]["Backend reads p50 / p95"]
    assert reads.endswith(" ms") or reads.endswith(" s"), reads


def test_not_a_terminal_prints_one_snapshot_and_exits(process):
    done = tctl(process.diag_url.removeprefix("http://"), "1s")  # no --once: stdout is a pipe
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"teleport diagnostics at {process.diag_url} (")
    for title in ("Process", "Auth", "Sessions and connections", "Backend and audit"):
        assert f"\n{title}" in out
    assert "Certificates issued" in out and "Audit backlog" in out


def test_live_view_on_a_terminal_refreshes_until_ctrl_c(process):
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "teleport_core.cli.tctl", "top", process.diag_url, "1s"],
                            stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "100", "LINES": "60"})
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"Certificates issued") < 2:  # drawn, then redrawn after a refresh
            assert time.monotonic() < deadline, seen[-2000:]
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                seen += os.read(primary, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(primary)
    assert b"\x1b[?1049h" in seen  # the alternate screen, given back on exit


def test_missing_metrics_show_as_dash_and_quantiles_interpolate():
    text = """# TYPE teleport_audit_emit_seconds histogram
teleport_audit_emit_seconds_bucket{le="0.01"} 50
teleport_audit_emit_seconds_bucket{le="0.1"} 90
teleport_audit_emit_seconds_bucket{le="+Inf"} 100
teleport_audit_emit_seconds_count 100
teleport_audit_emit_seconds_sum 3
# TYPE user_login_total counter
user_login_total 7
"""
    snap = Snapshot(parse_metrics(text), None, time.time())
    assert snap.quantile("teleport_audit_emit_seconds", 0.5) == pytest.approx(0.01)
    assert snap.quantile("teleport_audit_emit_seconds", 0.7) == pytest.approx(0.01 + 0.09 * 0.5)
    assert snap.quantile("teleport_audit_emit_seconds", 0.95) == pytest.approx(0.1)  # in +Inf: its lower bound
    from teleport_auth.tctl_top import rows

    view = {label: value for _, section in rows(snap) for label, value in section}
    assert view["Logins"] == "7" and view["Audit emit p50 / p95"] == "10.0 ms / 100.0 ms"
    assert view["Version"] == view["Uptime"] == view["Ready services"] == view["Reverse tunnels"] == MISSING


def test_unreachable_address_is_one_clear_line(tmp_path: Path):
    port = free_port()
    done = tctl(f"127.0.0.1:{port}", "--once")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"ERROR: cannot reach the diagnostics endpoint at http://127.0.0.1:{port}: ")
    assert done.stderr.rstrip().endswith("(is teleport running with --diag-addr or teleport.diag_addr?)")


@pytest.mark.parametrize(("args", "message"), [
    (("ftp://127.0.0.1:3000",), 'ERROR: DIAG_ADDR: expected host:port or http://host:port, got "ftp://127.0.0.1:3000" '
                                "(unknown scheme ftp)"),
    (("127.0.0.1:3000", "soon"), 'ERROR: REFRESH: expected a duration like "5s" or "1m", got "soon"'),
    (("127.0.0.1:3000", "0s"), 'ERROR: REFRESH: must be positive, got "0s"'),
    (("127.0.0.1:3000", "5s", "extra"), 'ERROR: tctl top: unrecognized arguments: extra (see "tctl top --help")'),
])
def test_bad_arguments_are_one_clear_line(args, message):
    done = tctl(*args)
    assert done.returncode == 1 and done.stderr.strip() == message
