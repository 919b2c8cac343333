"""AuthClient.follow: the cache-invalidation loop nodes and proxies run against auth."""

from __future__ import annotations

import asyncio
import ssl

from teleport_core.api.client import AuthClient, ConnectionProblem, Credentials


class Log:
    def __init__(self):
        self.warnings = []

    def warning(self, message, **kw):
        self.warnings.append((message, kw))


def test_follow_survives_auth_failing_at_first_and_reloads_on_change():
    client = AuthClient("127.0.0.1:1", credentials=Credentials(ssl.create_default_context()))
    answers = iter([ConnectionProblem("auth down"), "v1", "v1", "v2", "v2"])
    reloads = []

    async def wait_for_change(kind, version="", timeout=30.0):
        answer = next(answers, None)
        if answer is None:
            await asyncio.sleep(3600)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def reload():
        reloads.append(len(reloads))

    client.wait_for_change = wait_for_change  # type: ignore[method-assign]
    log = Log()

    async def run():
        task = asyncio.create_task(client.follow("role", reload, log, retry=0.01))
        for _ in range(200):
            if len(reloads) >= 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert log.warnings[0] == ("cannot follow changes at auth, will retry", {"kind": "role", "error": "auth down"})
    assert reloads == [0, 1]  # once at start (after the failure), once for the change v1 -> v2
