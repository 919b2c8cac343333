"""Checking a server's SSH host certificate against the cluster's host CA (from known_hosts)."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.errors import AccessDenied
from teleport_core.pki import keys

SKEW = 60
OLD_CA = "your certificates were issued by an old CA: run tsh login again"


class UnknownHostCA(AccessDenied):
    """A host certificate signed by none of the trusted CAs; ``authority`` is the cluster its
    ``x-teleport-authority`` extension names (a cluster whose host CA rotated names itself; the
    signer chooses it, so it only picks a message); ``signer`` is the DER of the key that signed it."""

    def __init__(self, message: str, authority: str = "", signer: bytes = b"") -> None:
        super().__init__(message)
        self.authority = authority
        self.signer = signer


def from_rotated_tls_ca(der: bytes, known_ca_pems: Iterable[bytes]) -> bool:
    """Whether the X.509 certificate ``der`` names as its issuer one of ``known_ca_pems`` (the
    cluster's host CA as the profile knows it) but is not signed by it: the cluster rotated its
    host CA since the profile was written. Only for choosing an error message, never for trust."""
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        cas = [x509.load_pem_x509_certificate(pem) for pem in known_ca_pems]
    except ValueError:
        return False
    named = [ca for ca in cas if ca.subject == cert.issuer]
    if not named:
        return False
    for ca in named:
        try:
            cert.verify_directly_issued_by(ca)
            return False
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
    return True


def host_ca_keys(known_hosts: Iterable[str]) -> list[str]:
    """The CA keys of ``@cert-authority`` lines (``@cert-authority HOSTS TYPE KEY ...``)."""
    out = []
    for line in known_hosts:
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "@cert-authority":
            out.append(f"{parts[2]} {parts[3]}")
    return out


def ca_line_clusters(line: str) -> set[str] | None:
    """The clusters an ``@cert-authority`` line is for: each ``C`` whose ``*.C`` is one of its host
    patterns (``tsh login`` writes ``<proxy>,<root>,*.<root>`` for the root's CA and
    ``<leaf>,*.<leaf>`` for each leaf's); ``None`` for a line with the pattern ``*`` (every cluster)
    and an empty set for anything else."""
    parts = line.split()
    if len(parts) < 4 or parts[0] != "@cert-authority":
        return set()
    patterns = parts[1].split(",")
    if "*" in patterns:
        return None
    return {p[2:] for p in patterns if p.startswith("*.") and len(p) > 2}


def cluster_host_ca_keys(known_hosts: Iterable[str], cluster: str) -> list[str]:
    """The host CA keys of ``cluster`` alone among ``known_hosts`` (see :func:`ca_line_clusters`):
    a node or proxy of one cluster is checked against that cluster's host CA, never another's."""
    out = []
    for line in known_hosts:
        clusters = ca_line_clusters(line)
        if clusters is None or cluster in clusters:
            parts = line.split()
            out.append(f"{parts[2]} {parts[3]}")
    return out


def signer_cluster(known_hosts: Iterable[str], signer: bytes) -> str:
    """The cluster whose host CA (in ``known_hosts``) is the key ``signer`` (DER), '' when none is."""
    for line in known_hosts:
        clusters = ca_line_clusters(line)
        if not clusters:
            continue
        parts = line.split()
        try:
            der = keys.public_key_der(keys.load_public_key(f"{parts[2]} {parts[3]}"))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        if signer and hmac.compare_digest(der, signer):
            return sorted(clusters)[0]
    return ""


def verify_host_cert(key_type: str, blob: bytes, trusted: Iterable[str], principal: str | None, *,
                     role: str | None = None) -> None:
    """Raise :class:`AccessDenied` unless the certificate is a host certificate signed by one of
    ``trusted``, valid now, (when ``principal`` is given) naming it, and (when ``role`` is given)
    carrying that system role in its ``x-teleport-role`` extension."""
    if not key_type.endswith("-cert-v01@openssh.com"):
        raise AccessDenied("the server presented a plain host key, not a certificate from the cluster's host CA")
    try:
        cert = ssh.load_ssh_public_identity(f"{key_type} {base64.b64encode(blob).decode()}".encode())
        if not isinstance(cert, ssh.SSHCertificate):
            raise TypeError("not a certificate")
        signer = keys.public_key_der(cert.signature_key())
        cert.verify_cert_signature()
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise AccessDenied("the server's host certificate does not verify") from None
    match = False
    for ca in trusted:
        match |= hmac.compare_digest(keys.public_key_der(keys.load_public_key(ca)), signer)
    if not match:
        raise UnknownHostCA("the server's host certificate is not signed by the cluster's host CA",
                            cert.extensions.get(b"x-teleport-authority", b"").decode(errors="replace"), signer)
    if cert.type is not ssh.SSHCertificateType.HOST:
        raise AccessDenied("the server presented a user certificate as its host key")
    now = dt.datetime.now(dt.UTC).timestamp()
    if not cert.valid_after - SKEW <= now < cert.valid_before:
        raise AccessDenied("the server's host certificate is not valid now")
    if principal is not None and principal.encode(errors="surrogateescape") not in cert.valid_principals:
        raise AccessDenied(f"the server's host certificate is not valid for {principal}")
    if role is not None:
        found = cert.extensions.get(b"x-teleport-role", b"").decode(errors="replace")
        if found != role:
            raise AccessDenied(f"the server presented a host certificate for role {found or 'none'!r}, not {role!r}")
