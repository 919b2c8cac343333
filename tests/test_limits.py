"""teleport_core.net.limits: the connection_limits config (every wrong value a clear error), the
gate's accounting and the per-source token bucket (fake clocks, no sleeps)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from teleport_core.config.limits import ConnectionLimits, Rate, Startups
from teleport_core.config.load import parse_config
from teleport_core.errors import ConfigError
from teleport_core.net.limits import AuditThrottle, ConnectionGate, RateLimiter, Refused, retry_after
from teleport_core.plugins import make_plugins


@pytest.fixture(scope="module")
def plugins() -> Any:
    """The installed plugins; the config tests read the node's, proxy's and auth's sections, so they
    need those distributions (the wheel test runs teleport-core alone too, where they are absent)."""
    for distribution in ("teleport_auth", "teleport_node", "teleport_proxy"):
        pytest.importorskip(distribution, reason="the config tests read that plugin's section")
    return make_plugins()


def config(plugins: Any, section: str, limits: Any) -> Any:
    data: dict[str, Any] = {"teleport": {"nodename": "n1", "data_dir": "/tmp/x"}}
    if section == "teleport":
        data["teleport"]["connection_limits"] = limits
    else:
        data[section] = {"connection_limits": limits}
    return parse_config(data, plugins)


def test_defaults_and_teleport_section(plugins: Any) -> None:
    plain = parse_config({"teleport": {"nodename": "n1", "data_dir": "/tmp/x"}}, plugins)
    assert plain.connection_limits == ConnectionLimits()
    assert plain.settings("ssh_service").connection_limits is None  # the node takes teleport's
    loaded = config(plugins, "teleport", {"max_connections": 65000, "max_users": 1000,
                                          "rates": [{"period": "1m", "average": 5, "burst": 10}]})
    assert loaded.connection_limits.max_connections == 65000 and loaded.connection_limits.max_users == 1000
    assert loaded.connection_limits.rates == (Rate(60.0, 5, 10),)


@pytest.mark.parametrize("section", ["ssh_service", "proxy_service"])
def test_service_section(plugins: Any, section: str) -> None:
    loaded = config(plugins, section, {"max_startups": "5:50:20", "per_source_max_startups": 3,
                                       "login_grace_time": "10s"})
    limits = loaded.settings(section).connection_limits
    assert limits.max_startups == Startups(5, 50, 20) and limits.per_source_max_startups == 3
    assert limits.login_grace_time == 10.0 and limits.max_users == ConnectionLimits().max_users
    assert str(config(plugins, section, {"max_startups": 7}).settings(section).connection_limits.max_startups) == \
        "7:100:7"  # OpenSSH: one number is start = full


@pytest.mark.parametrize(("limits", "key", "message"), [
    ({"max_connections": 0}, "max_connections", "at least 1"),
    ({"max_connections": "many"}, "max_connections", "expected an integer"),
    ({"max_users": -1}, "max_users", "at least 1"),
    ({"max_users": True}, "max_users", "expected an integer"),
    ({"rates": []}, "rates", "at least one rate"),
    ({"rates": "fast"}, "rates", "expected a list"),
    ({"rates": [{"average": 5}]}, "rates[0].period", "required"),
    ({"rates": [{"period": "0", "average": 5}]}, "rates[0].period", "positive"),
    ({"rates": [{"period": "1m", "average": 0}]}, "rates[0].average", "at least 1"),
    ({"rates": [{"period": "1m", "average": 5, "burst": 0}]}, "rates[0].burst", "at least 1"),
    ({"rates": [{"period": "1m", "average": 5, "brust": 5}]}, "rates[0].brust", "unknown key"),
    ({"max_startups": "10:30"}, "max_startups", "start:rate:full"),
    ({"max_startups": "a:b:c"}, "max_startups", "start:rate:full"),
    ({"max_startups": "0:30:100"}, "max_startups", "start must be at least 1"),
    ({"max_startups": "10:0:100"}, "max_startups", "rate must be a percentage"),
    ({"max_startups": "10:130:100"}, "max_startups", "rate must be a percentage"),
    ({"max_startups": "50:30:10"}, "max_startups", "full must be at least start"),
    ({"max_connections": 50, "max_startups": "10:30:100"}, "max_startups", "must not exceed max_connections"),
    ({"per_source_max_startups": 0}, "per_source_max_startups", "at least 1"),
    ({"login_grace_time": "30"}, "login_grace_time", "a duration"),
    ({"login_grace_time": "0s"}, "login_grace_time", "positive"),
    ({"max_conections": 5}, "max_conections", "unknown key"),
    ("lots", "", "expected a mapping"),
])
@pytest.mark.parametrize("section", ["teleport", "ssh_service", "proxy_service"])
def test_config_errors(plugins: Any, section: str, limits: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(plugins, section, limits)
    where = f"{section}.connection_limits" + (f".{key}" if key else "")
    assert where in str(caught.value) and message in str(caught.value)


def gate(**kw: Any) -> ConnectionGate:
    return ConnectionGate(ConnectionLimits(**kw), "test", rng=random.Random(7))


def test_gate_per_source_and_total() -> None:
    g = gate(max_connections=6, per_source_max_startups=2, max_startups=Startups(5, 30, 6))
    tickets = [g.admit("10.0.0.1", lambda: None) for _ in range(2)]
    with pytest.raises(Refused, match="per_source_max_startups"):
        g.admit("10.0.0.1", lambda: None)
    tickets[0].authenticated("alice")  # a session: no longer counted per source
    tickets.append(g.admit("10.0.0.1", lambda: None))
    for i in range(3):
        tickets.append(g.admit(f"10.0.1.{i}", lambda: None))
    assert g.total == 6
    with pytest.raises(Refused, match="max_connections"):
        g.admit("10.0.2.1", lambda: None)
    for t in tickets:
        t.close()
        t.close()  # idempotent
    assert g.total == 0 and g.unauthenticated == 0 and g.users == 0


def test_gate_random_early_drop() -> None:
    g = gate(max_startups=Startups(10, 30, 100), per_source_max_startups=1000)
    for _ in range(10):
        g.admit("10.0.0.1", lambda: None)
    dropped = 0
    for _ in range(200):  # from start on, about 30 % and rising
        try:
            g.admit("10.0.0.1", lambda: None)
        except Refused:
            dropped += 1
    assert 0 < dropped < 200
    for i in range(50):  # an address holding fewer than the crowd's is never dropped at random
        g.admit(f"10.0.9.{i}", lambda: None)


def test_gate_full_is_fair_between_addresses() -> None:
    g = gate(max_startups=Startups(3, 30, 3), per_source_max_startups=1000)
    expired: list[int] = []
    for i in range(3):
        g.admit("10.0.0.1", lambda i=i: expired.append(i))  # type: ignore[misc]
    for _ in range(20):  # at full the crowding address gets nothing more
        with pytest.raises(Refused, match="max_startups"):
            g.admit("10.0.0.1", lambda: None)
    # another address gets in: the crowd's oldest connection is closed for it
    newcomer = g.admit("10.0.0.2", lambda: None)
    assert expired == [0] and g.unauthenticated == 3 and g.total == 3
    newcomer.authenticated("bob")
    assert g.unauthenticated == 2
    with pytest.raises(Refused, match="max_startups"):  # equal shares at full: OpenSSH's refusal
        full = gate(max_startups=Startups(2, 30, 2), per_source_max_startups=1000)
        full.admit("10.0.0.1", lambda: None)
        full.admit("10.0.0.2", lambda: None)
        full.admit("10.0.0.2", lambda: None)


def test_gate_max_users() -> None:
    g = gate(max_users=1)
    a, a2, b = (g.admit("10.0.0.1", lambda: None) for _ in range(3))
    a.authenticated("alice")
    assert g.user_may_connect("alice") == "" and "max_users" in g.user_may_connect("bob")
    a2.authenticated("alice")
    with pytest.raises(Refused, match="max_users"):
        b.authenticated("bob")
    a.close()
    a2.close()
    b.authenticated("bob")
    host = g.admit("10.0.0.3", lambda: None)
    host.authenticated(None)  # a host (tunnel) is not a user
    assert g.users == 1


def test_rate_limiter_bursts_and_recovers() -> None:
    now = [0.0]
    limiter = RateLimiter((Rate(60.0, 6, 3),), clock=lambda: now[0])
    assert [limiter.take("a")[0] for _ in range(3)] == [0.0, 0.0, 0.0]
    wait, first = limiter.take("a")
    assert wait == pytest.approx(10.0) and first
    assert limiter.take("a")[1] is False  # the same burst: audited once
    assert limiter.take("b") == (0.0, False)  # another source has its own bucket
    now[0] += 10.0
    assert limiter.take("a") == (0.0, False)
    assert limiter.take("a")[1] is True  # a new burst
    assert retry_after(0.2) == "1" and retry_after(9.1) == "10"


def test_audit_throttle() -> None:
    now = [0.0]
    throttle = AuditThrottle(60.0, clock=lambda: now[0])
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None and throttle.allow("a") is None
    assert throttle.allow("b") == 0
    now[0] += 61
    assert throttle.allow("a") == 2


def test_rate_limiter_refund_counts_only_failures() -> None:
    now = [0.0]
    limiter = RateLimiter((Rate(60.0, 1, 2),), clock=lambda: now[0])
    for _ in range(10):  # ten successful attempts in a row: each gives its token back
        assert limiter.take("a") == (0.0, False)
        limiter.refund("a")
    assert limiter.take("a")[0] == 0.0 and limiter.take("a")[0] == 0.0  # two failures: the burst
    assert limiter.take("a")[0] > 0
    limiter.refund("unknown")  # a source never seen: nothing to give back
