"""Unit tests of the policy plugin in ``node_policy_plugin.py``: its ``plugins:`` entry read through
the kernel's config parser, and its decisions combined by ``check_access`` as the node combines
them (no cluster needed; ``test_authorize_hook.py`` runs it where a real node runs)."""

from __future__ import annotations

import node_policy_plugin
import pytest

from teleport_core.config.load import parse_config
from teleport_core.errors import ConfigError
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import PORT_FORWARD, SSH, AccessRequest, Decision, Identity, check_access

DISABLED = {"auth_service": {"enabled": False}, "proxy_service": {"enabled": False},
            "ssh_service": {"enabled": False}}


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setattr(node_policy_plugin, "POLICY", {"no_root": (), "no_forwarding": ()})
    return make_plugins(extra=["node_policy_plugin"])  # as TELEPORT_PLUGINS=node_policy_plugin does


def ssh(user: str, login: str) -> AccessRequest:
    return AccessRequest(Identity(user, roles=("access",)), SSH, "node", name="host-uuid", login=login)


def test_the_policy_denies_what_the_roles_allow(plugins):
    parse_config({**DISABLED, "plugins": {"node_policy_plugin": {"no_root": ["mallory"]}}}, plugins)
    roles_allow = Decision.allow("role access allows it")  # what the node's own RBAC check said
    denied = check_access(plugins.hook, ssh("mallory", "root"), roles_allow)
    assert not denied.allowed and denied.reason == "policy: mallory may not log in as root"
    assert check_access(plugins.hook, ssh("mallory", "mallory"), roles_allow).allowed
    assert check_access(plugins.hook, ssh("victor", "root"), roles_allow).allowed
    forward = AccessRequest(Identity("mallory"), PORT_FORWARD, "node", name="10.0.0.5:22", login="mallory")
    assert check_access(plugins.hook, forward, roles_allow).allowed  # no_forwarding is empty


def test_a_mistake_in_its_section_names_the_key(plugins):
    with pytest.raises(ConfigError) as raised:
        parse_config({**DISABLED, "plugins": {"node_policy_plugin": {"no_rot": ["mallory"]}}}, plugins)
    assert str(raised.value) == 'plugins.node_policy_plugin.no_rot: unknown key (did you mean "no_root"?)'
