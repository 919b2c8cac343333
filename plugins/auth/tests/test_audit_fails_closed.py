"""Auth's audit on real full filesystems (issue 20, item 3): no action acknowledged without its event.

A real auth server (in-process cluster, ``tctl`` as a subprocess) with its JSON audit log on one
1 MiB tmpfs and its audit spool (``data_dir/log/auth-audit-spool``) on another:

(a) the audit log's disk full, the spool's not: actions succeed, their events wait in the spool
    (``teleport_audit_events_pending`` > 0), and once space returns every event of every
    acknowledged action is in the log exactly once, with no torn line;
(b) the spool's disk full too: a state-changing call is refused (503, "audit log unavailable: ...")
    and changes nothing, ``/readyz`` answers 503 with that reason; once space returns the same
    call succeeds and ``/readyz`` is 200 again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tctl_helpers import TctlCluster

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.errors import AuditUnavailable, NotFound
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster
from teleport_core.testing.fulldisk import fill, small_tmpfs
from teleport_core.testing.metrics import scrape, total
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.slow  # scheduled among the first files (docs/testing.md)
PENDING = re.compile(r'^teleport_audit_events_pending\{service="auth"\} (\S+)$', re.MULTILINE)
REFUSED = re.compile(r"^ERROR: audit log unavailable: cannot write the audit spool .*auth-audit-spool: "
                     r"No space left on device$")


def role(name: str) -> dict[str, Any]:
    return {"kind": "role", "version": "v5", "metadata": {"name": name},
            "spec": {"allow": {"rules": [{"resources": ["role"], "verbs": ["read"]}]}}}


@contextlib.contextmanager
def audited_cluster(root: Path, events_dir: Path) -> Iterator[TctlCluster]:
    config: dict[str, Any] = {
        "teleport": {"data_dir": str(root / "data"), "nodename": "auth-1", "diag_addr": "127.0.0.1:0",
                     "storage": {"audit_events_uri": [f"file://{events_dir}?server_id=auth-1"]}},
        "auth_service": {"cluster_name": "example.com", "listen_addr": "127.0.0.1:0"},
        "proxy_service": {"enabled": False},
        "ssh_service": {"enabled": False},
    }
    with start_cluster(config, make_plugins(), timeout=60) as handle:
        address = handle.process.services["auth_service"].address
        config_file = root / "teleport.yaml"
        config_file.write_text(yaml.safe_dump({**config, "auth_service": {**config["auth_service"],
                                                                          "listen_addr": address}}))
        yield TctlCluster(handle, root, config_file)


def pending(cluster: TctlCluster) -> float:
    match = PENDING.search(httpx.get(f"{cluster.handle.diag_url}/metrics").text)
    assert match, "no teleport_audit_events_pending{service=\"auth\"} in /metrics"
    return float(match.group(1))


def readyz(cluster: TctlCluster) -> httpx.Response:
    return httpx.get(f"{cluster.handle.diag_url}/readyz")


def logged(events_dir: Path) -> list[dict[str, Any]]:
    """Every event in the JSON log; each line must be whole (no torn line anywhere)."""
    out: list[dict[str, Any]] = []
    for path in sorted(events_dir.rglob("*.log")):
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{path} ends with a torn line: {data[-80:]!r}"
        out.extend(json.loads(line) for line in data.splitlines())
    return out


def exactly_once(events: list[dict[str, Any]], kind: str, **fields: str) -> None:
    matching = [e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]
    assert len(matching) == 1, f"{kind} {fields}: {len(matching)} events in the log"


def raw_create_role(cluster: TctlCluster, name: str) -> httpx.Response:
    async def main() -> httpx.Response:
        async with AuthClient(cluster.addr, [load_identity_dir(cluster.data_dir / "keys" / "auth")]) as client:
            return await client._request("POST", "/v1/roles", json=role(name))

    return asyncio.run(main())


def test_no_action_is_acknowledged_without_its_event(tmp_path: Path) -> None:
    spool_dir = tmp_path / "data" / "log" / "auth-audit-spool"
    with small_tmpfs(tmp_path / "audit") as audit_fs, small_tmpfs(spool_dir) as spool_fs:
        events_dir = audit_fs / "events"
        with audited_cluster(tmp_path, events_dir) as cluster:
            cluster.ok("users", "add", "before", "--roles=access")
            # (a) the audit log's disk is full; the spool (on another disk) still writes
            filler = fill(audit_fs)
            acknowledged = [f"full-{i}" for i in range(40)]  # more than the log file's last page holds
            for name in acknowledged:
                cluster.call("create_role", role(name))
            cluster.ok("users", "add", "alice", "--roles=access")
            assert pending(cluster) > 0  # waiting in the spool, not lost
            assert readyz(cluster).status_code == 200  # the spool works: auth stays ready
            filler.unlink()
            wait_for(lambda: pending(cluster) == 0, "the spool to drain into the audit log", timeout=60)
            events = logged(events_dir)
            uids = Counter(e["uid"] for e in events)
            assert [uid for uid, n in uids.items() if n > 1] == []  # exactly once
            for name in acknowledged:
                exactly_once(events, "role.created", name=name)
            exactly_once(events, "user.create", name="alice")
            exactly_once(events, "user.create", name="before")

            # (b) the spool's disk is full too: nothing state-changing is acknowledged
            assert total(scrape(str(cluster.handle.diag_url)), "audit_failed_emit_events") == 0  # none so far
            fill(spool_fs)
            for _attempt in range(200):  # what still fits in the spool file's last page is written
                created = cluster.tctl("tokens", "add", "--type=node")
                if created.returncode:
                    break
            else:
                pytest.fail("the audit spool never filled up")
            assert REFUSED.fullmatch(created.stderr.strip()), created.stderr  # that action: not acknowledged
            assert REFUSED.fullmatch(cluster.error("users", "add", "bob", "--roles=access"))
            answer = raw_create_role(cluster, "refused-role")
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"].startswith("audit log unavailable: cannot write the audit spool ")
            with pytest.raises(AuditUnavailable, match="^audit log unavailable: "):
                cluster.call("create_role", role("refused-role"))
            ready = readyz(cluster)
            assert ready.status_code == 503
            reason = ready.json()["services"]["auth_service"]["reason"]
            assert reason.startswith("audit log unavailable: cannot write the audit spool "), reason
            assert "No space left on device" in reason
            # the event that could not be written is counted (docs/metrics.md)
            assert total(scrape(str(cluster.handle.diag_url)), "audit_failed_emit_events") >= 1
            with pytest.raises(NotFound):  # reads still work, and nothing was changed
                cluster.call("get_user", "bob")
            with pytest.raises(NotFound):
                cluster.call("get_role", "refused-role")

            (spool_fs / "filler").unlink()  # space returns: ready again without any call
            wait_for(lambda: readyz(cluster).status_code == 200, "/readyz to answer 200 again", timeout=30)
            cluster.ok("users", "add", "bob", "--roles=access")
            cluster.call("create_role", role("refused-role"))
            wait_for(lambda: pending(cluster) == 0, "the spool to drain", timeout=60)
            events = logged(events_dir)
            assert [uid for uid, n in Counter(e["uid"] for e in events).items() if n > 1] == []
            exactly_once(events, "user.create", name="bob")
            exactly_once(events, "role.created", name="refused-role")


def test_a_backlog_survives_a_stop_and_is_delivered_at_the_next_start(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "audit") as audit_fs:
        events_dir = audit_fs / "events"
        with audited_cluster(tmp_path, events_dir) as cluster:
            cluster.ok("users", "add", "before", "--roles=access")
            filler = fill(audit_fs)
            names = [f"kept-{i}" for i in range(40)]
            for name in names:
                cluster.call("create_role", role(name))
            assert pending(cluster) > 0
        # stopped with a backlog (the drain on stop is bounded); the events wait in the spool
        queues = list((tmp_path / "data" / "log" / "auth-audit-spool").glob("to-*/events.jsonl"))  # one per sink
        assert len(queues) == 1 and queues[0].stat().st_size > 0
        filler.unlink()
        with audited_cluster(tmp_path, events_dir) as cluster:
            wait_for(lambda: pending(cluster) == 0, "the spool to drain after the restart", timeout=60)
            events = logged(events_dir)
            assert [uid for uid, n in Counter(e["uid"] for e in events).items() if n > 1] == []
            for name in names:
                exactly_once(events, "role.created", name=name)
            assert [e["name"] for e in events if e["event"] == "role.created"] == names  # in order
