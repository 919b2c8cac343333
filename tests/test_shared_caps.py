"""The connection cap auth worker processes share (teleport_core.net.shared_caps): real processes
racing on one file admit exactly the cap between them, a process that died gives its place back,
and a file that cannot be locked, or is a planted symlink, never lets a connection past the cap."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from teleport_core.config.values import NetAddr
from teleport_core.net.limits import Refused
from teleport_core.net.shared_caps import TABLE, ConnectionCap, SharedConnectionCap, host_connections
from teleport_core.net.tlsserver import HTTP1_SERVERS, TLSServer, bind_socket
from tests.test_tlsserver import APP, make_ca, server_context


def admitted(cap: ConnectionCap, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            cap.admit()
        except Refused:
            continue
        count += 1
    return count


def test_one_process_counts_in_memory() -> None:
    cap = ConnectionCap(2, "auth_service")
    assert admitted(cap, 3) == 2
    with pytest.raises(Refused, match=r"auth_service: 2 connections \(max_connections\) are open"):
        cap.admit()
    cap.release()
    assert admitted(cap, 2) == 1


HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from teleport_core.net.limits import Refused
    from teleport_core.net.shared_caps import SharedConnectionCap
    cap = SharedConnectionCap(int(sys.argv[2]), "auth_service", Path(sys.argv[1]))
    print(cap.slot, flush=True)
    sys.stdin.readline()  # every process admits at once
    held = 0
    for _ in range(int(sys.argv[3])):
        try:
            cap.admit()
            held += 1
        except Refused:
            pass
    print(held, flush=True)
    if sys.stdin.readline().strip() == "release":
        for _ in range(held):
            cap.release()
        print("released", flush=True)
        sys.stdin.readline()
    cap.close()
""")


def holder(path: Path, cap: int, attempts: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(cap), str(attempts)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def say(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_racing_processes_admit_exactly_the_cap(tmp_path: Path) -> None:
    """Six processes try 30 admissions each at once under a cap of 25: exactly 25 are admitted in all
    (with a count per process, 6 x 25 would be); once they release, the host count is 0 again."""
    path = tmp_path / "auth-connections"
    procs = [holder(path, 25, 30) for _ in range(6)]
    try:
        slots = [int(proc.stdout.readline()) for proc in procs if proc.stdout is not None]
        assert sorted(slots) == list(range(6))  # a slot each
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        held = [int(proc.stdout.readline()) for proc in procs if proc.stdout is not None]
        assert sum(held) == 25, held
        assert host_connections(path) == 25
        assert [say(proc, "release") for proc in procs] == ["released"] * 6
        assert host_connections(path) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_killed_process_gives_its_place_back(tmp_path: Path) -> None:
    """A process killed with connections counted: the next process short of room resets its slot
    (without that, the cap would be 5 places short for ever), and a process starting later takes
    the slot over with a count of 0."""
    path = tmp_path / "auth-connections"
    mine = SharedConnectionCap(6, "auth_service", path)
    victim = holder(path, 6, 5)
    assert victim.stdout is not None
    victim_slot = int(victim.stdout.readline())
    assert victim_slot != mine.slot
    assert say(victim, "go") == "5"
    assert admitted(mine, 3) == 1  # 5 of the victim's + 1
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert admitted(mine, 10) == 5  # its 5 places came back, not one more
    with pytest.raises(Refused, match="max_connections"):
        mine.admit()
    for _ in range(6):
        mine.release()

    second = holder(path, 6, 4)  # takes the free slot over (the victim's, reset by the sweep)
    assert second.stdout is not None and int(second.stdout.readline()) == victim_slot
    assert say(second, "go") == "4"
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)
    third = holder(path, 6, 6)  # claims the dead slot (count 4) and zeroes it when it starts
    assert third.stdout is not None and int(third.stdout.readline()) == victim_slot
    assert say(third, "go") == "6"
    assert host_connections(path) == 6
    third.kill()
    third.wait(timeout=30)
    mine.close()


def test_counts_it_cannot_lock_refuse_and_a_release_is_not_lost(tmp_path: Path) -> None:
    """Another process holding the counts' lock (stopped mid-admission, say) makes admissions refuse,
    not pass; a release meanwhile is written once the lock is free."""
    path = tmp_path / "auth-connections"
    cap = SharedConnectionCap(2, "auth_service", path)
    assert admitted(cap, 2) == 2
    locker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX, {TABLE}, 0)
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        cap.release()  # not written yet: the file still shows 2
        with pytest.raises(Refused, match="unavailable"):
            cap.admit()  # though this process has room for one
        assert host_connections(path) == 2
    finally:
        locker.communicate("done\n", timeout=30)
    assert admitted(cap, 2) == 1
    assert host_connections(path) == 2
    cap.close()
    assert host_connections(path) == 0


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    (tmp_path / "auth-connections").symlink_to(target)
    with pytest.raises(OSError):
        SharedConnectionCap(2, "auth_service", tmp_path / "auth-connections")
    assert target.read_bytes() == b"keep me"


