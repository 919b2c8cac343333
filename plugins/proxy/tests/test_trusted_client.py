"""tsh checks a host certificate against the host CA of the cluster it dials alone (issue 19): a real
SSH server on loopback presents crafted host certificates (signed by a root's or a leaf's host CA, with
any ``x-teleport-authority`` the signer likes) to :func:`teleport_core.tsh.sshclient.handshake` with a
profile that knows both CAs, as ``tsh login`` at a root with a leaf writes it. The end-to-end version
with real clusters is test_trusted_attacks_e2e.py."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
import threading
from collections.abc import Iterator
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from teleport_proxy.sshserver import CertHostKey, paramiko_key

from teleport_core.errors import AccessDenied
from teleport_core.pki import keys
from teleport_core.pki.identity import LocalIdentity
from teleport_core.tsh.clusters import select
from teleport_core.tsh.hostcert import OLD_CA, ca_line_clusters, cluster_host_ca_keys, signer_cluster
from teleport_core.tsh.profile import Profile
from teleport_core.tsh.sshclient import handshake

ROOT = "root.example.com"
LEAF = "leaf.example.com"
NODE = "5b0c8e0e-4a61-4c4b-9d7e-2f2f3a3c1d10"
ROOT_CA = ed25519.Ed25519PrivateKey.generate()
LEAF_CA = ed25519.Ed25519PrivateKey.generate()


def line(ca: ed25519.Ed25519PrivateKey) -> str:
    return ca.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


KNOWN = (f"@cert-authority proxy.example.com,[proxy.example.com]:*,{ROOT},*.{ROOT} {line(ROOT_CA)} type=host",
         f"@cert-authority {LEAF},*.{LEAF} {line(LEAF_CA)} type=host")


def host_cert(ca: ed25519.Ed25519PrivateKey, authority: str, role: str = "Node") -> tuple[ed25519.Ed25519PrivateKey, str]:
    """A host key and its certificate by ``ca``, naming :data:`NODE`, claiming cluster ``authority``."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = int(dt.datetime.now(dt.UTC).timestamp())
    cert = (ssh.SSHCertificateBuilder().public_key(key.public_key()).serial(1).key_id(b"host")
            .type(ssh.SSHCertificateType.HOST).valid_principals([NODE.encode(), b"proxy.example.com"])
            .valid_after(now - 60).valid_before(now + 3600)
            .add_extension(b"x-teleport-authority", authority.encode())
            .add_extension(b"x-teleport-role", role.encode()).sign(ca))
    return key, cert.public_bytes().decode()


