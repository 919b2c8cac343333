"""A small real service for the process tests: a TCP echo listener.

Sections ``sample_service`` (role ``sample``) and ``sample_after`` (role ``sample_after``,
started after ``sample_service``). Keys of both::

    listen_addr: 127.0.0.1:0   # where to listen
    start_delay: 0s            # sleep this long in start() before listening
    wait_for_file: ""          # in start(), wait until this file exists before listening
    stop_delay: 0s             # sleep this long in stop()
    fail_start: no             # raise in start() after the delay
    password: ...              # a secret the service logs (it must never appear in a log)
    hook_fail: no              # (sample_service) make teleport_process_started raise

Every start, stop and process hook appends a line to ``data_dir/sample-events.log`` so tests
(also of subprocesses) can check the order. ``sample_after`` connects to ``sample_service``'s
listener during its own start and fails unless it answers, so a wrong start order fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from teleport_core import hookimpl
from teleport_core.config.model import TeleportConfig
from teleport_core.config.reader import SectionReader
from teleport_core.config.values import NetAddr
from teleport_core.pki.secret import Secret
from teleport_core.service import Service, ServiceContext
from teleport_core.specs import ServiceSpec

SECTIONS = ("sample_service", "sample_after")
EVENTS = "sample-events.log"


@attrs.frozen
class SampleSettings:
    listen_addr: NetAddr
    start_delay: float
    wait_for_file: str
    stop_delay: float
    fail_start: bool
    hook_fail: bool
    password: Secret | None


def record(data_dir: Path, line: str) -> None:
    with open(data_dir / EVENTS, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def events(data_dir: Path) -> list[str]:
    path = data_dir / EVENTS
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@hookimpl
def teleport_services() -> list[ServiceSpec]:
    factory = "tests.plugins.sample_service:SampleService"
    return [
        ServiceSpec(section="sample_service", role="sample", factory=factory, description="test echo service"),
        ServiceSpec(
            section="sample_after",
            role="sample_after",
            factory=factory,
            after=("sample_service",),
            description="test echo service started after sample_service",
        ),
    ]


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> SampleSettings | None:
    if section not in SECTIONS:
        return None
    return SampleSettings(
        listen_addr=reader.addr("listen_addr", "127.0.0.1:0"),
        start_delay=reader.duration("start_delay", "0s").total_seconds(),
        wait_for_file=reader.string("wait_for_file", ""),
        stop_delay=reader.duration("stop_delay", "0s").total_seconds(),
        fail_start=reader.boolean("fail_start", False),
        hook_fail=reader.boolean("hook_fail", False),
        password=reader.secret("password"),
    )


@hookimpl
def teleport_process_started(config: TeleportConfig, services: Mapping[str, Any]) -> None:
    record(config.data_dir, "hook started " + ",".join(services))
    settings = config.settings("sample_service")
    if settings is not None and settings.hook_fail:
        raise RuntimeError("sample hook exploded")


@hookimpl
def teleport_process_stopping(config: TeleportConfig) -> None:
    record(config.data_dir, "hook stopping")


class SampleService(Service):
    """Echoes every line it receives; its bound address is in ``data_dir/<section>.addr``."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.settings: SampleSettings = ctx.settings
        self.server: asyncio.Server | None = None
        self.addr: NetAddr | None = None
        self.connections = 0
        self.live = 0  # open echo connections

    async def start(self) -> None:
        ctx = self.ctx
        record(ctx.data_dir, f"start {ctx.name}")
        if self.settings.start_delay:
            ctx.log.info("waiting before listening", delay=self.settings.start_delay)
            await asyncio.sleep(self.settings.start_delay)
        if self.settings.wait_for_file:
            ctx.log.info("waiting for file", path=self.settings.wait_for_file)
            while not Path(self.settings.wait_for_file).exists():
                await asyncio.sleep(0.05)
        if self.settings.fail_start:
            raise RuntimeError(f"{ctx.name} was told to fail")
        if ctx.name == "sample_after":
            await self._check_upstream()
        # through the kernel: a graceful reload hands the socket to the new process
        sock = ctx.listen(f"sample:{ctx.name}", self.settings.listen_addr)
        self.server = await asyncio.start_server(self._echo, sock=sock)
        host, port = self.server.sockets[0].getsockname()[:2]
        self.addr = NetAddr(host, port)
        (ctx.data_dir / f"{ctx.name}.addr").write_text(str(self.addr), encoding="utf-8")
        secret = self.settings.password
        ctx.log.info(
            "service started",
            listen_addr=str(self.addr),
            password=secret,
            api_token=secret.reveal() if secret else None,
            configured=secret,  # a Secret under an innocent key still prints as Secret(***)
        )
        record(ctx.data_dir, f"listening {ctx.name} {self.addr}")

    async def _check_upstream(self) -> None:
        path = self.ctx.data_dir / "sample_service.addr"
        if not path.exists():
            raise RuntimeError("sample_service is not listening yet")
        host, _, port = path.read_text(encoding="utf-8").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"ping\n")
            await writer.drain()
            if await reader.readline() != b"ping\n":
                raise RuntimeError("sample_service did not echo")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.live += 1
        try:
            while line := await reader.readline():
                writer.write(f"{os.getpid()}\n".encode() if line == b"pid\n" else line)  # "pid": who serves
                await writer.drain()
        except OSError:
            pass
        finally:
            self.live -= 1
            writer.close()

    async def stop_accepting(self) -> None:
        record(self.ctx.data_dir, f"stop accepting {self.ctx.name}")
        if self.server is not None:
            self.server.close()

    async def drain(self) -> None:
        """Wait until every echo connection was closed by its client."""
        while self.live:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        record(self.ctx.data_dir, f"stop {self.ctx.name}")
        if self.settings.stop_delay:
            await asyncio.sleep(self.settings.stop_delay)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        record(self.ctx.data_dir, f"stopped {self.ctx.name}")

    def diagnostics(self) -> dict[str, Any]:
        return {"listen_addr": str(self.addr), "connections": self.connections}
