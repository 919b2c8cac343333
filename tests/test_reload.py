"""Graceful reload by signals (issue 14), with real ``teleport start --pid-file`` processes.

The sample plugin's echo service (it answers ``pid`` with the pid of the process that serves the
connection) shows what the kernel does: ``SIGHUP`` starts a new process on the same listening
sockets and data_dir, which reports ready; the old one stops accepting, drains (a connection
it holds is served to its end) and exits 0; the pid file names the new one. A broken config
leaves the old one serving. ``SIGUSR2`` leaves both serving; ``SIGQUIT`` drains one. An
unrelated process is still refused the data_dir. The full cluster (SSH sessions, scp, tsh, locks
across processes) is in ``tests/test_reload_cluster.py``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from teleport_core.testing.waiting import wait_for
from tests.process_helpers import sample_config
from tests.reload_helpers import Daemon, EchoConnection, alive, echo_pid, free_port, zombie

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    port = free_port()
    config = sample_config(tmp_path / "data", sample={"listen_addr": f"127.0.0.1:{port}"})
    config["teleport"]["diag_addr"] = f"127.0.0.1:{free_port()}"
    d = Daemon(tmp_path, config)
    d.port = port  # type: ignore[attr-defined]
    d.start()
    try:
        yield d
    finally:
        d.stop()


def generation(diag: str) -> float:
    text = httpx.get(f"http://{diag}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("teleport_reload_generation "))
    return float(line.split()[1])


def test_hup_hands_the_listeners_over_and_drains(daemon: Daemon) -> None:
    port = daemon.port  # type: ignore[attr-defined]
    diag = daemon.config["teleport"]["diag_addr"]
    old = daemon.first_pid
    assert daemon.pid() == old and echo_pid(port) == old
    assert generation(diag) == 0
    held = EchoConnection(port)  # served by the old process until we close it
    assert held.ask(b"pid\n") == f"{old}\n".encode()
    new = daemon.reload(signal.SIGHUP)
    assert new != old
    daemon.wait_log(r"draining")
    # new connections (the echo port, diagnostics) reach the new process only
    wait_for(lambda: echo_pid(port) == new, "the new process answers", 30)
    assert all(echo_pid(port) == new for _ in range(20))
    assert generation(diag) == 1
    assert daemon.pid() == new  # written by the new process once ready
    # the old process is draining: the connection it holds is still served, and it waits for it
    assert held.ask(b"still there\n") == b"still there\n"
    assert held.ask(b"pid\n") == f"{old}\n".encode()
    assert daemon.proc is not None and daemon.proc.poll() is None
    held.close()
    assert daemon.proc.wait(30) == 0  # drained, then exited 0
    daemon.wait_log(r"drained")
    assert daemon.pid() == new and alive(new)  # the old one did not remove the new one's pid file
    assert not alive(old)
    assert echo_pid(port) == new


def test_a_broken_config_leaves_the_old_process_serving(daemon: Daemon) -> None:
    port = daemon.port  # type: ignore[attr-defined]
    old = daemon.first_pid
    daemon.write_config(text="teleport: [this is: not a config\n")
    os.kill(old, signal.SIGHUP)
    failed = daemon.wait_log(r"reload failed: the new process did not start: (.*?) pid=(\d+)")[0]
    assert "teleport.yaml" in failed.group(1)  # the log says why: the config it could not read
    child = int(failed.group(2))
    wait_for(lambda: not alive(child), "the failed new process is gone", 30)
    wait_for(lambda: not zombie(child), "the failed new process is reaped", 30)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert echo_pid(port) == old and daemon.pid() == old
    # a new process whose start fails (its port is taken) is reported the same way
    config = yaml.safe_load(yaml.safe_dump(daemon.config))
    with __import__("socket").create_server(("127.0.0.1", 0)) as busy:
        config["sample_after"] = {"enabled": True, "password": "x" * 20,
                                  "listen_addr": f"127.0.0.1:{busy.getsockname()[1]}"}
        daemon.write_config(config)
        os.kill(old, signal.SIGHUP)
        failed = daemon.wait_log(r"reload failed: the new process did not start: (.*?) pid=", count=2)[1]
    assert "cannot listen" in failed.group(1)
    assert echo_pid(port) == old
    # and a good config again: the reload goes through and applies it (sample_after runs)
    config["sample_after"] = {"enabled": True, "password": "x" * 20, "listen_addr": "127.0.0.1:0"}
    daemon.write_config(config)
    new = daemon.reload(signal.SIGHUP)
    assert daemon.proc.wait(30) == 0
    assert echo_pid(port) == new
    events = (Path(daemon.config["teleport"]["data_dir"]) / "sample-events.log").read_text()
    assert "listening sample_after" in events


def test_usr2_leaves_both_serving_and_quit_drains_one(daemon: Daemon, tmp_path: Path) -> None:
    port = daemon.port  # type: ignore[attr-defined]
    old = daemon.first_pid
    new = daemon.reload(signal.SIGUSR2)
    seen = {echo_pid(port) for _ in range(60)}
    assert new in seen or old in seen
    assert daemon.proc is not None and daemon.proc.poll() is None and alive(new)
    # an unrelated process still cannot share the data_dir the two hold
    other = Daemon(tmp_path / "other", yaml.safe_load(yaml.safe_dump(daemon.config)))
    other.config["teleport"]["log"] = {"output": str(tmp_path / "other" / "teleport.log")}
    other.config["teleport"]["diag_addr"] = f"127.0.0.1:{free_port()}"
    other.write_config()
    with pytest.raises(Exception, match="already using data_dir"):
        try:
            other.start()
        finally:
            other.stop()
    # QUIT the new one: it drains (the connection it holds), exits, and the old one reaps it
    held = None
    for _ in range(200):
        conn = EchoConnection(port)
        if conn.ask(b"pid\n") == f"{new}\n".encode():
            held = conn
            break
        conn.close()
    assert held is not None
    os.kill(new, signal.SIGQUIT)
    daemon.wait_log(r"graceful shutdown requested signal=SIGQUIT")
    wait_for(lambda: all(echo_pid(port) == old for _ in range(5)), "only the old process answers", 30)
    assert held.ask(b"pid\n") == f"{new}\n".encode()  # still served while it drains
    assert alive(new)
    held.close()
    wait_for(lambda: not alive(new), "the drained process exits", 30)
    # the old process reaps its child (its SIGCHLD handling runs a moment after the exit)
    wait_for(lambda: not zombie(new), "the old process reaps its drained child", 30)
    assert daemon.proc.poll() is None and echo_pid(port) == old


def test_term_during_a_drain_stops_at_once(daemon: Daemon) -> None:
    port = daemon.port  # type: ignore[attr-defined]
    held = EchoConnection(port)
    assert held.ask(b"pid\n") == f"{daemon.first_pid}\n".encode()
    new = daemon.reload(signal.SIGHUP)
    daemon.wait_log(r"draining")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    daemon.wait_log(r"drain cut short")
    held.close()
    assert echo_pid(port) == new and daemon.pid() == new


def test_the_data_dir_lock_is_handed_over_only_as_the_held_descriptor(tmp_path: Path) -> None:
    from teleport_core.datadir import lock_data_dir
    from teleport_core.errors import DataDirLocked

    held = lock_data_dir(tmp_path)
    assert held.fd is not None
    with pytest.raises(DataDirLocked):
        lock_data_dir(tmp_path)  # a new open file: refused, as for an unrelated process
    with pytest.raises(DataDirLocked):  # a descriptor of another file is not adopted
        lock_data_dir(tmp_path, os.open(tmp_path / "elsewhere", os.O_RDWR | os.O_CREAT))
    held.shared = True  # what a reload does before it starts the new process
    adopted = lock_data_dir(tmp_path, os.dup(held.fd))
    assert adopted.shared and (tmp_path / "teleport.lock").read_text().strip() == str(os.getpid())
    held.close()  # the old process exits: the new one still holds the lock
    with pytest.raises(DataDirLocked):
        lock_data_dir(tmp_path)
    adopted.close()
    lock_data_dir(tmp_path).close()  # the last holder gone: free


def test_a_bad_inherited_listener_list_is_a_clear_error() -> None:
    from teleport_core.errors import TeleportError
    from teleport_core.net.inherit import ENV_FILES, Listeners

    for value, message in (("{not json", "TELEPORT_OS_FILES is invalid"),
                           ('[{"type": "node", "address": "127.0.0.1:1", "fd": 0}]', "is not a socket"),
                           ('[{"type": "node"}]', "TELEPORT_OS_FILES is invalid")):
        with pytest.raises(TeleportError, match=message):
            Listeners.from_environ({ENV_FILES: value})


_SPOOLING_PROCESS = """
import asyncio, sys
from pathlib import Path
from teleport_core.state.audit import new_event
from teleport_core.state.audit_spool import AuditSpool

