"""The etcd batchers' metrics on a real etcd: ``teleport_etcd_batch_size{operation}`` (requests per
etcd call) and ``teleport_etcd_batch_retries_total{operation, reason}`` move as puts, reads and
keepalives are batched, a conflict or a refusal makes a batch's requests decided one by one, and a
process that opens the etcd backend exports them in its registry (and drops them at close)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from etcd_server import EtcdMember, etcd_fixture, revoke_lease_of
from prometheus_client import CollectorRegistry, generate_latest
from test_etcd_backend import config, opened, run

from teleport_core.config.load import parse_config
from teleport_core.errors import NotFound, TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.resources import ProcessResources
from teleport_core.state.backend import Backend, Item

__all__ = ["etcd_fixture"]

OPERATIONS = ("put", "get", "keep_alive")


def later(minutes: int) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).replace(microsecond=0)


def key(i: int) -> bytes:
    return f"/bm/{i:03d}".encode()


def registered(b: Backend) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in b.collectors():
        registry.register(collector)
    return registry


class Counts:
    """The batch metrics of one registry, read at once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.values = {
            (name, labels): registry.get_sample_value(name, dict(labels)) or 0.0
            for name, labels in self._series()
        }

    @staticmethod
    def _series() -> list[tuple[str, tuple[tuple[str, str], ...]]]:
        out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        for op in OPERATIONS:
            out += [("teleport_etcd_batch_size_count", (("operation", op),)),
                    ("teleport_etcd_batch_size_sum", (("operation", op),)),
                    ("teleport_etcd_batch_size_bucket", (("le", "1.0"), ("operation", op)))]
            for reason in ("refused", "conflict") if op == "keep_alive" else ("refused",):
                out.append(("teleport_etcd_batch_retries_total", (("operation", op), ("reason", reason))))
        return out

    def calls(self, op: str) -> float:
        return self.values[("teleport_etcd_batch_size_count", (("operation", op),))]

    def carried(self, op: str) -> float:
        return self.values[("teleport_etcd_batch_size_sum", (("operation", op),))]

    def alone(self, op: str) -> float:
        return self.values[("teleport_etcd_batch_size_bucket", (("le", "1.0"), ("operation", op)))]

    def retries(self, op: str, reason: str) -> float:
        return self.values[("teleport_etcd_batch_retries_total", (("operation", op), ("reason", reason)))]

    def since(self, before: Counts) -> Counts:
        moved = Counts.__new__(Counts)
        moved.registry = self.registry
        moved.values = {k: v - before.values[k] for k, v in self.values.items()}
        return moved


