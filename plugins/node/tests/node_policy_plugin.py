"""A policy plugin a stranger might write, installed where the node runs (the authorize-hook
tests load it with ``TELEPORT_PLUGINS``). Its ``plugins:`` entry names users who may not log in
as root, users who may not forward ports and users who may not join live sessions; everything
else it leaves to the roles."""

from __future__ import annotations

from typing import Any

from teleport_core import hookimpl
from teleport_core.config.model import TeleportConfig
from teleport_core.config.reader import SectionReader
from teleport_core.policy.access import PORT_FORWARD, SSH, AccessRequest, Decision

NAME = "node_policy_plugin"  # the module's name: its entry under plugins:
POLICY: dict[str, tuple[str, ...]] = {"no_root": (), "no_forwarding": (), "no_join": ()}


@hookimpl
def teleport_config_section(section: str, reader: SectionReader) -> Any:
    if section != f"plugins.{NAME}":
        return None
    return {"no_root": tuple(reader.strings("no_root")), "no_forwarding": tuple(reader.strings("no_forwarding")),
            "no_join": tuple(reader.strings("no_join"))}


@hookimpl
def teleport_config_loaded(config: TeleportConfig) -> None:
    POLICY.update(config.plugin(NAME) or {})


@hookimpl
def teleport_authorize(request: AccessRequest) -> Decision | None:
    user = request.identity.name
    if request.verb == SSH and request.login == "root" and user in POLICY["no_root"]:
        return Decision.deny(f"policy: {user} may not log in as root")
    if request.verb == PORT_FORWARD and user in POLICY["no_forwarding"]:
        return Decision.deny(f"policy: {user} may not forward to {request.name}")
    if request.verb == "join_session" and user in POLICY["no_join"]:  # teleport_node.party's verb
        return Decision.deny(f"policy: {user} may not join session {request.name}")
    return None