async def main():
    async def send(event):
        raise RuntimeError("the other process delivers nothing here")
    spool = AuditSpool(Path(sys.argv[1]), send, None)
    print(spool.directory, flush=True)
    for i in range(3):
        await spool.emit(new_event("user.login", "ok", n=i))

asyncio.run(main())
"""


def test_two_processes_never_share_an_audit_spool_folder(tmp_path: Path) -> None:
    """The new process of a reload spools into <folder>.<pid> while the old one owns <folder>;
    once it is gone its events are delivered (in order) by the owner, and its folder removed."""
    import asyncio
    import subprocess
    import sys

    import structlog

    from teleport_core.state.audit import new_event
    from teleport_core.state.audit_spool import AuditSpool

    folder = tmp_path / "audit-spool"
    delivered: list[dict[str, object]] = []

    async def send(event: dict[str, object]) -> None:
        delivered.append(event)

    async def main() -> None:
        spool = AuditSpool(folder, send, structlog.get_logger())
        assert spool.directory == folder
        await spool.emit(new_event("user.login", "ok", n=-1))
        other = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", _SPOOLING_PROCESS, str(folder)],
                                        capture_output=True, text=True, timeout=60, check=False)
        assert other.returncode == 0, other.stderr
        theirs = Path(other.stdout.strip())
        assert theirs != folder and theirs.name.startswith("audit-spool.")
        assert (folder / "events.jsonl").read_bytes().count(b"\n") == 1  # ours alone: not touched
        assert await spool.deliver() == 1
        assert await spool.adopt() == 3
        assert [e["n"] for e in delivered] == [-1, 0, 1, 2]
        assert not theirs.exists()

    asyncio.run(main())


def test_usr2_then_quit_on_the_old_process_hands_over_for_good(daemon: Daemon) -> None:
    port = daemon.port  # type: ignore[attr-defined]
    old = daemon.first_pid
    held = EchoConnection(port)
    assert held.ask(b"pid\n") == f"{old}\n".encode()
    new = daemon.reload(signal.SIGUSR2)
    assert daemon.pid() == new  # the new process wrote the pid file once ready
    os.kill(old, signal.SIGQUIT)
    daemon.wait_log(r"stopped accepting new connections")
    wait_for(lambda: all(echo_pid(port) == new for _ in range(5)), "only the new process answers", 30)
    assert held.ask(b"pid\n") == f"{old}\n".encode()  # the old one drains what it holds
    assert daemon.proc is not None and daemon.proc.poll() is None
    held.close()
    assert daemon.proc.wait(30) == 0
    assert daemon.pid() == new and alive(new) and echo_pid(port) == new
    os.kill(new, signal.SIGTERM)  # the last process removes the pid file it names
    wait_for(lambda: not alive(new), "the new process stops", 30)
    assert not daemon.pid_file.exists()


def test_a_pid_file_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.process_helpers import REPO

    config = tmp_path / "teleport.yaml"
    config.write_text(yaml.safe_dump(sample_config(tmp_path / "data", diag=False)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TELEPORT_PLUGINS": "tests.plugins.sample_service"}
    done = subprocess.run([sys.executable, "-m", "teleport_core.cli.teleport", "start", "-c", str(config),
                           "--pid-file", str(tmp_path / "no-such-dir" / "teleport.pid")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert f"cannot write --pid-file {tmp_path / 'no-such-dir' / 'teleport.pid'}: No such file or directory" \
        in done.stderr
    assert "Traceback" not in done.stderr
