"""Uploads of one recording racing in several auth processes on one host (``auth_service.workers``):
the ``flock`` per session ID (:func:`teleport_auth.uploads.session_lock`) around "is one stored? then
store" makes exactly one upload store its bytes and the other get ``recordings are never replaced``.
The race runs in two real processes, many times; the lock's file is private and does not pile up,
a wait for it is bounded, and a cancelled waiter leaves no lock behind."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from teleport_auth.uploads import UPLOAD_LOCKS_DIR, UploadGate, session_lock

from teleport_core.errors import AlreadyExists, CompareFailed
from teleport_core.state.backends.file_sessions import FileSessionStorage

ROUNDS = 60  # sessions both processes upload at the same moment, each with its own bytes


def racer(index: int, root: str, barrier: Any, results: Any) -> None:
    """One auth process: for each round, upload its own recording of session ``race-<round>`` the
    moment the other process is ready to upload its own."""

    async def main() -> None:
        base = Path(root)
        storage = FileSessionStorage(base / "records")
        gate = UploadGate(base / "log" / UPLOAD_LOCKS_DIR)
        for round_ in range(ROUNDS):
            sid = f"race-{round_}"
            data = f"process {index} round {round_}\n".encode() * 64
            path = base / f"upload-{index}-{round_}.cast"
            path.write_bytes(data)
            await asyncio.to_thread(barrier.wait)
            try:
                stored = await gate.store(storage, sid, path, hashlib.sha256(data).hexdigest())
                outcome = "stored" if stored else "unchanged"
            except AlreadyExists as exc:
                outcome = f"refused: {exc}"
            results.put((round_, index, outcome))

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_two_processes_uploading_one_session_store_one_recording_and_refuse_the_other(tmp_path: Path) -> None:
    (tmp_path / "records").mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [context.Process(target=racer, args=(index, str(tmp_path), barrier, results)) for index in (0, 1)]
    for process in processes:
        process.start()
    outcomes: dict[int, dict[int, str]] = {}
    for _ in range(2 * ROUNDS):
        round_, index, outcome = results.get(timeout=120)
        outcomes.setdefault(round_, {})[index] = outcome
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for round_ in range(ROUNDS):
        answers = outcomes[round_]
        stored = [index for index, outcome in answers.items() if outcome == "stored"]
        refused = [index for index, outcome in answers.items() if outcome.startswith("refused: ")]
        assert len(stored) == 1 and len(refused) == 1, f"round {round_}: {answers}"
        assert "recordings are never replaced" in answers[refused[0]]
        kept = (tmp_path / "records" / f"race-{round_}.cast").read_bytes()
        assert kept == f"process {stored[0]} round {round_}\n".encode() * 64, f"round {round_}: replaced"
    assert os.listdir(tmp_path / "log" / UPLOAD_LOCKS_DIR) == []  # every lock file removed after its upload


def test_the_lock_file_is_private_and_removed_and_a_second_holder_waits_a_bounded_time(tmp_path: Path) -> None:
    locks = tmp_path / "log" / UPLOAD_LOCKS_DIR

    async def body() -> None:
        async with session_lock(locks, "s-1"):
            info = os.stat(locks / "s-1.lock", follow_symlinks=False)
            assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
            assert stat.S_IMODE(os.stat(locks).st_mode) == 0o700
            with pytest.raises(CompareFailed, match="another upload of session s-1 is still in progress"):
                async with session_lock(locks, "s-1", wait=0.2):
                    pytest.fail("two holders of one session's upload lock")
            async with session_lock(locks, "s-2", wait=0.2):  # another session is not held up
                assert sorted(os.listdir(locks)) == ["s-1.lock", "s-2.lock"]
        assert os.listdir(locks) == []
        async with session_lock(locks, "s-1", wait=0.2):  # free again
            pass

    asyncio.run(body())


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    """Attacker with write access to the lock folder plants ``<sid>.lock`` -> a file elsewhere: the
    upload fails rather than creating or locking the target."""
    locks = tmp_path / "log" / UPLOAD_LOCKS_DIR
    locks.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (locks / "s-1.lock").symlink_to(target)

    async def body() -> None:
        async with session_lock(locks, "s-1", wait=0.2):
            pytest.fail("locked through a symlink")

    with pytest.raises(OSError):
        asyncio.run(body())
    assert not target.exists()


def test_a_cancelled_waiter_leaves_no_lock_behind(tmp_path: Path) -> None:
    locks = tmp_path / "log" / UPLOAD_LOCKS_DIR

    async def body() -> None:
        waiting = None
        async with session_lock(locks, "s-1"):
            waiting = asyncio.create_task(_hold(locks))
            await asyncio.sleep(0.05)  # the waiter polls for the held lock
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        async with session_lock(locks, "s-1", wait=5):  # nobody holds it now
            pass
        assert os.listdir(locks) == []

    asyncio.run(body())


async def _hold(locks: Path) -> None:
    async with session_lock(locks, "s-1", wait=60):
        pytest.fail("the waiter got a lock still held")
