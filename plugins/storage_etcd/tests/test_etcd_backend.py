"""The etcd backend beyond the conformance suite: restarts, a three-member cluster, TLS, config
errors, an unreachable etcd at start."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from etcd_server import (
    EtcdMember,
    enable_root_auth,
    etcd_fixture,
    free_port,
    leader_first,
    revoke_lease_of,
    start_cluster,
)
from teleport_storage_etcd.backend import EtcdWatcher

from teleport_core.errors import ConfigError, NotFound, TeleportError, WatcherClosed
from teleport_core.plugins import make_plugins
from teleport_core.resources import open_backend, storage_config
from teleport_core.state.backend import Backend, Event, Item, OpType, range_end
from teleport_core.testing.backend_suite import next_event

TEST_TIMEOUT = 120.0


def config(peers: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "etcd", "peers": peers, "prefix": f"/test-{uuid.uuid4().hex}", **extra}


async def opened(raw: dict[str, Any], data_dir: Path) -> Backend:
    plugins = make_plugins()
    return await open_backend(plugins, storage_config(plugins, dict(raw)), data_dir)


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), TEST_TIMEOUT)

    asyncio.run(bounded())


async def events(watcher: Any, count: int) -> list[Event]:
    return [await next_event(watcher) for _ in range(count)]


# -- etcd restarts --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_watcher_survives_etcd_restart(tmp_path: Path, how: str) -> None:
    member = EtcdMember("r", tmp_path / "etcd" / "data")
    member.start()
    raw = config([member.url])
    try:

        async def body() -> None:
            b = await opened(raw, tmp_path)
            try:
                w = b.watch([b"/rs/"])
                assert isinstance(w, EtcdWatcher)
                assert (await next_event(w)).type is OpType.INIT
                first = await b.put(Item(b"/rs/before", b"1"))
                assert (await next_event(w)).item == first
                await asyncio.to_thread(member.kill if how == "kill" else member.stop)
                await asyncio.to_thread(member.start)
                written = []
                for i in range(5):  # written while the watcher is (most likely) still reconnecting
                    written.append(await b.put(Item(f"/rs/during-{i}".encode(), b"x")))
                await b.delete(b"/rs/before")
                got = await events(w, 6)
                assert [e.item for e in got[:5]] == written  # nothing lost, in order
                assert (got[5].type, got[5].item.key) == (OpType.DELETE, b"/rs/before")
                last = await b.put(Item(b"/rs/after", b"y"))
                assert (await next_event(w)).item == last  # nothing delivered twice
                assert w.reconnects >= 1
                assert (await b.get(b"/rs/during-4")).value == b"x"
                await w.close()
            finally:
                await b.close()

        run(body)
    finally:
        member.kill()


def test_expired_items_and_leases_across_restart(tmp_path: Path) -> None:
    member = EtcdMember("x", tmp_path / "etcd" / "data")
    member.start()
    raw = config([member.url])
    try:

        async def body() -> None:
            b = await opened(raw, tmp_path)
            try:
                later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
                kept = await b.put(Item(b"/lease/kept", b"k", later))
                await asyncio.to_thread(member.kill)
                await asyncio.to_thread(member.start)
                got = await b.get(b"/lease/kept")
                assert got == kept
            finally:
                await b.close()

        run(body)
    finally:
        member.kill()


# -- three members --------------------------------------------------------------------------------


def test_three_members_losing_the_leader_loses_nothing(tmp_path: Path) -> None:
    members = leader_first(start_cluster(tmp_path / "cluster", 3))
    raw = config([m.url for m in members])
    try:

        async def body() -> None:
            b = await opened(raw, tmp_path)
            try:
                w = b.watch([b"/ha/"], queue_size=10_000)
                assert (await next_event(w)).type is OpType.INIT
                acked = [await b.put(Item(f"/ha/{i:04d}".encode(), b"v")) for i in range(100)]
                await asyncio.to_thread(members[0].kill)  # the leader, and the peer the client uses
                for i in range(100, 200):
                    acked.append(await b.put(Item(f"/ha/{i:04d}".encode(), b"v")))
                created = await b.create(Item(b"/ha/created", b"c"))
                stored = await b.get_range(b"/ha/", range_end(b"/ha/"))
                assert stored == sorted([*acked, created], key=lambda item: item.key)
                got = await events(w, 201)
                assert [e.item for e in got] == [*acked, created]  # every event once, in order
                await w.close()
            finally:
                await b.close()
            survivors = {**raw, "peers": [m.url for m in members[1:]]}
            again = await opened(survivors, tmp_path)
            try:
                assert len(await again.get_range(b"/ha/", range_end(b"/ha/"))) == 201
            finally:
                await again.close()

        run(body)
    finally:
        for member in members:
            member.kill()


# -- TLS ------------------------------------------------------------------------------------------


def _write_pki(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def issue(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        server: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            usage = (
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server
                else [ExtendedKeyUsageOID.CLIENT_AUTH]
            )
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    paths: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test etcd CA")])
    ca_cert = issue("test etcd CA", ca_key, ca_name, ca_key, ca=True)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(name, key, ca_name, ca_key, server=server)
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}-key.pem").write_bytes(key_pem(key))
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    (folder / "other-ca.pem").write_bytes(
        issue("some other CA", other_key, other_name, other_key, ca=True).public_bytes(serialization.Encoding.PEM)
    )
    paths = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server-key.pem",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client-key.pem",
        "other_ca": folder / "other-ca.pem",
    }
    return paths


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    pki = _write_pki(tmp_path / "pki")
    member = EtcdMember("tls", tmp_path / "etcd" / "data", tls=pki)
    member.start()
    tls = {
        "tls_cert_file": str(pki["client_cert"]),
        "tls_key_file": str(pki["client_key"]),
        "tls_ca_file": str(pki["ca"]),
    }
    try:

        async def body() -> None:
            b = await opened(config([member.url], **tls), tmp_path)
            try:
                w = b.watch([b"/tls/"])
                assert (await next_event(w)).type is OpType.INIT
                stored = await b.put(Item(b"/tls/a", b"secret"))
                assert await b.get(b"/tls/a") == stored
                assert (await next_event(w)).item == stored
                await w.close()
            finally:
                await b.close()
            # insecure: the server certificate is not checked, the client certificate still sent
            insecure = {k: v for k, v in tls.items() if k != "tls_ca_file"}
            b = await opened(config([member.url], insecure=True, **insecure), tmp_path)
            await b.close()
            # no client certificate: refused by etcd, and said so with the URL
            with pytest.raises(TeleportError) as caught:
                await opened(config([member.url], tls_ca_file=str(pki["ca"])), tmp_path)
            assert member.url in str(caught.value)
            # a CA that did not sign the server's certificate
            with pytest.raises(TeleportError) as caught:
                await opened(config([member.url], **{**tls, "tls_ca_file": str(pki["other_ca"])}), tmp_path)
            message = str(caught.value)
            assert member.url in message and "TLS" in message and "CERTIFICATE_VERIFY_FAILED" in message, message

        run(body)
    finally:
        member.kill()


# -- start-up and config errors -------------------------------------------------------------------


def test_unreachable_etcd_at_start_names_each_url(tmp_path: Path) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]

    async def body() -> None:
        with pytest.raises(TeleportError) as caught:
            await opened(config(dead, dial_timeout="2s"), tmp_path)
        message = str(caught.value)
        assert "cannot reach any peer" in message, message
        for url in dead:
            assert f"{url}: connection refused" in message, message

    run(body)


@pytest.mark.parametrize(
    ("extra", "path", "fragment"),
    [
        ({"peers": None}, "teleport.storage.peers", "required"),
        ({"peers": []}, "teleport.storage.peers", "required"),
        ({"peers": ["ftp://127.0.0.1:2379"]}, "teleport.storage.peers[0]", "scheme must be http or https"),
        ({"peers": ["http://127.0.0.1:2379", "http://127.0.0.1"]}, "teleport.storage.peers[1]", "no port"),
        ({"peers": ["http://127.0.0.1:99999"]}, "teleport.storage.peers[0]", "port"),
        ({"peers": "http://[::1"}, "teleport.storage.peers[0]", "expected a URL"),
        ({"peers": [5]}, "teleport.storage.peers[0]", "expected a string"),
        ({"prefixx": "/t"}, "teleport.storage.prefixx", 'did you mean "prefix"'),
        ({"tls_cert_file": "/c.pem"}, "teleport.storage.tls_key_file", "required"),
        ({"username": "u"}, "teleport.storage.password_file", "required"),
        ({"insecure": "maybe"}, "teleport.storage.insecure", "yes or no"),
        ({"dial_timeout": "soon"}, "teleport.storage.dial_timeout", "duration"),
        ({"etcd_max_client_msg_size_bytes": 0}, "teleport.storage.etcd_max_client_msg_size_bytes", "at least 1"),
    ],
)
def test_config_errors_name_the_key(extra: dict[str, Any], path: str, fragment: str) -> None:
    raw = {"type": "etcd", "peers": ["http://127.0.0.1:2379"], **extra}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        storage_config(make_plugins(), raw)
    message = str(caught.value)
    assert message.startswith(path + ":") and fragment in message, message


def test_config_defaults_and_all_keys(tmp_path: Path) -> None:
    storage = storage_config(make_plugins(), {"type": "etcd", "peers": "https://10.1.2.3:2379/"})
    options = storage.options
    assert options.peers == ("https://10.1.2.3:2379",) and options.prefix == "/teleport"
    full = storage_config(
        make_plugins(),
        {
            "type": "etcd",
            "peers": ["https://a:1", "https://b:2"],
            "prefix": "/t",
            "tls_cert_file": "/c",
            "tls_key_file": "/k",
            "tls_ca_file": "/ca",
            "insecure": True,
            "username": "u",
            "password_file": str(tmp_path / "pw"),
            "dial_timeout": "3s",
        },
    ).options
    assert full.peers == ("https://a:1", "https://b:2") and full.insecure and full.username == "u"
    assert full.dial_timeout == dt.timedelta(seconds=3) and str(full.tls_ca_file) == "/ca"
    bare = storage_config(make_plugins(), {"type": "etcd", "peers": ["127.0.0.1:2379"]}).options
    assert bare.peers == ("http://127.0.0.1:2379",)
    bare_tls = storage_config(make_plugins(), {"type": "etcd", "peers": ["h:2379"], "tls_ca_file": "/ca"}).options
    assert bare_tls.peers == ("https://h:2379",)


def test_max_client_msg_size_refuses_large_values(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url], etcd_max_client_msg_size_bytes=4096), tmp_path)
        try:
            await b.put(Item(b"/big/ok", b"x" * 1000))
            with pytest.raises(TeleportError, match="etcd_max_client_msg_size_bytes"):
                await b.put(Item(b"/big/no", b"x" * 5000))
            with pytest.raises(TeleportError, match="etcd_max_client_msg_size_bytes"):
                await b.compare_and_swap(Item(b"/big/ok", b"x" * 1000), Item(b"/big/ok", b"y" * 5000))
            assert (await b.get(b"/big/ok")).value == b"x" * 1000
        finally:
            await b.close()

    run(body)


def test_username_and_password_file(tmp_path: Path) -> None:
    member = EtcdMember("auth", tmp_path / "etcd" / "data")
    member.start()
    try:
        enable_root_auth(member, "s3cret-pw")
        password = tmp_path / "etcd-pass"
        password.write_text("s3cret-pw\n")
        wrong = tmp_path / "wrong-pass"
        wrong.write_text("nope")

        async def body() -> None:
            b = await opened(config([member.url], username="root", password_file=str(password)), tmp_path)
            try:
                w = b.watch([b"/auth/"])
                assert (await next_event(w)).type is OpType.INIT
                stored = await b.put(Item(b"/auth/a", b"v"))
                assert await b.get(b"/auth/a") == stored
                assert (await next_event(w)).item == stored
                await w.close()
            finally:
                await b.close()
            with pytest.raises(TeleportError) as caught:
                await opened(config([member.url], username="root", password_file=str(wrong)), tmp_path)
            assert "authentication as 'root' failed" in str(caught.value) and member.url in str(caught.value)
            with pytest.raises(TeleportError, match="user name is empty|token"):  # no credentials at all
                unauthenticated = await opened(config([member.url]), tmp_path)
                try:
                    await unauthenticated.get(b"/auth/a")
                finally:
                    await unauthenticated.close()

        run(body)
    finally:
        member.kill()


def test_a_lease_etcd_forgot_is_replaced(tmp_path: Path, etcd: EtcdMember) -> None:
    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)
        try:
            later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            await b.put(Item(b"/lf/a", b"a", later))
            # revoke the item's (shared) lease behind the backend's back
            await asyncio.to_thread(revoke_lease_of, etcd, b.prefix + b"/lf/a")  # type: ignore[attr-defined]
            with pytest.raises(NotFound):  # etcd deleted the item with its lease
                await b.get(b"/lf/a")
            with pytest.raises(TeleportError, match="lease not found"):
                await b.put(Item(b"/lf/b", b"b", later))
            stored = await b.put(Item(b"/lf/b", b"b", later))  # a new lease
            assert await b.get(b"/lf/b") == stored
        finally:
            await b.close()

    run(body)


def test_watcher_whose_history_was_compacted_is_closed(tmp_path: Path, etcd: EtcdMember) -> None:
    import httpx

    async def body() -> None:
        b = await opened(config([etcd.url]), tmp_path)  # it has seen the revision of this moment
        try:
            async with httpx.AsyncClient() as http:  # another client writes, then compacts the history
                key = base64.b64encode(b"/elsewhere/k").decode()
                for _ in range(3):
                    answer = (await http.post(f"{etcd.url}/v3/kv/put", json={"key": key, "value": ""})).json()
                compacted = await http.post(
                    f"{etcd.url}/v3/kv/compaction", json={"revision": answer["header"]["revision"], "physical": True}
                )
                assert compacted.status_code == 200, compacted.text
            w = b.watch([b"/cp/"])
            assert (await next_event(w)).type is OpType.INIT
            with pytest.raises(WatcherClosed, match="compacted"):
                await next_event(w)
            await b.get_range(b"/cp/", range_end(b"/cp/"))  # re-read the state, then watch again: it works
            async with b.watch([b"/cp/"]) as fresh:
                assert (await next_event(fresh)).type is OpType.INIT
                stored = await b.put(Item(b"/cp/a", b"x"))
                assert (await next_event(fresh)).item == stored
        finally:
            await b.close()

    run(body)


__all__ = ["etcd_fixture"]  # the session etcd fixture, imported for pytest
