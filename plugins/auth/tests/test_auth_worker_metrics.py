"""The leader's ``/metrics`` with auth worker processes (``auth_service.workers: 3``, issue 17):
every live worker's series, labelled ``worker``, in one valid exposition; a stopped or killed
worker is left out (and said so) without holding ``/metrics`` up; nothing on disk or on the
network for another process to read a worker's series from; one process's output unchanged."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.logs import get_logger
from teleport_core.metrics import metrics_for
from teleport_core.net.worker_metrics import (
    ScrapeFailed,
    channel,
    exposition,
    fetch,
    labelled_exposition,
    merge,
    serve_scrapes,
)
from teleport_core.pki import keys
from teleport_core.testing.metrics import Scrape, parse, total
from teleport_core.testing.processes import TeleportProcess, child_pids, free_port, pid_alive
from teleport_core.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

SUBJECT = keys.public_key_openssh(keys.generate_private_key("ed25519"))
WORKERS = 3
ISSUED = "teleport_certificates_issued_total"


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeleportProcess]:
    config = {"auth_service": {"cluster_name": "wmetrics.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "workers": WORKERS, "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path_factory.mktemp("wmetrics"), "auth", config)
    process.start(timeout=180)
    try:
        yield process
    finally:
        process.stop()


def admin(auth: TeleportProcess) -> AuthClient:
    return AuthClient(auth.config["auth_service"]["listen_addr"], [load_identity_dir(auth.data_dir / "keys" / "auth")])


def get_metrics(auth: TeleportProcess) -> str:
    response = httpx.get(f"{auth.diag_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def by_worker(samples: Scrape, name: str, **labels: str) -> dict[str, float]:
    """``name``'s value summed per ``worker`` label."""
    out: dict[str, float] = {}
    wanted = set(labels.items())
    for (sample, pairs), value in samples.items():
        if sample == name and wanted <= set(pairs):
            worker = dict(pairs)["worker"]
            out[worker] = out.get(worker, 0.0) + value
    return out


def up(samples: Scrape) -> dict[str, float]:
    return by_worker(samples, "teleport_worker_up", service="auth_service")


@pytest.mark.timeout(600)  # several teleport start processes on a loaded machine
def test_requests_on_every_process_are_counted_under_their_worker(auth: TeleportProcess) -> None:
    """Certificates requested over fresh connections (each accepted by whichever process the
    kernel picks) appear under several ``worker`` labels, and their sum is exactly the number
    requested."""
    before = parse(get_metrics(auth))
    sent = 0

    async def round_(count: int) -> None:
        async def one() -> None:
            async with admin(auth) as client:
                await client.sign_user_cert("metrics-user", SUBJECT, ttl="1h")

        await asyncio.gather(*(one() for _ in range(count)))

    async def create() -> None:
        async with admin(auth) as client:
            await client.create_user("metrics-user", ["access"], {"logins": ["root"]})

    asyncio.run(create())
    served: dict[str, float] = {}
    for _ in range(30):  # until at least two processes served some (the kernel spreads accept()s)
        asyncio.run(round_(6))
        sent += 6
        after = parse(get_metrics(auth))
        now = by_worker(after, ISSUED, kind="user", format="ssh")
        then = by_worker(before, ISSUED, kind="user", format="ssh")
        served = {worker: now.get(worker, 0.0) - then.get(worker, 0.0) for worker in now}
        if sum(1 for count in served.values() if count > 0) >= 2:
            break
    assert sum(served.values()) == sent, (served, sent)
    assert sum(1 for count in served.values() if count > 0) >= 2, served
    assert set(served) <= {str(i) for i in range(WORKERS)}
    assert up(after) == {str(i): 1.0 for i in range(WORKERS)}
    # every process's own series: its audit events, its backend requests, its CPU
    for name in ("teleport_audit_emit_events", "backend_write_requests_total", "process_cpu_seconds_total"):
        assert set(by_worker(after, name)) == {str(i) for i in range(WORKERS)}, name
    assert total(after, "teleport_audit_emit_events") >= sent


@pytest.mark.timeout(600)
def test_the_output_is_one_valid_exposition_each_family_once(auth: TeleportProcess) -> None:
    text = get_metrics(auth)
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), [n for n, c in Counter(names).items() if c > 1]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    for family in families:
        for sample in family.samples:
            assert sample.labels.get("worker") in {str(i) for i in range(WORKERS)}, sample
    # the leader's own series are there once, as worker 0, beside each worker's
    build = [s for f in families if f.name == "teleport_build_info" for s in f.samples]
    assert sorted(s.labels["worker"] for s in build) == [str(i) for i in range(WORKERS)]


