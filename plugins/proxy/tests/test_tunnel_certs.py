"""Which certificates may open a reverse tunnel (the proxy's check; no processes)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from teleport_proxy.tunnel import TunnelRefused, verify_node_cert

CLUSTER = "example.com"
UUID = "0b6c5f7e-1111-4222-8333-444455556666"
CA = ed25519.Ed25519PrivateKey.generate()
CA_LINE = CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def cert(*, signer: Any = CA, kind: ssh.SSHCertificateType = ssh.SSHCertificateType.HOST, role: str = "Node",
         authority: str = CLUSTER, principals: tuple[str, ...] = (UUID, f"{UUID}.{CLUSTER}"),
         hours: int = 1) -> tuple[str, bytes]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    builder = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key()).serial(7)
               .type(kind).key_id(f"{UUID}.{CLUSTER}".encode()).valid_principals([p.encode() for p in principals])
               .valid_after(now - 7200).valid_before(now + hours * 3600))
    if kind is ssh.SSHCertificateType.HOST:
        builder = builder.add_extension(b"x-teleport-role", role.encode()).add_extension(
            b"x-teleport-authority", authority.encode())
    key_type, blob = cert_line(builder.sign(signer)).split()[:2]
    return key_type, base64.b64decode(blob)


def cert_line(c: ssh.SSHCertificate) -> str:
    return c.public_bytes().decode()


def test_a_node_host_certificate_of_this_cluster_opens_a_tunnel() -> None:
    assert verify_node_cert(*cert(), UUID, [CA_LINE], CLUSTER) == UUID


@pytest.mark.parametrize(("kwargs", "login", "reason"), [
    ({"kind": ssh.SSHCertificateType.USER}, UUID, "user certificate"),
    ({"signer": ed25519.Ed25519PrivateKey.generate()}, UUID, "not signed by the cluster's host CA"),
    ({"role": "Proxy"}, UUID, "only nodes may open a reverse tunnel"),
    ({"authority": "other.cluster"}, UUID, "belongs to another cluster"),
    ({"principals": (UUID,)}, UUID, f"does not name host {UUID} of this cluster"),
    ({}, "another-host", "is not valid for another-host"),
    ({"hours": -1}, UUID, "not valid now"),
])
def test_everything_else_is_refused(kwargs: dict[str, Any], login: str, reason: str) -> None:
    with pytest.raises(TunnelRefused) as err:
        verify_node_cert(*cert(**kwargs), login, [CA_LINE], CLUSTER)
    assert str(err.value).startswith("reverse tunnel: ") and reason in str(err.value)
