"""The file-backed rate limiter auth worker processes share (teleport_core.net.shared_rates): it
decides exactly as the in-memory one, several real processes draw from one allowance per source
(none gets more than the burst, however they race), and a file it cannot trust or lock is never
a way around it."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

from teleport_core.config.limits import Rate
from teleport_core.net.limits import RateLimiter
from teleport_core.net.shared_rates import SLOTS, SharedRateLimiter

RATES = (Rate(period=2.0, average=2, burst=3), Rate(period=60.0, average=10, burst=5))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_decides_exactly_as_the_in_memory_limiter(tmp_path: Path) -> None:
    clock = Clock()
    memory = RateLimiter(RATES, clock)
    shared = SharedRateLimiter(RATES, tmp_path / "rates", clock)
    rng = random.Random(17)
    sources = [f"10.0.0.{i}" for i in range(3)]
    refused = 0
    for _ in range(3000):
        clock.now += rng.choice((0.0, 0.0, 0.01, 0.1, 0.4, 3.0))
        source = rng.choice(sources)
        if rng.random() < 0.2:
            memory.refund(source)
            shared.refund(source)
            continue
        expected = memory.take(source)
        got = shared.take(source)
        assert got[1] == expected[1] and abs(got[0] - expected[0]) < 1e-9, (source, got, expected)
        refused += expected[0] > 0
    assert 300 < refused < 2400, refused  # both outcomes were exercised
    shared.close()


def test_the_file_is_private_and_keeps_its_size(tmp_path: Path) -> None:
    shared = SharedRateLimiter(RATES, tmp_path / "rates")
    size = (tmp_path / "rates").stat().st_size
    assert (tmp_path / "rates").stat().st_mode & 0o777 == 0o600
    for i in range(SLOTS * 2):  # more sources than it remembers: the oldest are forgotten
        shared.take(f"192.0.2.{i}")
    assert (tmp_path / "rates").stat().st_size == size
    shared.close()


def test_a_file_with_another_layout_is_laid_out_again(tmp_path: Path) -> None:
    path = tmp_path / "rates"
    path.write_bytes(b"garbage" * 100)
    shared = SharedRateLimiter(RATES, path)
    waits = [shared.take("198.51.100.1")[0] for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0
    shared.close()
    other = SharedRateLimiter(RATES[:1], path)  # another rates config: the old buckets do not fit it
    assert other.take("198.51.100.1") == (0.0, False)
    other.close()


def test_buckets_stamped_in_the_future_count_as_refilled_now(tmp_path: Path) -> None:
    """A file from an earlier boot holds monotonic times later than now: that source is not locked out for ever."""
    clock = Clock()
    clock.now = 10_000.0
    limiter = SharedRateLimiter((Rate(period=2.0, average=2, burst=3),), tmp_path / "rates", clock)
    for _ in range(3):
        assert limiter.take("203.0.113.9")[0] == 0.0
    assert limiter.take("203.0.113.9")[0] > 0
    clock.now = 5.0  # after a reboot
    assert limiter.take("203.0.113.9")[0] > 0  # still no token at once (none was refilled) ...
    clock.now = 7.0
    assert limiter.take("203.0.113.9")[0] == 0.0  # ... but they refill from now on
    limiter.close()


TAKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from teleport_core.config.limits import Rate
    from teleport_core.net.shared_rates import SharedRateLimiter
    limiter = SharedRateLimiter((Rate(period=3600.0, average=1, burst=int(sys.argv[2])),), Path(sys.argv[1]))
    sys.stdin.readline()  # every process starts taking at once
    allowed = sum(limiter.take("192.0.2.77")[0] == 0.0 for _ in range(int(sys.argv[3])))
    print(allowed)
""")


def test_racing_processes_share_one_allowance(tmp_path: Path) -> None:
    """Six processes take 60 times each, at once, from one source's bucket of 25: exactly 25 pass
    (with a bucket per process, up to 6 x 25 would)."""
    path = tmp_path / "rates"
    SharedRateLimiter((Rate(period=3600.0, average=1, burst=25),), path).close()
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(path), "25", "60"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    allowed = [int(proc.communicate(timeout=60)[0]) for proc in procs]
    assert sum(allowed) == 25, allowed


def test_a_group_it_cannot_lock_refuses(tmp_path: Path) -> None:
    """Another process holding the file's locks (stopped mid-take, say) makes takes refuse, not pass."""
    path = tmp_path / "rates"
    limiter = SharedRateLimiter(RATES, path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert limiter.take("192.0.2.1") == (1.0, False)
        limiter.refund("192.0.2.1")  # dropped, without an error
    finally:
        holder.communicate("done\n", timeout=30)
    assert limiter.take("192.0.2.1") == (0.0, False)
    limiter.close()
