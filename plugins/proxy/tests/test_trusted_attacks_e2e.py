"""Trusted clusters under attack, and their tunnels on ``/metrics`` (issue 19). Two real clusters on
loopback, as in test_trusted_clusters_e2e (whose helpers this module uses): the root (auth, proxy and a
node, one ``teleport start`` process, restarted in the last test) and the leaf (auth, proxy and a node,
in this process), each with ``diag_addr``.

- tsh checks a host certificate against the host CA of the cluster it dials alone: a leaf's node
  reached as a root node (a root node entry pointing at it) and a root node reached through
  ``--cluster=leaf`` are refused, naming the clusters;
- a root user's TLS certificate presented straight to the leaf's auth (mutual TLS, no proxy) is refused;
- the trust is one way: a leaf user's certificates are refused by the root's proxy (web API, TLS routing,
  SSH port) and the root's node, and the root audits the refusals;
- the root proxy exports ``remote_clusters{cluster}``, the leaf proxy ``trusted_clusters{cluster}``;
  the leaf stays ready (``/readyz``) while its root is down.

A root user whose roles map to nothing in the leaf is covered elsewhere: refused at the leaf node and
audited there (plugins/node/tests/test_trusted_root_users.py::test_an_unmapped_role_is_refused_and_audited_in_the_leaf)
and through the proxies (test_trusted_clusters_e2e.py::test_a_role_the_leaf_does_not_map_is_refused_there_and_audited).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paramiko
import pytest
from test_trusted_clusters_e2e import LEAF, LOGIN, ROOT, Cluster, Env, joined

from teleport_core.errors import TeleportError
from teleport_core.files import write_private
from teleport_core.testing.metrics import scrape, total
from teleport_core.testing.processes import free_port
from teleport_core.testing.waiting import wait_for
from teleport_core.tsh.profile import Profile

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT_NODE = "root-auth"  # the root process's nodename: its node's
LEAF_NODE = "leaf-node"


class Pair(Env):
    """:class:`Env` with both clusters' diagnostics, node addresses and a leaf user's tsh home."""

    root_diag = ""
    leaf_diag = ""
    root_node_addr = ""
    leaf_node_addr = ""
    leaf_home = Path()

    def node(self, cluster: Cluster, name: str) -> dict[str, Any]:
        return next(n for n in cluster.call("get_nodes") if n["nodename"] == name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root_diag, root_node_addr, leaf_diag = (f"127.0.0.1:{free_port()}" for _ in range(3))

    def node_and_diag(config: dict[str, Any]) -> None:  # the root gets a node and diagnostics
        config["teleport"]["diag_addr"] = root_diag
        config["ssh_service"] = {"enabled": True, "listen_addr": root_node_addr, "labels": {"env": "root"}}

    with joined(tmp_path_factory, root_config=node_and_diag, leaf_teleport={"diag_addr": leaf_diag},
                env_class=Pair) as p:
        services: Any = p.leaf_handle.process.services
        p.root_diag, p.leaf_diag, p.root_node_addr = f"http://{root_diag}", f"http://{leaf_diag}", root_node_addr
        p.leaf_node_addr = f"127.0.0.1:{services['ssh_service'].ssh_addr[1]}"
        wait_for(lambda: [n for n in p.root.call("get_nodes") if n["nodename"] == ROOT_NODE], "the root's node")
        p.leaf.signup("lea", ["access"])  # a leaf user: nothing of hers is good in the root
        p.leaf_home = tmp_path_factory.mktemp("lea-tsh")
        done = p.tsh("login", f"--proxy={p.leaf.web}", "--user=lea", "--insecure", home=p.leaf_home,
                     stdin="correct horse battery staple\n")
        assert done.returncode == 0, done.stderr
        yield p


def impostor(cluster: Cluster, name: str, uuid: str, addr: str) -> None:
    """A node entry in ``cluster`` named ``name`` that sends its users to ``addr``, a host of another
    cluster whose host certificate names ``uuid`` (a hijacked address, a forged entry)."""
    cluster.call("upsert_node", {"uuid": uuid, "nodename": name, "addr": addr, "labels": {}, "cmd_labels": {},
                                 "tunnel": False})


def attempt(pair: Pair, wanted: str, *args: str, home: Path) -> Any:
    """``tsh ssh ARGS echo pwned`` once the proxy knows the impostor entry (it answers ``wanted``, or
    worse, runs the command)."""
    def once() -> Any:
        done = pair.tsh("ssh", *args, "echo", "pwned", home=home)
        return done if done.returncode == 0 or wanted in done.stderr else None

    return wait_for(once, f"the proxy routing to the impostor entry ({' '.join(args)})")


def ssh_port_home(pair: Pair, tmp_path: Path) -> Path:
    """alice's profile without TLS routing: the root proxy's SSH port and its subsystem."""
    home = tmp_path / "ssh-port"
    shutil.copytree(pair.home, home)
    meta = home / "profiles" / "127.0.0.1" / "profile.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tls_routing": False}))
    return home


def test_a_leaf_node_never_passes_for_a_root_node(pair: Pair, tmp_path: Path) -> None:
    done = pair.tsh("ssh", f"{LOGIN}@{ROOT_NODE}", "echo", "root node")
    assert done.returncode == 0 and done.stdout == "root node\n", done.stderr
    leaf_node = pair.node(pair.leaf, LEAF_NODE)
    impostor(pair.root, "impostor-in-root", leaf_node["uuid"], pair.leaf_node_addr)
    wanted = f"signed by the host CA of cluster {LEAF}, not of {ROOT}"
    for home in (pair.home, ssh_port_home(pair, tmp_path)):
        done = attempt(pair, wanted, f"{LOGIN}@impostor-in-root", home=home)
        assert done.returncode != 0 and "pwned" not in done.stdout
        assert wanted in done.stderr, done.stderr


def test_a_root_node_never_passes_for_a_leaf_node(pair: Pair, tmp_path: Path) -> None:
    done = pair.tsh("ssh", f"--cluster={LEAF}", f"{LOGIN}@{LEAF_NODE}", "echo", "leaf node")
    assert done.returncode == 0 and done.stdout == "leaf node\n", done.stderr
    root_node = pair.node(pair.root, ROOT_NODE)
    impostor(pair.leaf, "impostor-in-leaf", root_node["uuid"], pair.root_node_addr)
    wanted = f"signed by the host CA of cluster {ROOT}, not of {LEAF}"
    for home in (pair.home, ssh_port_home(pair, tmp_path)):
        done = attempt(pair, wanted, f"--cluster={LEAF}", f"{LOGIN}@impostor-in-leaf", home=home)
        assert done.returncode != 0 and "pwned" not in done.stdout
        assert wanted in done.stderr, done.stderr


def _profile(home: Path) -> Profile:
    return Profile.load(home)


def _mtls(profile: Profile, tmp: Path) -> ssl.SSLContext:
    """A client context presenting ``profile``'s TLS certificate, checking nothing of the server
    (an attacker does not need to trust the server it probes)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    write_private(tmp / "cert.pem", profile.identity.tls_cert_pem)
    write_private(tmp / "key.pem", profile.identity.key_pem)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return context


