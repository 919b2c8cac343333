"""The heartbeat's retry schedule: exponential backoff with full jitter, capped; seventh jitter."""

from __future__ import annotations

import pytest

from teleport_core.api.heartbeat import Backoff, seventh_jitter


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


def test_the_loop_backs_off_while_auth_is_unreachable() -> None:
    """Auth down (a loopback port nobody listens on): every try fails, is counted, and draws its
    delay from the growing backoff bound; nothing is counted as sent."""
    import asyncio
    import ssl

    from teleport_core.api.client import AuthClient, Credentials
    from teleport_core.api.heartbeat import Heartbeat
    from teleport_core.logs import get_logger
    from teleport_core.metrics import metrics_for
    from teleport_core.testing.processes import free_port

    draws: list[float] = []

    def rand() -> float:
        draws.append(0.0)
        return 0.0  # no wait: the schedule is read from the backoff itself

    async def body() -> tuple[int, float, float]:
        metrics = metrics_for(None)
        context = ssl.create_default_context()  # never gets to a handshake: nothing listens
        async with AuthClient(f"127.0.0.1:{free_port()}", credentials=Credentials(context), timeout=2) as client:
            backoff = Backoff(1.0, 8.0, rand=rand)
            beat = Heartbeat("node", lambda: {"uuid": "u", "nodename": "n", "addr": "127.0.0.1:1"},
                             client.upsert_node, lambda: client.keep_alive_node("u"), metrics, get_logger("test"),
                             period=30.0, backoff=backoff)
            task = asyncio.create_task(beat.run())
            while backoff.attempts < 5:
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return (backoff.attempts, metrics.heartbeats_missed.labels(type="node")._value.get(),
                    metrics.heartbeats_sent.labels(type="node")._value.get())

    attempts, missed, sent = asyncio.run(body())
    assert attempts >= 5 and missed >= 5 and sent == 0
    assert len(draws) >= 5  # each failure drew its delay from the backoff