@pytest.mark.timeout(600)
def test_a_stopped_worker_is_left_out_and_metrics_still_answers(auth: TeleportProcess) -> None:
    """A worker that cannot answer (SIGSTOP: its loop never runs) does not hold /metrics up: the
    answer comes after the scrape timeout, without its series, and says so."""
    leader = auth.proc.pid if auth.proc is not None else 0
    victim = child_pids(leader)[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        samples = parse(get_metrics(auth))
        left = [worker for worker, value in up(samples).items() if value == 0.0]
        assert len(left) == 1, up(samples)
        stuck = left[0]
        assert total(samples, "teleport_worker_scrape_failures_total", worker=stuck, reason="timeout") >= 1
        assert stuck not in by_worker(samples, "teleport_build_info")
        assert set(by_worker(samples, "teleport_build_info")) == {str(i) for i in range(WORKERS)} - {stuck}
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_for(lambda: up(parse(get_metrics(auth))) == {str(i): 1.0 for i in range(WORKERS)},
             "the resumed worker back in /metrics", timeout=60)
    assert "auth_service worker left out of /metrics: no answer within" in auth.log()


@pytest.mark.timeout(600)
def test_a_killed_worker_is_left_out_until_its_restart(auth: TeleportProcess) -> None:
    leader = auth.proc.pid if auth.proc is not None else 0
    before = child_pids(leader)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim), "the killed worker gone", timeout=60)
    samples = parse(get_metrics(auth))  # the leader restarts it only after 1 s and a whole start
    states = up(samples)
    assert sorted(states.values()) == [0.0, 1.0, 1.0], states
    gone = next(worker for worker, value in states.items() if value == 0.0)
    failures = by_worker(samples, "teleport_worker_scrape_failures_total", service="auth_service")
    assert failures[gone] >= 1
    assert set(by_worker(samples, "teleport_build_info")) == {str(i) for i in range(WORKERS)} - {gone}
    wait_for(lambda: up(parse(get_metrics(auth))) == {str(i): 1.0 for i in range(WORKERS)},
             "the restarted worker's series in /metrics", timeout=180)


@pytest.mark.timeout(600)
def test_tctl_top_shows_the_leaders_own_process_gauges(auth: TeleportProcess) -> None:
    """``tctl top`` sums counters over every process, but a process's own gauges (its start
    time, plugins loaded) are the leader's: summed over 3 processes they would be nonsense."""
    from teleport_auth.tctl_top import fetch, rows

    snap = fetch(auth.diag_url)
    view = dict(row for _, section in rows(snap) for row in section)
    leader = snap.values("teleport_plugins_loaded", worker="0")
    assert len(leader) == 1 and snap.total("teleport_plugins_loaded") == WORKERS * leader[0]
    assert view["Plugins loaded"] == f"{leader[0]:,.0f}"
    started = snap.values("process_start_time_seconds", worker="0")[0]
    assert snap.own("process_start_time_seconds") == started
    certs = snap.total("teleport_certificates_issued_total")
    assert certs is not None and view["Certificates issued"] == f"{certs:,.0f}"


def unix_sockets() -> dict[int, tuple[int, str]]:
    """Every unix socket of the host: inode -> (flags, path); an abstract path starts with ``@``."""
    found = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        found[int(fields[6])] = (int(fields[3], 16), fields[7] if len(fields) > 7 else "")
    return found


