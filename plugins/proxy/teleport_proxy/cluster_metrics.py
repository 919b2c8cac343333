"""The trusted-cluster tunnels on the proxy's ``/metrics``, with Teleport's names (lib/reversetunnel):

- ``remote_clusters{cluster}`` (root): the tunnels each leaf that joined (a ``remote_cluster``) has open
  to this proxy; 0 while it is offline;
- ``trusted_clusters{cluster}`` (leaf): the tunnels this proxy keeps to each root it trusts (1 while
  the agent is connected, else 0; a trust that is disabled or removed has no series).

Read at each scrape from the proxy's state (:class:`teleport_proxy.clusters.Clusters` and the tunnel
server); nothing is counted where things happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from teleport_proxy.state import ProxyState


class ClusterTunnels(Collector):
    """``remote_clusters`` and ``trusted_clusters`` of one proxy."""

    def __init__(self, proxy: ProxyState) -> None:
        self.proxy = proxy

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("remote_clusters", "")
        yield GaugeMetricFamily("trusted_clusters", "")

    def collect(self) -> Iterator[Metric]:
        clusters: Any = self.proxy.clusters
        tunnel: Any = self.proxy.tunnel
        remote = GaugeMetricFamily("remote_clusters", "Number of inbound connections from remote clusters",
                                   labels=["cluster"])
        connected = dict(tunnel.clusters) if tunnel is not None else {}
        for name in sorted(set(clusters.sites) if clusters is not None else set()):
            remote.add_metric([name], float(len(connected.get(name) or {})))
        yield remote
        trusted = GaugeMetricFamily("trusted_clusters", "Number of outbound connections to remote clusters",
                                    labels=["cluster"])
        agents = dict(clusters.agents) if clusters is not None else {}
        for name, agent in sorted(agents.items()):
            trusted.add_metric([name], 1.0 if agent.connected.is_set() else 0.0)
        yield trusted
