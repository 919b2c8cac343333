"""Fixtures of the node tests (defined in node_helpers, which the tests import by that unique name)."""

from node_helpers import auth, node, os_user

__all__ = ["auth", "node", "os_user"]
