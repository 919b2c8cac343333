"""Registered servers and target lookup (``tsh ssh login@target``), as Teleport's proxy does it.

Lookup plugins propose :class:`NodeMatch` candidates through ``teleport_node_candidates``;
:func:`resolve_nodes` applies the rules: a host UUID matches UUIDs only; nodenames and
registered addresses are strong matches; addresses reached through DNS are weak; weaker
matches are dropped when stronger ones exist; several left is an ambiguity error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from teleport_core.errors import TeleportError

#: ``sub_kind`` of a plain OpenSSH server registered without our node service (Teleport's name)
OPENSSH = "openssh"
SUB_KINDS = ("teleport", OPENSSH)


class NodeNotFound(TeleportError):
    """No registered node matches the target."""


class AmbiguousHost(TeleportError):
    """Several nodes match the target equally well."""


def _ro(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class NodeInfo:
    """A registered SSH server as auth's inventory holds it.

    ``addr`` is the registered ``host:port`` (empty for nodes reached only through a reverse
    tunnel); ``labels`` holds static and dynamic (command) labels together. ``sub_kind`` is
    Teleport's: ``teleport`` (our node service, heartbeating) or ``openssh`` (an agentless plain
    ``sshd`` registered with ``tctl create``: the proxy terminates SSH for it and records it).
    """

    uuid: str
    nodename: str
    addr: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_ro)
    tunnel: bool = False
    sub_kind: str = "teleport"

    @property
    def agentless(self) -> bool:
        """Whether this is a plain OpenSSH server (``sub_kind: openssh``) the proxy speaks for."""
        return self.sub_kind == OPENSSH

    @property
    def host(self) -> str:
        """The host part of ``addr`` (brackets removed for IPv6)."""
        host, _, _ = self.addr.rpartition(":")
        return host.strip("[]")


class MatchStrength(enum.IntEnum):
    """How well a candidate matches; higher wins."""

    WEAK = 1  # an address reached through DNS resolution
    STRONG = 2  # nodename or exact registered address
    UUID = 3  # the target is the node's host UUID
    LABEL = 4  # a label selector: every match is wanted


@attrs.frozen
class NodeMatch:
    node: NodeInfo
    strength: MatchStrength
    how: str = ""  # e.g. "nodename", "address", "dns", "label"


def is_label_selector(target: str) -> bool:
    """True for ``key=value[,key=value...]`` targets."""
    return "=" in target and all("=" in part for part in target.split(","))


def parse_label_selector(target: str) -> dict[str, str]:
    """``"env=prod,role=db"`` -> ``{"env": "prod", "role": "db"}``."""
    selector: dict[str, str] = {}
    for part in target.split(","):
        key, _, value = part.partition("=")
        selector[key.strip()] = value.strip()
    return selector


def resolve_nodes(target: str, candidates: Iterable[Sequence[NodeMatch] | None]) -> list[NodeInfo]:
    """Apply the lookup rules to every plugin's candidates and return the chosen node(s).

    Raises :class:`NodeNotFound` (``target host <name> is offline or does not exist``) or
    :class:`AmbiguousHost` (``ambiguous host could match multiple nodes``). A label selector
    returns every node it matches.
    """
    best: dict[str, NodeMatch] = {}
    for group in candidates:
        for match in group or ():
            held = best.get(match.node.uuid)
            if held is None or match.strength > held.strength:
                best[match.node.uuid] = match
    if not best:
        raise NodeNotFound(f"target host {target} is offline or does not exist")
    top = max(m.strength for m in best.values())
    chosen = sorted((m.node for m in best.values() if m.strength == top), key=lambda n: (n.nodename, n.uuid))
    if top is not MatchStrength.LABEL and len(chosen) > 1:
        raise AmbiguousHost("ambiguous host could match multiple nodes")
    return chosen


def find_nodes(hook: Any, target: str, nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    """Resolve ``target`` among ``nodes`` through every ``teleport_node_candidates`` plugin.

    Blocks (DNS): call it from a thread when on an event loop.
    """
    return resolve_nodes(target, hook.teleport_node_candidates(target=target, nodes=list(nodes)))
