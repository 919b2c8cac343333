"""Agentless OpenSSH nodes: plain ``sshd`` hosts registered with ``tctl create`` (``kind: node``,
``sub_kind: openssh``), which the proxy reaches on the user's behalf (Teleport's agentless nodes).

The proxy terminates the user's SSH connection for such a node, so it needs two certificates
from auth, and only a host with the ``Proxy`` system role gets them (every refusal is audited):

* ``POST /v1/agentless/host-cert``: a host certificate from the host CA for the forwarding key
  the proxy presents to the user *as that node*, with exactly the node's principals (host UUID,
  ``<uuid>.<cluster>``, hostname, ``<hostname>.<cluster>``, the host of its address), for a
  registered ``openssh`` node only, valid :data:`FORWARD_HOST_CERT_TTL`; no ``x-teleport-role``,
  so it never passes for one of our nodes, proxies or auth servers. Audited (``cert.create``).
* ``POST /v1/agentless/session-cert``: a user certificate for one session: auth verifies the
  user's own SSH certificate (which the proxy received, and whose private key it never had),
  re-derives the identity from it and the user's current record (roles the user still has,
  current traits), refuses a lock in force, checks that the roles allow ``login`` on the node's
  labels, and signs principals = ``[login]`` for :data:`SESSION_CERT_TTL` (sshd checks a
  certificate at authentication only), with ``permit-port-forwarding`` and
  ``permit-agent-forwarding`` as the roles say. The proxy never chooses roles or logins for
  itself. Audited (``cert.create``, ``cert_type: openssh_session``).
"""

from __future__ import annotations

import datetime as dt

from teleport_core.state.nodes import NodeInfo

FORWARD_HOST_CERT_TTL = dt.timedelta(hours=1)
SESSION_CERT_TTL = dt.timedelta(minutes=2)


def node_principals(node: NodeInfo, cluster: str) -> list[str]:
    """What a client may call an agentless node: its UUID, hostname (each also ``.<cluster>``) and
    the host of its registered address."""
    names = [node.uuid, f"{node.uuid}.{cluster}", node.nodename, f"{node.nodename}.{cluster}", node.host]
    return list(dict.fromkeys(n for n in names if n))
