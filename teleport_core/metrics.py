"""The Prometheus metrics the services export on ``/metrics``, defined once per process.

A process has one registry (``ServiceContext.metrics``) shared by the services it runs; a
service gets the metric objects with ``metrics_for(ctx.metrics)`` (the same :class:`Metrics`
for every caller of one registry) and increments them where things happen. Names follow
Teleport's where it has one (docs/metrics.md lists every metric, its labels and whose name it is).

Teleport exports a few counters without the ``_total`` suffix (``backend_requests``,
``teleport_audit_emit_events``, ``audit_failed_emit_events``, ``rx``, ``tx``). The Python
client appends ``_total`` to every counter it exposes, so these are exposed as ``untyped``
under exactly Teleport's name (:class:`ExactCounter`; ``rate()`` treats them the same).

Labels are bounded: operations, kinds and directions, never user names, hosts or session IDs.
Increments are per request, session or read chunk (never per byte); the client's counters are
thread-safe, so the SSH threads increment them directly.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

#: latency buckets (seconds) of the request histograms: from a cached read to a slow etcd quorum
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: session kinds at the node (``teleport_sessions_*{service="node"}``)
NODE_SESSION_KINDS = ("interactive", "exec", "sftp", "port-forward")
#: how a session reached a node through the proxy (``teleport_sessions_*{service="proxy"}``): the
#: proxy forwards the user's own encrypted SSH connection, so it cannot see the kind inside
PROXY_SESSION_KINDS = ("subsystem", "direct-tcpip", "tls-routing")


class ExactCounter(Collector):
    """A counter exposed under exactly ``name`` (type ``untyped``: no ``_total`` appended).

    Use :meth:`labels` and :meth:`inc` as on ``prometheus_client.Counter``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self._counter = Counter(name, documentation, labelnames, registry=None)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str, **named: str) -> Counter:
        return self._counter.labels(*values, **named)

    def inc(self, amount: float = 1.0) -> None:
        self._counter.inc(amount)

    def value(self, **labels: str) -> float:
        """The current value of the series with ``labels`` (0 when it was never incremented)."""
        for metric in self._counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def describe(self) -> Iterator[Metric]:
        yield UnknownMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        family = UnknownMetricFamily(self.name, self.documentation)
        for metric in self._counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    family.samples.append(sample._replace(name=self.name))
        yield family


#: backend operation -> (its group, whether it reads or deletes a range of keys): ``get`` is a read,
#: ``get_range`` a batch read, ``delete_range`` and ``atomic_write`` batch writes, the rest writes
BACKEND_OPERATIONS: dict[str, tuple[str, bool]] = {
    "get": ("read", False),
    "put": ("write", False),
    "create": ("write", False),
    "update": ("write", False),
    "compare_and_swap": ("write", False),
    "conditional_update": ("write", False),
    "delete": ("write", False),
    "conditional_delete": ("write", False),
    "keep_alive": ("write", False),
    "get_range": ("batch_read", True),
    "delete_range": ("batch_write", True),
    "atomic_write": ("batch_write", False),
}
BACKEND_GROUPS = {"read": "reads", "write": "writes", "batch_read": "range reads",
                  "batch_write": "range deletes and atomic writes"}


class _BackendCounts(Collector):
    """``backend_requests{req,range}`` (exposed untyped, Teleport's exact name) and
    ``backend_<group>_requests_total``: the counts of the latency histograms, read at each scrape."""

    def __init__(self, histograms: dict[str, Histogram]) -> None:
        self.histograms = histograms

    def describe(self) -> Iterator[Metric]:
        yield UnknownMetricFamily("backend_requests", "")
        for group in self.histograms:
            yield CounterMetricFamily(f"backend_{group}_requests", "")

    def collect(self) -> Iterator[Metric]:
        requests = UnknownMetricFamily("backend_requests", "Requests to the cluster-state backend",
                                       labels=["req", "range"])
        groups = []
        for group, histogram in self.histograms.items():
            count = 0.0
            for metric in histogram.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_count"):
                        operation = sample.labels["req"]
                        ranged = str(BACKEND_OPERATIONS.get(operation, (group, False))[1]).lower()
                        requests.add_metric([operation, ranged], sample.value)
                        count += sample.value
            family = CounterMetricFamily(f"backend_{group}_requests", f"Backend {BACKEND_GROUPS[group]}")
            family.add_metric([], count)
            groups.append(family)
        yield requests
        yield from groups


