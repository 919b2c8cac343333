"""The gRPC transport under load and failure: many tasks share one HTTP/2 channel per peer,
and transactions, watchers, peer failover and authentication keep their semantics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from etcd_server import EtcdMember, enable_root_auth, etcd_fixture, free_port, revoke_lease_of
from test_etcd_backend import _write_pki, config, opened, run

from teleport_core.errors import AlreadyExists, CompareFailed, NotFound, TeleportError
from teleport_core.state.backend import Action, Condition, ConditionKind, Item, OpType, range_end
from teleport_core.testing.backend_suite import next_event

ROOT = Path(__file__).resolve().parents[3]


def test_concurrent_creates_on_one_key_let_exactly_one_win(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:

            async def create(i: int) -> str:
                try:
                    await b.create(Item(b"/race/one", str(i).encode()))
                except AlreadyExists:
                    return "exists"
                return "won"

            outcomes = await asyncio.gather(*(create(i) for i in range(64)))
            assert outcomes.count("won") == 1 and outcomes.count("exists") == 63
            winner = outcomes.index("won")
            assert (await b.get(b"/race/one")).value == str(winner).encode()
        finally:
            await b.close()

    run(body)


def test_concurrent_compare_and_swap_loses_no_update(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            await b.put(Item(b"/cas/counter", b"0"))

            async def increment(times: int) -> int:
                conflicts = 0
                for _ in range(times):
                    while True:
                        current = await b.get(b"/cas/counter")
                        try:
                            await b.compare_and_swap(
                                current, Item(b"/cas/counter", str(int(current.value) + 1).encode())
                            )
                            break
                        except CompareFailed:
                            conflicts += 1
                return conflicts

            conflicts = await asyncio.gather(*(increment(10) for _ in range(16)))
            assert (await b.get(b"/cas/counter")).value == b"160"  # every increment counted once
            assert sum(conflicts) >= 0
            # atomic_write: only one of many "claim if absent" transactions commits
            claims = await asyncio.gather(
                *(
                    b.atomic_write(
                        [Condition(b"/cas/claim", ConditionKind.NOT_EXISTS)],
                        [Action(b"/cas/claim", Item(b"/cas/claim", str(i).encode())), Action(b"/cas/counter", None)],
                    )
                    for i in range(32)
                ),
                return_exceptions=True,
            )
            committed = [c for c in claims if isinstance(c, str)]
            assert len(committed) == 1
            assert all(isinstance(c, CompareFailed) for c in claims if not isinstance(c, str))
            with pytest.raises(NotFound):  # the winner's delete applied with its claim
                await b.get(b"/cas/counter")
        finally:
            await b.close()

    run(body)


def test_watcher_sees_each_concurrent_write_once_in_revision_order(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            w = b.watch([b"/many/"], queue_size=10_000)
            assert (await next_event(w)).type is OpType.INIT
            stored = await asyncio.gather(*(b.put(Item(f"/many/{i:04d}".encode(), b"v")) for i in range(400)))
            got = [await next_event(w) for _ in range(400)]
            assert sorted(int(e.item.revision) for e in got) == [int(e.item.revision) for e in got]
            assert {e.item for e in got} == set(stored) and len({e.item.key for e in got}) == 400
            assert len(await b.get_range(b"/many/", range_end(b"/many/"))) == 400
            await w.close()
        finally:
            await b.close()

    run(body)


# -- group commit of concurrent puts -------------------------------------------------------------


def test_concurrent_puts_share_transactions_in_order(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            w = b.watch([b"/gc/"], queue_size=10_000)
            assert (await next_event(w)).type is OpType.INIT
            stored = await asyncio.gather(*(b.put(Item(f"/gc/{i % 10}".encode(), str(i).encode())) for i in range(300)))
            assert b._puts.batches > 0  # type: ignore[attr-defined]  # they did go together
            for k in range(10):  # one key's puts applied in the order they were made
                mine = [int(item.revision) for item in stored if item.key == f"/gc/{k}".encode()]
                assert mine == sorted(mine) and len(set(mine)) == len(mine)
                assert (await b.get(f"/gc/{k}".encode())).value == str(290 + k).encode()
            got = [await next_event(w) for _ in range(300)]
            assert [e.item for e in got] == sorted(stored, key=lambda item: int(item.revision))
            await w.close()
        finally:
            await b.close()

    run(body)


def test_concurrent_reads_share_transactions_and_see_every_acknowledged_write(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            stored = [await b.put(Item(f"/rd/{i:03d}".encode(), str(i).encode())) for i in range(100)]
            keys = [f"/rd/{i:03d}".encode() for i in range(100)] + [b"/rd/missing"]
            got = await asyncio.gather(*(b.get(key) for key in keys), return_exceptions=True)
            assert got[:100] == stored
            assert isinstance(got[100], NotFound)  # the one missing key, alone
            assert b._gets.batches > 0  # type: ignore[attr-defined]  # they did go together
            stop = asyncio.Event()

            async def reader(k: int) -> int:  # keeps read batches in flight
                n = 0
                while not stop.is_set():
                    await b.get(f"/rd/{k:03d}".encode())
                    n += 1
                return n

            readers = [asyncio.create_task(reader(k)) for k in range(15)]
            for i in range(100):  # read-after-write through the batches: never an older value
                written = await b.put(Item(b"/rd/w", str(i).encode()))
                assert await b.get(b"/rd/w") == written
            stop.set()
            assert all(n > 0 for n in await asyncio.gather(*readers))
        finally:
            await b.close()

    run(body)


def test_a_batch_with_one_bad_put_fails_only_that_put(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            await b.put(Item(b"/bb/leased", b"x", later))
            # revoke the cached lease behind the backend's back
            await asyncio.to_thread(revoke_lease_of, etcd, b.prefix + b"/bb/leased")  # type: ignore[attr-defined]
            puts = [b.put(Item(f"/bb/{i:02d}".encode(), b"v")) for i in range(10)]
            puts.insert(5, b.put(Item(b"/bb/again", b"y", later)))  # carries the revoked lease
            puts += [b.put(Item(f"/bb/{i:02d}".encode(), b"w")) for i in range(10, 20)]
            outcomes = await asyncio.gather(*puts, return_exceptions=True)
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(failed) == 1 and "lease not found" in str(failed[0]), failed
            assert isinstance(outcomes[5], TeleportError)
            assert len(await b.get_range(b"/bb/0", range_end(b"/bb/"))) == 20  # every other put applied
            with pytest.raises(NotFound):
                await b.get(b"/bb/again")
        finally:
            await b.close()

    run(body)


def test_large_concurrent_puts_are_split_below_etcds_request_limit(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            big = [os.urandom(400_000) for _ in range(8)]  # 3.2 MB together; etcd takes 1.5 MiB a request
            stored = await asyncio.gather(*(b.put(Item(f"/big/{i}".encode(), v)) for i, v in enumerate(big)))
            for i, value in enumerate(big):
                assert await b.get(f"/big/{i}".encode()) == stored[i] and stored[i].value == value
        finally:
            await b.close()

    run(body)


def test_closing_while_puts_wait_keeps_every_acknowledged_put(tmp_path: Path, etcd: EtcdMember) -> None:
    raw = config([etcd.url])

    async def body() -> None:
        b = await opened(raw, tmp_path)
        tasks = [asyncio.create_task(b.put(Item(f"/cl/{i:03d}".encode(), b"v"))) for i in range(100)]
        await asyncio.sleep(0)  # the first is in flight, the others queued behind it
        await b.close()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        acked = {o.key for o in outcomes if isinstance(o, Item)}
        assert all(isinstance(o, (Item, TeleportError)) for o in outcomes), outcomes
        assert acked
        again = await opened(raw, tmp_path)
        try:
            present = {item.key for item in await again.get_range(b"/cl/", range_end(b"/cl/"))}
            assert acked <= present  # acknowledged means written
        finally:
            await again.close()

    run(body)


# -- keep_alive ----------------------------------------------------------------------------------


def test_keep_alive_renews_with_one_call_and_sees_other_writers(tmp_path: Path, etcd: EtcdMember) -> None:
    raw = config([etcd.url])

    async def body() -> None:
        b = await opened(raw, tmp_path)
        other = await opened(raw, tmp_path)  # another auth server on the same etcd
        calls: list[str] = []
        client = b._client  # type: ignore[attr-defined]
        real_call = client.call

        async def counted(method: Any, request: Any, **kwargs: Any) -> Any:
            calls.append(method[0])
            return await real_call(method, request, **kwargs)

        client.call = counted
        try:
            soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
            first = await b.put(Item(b"/ka/node", b"spec-1", soon))
            renewed = await b.keep_alive(b"/ka/node", soon + dt.timedelta(seconds=30))
            assert renewed.value == b"spec-1" and renewed.expires == soon + dt.timedelta(seconds=30)
            assert int(renewed.revision) > int(first.revision)
            calls.clear()
            again = await b.keep_alive(b"/ka/node", soon + dt.timedelta(seconds=60))
            # no read: the last renewal is remembered (a lease grant when the expiry enters a new lease window)
            assert calls[-1] == "/etcdserverpb.KV/Txn" and "/etcdserverpb.KV/Range" not in calls, calls
            assert await other.get(b"/ka/node") == again
            # another writer changed it: the renewal keeps the new value, not the remembered one
            changed = await other.put(Item(b"/ka/node", b"spec-2", soon))
            kept = await b.keep_alive(b"/ka/node", soon + dt.timedelta(seconds=90))
            assert kept.value == b"spec-2" and int(kept.revision) > int(changed.revision)
            assert await other.get(b"/ka/node") == kept
            # another writer deleted it: NotFound, not a resurrection
            await other.delete(b"/ka/node")
            with pytest.raises(NotFound):
                await b.keep_alive(b"/ka/node", soon + dt.timedelta(seconds=120))
            with pytest.raises(NotFound):
                await other.get(b"/ka/node")
            # expired as remembered but written again by another writer since: etcd is asked
            past = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
            await b.put(Item(b"/ka/short", b"s", past))
            await b.keep_alive(b"/ka/short", past)
            await asyncio.sleep(1.2)
            await other.put(Item(b"/ka/short", b"s2", soon))
            assert (await b.keep_alive(b"/ka/short", soon + dt.timedelta(seconds=5))).value == b"s2"
        finally:
            await b.close()
            await other.close()

    run(body)


def test_a_dead_first_peer_is_skipped_for_reads_writes_and_watches(tmp_path: Path, etcd: EtcdMember) -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def body() -> None:
        b = await opened(config([dead, etcd.url]), tmp_path)
        try:
            w = b.watch([b"/fo/"])
            assert (await next_event(w)).type is OpType.INIT
            created = await b.create(Item(b"/fo/a", b"1"))  # a transaction: not idempotent, never sent to the dead one
            assert await b.get(b"/fo/a") == created
            assert (await next_event(w)).item == created
            await w.close()
        finally:
            await b.close()

    run(body)


def test_insecure_tls_skips_a_dead_first_peer(tmp_path: Path) -> None:
    pki = _write_pki(tmp_path / "pki")
    member = EtcdMember("ins", tmp_path / "etcd" / "data", tls=pki)
    member.start()
    dead = f"https://127.0.0.1:{free_port()}"
    client_cert = {"tls_cert_file": str(pki["client_cert"]), "tls_key_file": str(pki["client_key"])}
    try:

        async def body() -> None:
            b = await opened(config([dead, member.url], insecure=True, **client_cert), tmp_path)
            try:
                w = b.watch([b"/ins/"])
                assert (await next_event(w)).type is OpType.INIT
                stored = await b.put(Item(b"/ins/a", b"1"))
                assert await b.get(b"/ins/a") == stored
                assert (await next_event(w)).item == stored
                await w.close()
            finally:
                await b.close()
            with pytest.raises(TeleportError) as caught:  # every peer dead: each named with its reason
                await opened(config([dead], insecure=True, dial_timeout="2s", **client_cert), tmp_path)
            assert f"{dead}: connection refused" in str(caught.value), caught.value

        run(body)
    finally:
        member.kill()


def test_https_peer_that_speaks_plain_http_is_named(tmp_path: Path, etcd: EtcdMember) -> None:
    wrong = etcd.url.replace("http://", "https://")

    async def body() -> None:
        with pytest.raises(TeleportError) as caught:
            await opened(config([wrong], dial_timeout="2s"), tmp_path)
        message = str(caught.value)
        assert "cannot reach any peer" in message and wrong in message, message

    run(body)


def test_authentication_is_renewed_after_etcd_forgets_the_token(tmp_path: Path) -> None:
    member = EtcdMember("tok", tmp_path / "etcd" / "data")
    member.start()
    try:
        enable_root_auth(member, "pw-1")
        password = tmp_path / "etcd-pass"
        password.write_text("pw-1\n")

        async def body() -> None:
            b = await opened(config([member.url], username="root", password_file=str(password)), tmp_path)
            try:
                first = await b.put(Item(b"/tok/a", b"1"))
                # etcd's simple tokens live in its memory: a restart forgets the one this client holds
                await asyncio.to_thread(member.stop)
                await asyncio.to_thread(member.start)
                assert await b.get(b"/tok/a") == first
                second = await b.put(Item(b"/tok/b", b"2"))
                assert await b.get(b"/tok/b") == second
            finally:
                await b.close()

        run(body)
    finally:
        member.kill()


def test_backend_ops_bench_reports_ratios_and_refuses_bad_input(etcd: EtcdMember) -> None:
    bench = ROOT / "bench" / "backend_ops.py"
    etcd_config = json.dumps({"type": "etcd", "peers": [etcd.url], "prefix": "/bench-test"})
    done = subprocess.run(
        [sys.executable, str(bench), "--n", "20", "--config", etcd_config, "--against", '{"type": "sqlite"}',
         "--raw-etcd", "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["against"] == {"type": "sqlite"}
    puts = [row for row in report["results"] if row["op"] == "put"]
    assert {row["mode"] for row in puts} == {"sequential", "concurrent"}
    assert all(row["ratio"] > 0 and row["ops_per_s"] > 0 for row in puts)
    assert {row["mode"] for row in report["raw_etcd_puts"]} == {"sequential", "concurrent"}
    assert set(report["put_ratio_to_raw"]) == {"sequential", "concurrent"}
    for bad in ("{not json", "[1, 2]"):
        refused = subprocess.run(
            [sys.executable, str(bench), "--n", "1", "--against", bad], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 2 and "--against" in refused.stderr, refused.stderr


__all__ = ["etcd_fixture"]
