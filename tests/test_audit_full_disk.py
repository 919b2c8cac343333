"""The audit spool on a real full filesystem (a 1 MiB tmpfs, root only): a failed append leaves
no partial line, and once space returns everything is delivered in order, exactly once."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest

from teleport_core.state.audit import new_event
from teleport_core.state.audit_spool import AuditSpool
from teleport_core.testing.fulldisk import fill, free_bytes, small_tmpfs


class Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict]] = []

    def warning(self, message: str, **kw: object) -> None:
        self.warnings.append((message, kw))

    def error(self, message: str, **kw: object) -> None:
        raise AssertionError(f"unexpected error log: {message} {kw}")


def whole_lines(path: Path) -> list[dict]:
    """Every line of ``path``, each one whole JSON ending in a newline (no torn line anywhere)."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a partial line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def test_spool_append_on_a_full_disk_leaves_no_partial_line(tmp_path: Path) -> None:
    delivered: list[dict] = []

    async def send(event: dict) -> None:
        delivered.append(event)

    async def scenario() -> tuple[list[str], list[str]]:
        with small_tmpfs(tmp_path / "fs") as fs:
            spool = AuditSpool(fs / "spool", send, Log())
            acknowledged = []
            for i in range(3):
                event = new_event("exec", command=f"before {i}")
                await spool.emit(event)
                acknowledged.append(event.uid)
            fill(fs)
            free_bytes(fs, 4096)  # room for part of the next event only: a partial write, then ENOSPC
            size = spool.path.stat().st_size
            refused = []
            for i in range(3):
                event = new_event("exec", command=f"refused {i}", padding="x" * 20000)
                with pytest.raises(OSError) as caught:
                    await spool.emit(event)
                assert caught.value.errno == errno.ENOSPC
                refused.append(event.uid)
                assert spool.path.stat().st_size == size  # the partial write was cut back off
            whole_lines(spool.path)
            (fs / "filler").unlink()  # space returns
            for i in range(3):
                event = new_event("exec", command=f"after {i}", padding="y" * 20000)
                await spool.emit(event)
                acknowledged.append(event.uid)
            assert spool.backlog() == 6
            assert await spool.deliver() == 6
            assert spool.backlog() == 0
            assert [e["uid"] for e in whole_lines(spool.path)] == acknowledged
            return acknowledged, refused

    acknowledged, refused = asyncio.run(scenario())
    assert [e["uid"] for e in delivered] == acknowledged  # in order, once each
    assert not set(refused) & {e["uid"] for e in delivered}  # never acknowledged, never delivered
