"""A web terminal to an OpenSSH ``sshd`` node, which knows nothing of locks: the proxy opens the
session with the user's certificate (sshd trusts the user CA), and when a lock comes the proxy
itself ends the terminal with the lock's message, audited (T3007W, ``client: web``)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from terminal_helpers import WSClient

from teleport_core.policy.locks import LockTarget, lock_to_dict, new_lock
from teleport_core.testing.waiting import wait_for
from teleport_core.webui import SESSION_COOKIE

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "proxy" / "tests"))

from proxy_helpers import CLUSTER, LOGIN, Env, running_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "a long enough password 123"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory, second_factor="off") as e:
        e.signup("dora", ["dev"], [LOGIN], PASSWORD)
        yield e


def test_the_proxy_ends_a_locked_users_web_terminal_to_an_openssh_node(env: Env) -> None:
    with env.web_client() as web:
        form = web.get("/web/login")
        token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert token, form.text
        answer = web.post("/web/login", data={"login_csrf": token.group(1), "user": "dora", "password": PASSWORD,
                                              "otp": "", "next": ""})
        assert answer.status_code == 303, answer.text
        cookie = str(web.cookies[SESSION_COOKIE])
    target = SimpleNamespace(web=env.web, url=f"https://{env.web}")
    terminal = WSClient(target, cookie, {"node": "sshd-node", "login": LOGIN},  # type: ignore[arg-type]
                        path=f"/v1/webapi/sites/{CLUSTER}/connect/ws")
    lock = new_lock(LockTarget(user="dora"), "badge revoked")
    try:
        session = terminal.next()
        assert session["type"] == "session" and session["hostname"] == "sshd-node", session
        terminal.send_bytes(b"echo sshd-$((6*7))\r")
        terminal.output_until(b"sshd-42\r\n")
        env.call("upsert_lock", lock_to_dict(lock))
        message = 'lock targeting User:"dora" is in force: badge revoked'
        shown = b""
        end = None
        while end is None:
            item = terminal.next()
            if isinstance(item, bytes):
                shown += item
            elif isinstance(item, dict) and item.get("type") == "end":
                end = item
        assert message.encode() in shown
        assert end["reason"] == f"session ended: {message}"
    finally:
        terminal.close()

    def cut() -> list[dict[str, object]]:
        async def search() -> list[dict[str, object]]:
            async with env.admin() as admin:
                return list((await admin.search_events(type="auth", user="dora", limit=1000))["events"])

        found = asyncio.run(search())
        return [e for e in found if e.get("user") == "dora" and e.get("error") == message and e.get("client") == "web"]

    events = wait_for(cut, "the proxy's audited cut", timeout=30)
    assert events[0]["code"] == "T3007W" and events[0]["server_id"] == env.proxy.identity.host_uuid
    env.call("delete_lock", lock.name)