def test_a_file_of_another_layout_is_laid_out_again(tmp_path: Path) -> None:
    path = tmp_path / "auth-connections"
    path.write_bytes(b"\xff" * 5000)  # huge counts, if they were read as such
    cap = SharedConnectionCap(3, "auth_service", path)
    assert admitted(cap, 4) == 3
    cap.close()


def test_one_descriptor_per_process_holds_its_slot(tmp_path: Path) -> None:
    """The slot's liveness lock is the file description's: a second cap in this process gets another
    slot, and a closed cap's slot is free (its count given back) for the next one."""
    path = tmp_path / "auth-connections"
    first, second = SharedConnectionCap(4, "a", path), SharedConnectionCap(4, "b", path)
    assert first.slot != second.slot
    assert admitted(first, 2) == 2 and admitted(second, 3) == 2
    first.close()
    third = SharedConnectionCap(4, "c", path)
    assert third.slot == first.slot and admitted(third, 3) == 2
    assert host_connections(path) == 4
    second.close()
    third.close()


@pytest.mark.parametrize("http1", HTTP1_SERVERS)
def test_the_listener_refuses_past_the_cap_and_counts_closes(tmp_path: Path, http1: str) -> None:
    """TLSServer with a cap of 2 (one process, in memory): a third connection is closed before its
    handshake and reported to ``on_refused``; once a held one closes, a new one is admitted."""
    ca = make_ca("cluster")
    reported: list[tuple[str, str]] = []

    async def on_refused(peer: str, reason: str) -> None:
        reported.append((peer, reason))

    def connect(port: int) -> ssl.SSLSocket | None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            raw.close()
            return None
        tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        return tls

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(6000):  # a guard against a hang, not a timing assertion
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the server never released the closed connections")

    async def run() -> None:
        cap = ConnectionCap(2, "auth_service")
        server = TLSServer(APP, bind_socket(NetAddr("127.0.0.1", 0)), server_context(tmp_path, ca, "s"),
                           on_refused=on_refused, http1=http1, cap=cap)
        await server.start()
        port = server.address.port
        try:
            first, second = [await asyncio.to_thread(connect, port) for _ in range(2)]
            assert first is not None and second is not None and cap.open == 2
            assert await asyncio.to_thread(connect, port) is None
            assert len(reported) == 1 and reported[0][1] == "auth_service: 2 connections (max_connections) are open"
            assert await asyncio.to_thread(connect, port) is None  # audited once per source and period
            assert len(reported) == 1
            first.close()
            await until(lambda: cap.open == 1)  # the server saw the close
            third = await asyncio.to_thread(connect, port)
            assert third is not None and cap.open == 2
            second.close()
            third.close()
            await until(lambda: cap.open == 0)
        finally:
            await server.stop()

    asyncio.run(run())
