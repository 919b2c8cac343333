"""Concurrent keepalives on etcd share one guarded transaction (``batching.keep_alive_batcher``),
and each caller still gets its own key's outcome: a deleted key stays deleted (NotFound), a key
overwritten meanwhile keeps the new value, and a key that fails does not fail the others."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from etcd_server import EtcdMember, etcd_fixture, revoke_lease_of
from test_etcd_backend import config, opened, run

from teleport_core.errors import NotFound, TeleportError
from teleport_core.state.backend import Item, OpType
from teleport_core.testing.backend_suite import next_event

__all__ = ["etcd_fixture"]


def later(minutes: int) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).replace(microsecond=0)


def key(i: int) -> bytes:
    return f"/ka/{i:03d}".encode()


def test_concurrent_keep_alives_share_few_transactions_and_each_gets_its_expiry(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            count = 300
            await asyncio.gather(*(b.put(Item(key(i), f"node-{i}".encode(), later(10))) for i in range(count)))
            batcher = b._keepalives  # type: ignore[attr-defined]
            for round_, minutes in enumerate((20, 30)):  # unknown keys (read first), then remembered ones
                calls = batcher.calls
                expires = later(minutes)
                renewed = await asyncio.gather(*(b.keep_alive(key(i), expires) for i in range(count)))
                assert batcher.calls - calls <= count // 4, (round_, batcher.calls - calls)  # few transactions
                for i, item in enumerate(renewed):
                    assert (item.key, item.value, item.expires) == (key(i), f"node-{i}".encode(), expires)
                    assert await b.get(key(i)) == item  # what is stored, at the revision answered
            assert batcher.batches > 0
        finally:
            await b.close()

    run(body)


def test_a_batch_with_a_deleted_and_an_overwritten_key_answers_each_its_own(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        other = await opened(config([etcd.url], prefix=b.prefix.decode()), tmp_path)  # type: ignore[attr-defined]
        try:
            count = 40
            await asyncio.gather(*(b.put(Item(key(i), b"old", later(10))) for i in range(count)))
            await asyncio.gather(*(b.keep_alive(key(i), later(15)) for i in range(count)))  # remembered now
            w = b.watch([b"/ka/"])
            assert (await next_event(w)).type is OpType.INIT
            # another auth server deletes one key and overwrites another behind b's back
            await other.delete(key(7))
            overwritten = await other.put(Item(key(9), b"new", later(5)))
            expires = later(25)
            outcomes = await asyncio.gather(
                *(b.keep_alive(key(i), expires) for i in range(count)), return_exceptions=True
            )
            assert isinstance(outcomes[7], NotFound), outcomes[7]
            with pytest.raises(NotFound):  # not resurrected
                await b.get(key(7))
            nine = outcomes[9]
            assert isinstance(nine, Item) and (nine.value, nine.expires) == (b"new", expires)  # the put's value
            assert int(nine.revision) > int(overwritten.revision)
            assert await b.get(key(9)) == nine
            for i in set(range(count)) - {7, 9}:  # the rest of the batch renewed all the same
                item = outcomes[i]
                assert isinstance(item, Item) and (item.value, item.expires) == (b"old", expires)
                assert await b.get(key(i)) == item
            deleted, put = await next_event(w), await next_event(w)
            assert (deleted.type, deleted.item.key) == (OpType.DELETE, key(7))
            assert (put.type, put.item) == (OpType.PUT, overwritten)
            events = [await next_event(w) for _ in range(count - 1)]  # then one put for each renewed key
            assert all(e.type is OpType.PUT and e.item.expires == expires for e in events)
            assert sorted(e.item.key for e in events) == sorted(key(i) for i in range(count) if i != 7)
            await w.close()
            # renewing again (from the remembered state) still finds key 7 gone
            with pytest.raises(NotFound):
                await b.keep_alive(key(7), later(30))
            assert b._keepalives.batches > 0  # type: ignore[attr-defined]
        finally:
            await other.close()
            await b.close()

    run(body)


def test_a_keep_alive_etcd_refuses_fails_alone_in_its_batch(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            count = 20
            await asyncio.gather(*(b.put(Item(key(i), b"v", later(10))) for i in range(count)))
            doomed = later(120)  # a lease window of its own
            await b.put(Item(b"/ka/doomed", b"x", doomed))
            await b.put(Item(b"/ka/plain", b"p"))
            # revoke the cached lease of `doomed`'s window behind the backend's back
            await asyncio.to_thread(revoke_lease_of, etcd, b.prefix + b"/ka/doomed")  # type: ignore[attr-defined]
            expires = later(20)
            calls = [b.keep_alive(key(i), expires) for i in range(count)]
            calls.insert(10, b.keep_alive(b"/ka/plain", doomed))  # carries the revoked lease
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(failed) == 1 and isinstance(outcomes[10], TeleportError), failed
            assert "lease not found" in str(outcomes[10])
            plain = await b.get(b"/ka/plain")
            assert (plain.value, plain.expires) == (b"p", None)  # nothing of the failed renewal applied
            for i, outcome in enumerate(o for j, o in enumerate(outcomes) if j != 10):
                assert isinstance(outcome, Item) and outcome.expires == expires
                assert await b.get(key(i)) == outcome
            renewed = await b.keep_alive(b"/ka/plain", doomed)  # the forgotten lease is granted anew
            assert (renewed.value, renewed.expires) == (b"p", doomed)
        finally:
            await b.close()

    run(body)