def _refused_over_mtls(url: str, context: ssl.SSLContext) -> str:
    """What a server says to a request with ``context``'s client certificate (it must not be 200)."""
    try:
        with httpx.Client(verify=context, timeout=30) as client:
            response = client.get(url)
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        return f"refused in the TLS handshake: {exc}"
    assert response.status_code in (401, 403), (response.status_code, response.text)
    return response.text


def test_a_root_users_tls_certificate_straight_at_the_leafs_auth_is_refused(pair: Pair, tmp_path: Path) -> None:
    alice = _profile(pair.home)
    said = _refused_over_mtls(f"https://{pair.leaf.auth_addr}/v1/nodes", _mtls(alice, tmp_path))
    # the leaf auth's TLS listener trusts its own CAs only: the handshake fails, and is audited there
    assert said.startswith("refused in the TLS handshake") and LEAF_NODE not in said, said
    refusals = wait_for(lambda: [e for e in pair.leaf.events("auth") if "client certificate" in e.get("error", "")],
                        "the leaf auth's audit of the refused certificate")
    assert refusals[-1]["code"] == "T3007W" and refusals[-1]["cluster_name"] == LEAF
    # the same request with the leaf's own admin identity is answered: the refusal is about alice's certificate
    assert [n["nodename"] for n in pair.leaf.call("get_nodes") if n["nodename"] == LEAF_NODE] == [LEAF_NODE]


