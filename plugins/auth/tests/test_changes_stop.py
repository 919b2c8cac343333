"""A ``/v1/changes`` long poll in flight when auth stops is answered (the version unchanged, as
at its timeout), not held until the graceful stop gives up and drops the connection: a server
following roles, CAs and locks (each proxy and node holds three such polls) neither delays the
stop of auth nor sees an error; it asks again, at the new process after a reload."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from teleport_core.api.client import AuthClient, load_identity_dir
from teleport_core.plugins import make_plugins
from teleport_core.testing.cluster import start_cluster


def test_a_long_poll_is_answered_when_auth_stops(tmp_path: Path) -> None:
    config = {"teleport": {"data_dir": str(tmp_path / "data"), "nodename": "auth-stop"},
              "auth_service": {"cluster_name": "stop.example", "listen_addr": "127.0.0.1:0"},
              "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    outcome: dict[str, Any] = {}
    polling = threading.Event()

    def follower(addr: str) -> None:
        async def main() -> None:
            async with AuthClient(addr, [load_identity_dir(tmp_path / "data" / "keys" / "auth")]) as client:
                outcome["version"] = await client.wait_for_change("role", timeout=0)
                poll = asyncio.create_task(client.wait_for_change("role", outcome["version"], timeout=60))
                await asyncio.sleep(0.5)  # the poll is waiting at auth
                polling.set()
                try:
                    outcome["answer"] = await poll
                except Exception as exc:  # what the old stop gave: the connection dropped after 5 s
                    outcome["error"] = repr(exc)

        asyncio.run(main())

    with start_cluster(config, make_plugins(), timeout=60) as handle:
        thread = threading.Thread(target=follower, args=(handle.process.services["auth_service"].address,))
        thread.start()
        assert polling.wait(60), outcome
    thread.join(50)  # well before the poll's own 60 s timeout
    assert not thread.is_alive(), "the long poll still waits after auth stopped"
    assert outcome.get("answer") == outcome["version"], outcome
