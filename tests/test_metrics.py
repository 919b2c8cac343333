"""The metrics of teleport_core.metrics: Teleport's exact names, the backend wrapper on a real
SQLite backend, one set per registry, docs/metrics.md and the Grafana dashboard agree.

The end-to-end scrape of a real cluster after a login, a session and heartbeats is
plugins/proxy/tests/test_metrics_e2e.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from teleport_core.errors import CompareFailed, NotFound
from teleport_core.metrics import BACKEND_OPERATIONS as OPERATIONS
from teleport_core.metrics import NODE_SESSION_KINDS, PROXY_SESSION_KINDS, Metrics, metrics_for
from teleport_core.state.backend import Action, Condition, Item
from teleport_core.state.backends.sqlite import open_backend
from teleport_core.state.metered import MeteredBackend
from teleport_core.testing.backend_suite import BackendConformance
from teleport_core.testing.metrics import (
    base_name,
    dashboard_expressions,
    documented,
    expression_metrics,
    parse,
    total,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "examples" / "grafana" / "teleport.json"


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def families(registry: CollectorRegistry) -> dict[str, str]:
    """Family name -> type of everything ``registry`` exports (counters by their exposed name)."""
    out = {}
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = family.type
    return out


def test_teleport_counters_without_total_keep_their_exact_names() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    metrics.backend_seconds["read"].labels(req="get").observe(0.001)  # backend_requests counts it
    metrics.audit_emit.inc()
    metrics.audit_failed.inc(2)
    metrics.rx.inc(4096)
    metrics.tx.inc(10)
    text = exposition(registry)
    for name in ("backend_requests", "teleport_audit_emit_events", "audit_failed_emit_events", "rx", "tx"):
        assert f"# TYPE {name} untyped\n" in text
        assert f"{name}_total" not in text, f"{name} must not get the _total suffix"
    samples = parse(text)
    assert samples[("backend_requests", (("range", "false"), ("req", "get")))] == 1
    assert samples[("backend_requests", (("range", "true"), ("req", "get_range")))] == 0  # there from the start
    assert total(samples, "backend_read_requests_total") == 1
    assert total(samples, "rx") == 4096
    assert total(samples, "audit_failed_emit_events") == 2
    assert metrics.rx.value() == 4096


def test_one_set_of_metrics_per_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    assert metrics_for(first) is metrics_for(first)  # the services of one process share them
    metrics_for(first).user_login.inc()
    assert total(parse(exposition(first)), "user_login_total") == 1
    assert total(parse(exposition(second)), "user_login_total") == 0  # another process's are apart
    # a part used outside a process (unit tests) gets its own, registered nowhere
    assert metrics_for(None) is not metrics_for(None)


def test_session_series_exist_from_the_start_and_go_back_to_zero() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    samples = parse(exposition(registry))
    for kind in NODE_SESSION_KINDS:
        assert ("teleport_sessions_total", (("kind", kind), ("service", "node"))) in samples
    for kind in PROXY_SESSION_KINDS:
        assert ("teleport_sessions_active", (("kind", kind), ("service", "proxy"))) in samples
    metrics.session_started("node", "sftp")
    metrics.session_started("node", "sftp")
    metrics.session_ended("node", "sftp")
    samples = parse(exposition(registry))
    assert total(samples, "teleport_sessions_total", service="node", kind="sftp") == 2
    assert total(samples, "teleport_sessions_active", service="node", kind="sftp") == 1


def test_connected_resources_count_live_heartbeats_only() -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    metrics.connected.seen("node", "uuid-1", 600)
    metrics.connected.seen("node", "uuid-1", 600)  # the same host again: still one
    metrics.connected.seen("node", "uuid-2", 600)
    metrics.connected.seen("proxy", "uuid-3", 0)  # its heartbeat's TTL is over
    samples = parse(exposition(registry))
    assert total(samples, "teleport_connected_resources", type="node") == 2
    assert total(samples, "teleport_connected_resources", type="proxy") == 0


def test_metered_backend_counts_and_times_every_operation(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)

    async def body() -> None:
        backend = MeteredBackend(await open_backend(None, tmp_path), metrics)
        try:
            await backend.put(Item(b"/a", b"1"))
            await backend.create(Item(b"/b", b"2"))
            stored = await backend.update(Item(b"/b", b"3"))
            await backend.compare_and_swap(Item(b"/b", b"3"), Item(b"/b", b"4"))
            stored = await backend.get(b"/b")
            await backend.conditional_update(Item(b"/b", b"5", revision=stored.revision))
            await backend.keep_alive(b"/a", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
            assert [i.key for i in await backend.get_range(b"/", b"")] == [b"/a", b"/b"]
            await backend.atomic_write([Condition.exists(b"/a")], [Action.put(Item(b"/c", b"6"))])
            stored = await backend.get(b"/c")
            await backend.conditional_delete(b"/c", stored.revision)
            with pytest.raises(CompareFailed):
                await backend.compare_and_swap(Item(b"/a", b"x"), Item(b"/a", b"y"))
            await backend.delete(b"/b")
            assert await backend.delete_range(b"/", b"") == 1
            with pytest.raises(NotFound):
                await backend.get(b"/missing")
            async with backend.watch([b"/"]) as watcher:  # passes through, not a request
                assert (await anext(watcher)).type.value == "init"
        finally:
            await backend.close()

    asyncio.run(body())
    samples = parse(exposition(registry))
    for operation, (group, ranged) in OPERATIONS.items():
        requests = total(samples, "backend_requests", req=operation, range=str(ranged).lower())
        timed = total(samples, f"backend_{group}_seconds_count", req=operation)
        assert requests >= 1, f"{operation} was not counted"
        assert timed == requests, f"{operation}: {timed} timed, {requests} counted"
    assert total(samples, "backend_requests", req="get") == 3
    assert total(samples, "backend_read_requests_total") == 3
    assert total(samples, "backend_read_requests_failed_total") == 1  # NotFound
    assert total(samples, "backend_write_requests_failed_total") == 1  # CompareFailed
    assert total(samples, "backend_batch_write_requests_total") == 2  # atomic_write, delete_range
    assert total(samples, "backend_batch_read_requests_total") == 1
    assert sum(v for (name, _), v in samples.items() if name == "backend_requests") == 15
    assert total(samples, "backend_write_seconds_bucket", req="put", le="+Inf") == 1


class TestMeteredBackendConformance(BackendConformance):
    """The whole backend suite through the wrapper: it changes nothing a backend does."""

    @pytest.fixture
    def teleport_backend_config(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        monkeypatch.setenv("TELEPORT_PLUGINS", "tests.plugins.metered_sqlite")  # the kill -9 child's too
        return {"type": "metered-sqlite"}


def test_docs_list_every_metric_the_kernel_defines() -> None:
    listed = documented(DOCS)
    defined = set(families(Metrics(CollectorRegistry()).registry))
    assert defined - listed == set(), "metrics missing from docs/metrics.md"
    # the services' and the process's own gauges are there too
    assert {"teleport_audit_events_pending", "teleport_recordings_pending", "teleport_recordings_refused",
            "reverse_tunnels_connected", "teleport_build_info", "teleport_service_ready",
            "teleport_plugins_loaded", "teleport_reload_generation"} <= listed


def test_expression_parser_finds_metric_names_only() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, req) (rate(backend_read_seconds_bucket{instance=~"$instance",'
            'req="get"}[$__rate_interval]))) / on (instance) group_left max(teleport_build_info) or vector(0)')
    assert expression_metrics(expr) == {"backend_read_seconds_bucket", "teleport_build_info"}
    assert expression_metrics('sum(rate(rx{instance=~"$instance"}[5m]))') == {"rx"}


def test_dashboard_queries_only_documented_metrics() -> None:
    """Every query names metrics docs/metrics.md lists (the e2e checks them against a real
    scrape); counters and untyped counters are read through rate(), histograms through
    histogram_quantile of their buckets; the data source is a variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expressions = dashboard_expressions(DASHBOARD)
    assert len(expressions) >= 25
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    kinds = families(Metrics(CollectorRegistry()).registry)
    histograms = {name for name, kind in kinds.items() if kind == "histogram"}
    counters = {name for name, kind in kinds.items() if kind in ("counter", "unknown")}
    listed = documented(DOCS)
    used: set[str] = set()
    for expr in expressions:
        for name in expression_metrics(expr):
            family = base_name(name, histograms)
            used.add(family)
            assert family in listed, f"{name} (in {expr}) is not in docs/metrics.md"
            if family in histograms:
                assert name.endswith("_bucket") and "histogram_quantile(" in expr, expr
            if family in counters:
                assert f"rate({name}" in expr, f"the counter {name} is not read through rate(): {expr}"
    # a panel for each group of docs/metrics.md
    for name in ("user_login_total", "teleport_certificates_issued_total", "teleport_sessions_active", "rx",
                 "teleport_connected_resources", "teleport_heartbeats_sent_total", "backend_requests",
                 "backend_write_seconds", "teleport_audit_emit_seconds", "teleport_audit_events_pending",
                 "teleport_reload_generation", "teleport_reverse_tunnels_connected"):
        assert name in used, f"no panel shows {name}"
