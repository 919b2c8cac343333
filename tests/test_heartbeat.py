"""The heartbeat's retry schedule: exponential backoff with full jitter, capped; seventh jitter."""

from __future__ import annotations

import pytest

from teleport_core.heartbeat import Backoff, seventh_jitter


def test_backoff_doubles_its_bound_up_to_the_maximum_with_full_jitter() -> None:
    top = Backoff(1.0, 10.0, rand=lambda: 1.0)
    assert [top.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    top.reset()
    assert top.next() == 1.0  # a success starts over
    bottom = Backoff(1.0, 10.0, rand=lambda: 0.0)
    assert [bottom.next() for _ in range(3)] == [0.0, 0.0, 0.0]  # full jitter: anywhere from 0
    half = Backoff(2.0, 90.0, rand=lambda: 0.5)
    assert [half.next() for _ in range(3)] == [1.0, 2.0, 4.0]
    many = Backoff(1.0, 90.0)
    delays = [many.next() for _ in range(200)]  # no overflow after many failures, always within the cap
    assert all(0.0 <= d <= 90.0 for d in delays)


@pytest.mark.parametrize(("first", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_refuses_bad_bounds(first: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff: need 0 < first"):
        Backoff(first, maximum)


def test_seventh_jitter_takes_at_most_a_seventh_off() -> None:
    assert seventh_jitter(70.0, lambda: 0.0) == 70.0
    assert seventh_jitter(70.0, lambda: 1.0) == pytest.approx(60.0)
    assert all(60.0 - 1e-9 <= seventh_jitter(70.0) <= 70.0 for _ in range(100))