def socket_fds(pid: int) -> dict[int, int]:
    """fd -> socket inode of ``pid``'s open sockets."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            found[int(entry.name)] = int(target[8:-1])
    return found


@pytest.mark.timeout(600)
def test_no_other_process_can_reach_a_workers_series(auth: TeleportProcess) -> None:
    """Attacker: another local process looking for a worker's metrics socket to read (or to
    answer in its place) finds none: no socket file under data_dir, no listening unix socket
    (named or abstract) in any process of the cluster, and the channel a worker inherited is
    closed on exec (its own children never get it)."""
    listening = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix
    leader = auth.proc.pid if auth.proc is not None else 0
    workers = child_pids(leader)
    assert len(workers) == WORKERS - 1
    on_disk = [p for p in auth.data_dir.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
    assert not on_disk
    host = unix_sockets()
    for pid in (leader, *workers):
        for fd, inode in socket_fds(pid).items():
            if inode not in host:
                continue  # a TCP socket (the shared auth listener, connections)
            flags, path = host[inode]
            assert not flags & listening, (pid, fd, path)
            if pid in workers:
                fdinfo = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                mode = int(next(line.split()[1] for line in fdinfo.splitlines() if line.startswith("flags:")), 8)
                assert mode & os.O_CLOEXEC, (pid, fd, path)


@pytest.mark.timeout(600)
def test_one_process_has_no_worker_label(tmp_path: Path) -> None:
    config = {"auth_service": {"cluster_name": "one.example", "listen_addr": f"127.0.0.1:{free_port()}",
                               "authentication": {"second_factor": "off"}},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    process = TeleportProcess(tmp_path, "auth", config)
    process.start(timeout=180)
    try:
        text = get_metrics(process)
    finally:
        process.stop()
    families = list(text_string_to_metric_families(text))
    assert families
    assert not [s for f in families for s in f.samples if "worker" in s.labels]
    assert "teleport_worker_up" not in {f.name for f in families}


# -- the channel and the merge, in this process ------------------------------------------------------


def test_without_workers_the_exposition_is_the_registrys_byte_for_byte() -> None:
    registry = CollectorRegistry()
    metrics_for(registry).user_login.inc()
    assert asyncio.run(exposition(registry)) == generate_latest(registry)


def test_a_scrape_over_the_channel_and_one_that_gets_no_answer() -> None:
    """A real channel: a scrape gets the registry's exposition; with nobody serving the worker's
    end, the scrape fails with ``timeout`` instead of waiting; with the end closed, ``not_running``."""
    registry = CollectorRegistry()
    metrics_for(registry).user_login.inc(3)

    async def body() -> None:
        leader, worker = channel()
        served = serve_scrapes(asyncio.get_running_loop(), registry, 4, get_logger("test"), fd=worker.detach())
        assert served is not None
        try:
            text = await fetch(leader, 5.0)
            assert text == labelled_exposition(registry, 4)
            assert total(parse(text.decode()), "user_login_total", worker="4") == 3
        finally:
            asyncio.get_running_loop().remove_reader(served.fileno())
            served.close()
            leader.close()
        leader, silent = channel()
        with pytest.raises(ScrapeFailed) as failed:
            await fetch(leader, 0.2)
        assert failed.value.reason == "timeout"
        silent.close()
        with pytest.raises(ScrapeFailed) as failed:
            await fetch(leader, 5.0)
        assert failed.value.reason == "not_running"
        leader.close()

    asyncio.run(body())


def test_the_merge_has_each_family_once_and_every_processs_samples() -> None:
    registries = [CollectorRegistry() for _ in range(3)]
    for count, registry in enumerate(registries):
        metrics_for(registry).user_login.inc(count + 1)
        metrics_for(registry).backend_seconds["read"].labels(req="get").observe(0.01)
    results: dict[int, bytes | ScrapeFailed] = {i: labelled_exposition(r, i) for i, r in enumerate(registries) if i}
    text = merge(labelled_exposition(registries[0], 0), results).decode()
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families)
    samples = parse(text)
    assert by_worker(samples, "user_login_total") == {"0": 1.0, "1": 2.0, "2": 3.0}
    assert by_worker(samples, "backend_read_seconds_count", req="get") == {"0": 1.0, "1": 1.0, "2": 1.0}
    alone = merge(labelled_exposition(registries[0], 0), {}).decode()
    assert [f.name for f in text_string_to_metric_families(alone)] == [f.name for f in families]


@pytest.mark.parametrize("answer", [
    b"not { an exposition\n",
    b"# HELP user_login_total x\n# TYPE user_login_total counter\nuser_login_total 5.0\n",  # no worker label
    b'# HELP user_login_total x\n# TYPE user_login_total counter\nuser_login_total{worker="0"} 5.0\n',  # another's
    b'# HELP user_login_total x\n# TYPE user_login_total counter\nother{worker="2"} 5.0\n',  # another family
    b'# HELP user_login_total x\n# TYPE user_login_total counter\nuser_login_total{worker="2"} 5.0',  # cut
])
def test_a_worker_answer_not_well_formed_is_left_out(answer: bytes) -> None:
    """A worker's answer must be ``generate_latest``'s shape with its own label on every sample:
    otherwise it is left out (``error``), and never a 500."""
    registry = CollectorRegistry()
    metrics_for(registry).user_login.inc()
    results: dict[int, bytes | ScrapeFailed] = {1: labelled_exposition(registry, 1), 2: answer}
    samples = parse(merge(labelled_exposition(registry, 0), results).decode())
    assert by_worker(samples, "user_login_total") == {"0": 1.0, "1": 1.0}
    failure = results[2]
    assert isinstance(failure, ScrapeFailed) and failure.reason == "error"
