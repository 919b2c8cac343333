"""A lean HTTP/1.1 client over mutual TLS for the benches (bench/heartbeats.py, bench/auth_certs.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from teleport_core.api.client import AUTH_SERVER_NAME


class LeanConnection:
    """One kept-alive mutual TLS connection to auth sending requests, one at a time.

    The benches' lean client (``--client raw``): the same TLS (the identity's context, auth's server
    role checked) and the same HTTP/1.1 requests :class:`AuthClient` sends, but no httpx under them
    (about 4 ms of CPU per request here), so the bench's clients, which share the machine's two
    cores with auth, leave more of them to auth. What a real client spends is not what limits a
    cluster: real clients are many machines."""

    def __init__(self, addr: str, context: Any) -> None:
        self.addr = addr
        self.context = context
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        host, _, port = self.addr.rpartition(":")
        self.reader, self.writer = await asyncio.open_connection(host, int(port), ssl=self.context,
                                                                 server_hostname=AUTH_SERVER_NAME)

    async def request(self, path: str, body: bytes = b"", method: str = "PUT") -> tuple[int, bytes]:
        """``method path`` with ``body`` (JSON): the status and the answer's body (the connection is
        opened again if the server closed it)."""
        kind = "Content-Type: application/json\r\n" if body else ""
        message = (f"{method} {path} HTTP/1.1\r\nHost: {AUTH_SERVER_NAME}\r\n{kind}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for attempt in (1, 2):
            if self.writer is None or self.writer.is_closing():
                await self.connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(message)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (OSError, asyncio.IncompleteReadError):
                self.writer.close()
                if attempt == 2:
                    raise
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.writer.close()
            return int(head[9:12]), await self.reader.readexactly(length)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
