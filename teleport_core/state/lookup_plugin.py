"""Built-in node lookup: host UUID, nodename, registered address, DNS (weak), label selector.

The rules are Teleport's (see ``teleport_core.state.nodes``); another plugin can add candidates
(from a CMDB, say) through the same hook.
"""

from __future__ import annotations

from collections.abc import Sequence

from teleport_core import hookimpl
from teleport_core.state.nodes import (
    MatchStrength,
    NodeInfo,
    NodeMatch,
    is_label_selector,
    parse_label_selector,
)


def _resolve(name: str) -> set[str]:
    """Addresses ``name`` resolves to; empty when it does not resolve."""
    import socket  # imported on use: every CLI run loads this plugin

    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in infos}


@hookimpl
def teleport_node_candidates(target: str, nodes: Sequence[NodeInfo]) -> list[NodeMatch]:
    if is_label_selector(target):
        selector = parse_label_selector(target)
        return [
            NodeMatch(node, MatchStrength.LABEL, "label")
            for node in nodes
            if all(node.labels.get(k) == v for k, v in selector.items())
        ]
    by_uuid = [NodeMatch(n, MatchStrength.UUID, "uuid") for n in nodes if n.uuid == target]
    if by_uuid:
        return by_uuid
    host = target.rpartition(":")[0].strip("[]") if target.count(":") == 1 or target.startswith("[") else target
    matches = [
        NodeMatch(n, MatchStrength.STRONG, "nodename" if n.nodename == target else "address")
        for n in nodes
        if n.nodename == target or (n.addr and (n.addr == target or n.host == host))
    ]
    if matches:
        return matches
    resolved = _resolve(host)
    return [NodeMatch(n, MatchStrength.WEAK, "dns") for n in nodes if n.host and n.host in resolved]