class Server(paramiko.ServerInterface):  # type: ignore[misc]
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return int(paramiko.AUTH_SUCCESSFUL)


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(key, cert)``: a socket connected to an SSH server presenting that host certificate."""
    opened: list[Any] = []

    def start(key: ed25519.Ed25519PrivateKey, cert: str) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", 0))
        host_key = CertHostKey(paramiko_key(keys.private_key_pem(key)), cert)

        def run() -> None:
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            opened.append(transport)
            transport.add_server_key(host_key)
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):  # the client hung up: refused
                transport.start_server(server=Server())

        threading.Thread(target=run, daemon=True).start()
        client = socket.create_connection(listener.getsockname(), timeout=10)
        opened.extend([listener, client])
        return client

    yield start
    for item in opened:
        item.close()


def profile(known: tuple[str, ...] = KNOWN) -> Profile:
    key = keys.generate_private_key("ed25519")
    now = int(dt.datetime.now(dt.UTC).timestamp())
    user_cert = (ssh.SSHCertificateBuilder().public_key(keys.load_private_key(keys.private_key_pem(key)).public_key())
                 .serial(1).key_id(b"alice").type(ssh.SSHCertificateType.USER).valid_principals([b"alice"])
                 .valid_after(now - 60).valid_before(now + 3600).sign(ROOT_CA))
    identity = LocalIdentity(keys.private_key_pem(key), b"", (), user_cert.public_bytes().decode(), known)
    return Profile("proxy.example.com", "proxy.example.com:3080", "proxy.example.com:3023", "alice", ROOT,
                   ("dev",), ("alice",), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), False, identity)


def test_the_host_ca_lines_of_each_cluster() -> None:
    assert [ca_line_clusters(k) for k in KNOWN] == [{ROOT}, {LEAF}]
    assert ca_line_clusters(f"@cert-authority * {line(ROOT_CA)}") is None  # every cluster
    assert cluster_host_ca_keys(KNOWN, ROOT) == [line(ROOT_CA)]
    assert cluster_host_ca_keys(KNOWN, LEAF) == [line(LEAF_CA)]
    assert cluster_host_ca_keys(KNOWN, "other.example.com") == []
    assert cluster_host_ca_keys(KNOWN, "*") == []  # a name is matched exactly, never as a pattern
    leaf_der = keys.public_key_der(keys.load_public_key(line(LEAF_CA)))
    assert signer_cluster(KNOWN, leaf_der) == LEAF and signer_cluster(KNOWN, b"other") == ""


def test_a_leaf_signed_certificate_claiming_the_root_is_refused_for_a_root_node(serve: Any) -> None:
    with pytest.raises(AccessDenied) as err:
        handshake(serve(*host_cert(LEAF_CA, authority=ROOT)), profile(), "alice", NODE, about="the node")
    assert str(err.value) == (f"refusing the node: its host certificate is signed by the host CA of cluster {LEAF}, "
                              f"not of {ROOT}, the cluster it was reached in")


def test_a_root_signed_certificate_is_refused_for_a_leaf_node(serve: Any) -> None:
    to_leaf = select(profile(), LEAF)  # tsh ssh --cluster=leaf
    with pytest.raises(AccessDenied, match=f"signed by the host CA of cluster {ROOT}, not of {LEAF}"):
        handshake(serve(*host_cert(ROOT_CA, authority=LEAF)), to_leaf, "alice", NODE, about="the node")


def test_each_cluster_accepts_its_own_and_the_proxy_stays_the_roots(serve: Any) -> None:
    handshake(serve(*host_cert(ROOT_CA, authority=ROOT)), profile(), "alice", NODE).close()
    to_leaf = select(profile(), LEAF)
    handshake(serve(*host_cert(LEAF_CA, authority=LEAF)), to_leaf, "alice", NODE).close()
    # with --cluster=leaf the proxy tsh talks to is still the root's: checked against the root's CA
    assert to_leaf.proxy_cluster == ROOT and to_leaf.cluster == LEAF
    handshake(serve(*host_cert(ROOT_CA, authority=ROOT, role="Proxy")), to_leaf, "alice", None, role="Proxy",
              cluster=to_leaf.proxy_cluster).close()
    with pytest.raises(AccessDenied, match=f"signed by the host CA of cluster {LEAF}, not of {ROOT}"):
        handshake(serve(*host_cert(LEAF_CA, authority=LEAF, role="Proxy")), to_leaf, "alice", None, role="Proxy",
                  cluster=to_leaf.proxy_cluster)


def test_unknown_signers_and_missing_cas(serve: Any) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AccessDenied, match=f"not signed by the host CA of cluster {ROOT}$"):
        handshake(serve(*host_cert(stranger, authority="evil.example.com")), profile(), "alice", NODE)
    with pytest.raises(AccessDenied, match=OLD_CA):  # a stranger naming the cluster: as after a rotation
        handshake(serve(*host_cert(stranger, authority=ROOT)), profile(), "alice", NODE)
    with pytest.raises(AccessDenied, match=f"your profile has no host CA of cluster {LEAF}"):
        handshake(serve(*host_cert(LEAF_CA, authority=LEAF)), select(profile(KNOWN[:1]), LEAF), "alice", NODE)


def test_a_cert_authority_line_for_every_host_serves_every_cluster(serve: Any) -> None:
    """(The proxy's web terminal builds its profile with ``@cert-authority * KEY``.)"""
    known = (f"@cert-authority * {line(ROOT_CA)}",)
    handshake(serve(*host_cert(ROOT_CA, authority=ROOT)), profile(known), "alice", NODE).close()
    assert base64.b64decode(line(ROOT_CA).split()[1])  # the line is a real key
