"""teleport_core.recording.stream: a live session's recording streamed in chunks (sync modes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from teleport_core.errors import AccessDenied
from teleport_core.recording.spool import FRAME, PART, convert
from teleport_core.recording.stream import StreamRecorder, header_line
from teleport_core.state.backends.file_sessions import FileSessionStorage, open_storage
from teleport_core.state.sessions import InvalidSessionID

ENV = {"TERM": "xterm", "SHELL": "/bin/sh"}
# output as a session writes it: a UTF-8 character cut between two writes, a binary byte
WRITES = [b"hello\r\n", b"caf\xc3", b"\xa9 ok\r\n", b"\xff raw\r\n", b"x" * 5000, b"bye\r\n"]
STARTED = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _spool_cast(tmp: Path, stamps: list[float]) -> bytes:
    """What the async (spool) recorder stores for WRITES at ``stamps``."""
    part = tmp / ("sess" + PART)
    with open(part, "wb") as out:
        out.write(header_line(width=80, height=24, started=STARTED, env=ENV, title="t", command="c"))
        for stamp, data in zip(stamps, WRITES, strict=True):
            out.write(FRAME.pack(stamp, len(data)) + data)
    final, _ = convert(part)
    return final.read_bytes()


async def _stream(storage: FileSessionStorage, clock: Clock, stamps: list[float], **kw: object) -> StreamRecorder:
    completed: list[tuple[int, bool]] = []

    async def complete(count: int, partial: bool) -> None:
        completed.append((count, partial))
        await storage.complete("sess")

    recorder = StreamRecorder("sess", asyncio.get_running_loop(), lambda i, d: storage.put_chunk("sess", i, d),
                              complete, width=80, height=24, env=ENV, title="t", command="c", started=STARTED,
                              clock=clock, **kw)  # type: ignore[arg-type]
    runner = asyncio.create_task(recorder.run())
    for stamp, data in zip(stamps, WRITES, strict=True):
        clock.now = 100.0 + stamp
        recorder.write(data)
        await asyncio.sleep(0.2)  # some chunks go while the session runs
    recorder.close()
    await asyncio.wait_for(runner, 30)
    assert completed == [(recorder.chunks_sent, False)]
    return recorder


def test_streamed_recording_equals_the_async_one(tmp_path: Path) -> None:
    stamps = [0.5, 1.25, 1.5, 2.0, 2.000001, 3.75]
    expected = _spool_cast(tmp_path, stamps)

    async def main() -> None:
        storage = await open_storage(f"file://{tmp_path}/records", tmp_path)
        seen: list[bytes] = []
        original = storage.put_chunk

        async def put_chunk(sid: str, index: int, data: bytes) -> bool:
            seen.append(data)
            return await original(sid, index, data)

        setattr(storage, "put_chunk", put_chunk)  # noqa: B010 - spy on what the recorder sends
        recorder = await _stream(storage, Clock(), stamps)
        assert recorder.chunks_sent == len(seen) > 1, "chunks go while the session runs"
        assert seen[0].startswith(b'{"version": 2'), "chunk 0 starts with the header"
        for chunk in seen:  # every chunk is whole event lines: what was received so far plays
            assert chunk.endswith(b"\n")
            for line in chunk.splitlines():
                json.loads(line)
        await storage.download("sess", tmp_path / "got.cast")

    asyncio.run(main())
    assert (tmp_path / "got.cast").read_bytes() == expected


def test_full_buffer_pauses_output_until_auth_takes_it(tmp_path: Path) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        stored: dict[int, bytes] = {}

        async def send(index: int, data: bytes) -> None:
            await gate.wait()
            stored[index] = data

        async def complete(count: int, partial: bool) -> None:
            assert (count, partial) == (len(stored), False)

        recorder = StreamRecorder("sess", asyncio.get_running_loop(), send, complete, width=80, height=24, env=ENV,
                                  buffer_limit=4096)
        runner = asyncio.create_task(recorder.run())
        recorder.write(b"a" * 3000)
        assert recorder.accepting
        recorder.write(b"b" * 3000)
        assert not recorder.accepting, "a full buffer stops the host reading the session's output"
        gate.set()
        for _ in range(100):
            if recorder.accepting:
                break
            await asyncio.sleep(0.05)
        assert recorder.accepting and recorder.unacked == 0
        recorder.close()
        await asyncio.wait_for(runner, 10)
        assert b"".join(stored[i] for i in sorted(stored)).count(b"a") >= 3000

    asyncio.run(main())


def test_unreachable_auth_ends_the_session_with_a_reason() -> None:
    async def main() -> None:
        given_up: list[str] = []
        attempts: list[int] = []

        async def send(index: int, data: bytes) -> None:
            attempts.append(index)
            raise OSError("connection refused")

        async def complete(count: int, partial: bool) -> None:
            raise AssertionError("nothing was received: nothing to complete")

        recorder = StreamRecorder("sess", asyncio.get_running_loop(), send, complete, width=80, height=24, env=ENV,
                                  stall_limit=0.5, drain_for=0.5, on_give_up=given_up.append)
        runner = asyncio.create_task(recorder.run())
        recorder.write(b"secret output\r\n")
        while not given_up:
            await asyncio.sleep(0.2)
            recorder.flush()  # the host's periodic tick
        assert "could not reach auth" in given_up[0]
        assert not recorder.accepting, "no more output once the recording gave up"
        recorder.write(b"more")
        await asyncio.wait_for(runner, 10)
        assert set(attempts) == {0}, "a retried chunk keeps its index"

    asyncio.run(main())


def test_refused_chunk_gives_up_at_once() -> None:
    async def main() -> None:
        given_up: list[str] = []

        async def send(index: int, data: bytes) -> None:
            raise AccessDenied("session sess was not started by host x")

        async def complete(count: int, partial: bool) -> None:
            raise AssertionError("unreachable")

        recorder = StreamRecorder("sess", asyncio.get_running_loop(), send, complete, width=80, height=24, env=ENV,
                                  on_give_up=given_up.append)
        runner = asyncio.create_task(recorder.run())
        recorder.write(b"x")
        await asyncio.wait_for(runner, 10)
        assert given_up and "auth refused the session recording (chunk 0)" in given_up[0]
        assert "not started by host" in recorder.failure

    asyncio.run(main())


@pytest.mark.parametrize("sid", ["../x", ""])
def test_invalid_session_id_is_refused(sid: str) -> None:
    async def main() -> None:
        async def noop(*_: object) -> None: ...

        with pytest.raises(InvalidSessionID):
            StreamRecorder(sid, asyncio.get_running_loop(), noop, noop, width=80, height=24, env=ENV)

    asyncio.run(main())