class _ConnectedResources(Collector):
    """``teleport_connected_resources{type}``: hosts whose last heartbeat to this auth server
    is younger than its TTL, counted at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[str, dict[str, float]] = {}  # type -> host UUID -> monotonic expiry

    def seen(self, kind: str, uuid: str, ttl: float) -> None:
        with self._lock:
            self._until.setdefault(kind, {})[uuid] = time.monotonic() + ttl

    def count(self, kind: str) -> int:
        now = time.monotonic()
        with self._lock:
            hosts = self._until.get(kind, {})
            for uuid in [u for u, until in hosts.items() if until <= now]:
                del hosts[uuid]  # bounded by the live hosts: expired ones go at each scrape
            return len(hosts)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("teleport_connected_resources", "", labels=["type"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("teleport_connected_resources",
                                   "Hosts connected to this auth server via heartbeats (node, proxy)",
                                   labels=["type"])
        for kind in sorted(self._until):
            family.add_metric([kind], self.count(kind))
        yield family


class Metrics:
    """Every metric a service may increment, registered in one process's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        # -- auth: logins, certificates, heartbeats ----------------------------------------------------
        self.user_login = Counter("user_login_total", "Successful user logins (certificates issued)", registry=r)
        self.failed_login = Counter("failed_login_attempts_total", "Refused user logins (bad password, "
                                    "second factor, lockout, unknown user)", registry=r)
        self.certificates_issued = Counter("teleport_certificates_issued_total",
                                           "Certificates issued by auth, by kind (user, host) and format (ssh, tls)",
                                           ["kind", "format"], registry=r)
        self.generate_requests = Counter("auth_generate_requests_total",
                                         "Requests to generate host certificates (joins, renewals)", registry=r)
        self.generate_seconds = Histogram("auth_generate_seconds", "Latency of host certificate generation",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.heartbeats_received = Counter("teleport_heartbeats_received_total",
                                           "Heartbeats auth accepted, by host type (node, proxy)", ["type"],
                                           registry=r)
        self.keepalives_received = Counter("teleport_keepalives_received_total",
                                           "Heartbeat keepalives (expiry moved, no body) auth accepted, by host type",
                                           ["type"], registry=r)
        self.connected = _ConnectedResources()
        r.register(self.connected)
        # -- audit ----------------------------------------------------------------------------------------
        self.audit_emit = ExactCounter("teleport_audit_emit_events", "Audit events emitted (durable in auth's spool)",
                                       registry=r)
        self.audit_failed = ExactCounter("audit_failed_emit_events", "Audit events auth could not store", registry=r)
        self.audit_emit_seconds = Histogram("teleport_audit_emit_seconds",
                                            "Latency of emitting an audit event at auth (spool write, bounded "
                                            "wait for the sinks)", buckets=LATENCY_BUCKETS, registry=r)
        # -- backend (every backend, through MeteredBackend): a request costs one histogram observation;
        # backend_requests and backend_<group>_requests_total are the histograms' counts, read at scrape
        self.backend_seconds: dict[str, Histogram] = {}
        self.backend_failed: dict[str, Counter] = {}
        for group, what in BACKEND_GROUPS.items():
            self.backend_seconds[group] = Histogram(f"backend_{group}_seconds", f"Latency of backend {what}, "
                                                    "by operation", ["req"], buckets=LATENCY_BUCKETS, registry=r)
            self.backend_failed[group] = Counter(f"backend_{group}_requests_failed_total", f"Backend {what} "
                                                 "that failed (not found and compare failures included)", registry=r)
        for operation, (group, _) in BACKEND_OPERATIONS.items():
            self.backend_seconds[group].labels(req=operation)  # every series from the start
        r.register(_BackendCounts(self.backend_seconds))
        # -- recordings text search (auth) ------------------------------------------------------------
        self.recordings_indexed = Counter("teleport_recordings_indexed_total",
                                          "Recordings auth indexed for text search, by result (ok, failed)",
                                          ["result"], registry=r)
        for result in ("ok", "failed"):
            self.recordings_indexed.labels(result=result)
        # -- sessions (node and proxy) --------------------------------------------------------------------
        self.sessions_active = Gauge("teleport_sessions_active", "Sessions in progress, by service and kind",
                                     ["service", "kind"], registry=r)
        self.sessions_total = Counter("teleport_sessions_total", "Sessions started, by service and kind",
                                      ["service", "kind"], registry=r)
        self.interactive_sessions = Gauge("server_interactive_sessions_total",
                                          "Interactive sessions (with a terminal) in progress at this node",
                                          registry=r)
        self.proxy_sessions = Gauge("proxy_ssh_sessions_total",
                                    "SSH connections this proxy forwards to nodes now", registry=r)
        self.connect_attempts = Counter("teleport_connect_to_node_attempts_total",
                                        "Connections the proxy tried to route to a node", registry=r)
        self.connect_failures = Counter("failed_connect_to_node_attempts_total",
                                        "Connections the proxy could not route to a node (refused, not found, "
                                        "unreachable)", registry=r)
        self.rx = ExactCounter("rx", "Bytes the proxy received from SSH clients for nodes", registry=r)
        self.tx = ExactCounter("tx", "Bytes the proxy sent to SSH clients from nodes", registry=r)
        # -- presence: heartbeats sent, reverse tunnels ---------------------------------------------------
        self.heartbeats_sent = Counter("teleport_heartbeats_sent_total", "Heartbeats sent to auth, by host type",
                                       ["type"], registry=r)
        self.heartbeats_missed = Counter("heartbeats_missed_total", "Heartbeats that failed to reach auth",
                                         ["type"], registry=r)
        self.keepalives_sent = Counter("teleport_keepalives_sent_total", "Heartbeat keepalives auth accepted from "
                                       "this host, by host type", ["type"], registry=r)
        self.reverse_tunnels = Gauge("teleport_reverse_tunnels_connected",
                                     "Reverse tunnels connected to this proxy, by type", ["type"], registry=r)
        for kind in NODE_SESSION_KINDS:
            self.sessions_total.labels(service="node", kind=kind)
            self.sessions_active.labels(service="node", kind=kind)
        for kind in PROXY_SESSION_KINDS:
            self.sessions_total.labels(service="proxy", kind=kind)
            self.sessions_active.labels(service="proxy", kind=kind)
        for kind in ("node", "proxy"):
            self.heartbeats_received.labels(type=kind)
            self.heartbeats_sent.labels(type=kind)
            self.heartbeats_missed.labels(type=kind)
            self.keepalives_received.labels(type=kind)
            self.keepalives_sent.labels(type=kind)

    def session_started(self, service: str, kind: str) -> None:
        self.sessions_total.labels(service=service, kind=kind).inc()
        self.sessions_active.labels(service=service, kind=kind).inc()

    def session_ended(self, service: str, kind: str) -> None:
        self.sessions_active.labels(service=service, kind=kind).dec()


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def metrics_for(registry: CollectorRegistry | None) -> Metrics:
    """The metrics of ``registry``, created and registered on first use; ``None`` (a part used
    outside a process, as in unit tests) gets metrics in a registry of their own."""
    if registry is None:
        return Metrics(CollectorRegistry())
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = Metrics(registry)
        return metrics
