"""The data_dir lock: exclusive across processes, released on close and when the holder dies."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from teleport_core.datadir import LOCK_FILE, DataDirLock, lock_data_dir
from teleport_core.errors import DataDirLocked, TeleportError
from tests.process_helpers import REPO, wait_for

pytestmark = pytest.mark.timeout(60)

HOLDER = """
import sys, time
from pathlib import Path
from teleport_core.datadir import lock_data_dir
lock = lock_data_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def locked_message(pid: int, data_dir: Path) -> str:
    return f"another teleport process (pid {pid}) is already using data_dir {data_dir}; stop it first or use another data_dir"


def test_creates_a_private_data_dir_and_records_the_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    with lock_data_dir(data_dir) as lock:
        assert lock.held
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert (data_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE((data_dir / LOCK_FILE).stat().st_mode) == 0o600
    assert not lock.held
    assert (data_dir / LOCK_FILE).read_text() == ""


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path)
    with pytest.raises(DataDirLocked) as info:
        lock_data_dir(tmp_path)
    assert str(info.value) == locked_message(os.getpid(), tmp_path)
    first.close()
    first.close()  # idempotent
    with lock_data_dir(tmp_path):
        pass


def test_another_process_holding_the_lock_is_named(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLocked, match=f"^{re.escape(locked_message(holder.pid, tmp_path))}$"):
            lock_data_dir(tmp_path)
        # The kernel drops the lock when the holder is killed, whatever the file still says.
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(holder.pid)
        lock = wait_for(lambda: _try_lock(tmp_path), "the lock to be free", 10)
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        lock.close()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(30)


def _try_lock(path: Path) -> DataDirLock | None:
    try:
        return lock_data_dir(path)
    except DataDirLocked:
        return None


def test_an_existing_data_dir_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    with lock_data_dir(tmp_path):
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_a_file_in_place_of_the_data_dir_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a directory")
    with pytest.raises(TeleportError, match=f"^data_dir {re.escape(str(path))} exists and is not a directory$"):
        lock_data_dir(path)


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / LOCK_FILE).symlink_to(target)
    with pytest.raises(TeleportError, match="cannot open lock file"):
        lock_data_dir(data_dir)
    assert target.read_text() == "keep me"
