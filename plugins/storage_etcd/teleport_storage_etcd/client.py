"""A small asyncio client for etcd's native v3 gRPC API (``grpcio``'s ``grpc.aio``).

One HTTP/2 channel per configured peer carries every call to it, multiplexed: concurrent
calls share one connection and one TLS session instead of a connection each. A call that
cannot reach one peer (connection refused, TLS failure, no leader) moves on to the next,
until the request deadline. Messages are the protobuf classes of ``proto/etcd_api.proto``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from cryptography import x509

from teleport_core.errors import TeleportError

from .config import EtcdOptions

#: The message classes of ``proto/etcd_api.proto`` (generated code; protobuf ships no types).
pb: Any = importlib.import_module(".proto.etcd_api_pb2", __package__)

log = logging.getLogger(__name__)

REQUEST_DEADLINE = 20.0  # seconds one operation may keep trying the peers
CALL_TIMEOUT = 10.0  # seconds one call to one peer may take (at least the dial timeout)
RETRY_PAUSE = 0.2  # seconds between rounds over the peers
WATCH_SILENCE = 660.0  # seconds without a message after which a watch stream is taken as dead
MAX_MESSAGE = 2**31 - 1  # bytes; etcd's own limit (--max-request-bytes) applies
# etcd errors after which another peer (or a later try) may succeed. These certainly did not
# apply the request:
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "raft proposal dropped", "unhealthy cluster")
# These may have applied it: retried only for idempotent requests.
_AMBIGUOUS = ("timed out", "leader changed", "server stopped")
# gRPC transport errors that mean the call never left this process (no connection).
_NOT_CONNECTED = ("failed to connect", "connection refused", "handshake", "dns resolution failed", "name resolution")


class EtcdError(TeleportError):
    """etcd refused or failed a request; the message names the peer and etcd's error."""


class EtcdUnavailable(EtcdError):
    """No peer answered in time; the message lists each peer and what failed."""


class PeerUnreachable(EtcdError):
    """One peer could not be reached before any call was made (the next one may be)."""