def _ssh_login(addr: str, profile: Profile, login: str) -> None:
    """Log in to the SSH server at ``addr`` with ``profile``'s key and certificate (host key unchecked)."""
    from teleport_core.tsh.sshclient import user_key

    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=30)
            transport.auth_publickey(login, user_key(profile))
        finally:
            transport.close()


def test_a_leaf_users_certificates_are_refused_by_the_root(pair: Pair, tmp_path: Path) -> None:
    """The trust is one way: the root trusts no CA of the leaf's."""
    from teleport_core.tsh.web import call

    lea = _profile(pair.leaf_home)
    assert lea.cluster == LEAF
    # the leaf user's certificates work where they belong
    done = pair.tsh("ssh", f"{LOGIN}@{LEAF_NODE}", "echo", "at home", home=pair.leaf_home)
    assert done.returncode == 0 and done.stdout == "at home\n", done.stderr
    # the root proxy's web API
    with pytest.raises(TeleportError):
        call(pair.root.web, "GET", f"/v1/webapi/sites/{ROOT}/nodes", insecure=True, profile=lea)
    # TLS routing on the root's web port: the dial line is never answered OK
    context = _mtls(lea, tmp_path)
    context.set_alpn_protocols(["teleport-proxy-ssh"])
    host, _, port = pair.root.web.rpartition(":")
    reply = b""
    try:
        with socket.create_connection((host, int(port)), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"{ROOT_NODE}:0@{ROOT}\n".encode())
            reply = tls.recv(4096)
    except (ssl.SSLError, OSError):
        pass
    assert not reply.startswith(b"OK"), reply
    # the root proxy's SSH port and the root's node
    with pytest.raises(paramiko.AuthenticationException):
        _ssh_login(f"127.0.0.1:{pair.root_process.ssh_port}", lea, LOGIN)
    with pytest.raises(paramiko.AuthenticationException):
        _ssh_login(pair.root_node_addr, lea, LOGIN)
    refusals = wait_for(lambda: [e for e in pair.root.events("auth") if e.get("user") == "lea"],
                        "the root's audit of the leaf user's refusals")
    assert all(e["code"] == "T3007W" and e["cluster_name"] == ROOT for e in refusals)


def _readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


def test_zz_leaf_tunnels_on_metrics_and_the_leaf_ready_without_its_root(pair: Pair) -> None:
    """(Last: it restarts the root.) Teleport's ``remote_clusters{cluster}`` at the root proxy and
    ``trusted_clusters{cluster}`` at the leaf proxy; the leaf's ``/readyz`` does not depend on its root."""
    wait_for(lambda: total(scrape(pair.root_diag), "remote_clusters", cluster=LEAF) == 1, "remote_clusters 1")
    assert total(scrape(pair.leaf_diag), "trusted_clusters", cluster=ROOT) == 1
    assert ("trusted_clusters", (("cluster", ROOT),)) in scrape(pair.leaf_diag)
    ready = _readyz(pair.leaf_diag)
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}

    pair.root_process.stop()
    wait_for(lambda: total(scrape(pair.leaf_diag), "trusted_clusters", cluster=ROOT) == 0,
             "trusted_clusters 0 with the root down")
    assert ("trusted_clusters", (("cluster", ROOT),)) in scrape(pair.leaf_diag)  # still listed, at 0
    ready = _readyz(pair.leaf_diag)
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}, ready.text

    pair.root_process.start()
    wait_for(lambda: total(scrape(pair.leaf_diag), "trusted_clusters", cluster=ROOT) == 1, "the tunnel back",
             timeout=120)
    wait_for(lambda: total(scrape(pair.root_diag), "remote_clusters", cluster=LEAF) == 1,
             "remote_clusters 1 at the restarted root", timeout=60)

