"""Trusted clusters in ``tsh``: ``tsh clusters`` and the ``--cluster`` flag.

The profile stays the root cluster's (its proxy, its certificates): ``--cluster=LEAF`` (or
``$TELEPORT_CLUSTER``) only names the cluster the root proxy routes to, through the leaf's reverse
tunnel (``proxy:host:port@LEAF`` on the SSH port, ``host:port@LEAF`` with TLS routing,
``/v1/webapi/sites/LEAF/nodes`` for ``tsh ls``). The leaf's nodes present host certificates of
the leaf's host CA, which ``tsh login`` stored in the profile's ``known_hosts`` (the root proxy
adds its leaves' host CAs to the login answer, as ``@cert-authority LEAF,*.LEAF``). tsh checks
each host certificate against the host CA of the cluster it dialed alone: the root proxy
against the root's, a node against its cluster's (``Profile.proxy_cluster`` and ``cluster``),
so no leaf's host CA can pass for a root node or another leaf's.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core.errors import TeleportError

if TYPE_CHECKING:
    from teleport_core.cli.common import CliContext
    from teleport_core.tsh.profile import Profile

ENV = "TELEPORT_CLUSTER"


def add_cluster_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=os.environ.get(ENV, ""),
                        help=f"the cluster to reach: the root's name or a trusted leaf's (default ${ENV}, else the "
                             "profile's)")


def select(profile: Profile, cluster: str) -> Profile:
    """``profile`` aimed at ``cluster`` (a leaf of the profile's cluster, or the cluster itself)."""
    if not cluster or cluster == profile.cluster:
        return profile
    if any(c.isspace() or c in "@:/" for c in cluster) or not cluster.isprintable():
        raise TeleportError(f"invalid cluster name {cluster!r}")
    return attrs.evolve(profile, cluster=cluster, root_cluster=profile.proxy_cluster)


def list_sites(profile: Profile) -> list[dict[str, Any]]:
    """The root and the leaves this user may see, from the proxy (``GET /v1/webapi/sites``)."""
    from teleport_core.tsh.web import call

    found = call(profile.web_addr, "GET", "/v1/webapi/sites", insecure=profile.insecure, profile=profile)
    return [s for s in found or [] if isinstance(s, dict)]


def cluster_record(site: dict[str, Any], selected: str) -> dict[str, Any]:
    """A cluster of ``tsh clusters --format=json|yaml`` (Teleport's field names)."""
    return {"cluster_name": site.get("name", ""), "status": site.get("status", ""),
            "cluster_type": site.get("cluster_type", ""), "labels": dict(site.get("labels") or {}),
            "selected": site.get("name") == selected}


def clusters(argv: list[str], cli: CliContext) -> int:
    from teleport_core.tsh import output
    from teleport_core.tsh.web import current

    parser = cli.parser("list the root cluster and the trusted leaf clusters you may reach, with their status")
    output.add_format(parser)
    add_cluster_flag(parser)
    args = parser.parse_args(argv)
    profile = current(args)
    selected = args.cluster or profile.cluster
    records = [cluster_record(s, selected) for s in list_sites(profile)]
    if args.format != "text":
        output.emit(records, args.format)
        return 0
    rows = [[str(r["cluster_name"]), str(r["status"]), str(r["cluster_type"]),
             ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())), "*" if r["selected"] else ""]
            for r in records]
    print("\n".join(output.table(("Cluster Name", "Status", "Cluster Type", "Labels", "Selected"), rows)))
    return 0


def config_leaves(profile: Profile) -> list[str]:
    """The leaf clusters ``tsh config`` writes host patterns for (none when the proxy cannot say)."""
    try:
        sites = list_sites(profile)
    except TeleportError:
        return []
    return [str(s["name"]) for s in sites if s.get("cluster_type") == "leaf" and s.get("name")]
