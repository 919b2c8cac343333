"""A small asyncio client for etcd's v3 JSON API (the gRPC gateway etcd serves at ``/v3/...``).

It speaks HTTP through ``httpx`` to any of the configured peers: a request that cannot reach
one peer (connection refused, TLS failure, no leader) moves on to the next, until the
request deadline. Keys and values travel base64-encoded; 64-bit integers as strings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from teleport_core.errors import TeleportError

from .config import EtcdOptions

log = logging.getLogger(__name__)

REQUEST_DEADLINE = 20.0  # seconds one operation may keep trying the peers
RETRY_PAUSE = 0.2  # seconds between rounds over the peers
WATCH_SILENCE = 660.0  # seconds without a byte after which a watch stream is taken as dead
# etcd errors after which another peer (or a later try) may succeed. These certainly did not
# apply the request:
_NOT_APPLIED = ("no leader", "not capable", "too many requests", "raft proposal dropped", "unhealthy cluster")
# These may have applied it: retried only for idempotent requests.
_AMBIGUOUS = ("timed out", "leader changed", "server stopped")


class EtcdError(TeleportError):
    """etcd refused or failed a request; the message names the peer and etcd's error."""


class EtcdUnavailable(EtcdError):
    """No peer answered in time; the message lists each peer and what failed."""


