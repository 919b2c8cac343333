"""Issuing SSH and X.509 certificates from the cluster CAs, and verifying them.

Every issuance builds a :class:`~teleport_core.pki.certs.CertRequest`, asks the plugins'
``teleport_certificate_veto`` hook (any reason refuses), merges what
``teleport_certificate_extensions`` adds (a plugin may add, never change), and only then signs.

Certificates are back-dated by one minute for clock skew. User certificates live 12 hours by
default (1 minute to 30 hours, and never longer than the roles' ``max_session_ttl``). Host
certificates live :data:`DEFAULT_HOST_CERT_TTL` (one year) by default; Teleport's never expire,
ours do so that a stolen host key is not trusted forever without a CA rotation.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import ipaddress
import json
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import ssh
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teleport_auth.authority import (
    CLOCK_SKEW,
    CAType,
    CertAuthority,
    name_attribute,
    quiet_long_name_warnings,
    random_serial,
)
from teleport_auth.sshcert import sign_certificate
from teleport_auth.x509cert import sign_leaf
from teleport_core.errors import AuthenticationFailed
from teleport_core.pki import keys
from teleport_core.pki.certs import CertFormat, CertRequest, CertType, apply_plugins
from teleport_core.pki.keys import PublicKey
from teleport_core.policy.access import Identity, IdentityKind
from teleport_core.policy.requests import (
    ACTIVE_REQUESTS_OID,
    EXT_ACTIVE_REQUESTS,
    active_requests_json,
    parse_active_requests,
)

DEFAULT_USER_CERT_TTL = dt.timedelta(hours=12)
MIN_USER_CERT_TTL = dt.timedelta(minutes=1)
MAX_USER_CERT_TTL = dt.timedelta(hours=30)
DEFAULT_HOST_CERT_TTL = dt.timedelta(days=365)
"""Host certificates (SSH and X.509) live one year unless a TTL is given."""

SYSTEM_ROLES = ("Auth", "Proxy", "Node")
"""System roles a host certificate may carry."""
TELEPORT_API_DOMAIN = "teleport.cluster.local"
"""DNS name (and ``*.`` wildcard) in auth/proxy TLS certificates, used to dial the auth API."""
NOLOGIN_PREFIX = "-teleport-nologin-"
"""Principal of a user certificate whose roles allow no login: an empty principal list would
mean "any login" to OpenSSH, so a unique name no account can have is used instead."""
SSH_CERT_TIME_INFINITY = 2**64 - 1

EXT_PERMIT_PTY = "permit-pty"
EXT_PERMIT_AGENT_FORWARDING = "permit-agent-forwarding"
EXT_PERMIT_PORT_FORWARDING = "permit-port-forwarding"
EXT_PERMIT_X11_FORWARDING = "permit-X11-forwarding"
EXT_TELEPORT_ROLES = "teleport-roles"
EXT_TELEPORT_TRAITS = "teleport-traits"
EXT_ROUTE_TO_CLUSTER = "teleport-route-to-cluster"
EXT_LOGIN_IP = "login-ip"
EXT_HOST_ROLE = "x-teleport-role"
EXT_HOST_AUTHORITY = "x-teleport-authority"
OPT_SOURCE_ADDRESS = "source-address"

_HOST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BAD_NAME_CHARS = re.compile(r"[\x00-\x20\x7f,]")


class InvalidCertificate(AuthenticationFailed):
    """A presented certificate is not acceptable; ``str()`` says why."""


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # one encoder: json.dumps builds one a call


def _compact_json(value: object) -> str:
    return _COMPACT.encode(value)


@functools.lru_cache(maxsize=1024)
def _roles_json(roles: tuple[str, ...]) -> str:
    """``{"roles":[...]}`` (kept per role list: a user's certificates repeat it)."""
    return _compact_json({"roles": list(roles)})


def _traits_json(traits: Mapping[str, Sequence[str]]) -> str:
    """The traits as compact JSON, keys sorted (kept per distinct traits, which are immutable tuples in
    an :class:`Identity`)."""
    items = tuple(sorted(traits.items()))
    try:
        return _sorted_traits_json(items)
    except TypeError:  # a list among the values: not kept
        return _compact_json({k: list(v) for k, v in items})


@functools.lru_cache(maxsize=1024)
def _sorted_traits_json(items: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    return _compact_json({k: list(v) for k, v in items})


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


def _from_ts(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _fmt_ts(ts: int) -> str:
    try:
        return _from_ts(ts).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{ts} (UNIX time)"


def _identity(**fields: Any) -> Identity:
    """Build an :class:`Identity` (its tuple converters confuse mypy's attrs plugin)."""
    return Identity(**fields)


def _with_logins(identity: Identity, logins: tuple[str, ...], cluster: str) -> Identity:
    if identity.logins == logins and identity.cluster == cluster:
        return identity  # already so (the API's identities are): the same immutable identity
    fields: dict[str, Any] = {"logins": logins, "cluster": cluster}
    return attrs.evolve(identity, **fields)


def _check_user(identity: Identity) -> tuple[str, ...]:
    """Validate a user identity's name, roles and logins; return the logins, de-duplicated."""
    if identity.kind is not IdentityKind.USER:
        raise ValueError("user certificates need a user identity")
    _check_name("username", identity.name)
    for role in identity.roles:
        _check_name("role", role)
    return tuple(dict.fromkeys(_check_name("login", login) for login in identity.logins))


def _check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or _BAD_NAME_CHARS.search(value):
        raise ValueError(f"invalid {what} {value!r}: must be non-empty, without spaces, commas or control characters")
    return value


@attrs.frozen(repr=False)
class IssuedCert:
    """A signed certificate and the request it was signed for (plugin additions included)."""

    data: bytes
    """OpenSSH certificate line (``ssh-ed25519-cert-v01@openssh.com AAAA...``) or PEM."""
    request: CertRequest
    serial: int

    def __repr__(self) -> str:
        r = self.request
        return (
            f"IssuedCert({r.cert_format.value} {r.cert_type.value} cert for {r.identity.name!r}, "
            f"serial={self.serial}, valid_before={r.valid_before.isoformat()})"
        )


# -- TTLs ----------------------------------------------------------------------------------------------


def user_cert_ttl(ttl: dt.timedelta | None = None, max_session_ttl: dt.timedelta | None = None) -> dt.timedelta:
    """The lifetime of a user certificate.

    ``ttl`` (default 12h) is clamped to [1 minute, 30 hours], then capped by the roles'
    ``max_session_ttl``: a policy cap always wins, even below the one-minute floor.
    """
    if ttl is None or ttl == dt.timedelta(0):
        ttl = DEFAULT_USER_CERT_TTL
    if ttl < dt.timedelta(0):
        raise ValueError("certificate TTL must not be negative")
    ttl = min(max(ttl, MIN_USER_CERT_TTL), MAX_USER_CERT_TTL)
    if max_session_ttl is not None:
        if max_session_ttl <= dt.timedelta(0):
            raise ValueError("max_session_ttl must be positive")
        ttl = min(ttl, max_session_ttl)
    return ttl


def _validity(now: dt.datetime, ttl: dt.timedelta) -> tuple[int, int]:
    """``(valid_after, valid_before)`` as whole UNIX seconds."""
    start = int(now.timestamp())
    return start - int(CLOCK_SKEW.total_seconds()), start + max(1, int(ttl.total_seconds()))


# -- hooks ---------------------------------------------------------------------------------------------


# -- SSH issuance --------------------------------------------------------------------------------------


_last_line: tuple[PublicKey, str] | None = None


def _openssh_line(key: PublicKey) -> str:
    """:func:`keys.public_key_openssh`, kept for the last key object (the two certificates of a pair are
    made for one; key objects are immutable)."""
    global _last_line
    last = _last_line
    if last is not None and last[0] is key:
        return last[1]
    line = keys.public_key_openssh(key)
    _last_line = (key, line)
    return line


def _subject_key(public_key: str | bytes | PublicKey) -> PublicKey:
    if isinstance(public_key, str | bytes):
        return keys.load_public_key(public_key)
    keys.check_supported(public_key)
    return public_key


def _sign_ssh(
    ca: CertAuthority, request: CertRequest, subject: PublicKey, cert_type: ssh.SSHCertificateType, serial: int
) -> bytes:
    return sign_certificate(  # the same bytes as cryptography's SSHCertificateBuilder, a fraction of its cost
        ca.ssh_signer(), subject, serial=serial, cert_type=cert_type, key_id=request.identity.name.encode(),
        principals=[p.encode() for p in request.principals],
        valid_after=int(request.valid_after.timestamp()), valid_before=int(request.valid_before.timestamp()),
        critical_options={name.encode(): value.encode() for name, value in request.critical_options.items()},
        extensions={name.encode(): value.encode() for name, value in request.extensions.items()},
    )


def _require_kind(ca: CertAuthority, kind: CAType) -> None:
    if ca.kind is not kind:
        raise ValueError(f"{kind.value} certificates are signed by the {kind.value} CA, not the {ca.kind.value} CA")


def _normalize_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"invalid client IP address {value!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def issue_ssh_user_cert(
    user_ca: CertAuthority,
    hook: Any,
    *,
    public_key: str | bytes | PublicKey,
    identity: Identity,
    ttl: dt.timedelta | None = None,
    max_session_ttl: dt.timedelta | None = None,
    permit_agent_forwarding: bool = False,
    permit_port_forwarding: bool = False,
    permit_x11_forwarding: bool = False,
    client_ip: str | None = None,
    pin_source_ip: bool = False,
    route_to_cluster: str | None = None,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign an SSH user certificate for ``identity`` (name, roles, traits, logins).

    Key id = username; principals = logins; extensions ``permit-pty`` (always), the
    ``permit-*-forwarding`` ones when allowed, ``teleport-roles``, ``teleport-traits``,
    ``teleport-route-to-cluster`` and ``login-ip`` (with ``client_ip``). ``pin_source_ip``
    adds the critical option ``source-address`` (requires ``client_ip``).
    """
    _require_kind(user_ca, CAType.USER)
    logins = _check_user(identity)
    principals = logins or (NOLOGIN_PREFIX + str(uuid.uuid4()),)
    route = route_to_cluster or identity.cluster or user_ca.cluster_name
    ip = None if client_ip is None else _normalize_ip(client_ip)
    if pin_source_ip and ip is None:
        raise ValueError("source IP pinning needs the client IP")
    subject = _subject_key(public_key)
    after, before = _validity(_utc_now(now), user_cert_ttl(ttl, max_session_ttl))

    extensions = {EXT_PERMIT_PTY: ""}
    for allowed, name in (
        (permit_agent_forwarding, EXT_PERMIT_AGENT_FORWARDING),
        (permit_port_forwarding, EXT_PERMIT_PORT_FORWARDING),
        (permit_x11_forwarding, EXT_PERMIT_X11_FORWARDING),
    ):
        if allowed:
            extensions[name] = ""
    extensions[EXT_TELEPORT_ROLES] = _roles_json(tuple(identity.roles))
    extensions[EXT_TELEPORT_TRAITS] = _traits_json(identity.traits)
    extensions[EXT_ROUTE_TO_CLUSTER] = route
    if identity.active_requests:
        extensions[EXT_ACTIVE_REQUESTS] = active_requests_json(identity.active_requests)
    if ip is not None:
        extensions[EXT_LOGIN_IP] = ip
    options = {OPT_SOURCE_ADDRESS: ip} if pin_source_ip and ip is not None else {}

    request = CertRequest(
        cert_type=CertType.USER,
        cert_format=CertFormat.SSH,
        identity=_with_logins(identity, logins, identity.cluster or route),
        principals=principals,
        valid_after=_from_ts(after),
        valid_before=_from_ts(before),
        public_key=_openssh_line(subject),
        extensions=extensions,
        critical_options=options,
    )
    request = apply_plugins(hook, request)
    serial = secrets.randbits(64)
    return IssuedCert(_sign_ssh(user_ca, request, subject, ssh.SSHCertificateType.USER, serial), request, serial)


def _host_identity(ca: CertAuthority, host_uuid: str, role: str) -> Identity:
    if not isinstance(host_uuid, str) or not _HOST_ID_RE.fullmatch(host_uuid):
        raise ValueError(f"invalid host UUID {host_uuid!r}")
    if role not in SYSTEM_ROLES:
        raise ValueError(f"invalid system role {role!r} (expected one of {', '.join(SYSTEM_ROLES)})")
    return _identity(
        name=f"{host_uuid}.{ca.cluster_name}", kind=IdentityKind.HOST, roles=(role,), cluster=ca.cluster_name
    )


def _host_ttl(ttl: dt.timedelta) -> dt.timedelta:
    if ttl <= dt.timedelta(0):
        raise ValueError("host certificate TTL must be positive")
    return ttl


def _issue_ssh_host(
    host_ca: CertAuthority,
    hook: Any,
    identity: Identity,
    principals: tuple[str, ...],
    public_key: str | bytes | PublicKey,
    ttl: dt.timedelta,
    now: dt.datetime | None,
    extensions: dict[str, str],
) -> IssuedCert:
    """Sign an SSH host certificate request (after the issuance plugins) with a fresh serial."""
    subject = _subject_key(public_key)
    after, before = _validity(_utc_now(now), _host_ttl(ttl))
    request = CertRequest(
        cert_type=CertType.HOST,
        cert_format=CertFormat.SSH,
        identity=identity,
        principals=principals,
        valid_after=_from_ts(after),
        valid_before=_from_ts(before),
        public_key=_openssh_line(subject),
        extensions=extensions,
    )
    request = apply_plugins(hook, request)
    serial = secrets.randbits(64)
    return IssuedCert(_sign_ssh(host_ca, request, subject, ssh.SSHCertificateType.HOST, serial), request, serial)


def issue_ssh_host_cert(
    host_ca: CertAuthority,
    hook: Any,
    *,
    public_key: str | bytes | PublicKey,
    host_uuid: str,
    nodename: str,
    role: str,
    additional_principals: Iterable[str] = (),
    ttl: dt.timedelta = DEFAULT_HOST_CERT_TTL,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign an SSH host certificate for a node, proxy or auth server.

    Principals: ``<hostUUID>.<cluster>``, ``<hostUUID>``, ``<nodename>.<cluster>``,
    ``<nodename>``, ``localhost``, ``127.0.0.1``, ``::1``, then ``additional_principals``
    (public addresses). Extensions ``x-teleport-role`` and ``x-teleport-authority``.
    Key id = ``<hostUUID>.<cluster>``.
    """
    _require_kind(host_ca, CAType.HOST)
    identity = _host_identity(host_ca, host_uuid, role)
    cluster = host_ca.cluster_name
    _check_name("nodename", nodename)
    candidates = [
        f"{host_uuid}.{cluster}",
        host_uuid,
        f"{nodename}.{cluster}",
        nodename,
        "localhost",
        "127.0.0.1",
        "::1",
        *(_check_name("principal", p) for p in additional_principals),
    ]
    return _issue_ssh_host(host_ca, hook, identity, tuple(dict.fromkeys(candidates)), public_key, ttl, now,
                           {EXT_HOST_ROLE: role, EXT_HOST_AUTHORITY: cluster})


def issue_openssh_host_cert(
    host_ca: CertAuthority,
    hook: Any,
    *,
    public_key: str | bytes | PublicKey,
    principals: Sequence[str],
    ttl: dt.timedelta = DEFAULT_HOST_CERT_TTL,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign an SSH host certificate for a plain OpenSSH server (``tctl auth sign --host``).

    Principals are exactly ``principals``; key id ``<first principal>``; the only extension is
    ``x-teleport-authority``. There is no ``x-teleport-role``, so the certificate never passes
    for a Teleport node, proxy or auth server (tsh, the proxy and tunnels require that role).
    """
    _require_kind(host_ca, CAType.HOST)
    names = tuple(dict.fromkeys(_check_name("principal", p) for p in principals))
    if not names:
        raise ValueError("a host certificate needs at least one principal")
    for name in names:
        if "*" in name or "?" in name:  # OpenSSH matches host principals as patterns: one cert for many hosts
            raise ValueError(f"invalid principal {name!r}: wildcards are not allowed; name each host")
    cluster = host_ca.cluster_name
    identity = _identity(name=names[0], kind=IdentityKind.HOST, roles=(), cluster=cluster)
    return _issue_ssh_host(host_ca, hook, identity, names, public_key, ttl, now, {EXT_HOST_AUTHORITY: cluster})


# -- X.509 issuance ------------------------------------------------------------------------------------


def _rdn(oid: x509.ObjectIdentifier, value: str) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([name_attribute(oid, value)])


def _subject_name(identity: Identity, route: str, logins: Sequence[str]) -> x509.Name:
    """CN = name, O = roles, L = logins, STREET = route-to-cluster, PostalCode = traits JSON.

    One attribute per RDN so the order of roles and logins is kept.
    """
    traits = _traits_json(identity.traits) if identity.traits else ""
    return _name_of(identity.name, tuple(identity.roles), tuple(logins), route, traits, identity.active_requests)


#: the subject attribute of each active access request ID (Teleport's OID)
ACTIVE_REQUESTS_NAME_OID = x509.ObjectIdentifier(ACTIVE_REQUESTS_OID)


@functools.lru_cache(maxsize=1024)
def _name_of(name: str, roles: tuple[str, ...], logins: tuple[str, ...], route: str, traits: str,
             requests: tuple[str, ...] = ()) -> x509.Name:
    """The subject of :func:`_subject_name` (built once per distinct subject: a ``Name`` is immutable);
    ``requests``: the active access request IDs, one ``1.3.9999.2.8`` attribute each."""
    rdns = [_rdn(NameOID.LOCALITY_NAME, login) for login in logins]
    rdns.extend(_rdn(ACTIVE_REQUESTS_NAME_OID, request) for request in requests)
    rdns.append(_rdn(NameOID.STREET_ADDRESS, route))
    if traits:
        rdns.append(_rdn(NameOID.POSTAL_CODE, traits))
    rdns.extend(_rdn(NameOID.ORGANIZATION_NAME, role) for role in roles)
    rdns.append(_rdn(NameOID.COMMON_NAME, name))
    return x509.Name(rdns)


def _sign_tls(
    ca: CertAuthority,
    request: CertRequest,
    subject_key: PublicKey,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
) -> tuple[bytes, int]:
    signer, ca_cert = ca.tls_signer()
    serial = random_serial()
    data = sign_leaf(  # the same bytes as cryptography's CertificateBuilder, a fraction of its cost
        signer, ca_cert, subject=subject, public_key=subject_key, serial=serial, not_before=request.valid_after,
        not_after=request.valid_before, sans=sans,
    )
    return data, serial


def issue_tls_user_cert(
    user_ca: CertAuthority,
    hook: Any,
    *,
    public_key: str | bytes | PublicKey,
    identity: Identity,
    ttl: dt.timedelta | None = None,
    max_session_ttl: dt.timedelta | None = None,
    route_to_cluster: str | None = None,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign an X.509 identity certificate for a user (mTLS to the auth API), same TTL rules
    as :func:`issue_ssh_user_cert`. ``public_key`` may be OpenSSH or PEM."""
    _require_kind(user_ca, CAType.USER)
    logins = _check_user(identity)
    route = route_to_cluster or identity.cluster or user_ca.cluster_name
    subject = _subject_key(public_key)
    after, before = _validity(_utc_now(now), user_cert_ttl(ttl, max_session_ttl))
    request = CertRequest(
        cert_type=CertType.USER,
        cert_format=CertFormat.TLS,
        identity=_with_logins(identity, logins, identity.cluster or route),
        principals=logins,
        valid_after=_from_ts(after),
        valid_before=_from_ts(before),
        public_key=_openssh_line(subject),
    )
    request = apply_plugins(hook, request)
    data, serial = _sign_tls(user_ca, request, subject, _subject_name(request.identity, route, logins), ())
    return IssuedCert(data, request, serial)


def issue_tls_host_cert(
    host_ca: CertAuthority,
    hook: Any,
    *,
    public_key: str | bytes | PublicKey,
    host_uuid: str,
    role: str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    ttl: dt.timedelta = DEFAULT_HOST_CERT_TTL,
    now: dt.datetime | None = None,
) -> IssuedCert:
    """Sign an X.509 identity certificate for a host: CN ``<hostUUID>.<cluster>``, O = system role.

    Auth certificates also carry the DNS names ``teleport.cluster.local`` and
    ``*.teleport.cluster.local`` (the name every client dials the auth API with); ``dns_names``
    and ``ip_addresses`` are added as SANs. Unlike Teleport, proxy certificates do not carry
    them: a proxy never terminates TLS for that name (TLS routing passes it through to auth).
    """
    _require_kind(host_ca, CAType.HOST)
    identity = _host_identity(host_ca, host_uuid, role)
    names = [_check_name("DNS name", n) for n in dns_names]
    if role == "Auth":
        names += [TELEPORT_API_DOMAIN, f"*.{TELEPORT_API_DOMAIN}"]
    names = list(dict.fromkeys(names))
    ips = list(dict.fromkeys(ipaddress.ip_address(_normalize_ip(a)) for a in ip_addresses))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in ips]
    subject = _subject_key(public_key)
    after, before = _validity(_utc_now(now), _host_ttl(ttl))
    request = CertRequest(
        cert_type=CertType.HOST,
        cert_format=CertFormat.TLS,
        identity=identity,
        principals=(*names, *(str(ip) for ip in ips)),
        valid_after=_from_ts(after),
        valid_before=_from_ts(before),
        public_key=_openssh_line(subject),
    )
    request = apply_plugins(hook, request)
    data, serial = _sign_tls(host_ca, request, subject, _subject_name(identity, host_ca.cluster_name, ()), sans)
    return IssuedCert(data, request, serial)


# -- parsing and verification --------------------------------------------------------------------------


def _parse_traits(raw: str) -> dict[str, tuple[str, ...]]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise InvalidCertificate("certificate traits are not valid JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v) for k, v in value.items()
    ):
        raise InvalidCertificate("certificate traits must be a JSON object of string lists")
    return {k: tuple(v) for k, v in value.items()}


def _parse_roles(raw: str) -> tuple[str, ...]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidCertificate("certificate roles are not valid JSON") from None
    roles = value.get("roles") if isinstance(value, dict) else None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidCertificate('certificate roles must be {"roles":[...]}')
    return tuple(roles)


def _load_x509(cert: x509.Certificate | bytes | str) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        raw = cert.encode() if isinstance(cert, str) else cert
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, x509.InvalidVersion) as exc:
        raise InvalidCertificate(f"cannot parse X.509 certificate: {exc}") from None


def identity_from_tls_cert(
    cert: x509.Certificate | bytes | str,
    authorities: Iterable[CertAuthority],
    *,
    now: dt.datetime | None = None,
) -> Identity:
    """Verify an X.509 identity certificate and return the :class:`Identity` it carries.

    The certificate must be signed directly by a trusted TLS certificate of one of
    ``authorities`` (active or additional-trusted keys), be within its validity window at
    ``now``, not be a CA, and allow client authentication. A certificate from the user CA gives
    a user identity; from the host CA a host identity, whose single role must be a system role
    and whose name must be ``<hostUUID>.<cluster>``. Raises :class:`InvalidCertificate`.
    """
    leaf = _load_x509(cert)
    quiet_long_name_warnings()
    try:
        return _verified_identity(leaf, authorities, now)
    except (ValueError, TypeError) as exc:  # a field parsed lazily (issuer, extensions ...) is malformed
        raise InvalidCertificate(f"cannot parse X.509 certificate: {exc}") from None


def _verified_identity(leaf: x509.Certificate, authorities: Iterable[CertAuthority],
                       now: dt.datetime | None) -> Identity:
    issuer: CertAuthority | None = None
    for ca in authorities:
        for ca_cert in ca.tls_certs:
            if leaf.issuer != ca_cert.subject:
                continue
            try:
                leaf.verify_directly_issued_by(ca_cert)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            issuer = ca
            break
        if issuer is not None:
            break
    if issuer is None:
        raise InvalidCertificate("x509: certificate is not signed by a trusted cluster CA")

    moment = _utc_now(now)
    if moment < leaf.not_valid_before_utc:
        raise InvalidCertificate(f"x509: certificate is not valid before {leaf.not_valid_before_utc.isoformat()}")
    if moment > leaf.not_valid_after_utc:
        raise InvalidCertificate(f"x509: certificate expired at {leaf.not_valid_after_utc.isoformat()}")
    try:
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise InvalidCertificate(f"x509: identity certificate lacks an extension: {exc}") from None
    if constraints.ca:
        raise InvalidCertificate("x509: a CA certificate is not an identity certificate")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise InvalidCertificate("x509: certificate does not allow client authentication")

    def values(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(attr.value) for attr in leaf.subject.get_attributes_for_oid(oid)]

    names = values(NameOID.COMMON_NAME)
    if len(names) != 1 or not names[0]:
        raise InvalidCertificate("x509: identity certificate must have exactly one common name")
    streets = values(NameOID.STREET_ADDRESS)
    postal = values(NameOID.POSTAL_CODE)
    if len(streets) > 1 or len(postal) > 1:
        raise InvalidCertificate("x509: identity certificate has repeated route or traits attributes")
    roles = tuple(values(NameOID.ORGANIZATION_NAME))
    traits = _parse_traits(postal[0]) if postal else {}
    cluster = streets[0] if streets else issuer.cluster_name
    if issuer.kind is CAType.HOST:
        if len(roles) != 1 or roles[0] not in SYSTEM_ROLES:
            raise InvalidCertificate(f"x509: host certificate has invalid system roles {list(roles)}")
        host_id, dot, domain = names[0].partition(".")
        if not dot or domain != issuer.cluster_name or not _HOST_ID_RE.fullmatch(host_id):
            raise InvalidCertificate(
                f"x509: host certificate name {names[0]!r} is not <hostUUID>.{issuer.cluster_name}"
            )
        return _identity(name=names[0], kind=IdentityKind.HOST, roles=roles, cluster=cluster,
                         issued=leaf.not_valid_before_utc + CLOCK_SKEW)
    try:
        requests = parse_active_requests(json.dumps(values(ACTIVE_REQUESTS_NAME_OID)))
    except ValueError as exc:
        raise InvalidCertificate(f"x509: {exc}") from None
    return _identity(
        name=names[0],
        kind=IdentityKind.USER,
        roles=roles,
        traits=traits,
        logins=tuple(values(NameOID.LOCALITY_NAME)),
        cluster=cluster,
        issued=leaf.not_valid_before_utc + CLOCK_SKEW,
        active_requests=requests,
    )


def _pub_der(key: PublicKey) -> bytes:
    return keys.public_key_der(key)


@attrs.frozen(repr=False)
class VerifiedSSHCert:
    """An SSH certificate that passed :func:`verify_ssh_cert`, with its parsed identity."""

    cert_type: CertType
    key_id: str
    principals: tuple[str, ...]
    valid_after: dt.datetime
    valid_before: dt.datetime | None
    """None for a certificate valid forever."""
    extensions: Mapping[str, str]
    critical_options: Mapping[str, str]
    serial: int
    identity: Identity
    public_key: PublicKey = attrs.field(eq=_pub_der)
    signature_key: PublicKey = attrs.field(eq=_pub_der)

    def __repr__(self) -> str:
        return (
            f"VerifiedSSHCert({self.cert_type.value}, key_id={self.key_id!r}, principals={list(self.principals)}, "
            f"serial={self.serial}, ca={keys.ssh_fingerprint(self.signature_key)})"
        )


def _decode(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidCertificate(f"ssh: certificate {what} is not UTF-8") from None


def _check_source_address(allowed: str, client_ip: str | None) -> None:
    if client_ip is None:
        raise InvalidCertificate("ssh: certificate is pinned to a source address but the client address is unknown")
    try:
        ip = ipaddress.ip_address(_normalize_ip(client_ip))
        networks = [ipaddress.ip_network(part.strip(), strict=False) for part in allowed.split(",")]
    except ValueError:
        raise InvalidCertificate(f"ssh: invalid source-address {allowed!r}") from None
    if not any(ip in net for net in networks):
        raise InvalidCertificate(f"ssh: source address {ip} is not allowed by the certificate ({allowed})")


def verify_ssh_cert(
    cert: str | bytes | ssh.SSHCertificate,
    trusted: CertAuthority | Iterable[PublicKey | str],
    *,
    cert_type: CertType,
    principal: str | None,
    now: dt.datetime | None = None,
    client_ip: str | None = None,
    skew: dt.timedelta = CLOCK_SKEW,
    allowed_critical_options: Iterable[str] = (OPT_SOURCE_ADDRESS,),
) -> VerifiedSSHCert:
    """Verify an SSH certificate (OpenSSH line or parsed) and return what it says.

    Checks, denying on the first failure: signed by one of the ``trusted`` CA keys (a
    :class:`CertAuthority` gives its active and additional-trusted keys, and must be of the
    matching kind) with a valid signature; of ``cert_type``; valid at ``now`` (a certificate
    dated up to ``skew`` in the future is accepted, an expired one never); ``principal`` among
    its principals (pass ``principal=None`` explicitly to skip, e.g. at the proxy); no critical
    option outside ``allowed_critical_options``; ``source-address`` matches ``client_ip``.
    Raises :class:`InvalidCertificate`.
    """
    if isinstance(cert, ssh.SSHCertificate):
        parsed: object = cert
    else:
        raw = cert.encode() if isinstance(cert, str) else cert
        try:
            parsed = ssh.load_ssh_public_identity(raw.strip())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidCertificate(f"ssh: cannot parse certificate: {exc}") from None
    if not isinstance(parsed, ssh.SSHCertificate):
        raise InvalidCertificate("ssh: expected a certificate, got a plain public key")

    if isinstance(trusted, CertAuthority):
        wanted_kind = CAType.USER if cert_type is CertType.USER else CAType.HOST
        if trusted.kind is not wanted_kind:
            raise InvalidCertificate(
                f"ssh: {cert_type.value} certificates are checked against the {wanted_kind.value} CA"
            )
        trusted_keys: list[PublicKey] = list(trusted.ssh_public_keys)
    else:
        trusted_keys = [keys.load_public_key(k) if isinstance(k, str) else k for k in trusted]
    try:
        signature_key = parsed.signature_key()
        sig_der = keys.public_key_der(signature_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidCertificate(f"ssh: invalid certificate signature key: {exc}") from None
    match = False
    for key in trusted_keys:
        match |= hmac.compare_digest(keys.public_key_der(key), sig_der)
    if not match:
        raise InvalidCertificate(
            f"ssh: certificate signed by unrecognized authority {keys.ssh_fingerprint(signature_key)}"
        )
    try:
        parsed.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCertificate("ssh: certificate signature does not verify") from None

    actual_type = CertType.USER if parsed.type is ssh.SSHCertificateType.USER else CertType.HOST
    if actual_type is not cert_type:
        raise InvalidCertificate(
            f"ssh: expected a {cert_type.value} certificate, got a {actual_type.value} certificate"
        )

    moment = int(_utc_now(now).timestamp())
    if moment + int(skew.total_seconds()) < parsed.valid_after:
        raise InvalidCertificate(f"ssh: certificate is not yet valid (valid after {_fmt_ts(parsed.valid_after)})")
    forever = parsed.valid_before == SSH_CERT_TIME_INFINITY
    if not forever and moment >= parsed.valid_before:
        raise InvalidCertificate(f"ssh: certificate has expired (valid before {_fmt_ts(parsed.valid_before)})")

    principals = tuple(_decode(p, "principal") for p in parsed.valid_principals)
    if not principals:
        raise InvalidCertificate("ssh: certificate lacks principals")
    if principal is not None and principal not in principals:
        raise InvalidCertificate(
            f"ssh: principal {principal!r} not in the set of valid principals for this certificate"
        )

    options = {_decode(k, "critical option"): _decode(v, "critical option") for k, v in parsed.critical_options.items()}
    extensions = {_decode(k, "extension"): _decode(v, "extension") for k, v in parsed.extensions.items()}
    if cert_type is CertType.HOST and options:
        raise InvalidCertificate("ssh: host certificates must not carry critical options")
    unknown = sorted(set(options) - set(allowed_critical_options))
    if unknown:
        raise InvalidCertificate(f"ssh: unsupported critical option {unknown[0]!r}")
    if OPT_SOURCE_ADDRESS in options:
        _check_source_address(options[OPT_SOURCE_ADDRESS], client_ip)

    key_id = _decode(parsed.key_id, "key id")
    if cert_type is CertType.USER:
        try:
            requests = parse_active_requests(extensions.get(EXT_ACTIVE_REQUESTS))
        except ValueError as exc:
            raise InvalidCertificate(f"ssh: {exc}") from None
        identity = _identity(
            name=key_id,
            kind=IdentityKind.USER,
            roles=_parse_roles(extensions[EXT_TELEPORT_ROLES]) if EXT_TELEPORT_ROLES in extensions else (),
            traits=_parse_traits(extensions[EXT_TELEPORT_TRAITS]) if EXT_TELEPORT_TRAITS in extensions else {},
            logins=tuple(p for p in principals if not p.startswith(NOLOGIN_PREFIX)),
            cluster=extensions.get(EXT_ROUTE_TO_CLUSTER, ""),
            issued=_from_ts(parsed.valid_after) + CLOCK_SKEW,
            active_requests=requests,
        )
    else:
        role = extensions.get(EXT_HOST_ROLE, "")
        if role not in SYSTEM_ROLES:
            raise InvalidCertificate(f"ssh: host certificate has invalid system role {role!r}")
        identity = _identity(
            name=key_id, kind=IdentityKind.HOST, roles=(role,), cluster=extensions.get(EXT_HOST_AUTHORITY, "")
        )
    return VerifiedSSHCert(
        cert_type=actual_type,
        key_id=key_id,
        principals=principals,
        valid_after=_from_ts(parsed.valid_after),
        valid_before=None if forever else _from_ts(parsed.valid_before),
        extensions=MappingProxyType(extensions),
        critical_options=MappingProxyType(options),
        serial=parsed.serial,
        identity=identity,
        public_key=parsed.public_key(),
        signature_key=signature_key,
    )
