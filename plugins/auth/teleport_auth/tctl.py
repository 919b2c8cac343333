"""``tctl`` commands of teleport-auth. Each runs one async function against the auth API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

from teleport_core.cli.common import CliContext
from teleport_core.cli.connect import auth_client
from teleport_core.client import AuthClient


def run(cli: CliContext, args: Any, body: Callable[[AuthClient], Awaitable[int]]) -> int:
    async def main() -> int:
        async with auth_client(args, cli.plugins) as client:
            return await body(client)

    return asyncio.run(main())


def describe_rotation(rotation: dict[str, Any]) -> str:
    phase = rotation.get("phase", "standby")
    last = rotation.get("last_rotated")
    if phase not in ("standby", ""):
        return f"rotation in progress: phase {phase} ({rotation.get('mode', 'manual')} mode)"
    if not last:
        return "never updated"
    when = dt.datetime.fromisoformat(last)
    return f"rotated {when.strftime('%Y-%m-%d %H:%M:%S UTC')}"


def status(argv: list[str], cli: CliContext) -> int:
    parser = cli.parser("Cluster status: name, version, CA rotation state and the CA pin.")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)

    async def body(client: AuthClient) -> int:
        info = await client.status()
        if args.format == "json":
            print(json.dumps(info, indent=2))
            return 0
        rows = [
            ("Cluster", info["cluster_name"]),
            ("Version", info["version"]),
            ("User CA", describe_rotation(info["cas"]["user"])),
            ("Host CA", describe_rotation(info["cas"]["host"])),
            ("CA pin", info["ca_pin"]),
        ]
        for name, value in rows:
            print(f"{name:<8} {value}")
        return 0

    return run(cli, args, body)