# etcd's method paths and answer types (etcd's api/etcdserverpb/rpc.proto).
RANGE = ("/etcdserverpb.KV/Range", pb.RangeResponse)
PUT = ("/etcdserverpb.KV/Put", pb.PutResponse)
DELETE_RANGE = ("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeResponse)
TXN = ("/etcdserverpb.KV/Txn", pb.TxnResponse)
LEASE_GRANT = ("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantResponse)
STATUS = ("/etcdserverpb.Maintenance/Status", pb.StatusResponse)
AUTHENTICATE = ("/etcdserverpb.Auth/Authenticate", pb.AuthenticateResponse)
WATCH = "/etcdserverpb.Watch/Watch"


_GRPC_PREFIX = re.compile(r"^failed to connect to all addresses; last error: [A-Z_]+: (?:ipv[46]:\S+?:\d+: )?")


def describe(exc: BaseException) -> str:
    """A short reason for a transport error (``connection refused``, ``TLS handshake failed: ...``)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        # "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:2379: <reason>"
        details = _GRPC_PREFIX.sub("", str(exc.details() or exc.code().name))
        lowered = details.lower()
        if "refused" in lowered:
            return "connection refused"
        if "ssl" in lowered or "tls" in lowered or "handshake" in lowered or "certificate" in lowered:
            return f"TLS handshake failed: {_tls_reason(details)}"
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return "timed out"
        return details.removeprefix("etcdserver: ")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc) or type(exc).__name__


def _tls_reason(details: str) -> str:
    """gRPC's TLS failure text, with OpenSSL's reason spelt as Python's ``ssl`` does."""
    if "CERTIFICATE_VERIFY_FAILED" in details.upper() or "certificate verify failed" in details.lower():
        return f"CERTIFICATE_VERIFY_FAILED ({details})"
    return details


def _read(path: Any, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TeleportError(f"etcd backend: cannot load the TLS files: {what}: {exc}") from None


def server_certificate(url: str, options: EtcdOptions) -> bytes:
    """The PEM certificate ``url`` presents, fetched without checking it (``insecure: true``)."""
    parsed = urllib.parse.urlsplit(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if options.tls_cert_file and options.tls_key_file:
        context.load_cert_chain(str(options.tls_cert_file), str(options.tls_key_file))
    timeout = options.dial_timeout.total_seconds()
    with (
        socket.create_connection((parsed.hostname or "", parsed.port or 2379), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=parsed.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


class Peer:
    """One etcd member: its URL and the gRPC channel to it."""

    def __init__(self, url: str, options: EtcdOptions) -> None:
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        self.target = f"[{host}]:{parsed.port}" if ":" in host else f"{host}:{parsed.port}"
        self.tls = parsed.scheme == "https"
        self.options = options
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[str, Any] = {}
        self._presented: bytes | None = None  # insecure: the certificate the peer presented

    async def prepare(self) -> None:
        """Fetch, once, what the channel needs from the network (``insecure``: the peer's certificate)."""
        if self._channel is not None or not (self.tls and self.options.insecure) or self._presented:
            return
        try:
            self._presented = await asyncio.to_thread(server_certificate, self.url, self.options)
        except ssl.SSLError as exc:
            raise PeerUnreachable(describe(exc)) from None
        except OSError as exc:
            reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc) or type(exc).__name__
            raise PeerUnreachable(reason) from None

    def _credentials(self) -> tuple[grpc.ChannelCredentials, list[tuple[str, Any]]]:
        options = self.options
        key = _read(options.tls_key_file, "tls_key_file") if options.tls_key_file else None
        cert = _read(options.tls_cert_file, "tls_cert_file") if options.tls_cert_file else None
        extra: list[tuple[str, Any]] = []
        roots: bytes | None
        if options.insecure:
            # gRPC cannot skip verification: trust exactly the certificate this peer presented
            # (prepare), under the name it carries.
            if self._presented is None:
                raise PeerUnreachable("its certificate was not fetched")
            roots = self._presented
            name = _subject_name(ssl.PEM_cert_to_DER_cert(roots.decode()))
            if name:
                extra.append(("grpc.ssl_target_name_override", name))
        else:
            roots = _read(options.tls_ca_file, "tls_ca_file") if options.tls_ca_file else None
        return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert), extra

    def channel(self) -> grpc.aio.Channel:
        """The channel, opened on first use (gRPC connects, and reconnects, by itself)."""
        if self._channel is None:
            dial_ms = int(self.options.dial_timeout.total_seconds() * 1000)
            settings: list[tuple[str, Any]] = [
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", min(dial_ms, 1000)),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", 30_000),  # etcd allows pings every 5 s
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.enable_retries", 0),  # this client decides what may be retried
            ]
            if self.tls:
                credentials, extra = self._credentials()
                self._channel = grpc.aio.secure_channel(self.target, credentials, options=settings + extra)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=settings)
        return self._channel

    def unary(self, path: str, answer: Any) -> Any:
        """The callable for one unary method on this peer's channel."""
        call = self._calls.get(path)
        if call is None:
            call = self.channel().unary_unary(
                path, request_serializer=_serialize, response_deserializer=answer.FromString
            )
            self._calls[path] = call
        return call

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._calls.clear()
            await channel.close()


def _subject_name(der: bytes) -> str | None:
    """A DNS name or IP of a certificate's subjectAltName (for gRPC's host name check)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for dns in names.get_values_for_type(x509.DNSName):
        return str(dns)
    for ip in names.get_values_for_type(x509.IPAddress):
        return str(ip)
    return None


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class EtcdClient:
    """Unary calls and watch streams against a list of etcd peers."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.peers = [Peer(url, options) for url in options.peers]
        self._current = 0
        self._call_timeout = max(options.dial_timeout.total_seconds(), CALL_TIMEOUT)
        self._password: str | None = None
        if options.password_file is not None:
            try:
                self._password = options.password_file.read_text().strip()
            except OSError as exc:
                raise TeleportError(
                    f"teleport.storage.password_file: cannot read {options.password_file}: {exc}"
                ) from None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        #: The highest store revision seen in any answer.
        self.revision = 0

    async def close(self) -> None:
        """Close every channel."""
        for peer in self.peers:
            await peer.close()

    # -- plumbing -----------------------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token:  # "hasleader": refuse members cut off from the leader
            return (("hasleader", "true"), ("token", self._token))
        return (("hasleader", "true"),)

    def note(self, header: Any) -> None:
        """Remember the highest revision etcd reported."""
        if header.revision > self.revision:
            self.revision = header.revision

    async def _authenticate(self, peer: Peer, timeout: float) -> None:
        if self.options.username is None:
            return
        async with self._auth_lock:
            request = pb.AuthenticateRequest(name=self.options.username, password=self._password or "")
            try:
                answer = await peer.unary(*AUTHENTICATE)(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                raise EtcdError(
                    f"etcd {peer.url}: authentication as {self.options.username!r} failed: {describe(exc)}"
                ) from None
            self._token = answer.token

    def _next(self) -> None:
        self._current = (self._current + 1) % len(self.peers)

    async def call(self, method: tuple[str, Any], request: Any, *, idempotent: bool = True) -> Any:
        """Call etcd's ``method`` with ``request`` on a working peer; etcd's answer.

        A peer that cannot be reached is skipped. Non-idempotent calls are retried only when
        the request certainly did not reach etcd (the connection was never made) or etcd said
        it did not apply it (no leader ...).
        """
        path, answer_type = method
        name = path.rsplit("/", 1)[-1]
        deadline = time.monotonic() + REQUEST_DEADLINE
        failures: dict[str, str] = {}
        while True:
            for _ in range(len(self.peers)):
                peer = self.peers[self._current]
                try:
                    await peer.prepare()
                    if self.options.username is not None and self._token is None:
                        await self._authenticate(peer, self._call_timeout)
                    answer = await peer.unary(path, answer_type)(
                        request, timeout=self._call_timeout, metadata=self._metadata()
                    )
                except PeerUnreachable as exc:
                    failures[peer.url] = str(exc)
                    self._next()
                    continue
                except grpc.aio.AioRpcError as exc:
                    message = exc.details() or exc.code().name
                    lowered = message.lower()
                    if "auth token" in lowered or "invalid auth" in lowered:
                        self._token = None
                        failures[peer.url] = message
                        continue
                    not_sent = exc.code() is grpc.StatusCode.UNAVAILABLE and any(
                        reason in lowered for reason in _NOT_CONNECTED
                    )
                    transport = exc.code() in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED,
                    )
                    if not_sent or any(reason in lowered for reason in _NOT_APPLIED):
                        failures[peer.url] = describe(exc)
                        self._next()
                        continue
                    if transport or any(reason in lowered for reason in _AMBIGUOUS):
                        if not idempotent:
                            raise EtcdError(
                                f"etcd {peer.url}: {name} failed and may or may not have been applied: {describe(exc)}"
                            ) from None
                        failures[peer.url] = describe(exc)
                        self._next()
                        continue
                    raise EtcdError(f"etcd {peer.url}: {name}: {message.removeprefix('etcdserver: ')}") from None
                self.note(answer.header)
                return answer
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{url}: {why}" for url, why in failures.items())
                raise EtcdUnavailable(
                    f"etcd backend: no peer answered {name} within {REQUEST_DEADLINE:.0f} s ({detail})"
                )
            await asyncio.sleep(RETRY_PAUSE)

    async def check(self) -> None:
        """Reach at least one peer within the dial timeout, or raise naming every peer and reason."""
        failures: list[str] = []
        dial = self.options.dial_timeout.total_seconds()
        for index, peer in enumerate(self.peers):
            try:
                await peer.prepare()
                if self.options.username is not None:
                    await self._authenticate(peer, dial)
                answer = await peer.unary(*STATUS)(pb.StatusRequest(), timeout=dial, metadata=self._metadata())
            except PeerUnreachable as exc:
                failures.append(f"{peer.url}: {exc}")
                continue
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{peer.url}: {describe(exc)}")
                continue
            self.note(answer.header)
            self._current = index
            return
        raise EtcdUnavailable("etcd backend: cannot reach any peer: " + "; ".join(failures))

    # -- watch streams ------------------------------------------------------------------------------

    async def watch_stream(self, create: Any) -> AsyncIterator[Any]:
        """One watch stream on the current peer: yields each answer etcd sends.

        Raises ``EtcdError`` for a stream etcd ends with an error, or a transport error; the
        caller reconnects (to the next peer) and resumes.
        """
        peer = self.peers[self._current]
        call: Any = None
        try:
            await peer.prepare()
            if self.options.username is not None and self._token is None:
                await self._authenticate(peer, self._call_timeout)
            stream = peer.channel().stream_stream(
                WATCH, request_serializer=_serialize, response_deserializer=pb.WatchResponse.FromString
            )
            call = stream(metadata=self._metadata())
            await call.write(pb.WatchRequest(create_request=create))
            # etcd sends a progress notification every 10 minutes on a quiet stream: a longer silence
            # means a dead connection.
            while True:
                message = await asyncio.wait_for(call.read(), WATCH_SILENCE)
                if message is grpc.aio.EOF:
                    raise EtcdError(f"etcd {peer.url}: watch: the stream ended")
                yield message
        except grpc.aio.AioRpcError as exc:
            self._next()
            if "auth token" in (exc.details() or ""):
                self._token = None
            raise EtcdError(f"etcd {peer.url}: watch: {describe(exc)}") from None
        except TimeoutError:
            self._next()
            raise EtcdError(f"etcd {peer.url}: watch: no message for {WATCH_SILENCE:.0f} s") from None
        except PeerUnreachable as exc:
            self._next()
            raise EtcdError(f"etcd {peer.url}: watch: {exc}") from None
        except EtcdError:
            self._next()
            raise
        finally:
            if call is not None:
                call.cancel()
