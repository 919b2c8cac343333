"""A spliced TLS connection that ends after its SSL protocol is gone closes its peer, without a traceback.

asyncio's SSL transport answers ``get_extra_info`` through its SSL protocol, which is gone once
the connection is torn down; a ``Pipe`` asks whether it is TLS once, when the connection is made.
"""

from __future__ import annotations

import asyncio
from typing import Any

from teleport_proxy.mux import Pipe


class Mux:
    def __init__(self) -> None:
        self.live: set[Any] = set()


class Transport(asyncio.Transport):
    """A transport as asyncio's SSL transport behaves at teardown: after ``gone``, no extra info."""

    def __init__(self, tls: bool) -> None:
        super().__init__()
        self.tls, self.gone, self.closed, self.eof_written = tls, False, False, False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.gone:  # what asyncio raises: 'NoneType' object has no attribute '_get_extra_info'
            raise AttributeError("'NoneType' object has no attribute '_get_extra_info'")
        return object() if name == "sslcontext" and self.tls else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return not self.tls

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True


def spliced(tls: bool) -> tuple[Pipe, Transport]:
    mux = Mux()
    client, node = Pipe(mux), Pipe(mux)  # type: ignore[arg-type]
    client_side, node_side = Transport(tls), Transport(False)
    client.connection_made(client_side)
    node.connection_made(node_side)
    client.link(node)
    node.link(client)
    return client, node_side


def test_end_of_a_tls_side_after_its_protocol_is_gone_closes_the_peer():
    client, node_side = spliced(tls=True)
    assert client.transport is not None
    client.transport.gone = True  # type: ignore[attr-defined]
    assert client.eof_received() is False  # no AttributeError
    assert node_side.closed and not node_side.eof_written


def test_end_of_a_plain_side_half_closes_the_peer():
    client, node_side = spliced(tls=False)
    assert client.eof_received() is True
    assert node_side.eof_written and not node_side.closed