def test_every_series_is_exported_from_the_start(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            text = generate_latest(registered(b)).decode()
            for op in OPERATIONS:
                assert f'teleport_etcd_batch_size_count{{operation="{op}"}} 0.0' in text
                assert f'teleport_etcd_batch_retries_total{{operation="{op}",reason="refused"}} 0.0' in text
            assert 'teleport_etcd_batch_retries_total{operation="keep_alive",reason="conflict"} 0.0' in text
            assert "# TYPE teleport_etcd_batch_size histogram" in text
        finally:
            await b.close()

    run(body)


def test_batch_sizes_count_each_etcd_call_and_the_requests_it_carried(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        registry = registered(b)
        try:
            count = 200
            start = Counts(registry)
            await asyncio.gather(*(b.put(Item(key(i), f"v{i}".encode(), later(10))) for i in range(count)))
            puts = Counts(registry).since(start)
            # every put carried once, by fewer calls than puts: some calls carried several
            assert puts.carried("put") == count
            assert puts.calls("put") == b._puts.calls  # type: ignore[attr-defined]
            assert 1 <= puts.calls("put") < count and puts.alone("put") < puts.calls("put")
            assert puts.carried("keep_alive") == puts.carried("get") == 0

            mark = Counts(registry)
            got = await asyncio.gather(*(b.get(key(i)) for i in range(count)))
            assert [g.value for g in got] == [f"v{i}".encode() for i in range(count)]
            gets = Counts(registry).since(mark)
            assert gets.carried("get") == count and 1 <= gets.calls("get") < count

            for minutes in (20, 30):  # unknown keys (each read first, through the get batcher), then remembered
                mark = Counts(registry)
                expires = later(minutes)
                renewed = await asyncio.gather(*(b.keep_alive(key(i), expires) for i in range(count)))
                assert all(item.expires == expires for item in renewed)
                kept = Counts(registry).since(mark)
                assert kept.carried("keep_alive") == count, minutes
                assert 1 <= kept.calls("keep_alive") < count and kept.alone("keep_alive") < kept.calls("keep_alive")
                assert kept.carried("get") == (count if minutes == 20 else 0)
                assert kept.carried("keep_alive") / kept.calls("keep_alive") > 1  # the mean batch size
                assert kept.retries("keep_alive", "conflict") == kept.retries("keep_alive", "refused") == 0
        finally:
            await b.close()

    run(body)


def test_a_conflict_in_a_keepalive_batch_counts_one_retry(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        other = await opened(config([etcd.url], prefix=b.prefix.decode()), tmp_path)  # type: ignore[attr-defined]
        registry = registered(b)
        try:
            count = 40
            await asyncio.gather(*(b.put(Item(key(i), b"old", later(10))) for i in range(count)))
            await asyncio.gather(*(b.keep_alive(key(i), later(15)) for i in range(count)))  # remembered now
            mark = Counts(registry)
            await other.delete(key(7))  # another auth server deletes a key behind b's back
            outcomes = await asyncio.gather(*(b.keep_alive(key(i), later(25)) for i in range(count)),
                                            return_exceptions=True)
            assert isinstance(outcomes[7], NotFound), outcomes[7]
            moved = Counts(registry).since(mark)
            assert moved.retries("keep_alive", "conflict") >= 1  # the batch holding key 7 applied nothing
            assert moved.retries("keep_alive", "refused") == 0
            # each keepalive of that batch then decided alone (its own guarded transaction, not a batcher's)
            assert moved.carried("keep_alive") == count
            assert all(isinstance(o, Item) for i, o in enumerate(outcomes) if i != 7)
        finally:
            await other.close()
            await b.close()

    run(body)


def test_a_batch_etcd_refuses_counts_one_retry_and_its_requests_again(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        registry = registered(b)
        try:
            count = 20
            await asyncio.gather(*(b.put(Item(key(i), b"v", later(10))) for i in range(count)))
            doomed = later(120)  # a lease window of its own
            await b.put(Item(b"/bm/doomed", b"x", doomed))
            await b.put(Item(b"/bm/plain", b"p"))
            # every key remembered now, /bm/plain too: no call below reads first or waits for a lease, so all
            # reach the batcher in one turn (the first goes alone, the other 20 together, the revoked lease too)
            await asyncio.gather(*(b.keep_alive(k, later(15)) for k in [*map(key, range(count)), b"/bm/plain"]))
            await asyncio.to_thread(revoke_lease_of, etcd, b.prefix + b"/bm/doomed")  # type: ignore[attr-defined]
            expires = later(20)
            await b.put(Item(b"/bm/granted", b"g", expires))  # that window's lease granted: no call below waits
            mark = Counts(registry)
            calls: list[Any] = [b.keep_alive(key(i), expires) for i in range(count)]
            calls.insert(10, b.keep_alive(b"/bm/plain", doomed))  # carries the revoked lease
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(outcomes[10], TeleportError) and "lease not found" in str(outcomes[10])
            moved = Counts(registry).since(mark)
            assert moved.retries("keep_alive", "refused") >= 1
            assert moved.retries("keep_alive", "conflict") == 0
            # the refused batch's requests went again one by one: carried more than once in all
            assert moved.carried("keep_alive") > count + 1
            assert moved.alone("keep_alive") >= 2
        finally:
            await b.close()

    run(body)


def test_a_process_on_etcd_exports_the_batch_metrics_and_drops_them_at_close(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    async def body() -> None:
        plugins = make_plugins()
        storage = config([etcd.url])
        cfg = parse_config({"teleport": {"nodename": "n1", "data_dir": str(tmp_path / "data"), "storage": storage}},
                           plugins)
        registry = CollectorRegistry()
        resources = ProcessResources(cfg, plugins, metrics=registry)
        backend = await resources.backend()
        await asyncio.gather(*(backend.put(Item(key(i), b"v", later(10))) for i in range(50)))
        await asyncio.gather(*(backend.keep_alive(key(i), later(20)) for i in range(50)))
        assert registry.get_sample_value("teleport_etcd_batch_size_sum", {"operation": "put"}) == 50
        assert registry.get_sample_value("teleport_etcd_batch_size_sum", {"operation": "keep_alive"}) == 50
        assert registry.get_sample_value("backend_requests", {"req": "keep_alive", "range": "false"}) == 50
        await resources.close()
        assert registry.get_sample_value("teleport_etcd_batch_size_sum", {"operation": "put"}) is None
        again = await resources.backend()  # opened again: registered again, counting from 0
        assert registry.get_sample_value("teleport_etcd_batch_size_sum", {"operation": "put"}) == 0
        await again.put(Item(key(0), b"w"))
        assert registry.get_sample_value("teleport_etcd_batch_size_sum", {"operation": "put"}) == 1
        await resources.close()

    run(body)
