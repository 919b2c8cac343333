"""``auth_service.web_idle_timeout`` (a short one) and the login rate limit per address
(``proxy_service.connection_limits.rates``, as the JSON login's), on a cluster of their own."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_helpers import CLUSTER, WebCluster, running_cluster

from teleport_core.errors import ConfigError

RESOURCES = f"/web/cluster/{CLUSTER}/resources"
IDLE = 3  # seconds


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    limits = {"connection_limits": {"rates": [{"period": "1m", "average": 3, "burst": 3}]}}
    with running_cluster(tmp_path_factory.mktemp("web-idle"), idle_timeout=f"{IDLE}s", proxy=limits) as c:
        c.signup("alice", ["dev"])
        yield c


def test_idle_session_ends(short: WebCluster) -> None:
    with short.logged_in("alice") as web:
        for _ in range(3):  # requests within the timeout keep it alive, each restarting the timer
            time.sleep(IDLE / 2)
            assert web.get(RESOURCES).status_code == 200
        time.sleep(IDLE + 1)
        answer = web.get(RESOURCES)
        assert answer.status_code == 303
        reason = next(urllib.parse.unquote(v.split("=", 1)[1].split(";")[0])
                      for v in answer.headers.get_list("set-cookie") if v.startswith("__Host-flash="))
        assert reason == f"your web session ended after {IDLE}s without activity (web_idle_timeout): log in again"
        assert web.get(RESOURCES).status_code == 303  # deleted: it does not come back
    refused = [e for e in short.events("auth") if "web_idle_timeout" in e.get("error", "")]
    assert refused


def test_login_rate_limit(short: WebCluster) -> None:
    """Three failed attempts a minute from one address; the fourth is a 429 with Retry-After,
    even with the right password, and the refusal is audited."""
    with short.client() as web:
        for _ in range(3):
            assert short.login(web, "alice", "wrong-password-xyz").status_code == 401
        answer = short.login(web, "alice")
        assert answer.status_code == 429, answer.text
        assert int(answer.headers["retry-after"]) > 0
        assert "too many attempts from 127.0.0.1" in answer.text
    assert any("web login: too many attempts" in e.get("error", "") for e in short.events("auth"))


@pytest.mark.parametrize(("value", "message"), [
    ("-5m", "auth_service.web_idle_timeout: must not be negative"),
    ("soon", 'auth_service.web_idle_timeout: expected a duration like "30m" or "1h0m0s", got "soon"'),
])
def test_bad_idle_timeout_is_a_clear_error(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught, running_cluster(tmp_path, idle_timeout=value):
        pass
    assert str(caught.value) == message
