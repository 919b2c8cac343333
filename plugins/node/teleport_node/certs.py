"""User-certificate checks and the host-certificate key the SSH server presents.

The node accepts only OpenSSH user certificates signed by one of the cluster's user CA keys
(the current one, and the previous one during a rotation), valid now by the node's clock
(one minute of skew for a certificate dated in the future, none for an expired one), naming
the requested login among its principals, with no critical option but ``source-address``
(which must match the client's address).

Trusted clusters: a leaf's node also accepts a certificate signed by the user CA of a root
cluster it trusts (an enabled ``trusted_cluster``: :class:`TrustedUserCA`); the certificate's
roles are mapped through that trust's ``role_map`` (an unmapped role grants nothing, and a
certificate none of whose roles map is refused), then the node's roles and locks apply as for
its own users. :attr:`UserCert.cluster` names the root cluster.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import paramiko
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.policy.requests import EXT_ACTIVE_REQUESTS, parse_active_requests
from teleport_core.policy.rolemap import RoleMapping, map_roles

CLOCK_SKEW = dt.timedelta(minutes=1)
INFINITY = 0xFFFFFFFFFFFFFFFF
ALLOWED_CRITICAL_OPTIONS = ("source-address",)


class CertRefused(Exception):
    """A certificate the node will not accept; ``str()`` is the reason (for the audit log only).

    ``user`` is the certificate's key ID once its signature verified (else empty).
    """

    def __init__(self, reason: str, user: str = "", cluster: str = "") -> None:
        super().__init__(reason)
        self.user = user
        self.cluster = cluster  # a root cluster's user (trusted clusters): that cluster


@attrs.frozen
class UserCert:
    """What an accepted user certificate says."""

    user: str
    principals: tuple[str, ...]
    roles: tuple[str, ...]
    traits: Mapping[str, tuple[str, ...]]
    extensions: Mapping[str, str]
    valid_before: int
    fingerprint: str
    valid_after: int = 0
    #: the approved access requests whose roles the certificate carries (``teleport-active-requests``)
    active_requests: tuple[str, ...] = ()
    #: a root cluster's user (trusted clusters): that cluster's name; ``roles`` are the mapped ones
    cluster: str = ""
    #: the roles the root cluster gave the user (before the mapping), for the audit log
    remote_roles: tuple[str, ...] = ()

    def permits(self, extension: str) -> bool:
        return extension in self.extensions


def _der(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_ca_keys(lines: Sequence[str]) -> list[bytes]:
    """The DER form of each CA public key line (``ssh-ed25519 AAAA...``), for comparisons."""
    out = []
    for line in lines:
        out.append(_der(ssh.load_ssh_public_key(line.strip().encode())))
    return out


@attrs.frozen
class TrustedUserCA:
    """The user CA of a root cluster this (leaf) cluster trusts: its keys (DER) and role map."""

    cluster: str
    keys: tuple[bytes, ...]
    role_map: tuple[RoleMapping, ...]


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CertRefused(f"certificate {what} is not UTF-8") from None


def _source_allowed(value: str, client_ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    for item in value.split(","):
        try:
            if addr in ipaddress.ip_network(item.strip(), strict=False):
                return True
        except ValueError:
            continue
    return False


def check_user_cert(blob: bytes, key_type: str, ca_keys: Sequence[bytes], *, login: str | None, client_ip: str,
                    now: dt.datetime | None = None, trusted: Sequence[TrustedUserCA] = ()) -> UserCert:
    """Verify a user certificate (wire blob) for ``login``; :class:`CertRefused` says why not.
    ``login`` None: no principal is required (the join principal: the session checks the joiner).
    ``trusted``: the enabled root clusters' user CAs (a root user's roles are mapped)."""
    try:
        parsed = ssh.load_ssh_public_identity(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertRefused(f"cannot parse certificate: {exc}") from None
    if not isinstance(parsed, ssh.SSHCertificate):
        raise CertRefused("a plain public key was offered, only certificates from the user CA are accepted")
    try:
        signer = _der(parsed.signature_key())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertRefused(f"invalid certificate signature key: {exc}") from None
    local = False
    for key in ca_keys:
        local |= hmac.compare_digest(key, signer)
    root: TrustedUserCA | None = None
    for ca in trusted:  # every key compared: no early exit
        for key in ca.keys:
            if hmac.compare_digest(key, signer) and not local:
                root = ca
    if not local and root is None:
        raise CertRefused("certificate signed by an unrecognized authority (not the cluster's user CA)")
    try:
        parsed.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise CertRefused("certificate signature does not verify") from None
    try:
        cert = _check_fields(parsed, login=login, client_ip=client_ip, now=now)
    except CertRefused as exc:
        raise CertRefused(str(exc), parsed.key_id.decode(errors="replace"), root.cluster if root else "") from None
    if root is None:
        return cert
    mapped = map_roles(root.role_map, cert.roles)
    if not mapped:
        raise CertRefused(f"no role of the certificate ({', '.join(cert.roles) or 'none'}) maps to a role of this "
                          f"cluster (role_map of trusted cluster {json.dumps(root.cluster)})", cert.user, root.cluster)
    return attrs.evolve(cert, roles=mapped, cluster=root.cluster, remote_roles=cert.roles)


def _check_fields(parsed: ssh.SSHCertificate, *, login: str | None, client_ip: str,
                  now: dt.datetime | None) -> UserCert:
    if parsed.type is not ssh.SSHCertificateType.USER:
        raise CertRefused("a host certificate was presented as a user certificate")
    moment = int((now or dt.datetime.now(dt.UTC)).timestamp())
    if moment + int(CLOCK_SKEW.total_seconds()) < parsed.valid_after:
        raise CertRefused("certificate is not yet valid")
    if parsed.valid_before != INFINITY and moment >= parsed.valid_before:
        raise CertRefused("certificate has expired")
    principals = tuple(_text(p, "principal") for p in parsed.valid_principals)
    if login is not None and login not in principals:
        raise CertRefused(f"login {json.dumps(login)} is not a principal of the certificate")
    options = {_text(k, "critical option"): _text(v, "critical option") for k, v in parsed.critical_options.items()}
    for name, value in options.items():
        if name not in ALLOWED_CRITICAL_OPTIONS:
            raise CertRefused(f"unsupported critical option {json.dumps(name)}")
        if name == "source-address" and not _source_allowed(value, client_ip):
            raise CertRefused(f"client address {client_ip} not allowed by the certificate's source-address")
    extensions = {_text(k, "extension"): _text(v, "extension") for k, v in parsed.extensions.items()}
    roles, traits = _roles_traits(extensions)
    try:
        requests = parse_active_requests(extensions.get(EXT_ACTIVE_REQUESTS))
    except ValueError as exc:
        raise CertRefused(f"malformed certificate: {exc}") from None
    wire = base64.b64decode(parsed.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                              serialization.PublicFormat.OpenSSH).split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")
    return UserCert(_text(parsed.key_id, "key id"), principals, roles, traits, extensions,
                    parsed.valid_before, fingerprint, parsed.valid_after, requests)


def _roles_traits(extensions: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """The roles (``{"roles": [...]}``) and traits (``{name: [...]}``) the auth server wrote."""
    try:
        roles = json.loads(extensions.get("teleport-roles") or '{"roles": []}').get("roles") or []
        traits = json.loads(extensions.get("teleport-traits") or "{}") or {}
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply
        roles = traits = None
    if not _string_list(roles) or not isinstance(traits, dict) or not all(
            _string_list(values or []) for values in traits.values()):
        raise CertRefused("malformed teleport-roles or teleport-traits extension")
    return tuple(roles), {name: tuple(values or ()) for name, values in traits.items()}


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class HostCertKey(paramiko.PKey):  # type: ignore[misc]
    """A paramiko host key that presents an OpenSSH host certificate and signs with its key.

    paramiko's server side has no host-certificate support: this adapter advertises the
    ``ssh-ed25519-cert-v01@openssh.com`` algorithm and returns the certificate blob as the
    host key, while signatures come from the private key (which is what the algorithm means).
    """

    def __init__(self, inner: paramiko.PKey, cert_line: str) -> None:
        self.inner = inner
        fields = cert_line.split()
        self.algorithm = fields[0]
        self.blob = base64.b64decode(fields[1])

    def get_name(self) -> str:
        return self.algorithm

    def asbytes(self) -> bytes:
        return self.blob

    def get_bits(self) -> int:
        return int(self.inner.get_bits())

    def can_sign(self) -> bool:
        return True

    def sign_ssh_data(self, data: bytes, algorithm: str | None = None) -> Any:
        return self.inner.sign_ssh_data(data)