def b64(data: bytes) -> str:
    """``data`` as the gateway wants bytes fields."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    """A bytes field of a gateway answer (absent means empty)."""
    return base64.b64decode(text) if text else b""


def describe(exc: BaseException) -> str:
    """A short reason for a transport error (``connection refused``, ``TLS: ...``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text


def make_ssl_context(options: EtcdOptions) -> ssl.SSLContext | bool:
    """The TLS settings for ``https://`` peers (True: system CAs, no client certificate)."""
    if not (options.tls_ca_file or options.tls_cert_file or options.insecure):
        return True
    try:
        context = ssl.create_default_context(cafile=str(options.tls_ca_file) if options.tls_ca_file else None)
        if options.tls_cert_file and options.tls_key_file:
            context.load_cert_chain(str(options.tls_cert_file), str(options.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise TeleportError(f"etcd backend: cannot load the TLS files: {exc}") from None
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class EtcdClient:
    """Unary calls and watch streams against a list of etcd peers."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self.peers = list(options.peers)
        self._current = 0
        dial = options.dial_timeout.total_seconds()
        self._timeout = httpx.Timeout(connect=dial, read=max(dial, 10.0), write=10.0, pool=REQUEST_DEADLINE)
        self._http = httpx.AsyncClient(
            verify=make_ssl_context(options),
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=64),
        )
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
        """Close every connection."""
        await self._http.aclose()

    # -- plumbing -----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Grpc-Metadata-hasleader": "true"}  # refuse members cut off from the leader
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _note(self, answer: dict[str, Any]) -> None:
        header = answer.get("header") or {}
        revision = int(header.get("revision", 0))
        if revision > self.revision:
            self.revision = revision

    async def _authenticate(self, peer: str) -> None:
        if self.options.username is None:
            return
        async with self._auth_lock:
            response = await self._http.post(
                f"{peer}/v3/auth/authenticate", json={"name": self.options.username, "password": self._password or ""}
            )
            answer = response.json()
            if response.status_code != 200 or "token" not in answer:
                message = answer.get("message") or answer.get("error") or response.text
                raise EtcdError(f"etcd {peer}: authentication as {self.options.username!r} failed: {message}")
            self._token = str(answer["token"])

    async def call(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on a working peer; etcd's answer.

        A peer that cannot be reached is skipped. Non-idempotent calls are retried only when
        the request certainly did not reach etcd (the connection was never made) or etcd said
        it did not apply it (no leader ...).
        """
        deadline = time.monotonic() + REQUEST_DEADLINE
        failures: dict[str, str] = {}
        while True:
            for _ in range(len(self.peers)):
                peer = self.peers[self._current]
                try:
                    if self.options.username is not None and self._token is None:
                        await self._authenticate(peer)
                    response = await self._http.post(f"{peer}/v3/{path}", json=body, headers=self._headers())
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                    failures[peer] = describe(exc)
                    self._current = (self._current + 1) % len(self.peers)
                    continue
                # a TLS alert after the handshake (a refused client certificate) escapes httpx as ssl.SSLError
                except (httpx.TransportError, ssl.SSLError) as exc:
                    if not idempotent:
                        raise EtcdError(
                            f"etcd {peer}: {path} failed and may or may not have been applied: {describe(exc)}"
                        ) from None
                    failures[peer] = describe(exc)
                    self._current = (self._current + 1) % len(self.peers)
                    continue
                try:
                    answer: dict[str, Any] = response.json()
                except json.JSONDecodeError:
                    answer = {"message": response.text.strip()}
                if response.status_code == 200:
                    self._note(answer)
                    return answer
                message = str(answer.get("message") or answer.get("error") or response.text)
                lowered = message.lower()
                if "auth token" in lowered or "invalid auth" in lowered:
                    self._token = None
                    failures[peer] = message
                    continue
                if any(reason in lowered for reason in _NOT_APPLIED) or (
                    idempotent and (any(reason in lowered for reason in _AMBIGUOUS) or response.status_code == 503)
                ):
                    failures[peer] = message
                    self._current = (self._current + 1) % len(self.peers)
                    continue
                if any(reason in lowered for reason in _AMBIGUOUS):
                    raise EtcdError(f"etcd {peer}: {path} may or may not have been applied: {message}")
                raise EtcdError(f"etcd {peer}: {path}: {message}")
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{peer}: {why}" for peer, why in failures.items())
                raise EtcdUnavailable(
                    f"etcd backend: no peer answered {path} within {REQUEST_DEADLINE:.0f} s ({detail})"
                )
            await asyncio.sleep(RETRY_PAUSE)

    async def check(self) -> None:
        """Reach at least one peer within the dial timeout, or raise naming every peer and reason."""
        failures: list[str] = []
        for index, peer in enumerate(self.peers):
            try:
                if self.options.username is not None:
                    await self._authenticate(peer)
                response = await self._http.post(f"{peer}/v3/maintenance/status", json={}, headers=self._headers())
            except (httpx.HTTPError, ssl.SSLError) as exc:
                failures.append(f"{peer}: {describe(exc)}")
                continue
            if response.status_code == 200:
                self._note(response.json())
                self._current = index
                return
            failures.append(f"{peer}: HTTP {response.status_code}: {response.text.strip()[:200]}")
        raise EtcdUnavailable("etcd backend: cannot reach any peer: " + "; ".join(failures))

    # -- watch streams ------------------------------------------------------------------------------

    async def watch_stream(self, create: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One watch stream on the current peer: yields each ``result`` etcd sends.

        Raises ``EtcdError`` for a stream etcd ends with an error, or a transport error; the
        caller reconnects (to the next peer) and resumes.
        """
        peer = self.peers[self._current]
        if self.options.username is not None and self._token is None:
            await self._authenticate(peer)
        # etcd sends a progress notification every 10 minutes on a quiet stream: a longer silence
        # means a dead connection.
        timeout = httpx.Timeout(connect=self._timeout.connect, read=WATCH_SILENCE, write=10.0, pool=REQUEST_DEADLINE)
        try:
            async with self._http.stream(
                "POST",
                f"{peer}/v3/watch",
                json={"create_request": create},
                headers=self._headers(),
                timeout=timeout,
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace").strip()
                    if "auth token" in text:
                        self._token = None
                    raise EtcdError(f"etcd {peer}: watch: HTTP {response.status_code}: {text[:200]}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a dropped connection
                        raise EtcdError(f"etcd {peer}: watch: malformed answer {line[:100]!r}") from None
                    if "error" in message:
                        error = message["error"]
                        text = error.get("message", error) if isinstance(error, dict) else error
                        if "auth token" in str(text):
                            self._token = None
                        raise EtcdError(f"etcd {peer}: watch: {text}")
                    yield message.get("result") or {}
        except (httpx.HTTPError, ssl.SSLError) as exc:
            self._current = (self._current + 1) % len(self.peers)
            raise EtcdError(f"etcd {peer}: watch: {describe(exc)}") from None
        except EtcdError:
            self._current = (self._current + 1) % len(self.peers)
            raise
