"""Certificate authorities: the cluster's user CA and host CA, their storage form, exports and pin.

Each CA has an SSH key pair and a TLS key with a self-signed CA certificate. During a rotation
the previous (or next) keys stay trusted as ``additional_trusted``. Private keys appear only in
the storage form (:meth:`CertAuthority.to_json`); ``repr``/``str`` show fingerprints only.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import re
import secrets
import urllib.parse
import warnings
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from teleport_core.pki import keys
from teleport_core.pki.keys import KeyAlgorithm, PrivateKey, PublicKey
from teleport_core.pki.pins import CAPinMismatch as CAPinMismatch
from teleport_core.pki.pins import check_ca_pin as check_ca_pin
from teleport_core.pki.pins import normalize_pin as normalize_pin
from teleport_core.pki.pins import pin_of_cert

CA_VALIDITY = dt.timedelta(days=3650)
"""Lifetime of a CA's self-signed TLS certificate (10 years)."""
CLOCK_SKEW = dt.timedelta(minutes=1)
"""Certificates are back-dated by this much so a slightly slow clock still accepts them."""
DEFAULT_GRACE_PERIOD = dt.timedelta(hours=30)
"""Default rotation grace period, during which the old and new CA are both trusted."""
STORAGE_VERSION = 1

_CLUSTER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_MAX_X509_NAME_LENGTH = 64
_LONG_NAME_WARNING = r"Attribute's length must be >= 1 and <= 64"


class CAType(enum.Enum):
    """Which certificates a CA signs."""

    USER = "user"
    HOST = "host"


def ca_key(kind: CAType, cluster: str) -> bytes:
    """Where a cluster's CA of ``kind`` is kept in cluster state."""
    return f"/authorities/{kind.value}/{cluster}".encode()


class RotationPhase(enum.Enum):
    STANDBY = "standby"
    INIT = "init"
    UPDATE_CLIENTS = "update_clients"
    UPDATE_SERVERS = "update_servers"
    ROLLBACK = "rollback"


class RotationMode(enum.Enum):
    MANUAL = "manual"
    AUTO = "auto"


class MissingSecrets(ValueError):
    """A signing operation needs a CA's private key but this copy of the CA has none."""


def validate_cluster_name(name: str) -> str:
    """Return ``name`` if it is a usable cluster name (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(name, str) or not _CLUSTER_NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid cluster name {name!r}: use 1-253 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _cluster_name_validator(_instance: object, _attribute: object, value: str) -> None:
    validate_cluster_name(value)


def _utc(value: dt.datetime | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value.astimezone(dt.UTC)


# -- X.509 helpers shared with the issuer ------------------------------------------------------------


def random_serial() -> int:
    """A random positive 128-bit certificate serial number."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The hash to sign X.509 certificates with ``key``: SHA-256, or None for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    return hashes.SHA256()


def quiet_long_name_warnings() -> None:
    """Silence cryptography's warning about X.509 names longer than 64 characters, for
    teleport_auth's own code only.

    RFC 5280 caps a CommonName at 64 characters but Teleport (like Go's x509 package) does
    not: ``<hostUUID>.<cluster>`` and SSO usernames are often longer. cryptography warns each
    time it builds or parses such a name. The filter matches that one message from our modules;
    it is (re)installed before every use because test runners reset the warning filters, and
    adding an identical filter again only moves it to the front.
    """
    warnings.filterwarnings("ignore", message=_LONG_NAME_WARNING, category=UserWarning, module=r"teleport_auth\.")


def name_attribute(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    """A UTF8String name attribute; a CommonName may exceed RFC 5280's 64 characters."""
    if oid != NameOID.COMMON_NAME or len(value.encode()) <= _MAX_X509_NAME_LENGTH:
        return x509.NameAttribute(oid, value)
    quiet_long_name_warnings()
    return x509.NameAttribute(oid, value, _validate=False)


def _self_signed_ca_cert(key: PrivateKey, cluster_name: str, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([name_attribute(NameOID.ORGANIZATION_NAME, cluster_name)]),
            x509.RelativeDistinguishedName([name_attribute(NameOID.COMMON_NAME, cluster_name)]),
        ]
    )
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, signature_hash(key))


# -- key sets ---------------------------------------------------------------------------------------------


def _key_eq(key: PrivateKey | PublicKey | None) -> bytes | None:
    return None if key is None else keys.public_key_der(key)


@attrs.frozen(repr=False)
class CAKeys:
    """One generation of a CA's keys: SSH key pair, TLS key and self-signed TLS CA certificate.

    The private keys are None in a copy handed to clients (:meth:`without_secrets`).
    Equality compares public halves only.
    """

    ssh_public_key: PublicKey = attrs.field(eq=_key_eq)
    tls_cert: x509.Certificate
    ssh_private_key: PrivateKey | None = attrs.field(default=None, eq=_key_eq)
    tls_private_key: PrivateKey | None = attrs.field(default=None, eq=_key_eq)

    def __attrs_post_init__(self) -> None:
        keys.check_supported(self.ssh_public_key)
        tls_public = self.tls_cert.public_key()
        keys.check_supported(tls_public)
        if self.ssh_private_key is not None and not keys.same_public_key(self.ssh_private_key, self.ssh_public_key):
            raise ValueError("CA SSH private key does not match its public key")
        if self.tls_private_key is not None and not keys.same_public_key(
            self.tls_private_key,
            tls_public,  # type: ignore[arg-type]  # checked by check_supported above
        ):
            raise ValueError("CA TLS private key does not match its certificate")

    @classmethod
    def generate(
        cls,
        cluster_name: str,
        ssh_alg: str | KeyAlgorithm = KeyAlgorithm.ED25519,
        tls_alg: str | KeyAlgorithm = KeyAlgorithm.ECDSA_P256,
        *,
        now: dt.datetime | None = None,
    ) -> CAKeys:
        """New keys and a new self-signed TLS CA certificate for ``cluster_name``."""
        validate_cluster_name(cluster_name)
        ssh_key = keys.generate_private_key(ssh_alg)
        tls_key = keys.generate_private_key(tls_alg)
        cert = _self_signed_ca_cert(tls_key, cluster_name, _utc(now))
        return cls(ssh_key.public_key(), cert, ssh_key, tls_key)

    @property
    def has_secrets(self) -> bool:
        return self.ssh_private_key is not None and self.tls_private_key is not None

    @functools.cached_property
    def ssh_public_key_line(self) -> str:
        """The SSH public key in ``authorized_keys`` format (no comment; computed once: every
        certificate reply carries it in ``known_hosts``)."""
        return keys.public_key_openssh(self.ssh_public_key)

    @property
    def ssh_fingerprint(self) -> str:
        return keys.ssh_fingerprint(self.ssh_public_key)

    @functools.cached_property
    def tls_cert_pem(self) -> bytes:
        """The CA certificate in PEM (computed once: every certificate reply carries it)."""
        return self.tls_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def tls_cert_der(self) -> bytes:
        return self.tls_cert.public_bytes(serialization.Encoding.DER)

    def without_secrets(self) -> CAKeys:
        return CAKeys(self.ssh_public_key, self.tls_cert)

    def to_dict(self) -> dict[str, str]:
        """Storage form; includes private keys when this copy has them."""
        out = {"ssh_public_key": self.ssh_public_key_line, "tls_cert": self.tls_cert_pem.decode()}
        if self.ssh_private_key is not None:
            out["ssh_private_key"] = keys.private_key_pem(self.ssh_private_key).decode()
        if self.tls_private_key is not None:
            out["tls_private_key"] = keys.private_key_pem(self.tls_private_key).decode()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CAKeys:
        try:
            ssh_public = keys.load_public_key(_req_str(data, "ssh_public_key"))
            cert = x509.load_pem_x509_certificate(_req_str(data, "tls_cert").encode())
            ssh_private = tls_private = None
            if data.get("ssh_private_key") is not None:
                ssh_private = keys.load_private_key(_req_str(data, "ssh_private_key"))
            if data.get("tls_private_key") is not None:
                tls_private = keys.load_private_key(_req_str(data, "tls_private_key"))
        except ValueError as exc:
            raise ValueError(f"invalid CA key set: {exc}") from None
        return cls(ssh_public, cert, ssh_private, tls_private)

    def __repr__(self) -> str:
        return (
            f"CAKeys(ssh={self.ssh_fingerprint}, tls_pin={pin_of_cert(self.tls_cert)}, "
            f"secrets={'yes' if self.has_secrets else 'no'})"
        )

    __str__ = __repr__


def _req_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


# -- rotation -----------------------------------------------------------------------------------------


def _opt_time(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else _utc(value)


@attrs.frozen
class Rotation:
    """Where a CA is in its rotation (phases ``standby -> init -> update_clients ->
    update_servers -> standby``, or ``rollback``)."""

    phase: RotationPhase = attrs.field(default=RotationPhase.STANDBY, converter=RotationPhase)
    mode: RotationMode = attrs.field(default=RotationMode.MANUAL, converter=RotationMode)
    grace_period: dt.timedelta = DEFAULT_GRACE_PERIOD
    started: dt.datetime | None = attrs.field(default=None, converter=_opt_time)
    last_rotated: dt.datetime | None = attrs.field(default=None, converter=_opt_time)

    def __attrs_post_init__(self) -> None:
        if self.grace_period < dt.timedelta(0):
            raise ValueError("rotation grace period must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "mode": self.mode.value,
            "grace_period": int(self.grace_period.total_seconds()),
            "started": None if self.started is None else self.started.isoformat(),
            "last_rotated": None if self.last_rotated is None else self.last_rotated.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rotation:
        def when(key: str) -> dt.datetime | None:
            value = data.get(key)
            return None if value is None else dt.datetime.fromisoformat(value)

        grace = data.get("grace_period", int(DEFAULT_GRACE_PERIOD.total_seconds()))
        if not isinstance(grace, int) or isinstance(grace, bool):
            raise ValueError("rotation grace_period must be an integer number of seconds")
        return cls(
            RotationPhase(data.get("phase", "standby")),
            RotationMode(data.get("mode", "manual")),
            dt.timedelta(seconds=grace),
            when("started"),
            when("last_rotated"),
        )


# -- the CA --------------------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class CertAuthority:
    """One certificate authority of a cluster: the ``user`` CA or the ``host`` CA.

    ``active`` keys sign; ``additional_trusted`` keys (the previous or next generation during
    a rotation) are trusted for verification only.
    """

    kind: CAType = attrs.field(converter=CAType)
    cluster_name: str = attrs.field(validator=_cluster_name_validator)
    active: CAKeys
    additional_trusted: CAKeys | None = None
    rotation: Rotation = attrs.field(factory=Rotation)

    @property
    def trusted(self) -> tuple[CAKeys, ...]:
        """Every trusted key set: ``active`` first, then ``additional_trusted``."""
        if self.additional_trusted is None:
            return (self.active,)
        return (self.active, self.additional_trusted)

    @property
    def ssh_public_keys(self) -> tuple[PublicKey, ...]:
        """Every trusted SSH public key (for verifying certificates this CA signed)."""
        return tuple(k.ssh_public_key for k in self.trusted)

    @property
    def tls_certs(self) -> tuple[x509.Certificate, ...]:
        """Every trusted TLS CA certificate."""
        return tuple(k.tls_cert for k in self.trusted)

    @property
    def has_secrets(self) -> bool:
        return self.active.has_secrets

    def ssh_signer(self) -> PrivateKey:
        """The active SSH private key; raises :class:`MissingSecrets` on a public-only copy."""
        if self.active.ssh_private_key is None:
            raise MissingSecrets(f"{self.kind.value} CA of {self.cluster_name!r} has no SSH private key")
        return self.active.ssh_private_key

    def tls_signer(self) -> tuple[PrivateKey, x509.Certificate]:
        """The active TLS private key and CA certificate."""
        if self.active.tls_private_key is None:
            raise MissingSecrets(f"{self.kind.value} CA of {self.cluster_name!r} has no TLS private key")
        return self.active.tls_private_key, self.active.tls_cert

    def without_secrets(self) -> CertAuthority:
        """A copy without any private key (what clients and nodes may receive)."""
        extra = None if self.additional_trusted is None else self.additional_trusted.without_secrets()
        return attrs.evolve(self, active=self.active.without_secrets(), additional_trusted=extra)

    def to_json(self) -> bytes:
        """The storage form for the cluster-state backend, private keys included (if present)."""
        doc = {
            "version": STORAGE_VERSION,
            "kind": self.kind.value,
            "cluster_name": self.cluster_name,
            "active": self.active.to_dict(),
            "additional_trusted": None if self.additional_trusted is None else self.additional_trusted.to_dict(),
            "rotation": self.rotation.to_dict(),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> CertAuthority:
        """Load the storage form written by :meth:`to_json`; raises ValueError when invalid."""
        try:
            doc = json.loads(data)
        except ValueError:
            raise ValueError("invalid CA document: not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("invalid CA document: not a JSON object")
        if doc.get("version") != STORAGE_VERSION:
            raise ValueError(f"invalid CA document: unsupported version {doc.get('version')!r}")
        extra = doc.get("additional_trusted")
        rotation = doc.get("rotation") or {}
        if not isinstance(doc.get("active"), dict) or not isinstance(extra, dict | None):
            raise ValueError("invalid CA document: key sets must be objects")
        if not isinstance(rotation, dict):
            raise ValueError("invalid CA document: rotation must be an object")
        try:
            return cls(
                CAType(doc.get("kind")),
                doc.get("cluster_name", ""),
                CAKeys.from_dict(doc["active"]),
                None if extra is None else CAKeys.from_dict(extra),
                Rotation.from_dict(rotation),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"invalid CA document: {exc}") from None

    def __repr__(self) -> str:
        extra = "" if self.additional_trusted is None else f", additional_trusted={self.additional_trusted!r}"
        return (
            f"CertAuthority(kind={self.kind.value}, cluster_name={self.cluster_name!r}, "
            f"active={self.active!r}{extra}, rotation={self.rotation.phase.value})"
        )

    __str__ = __repr__


def generate_authority(
    kind: CAType | str,
    cluster_name: str,
    ssh_alg: str | KeyAlgorithm = "ed25519",
    tls_alg: str | KeyAlgorithm = "ecdsa-p256",
    *,
    now: dt.datetime | None = None,
) -> CertAuthority:
    """A new CA of ``kind`` (``user`` or ``host``) for ``cluster_name`` with fresh keys."""
    return CertAuthority(CAType(kind), cluster_name, CAKeys.generate(cluster_name, ssh_alg, tls_alg, now=now))


# -- CA pin -------------------------------------------------------------------------------------------


def _host_ca(ca: CertAuthority) -> CertAuthority:
    if ca.kind is not CAType.HOST:
        raise ValueError(f"the CA pin is computed from the host CA, not the {ca.kind.value} CA")
    return ca


def ca_pin(host_ca: CertAuthority) -> str:
    """The cluster's CA pin (what ``tctl status`` prints): the active host CA's TLS key hash."""
    return pin_of_cert(_host_ca(host_ca).active.tls_cert)


def ca_pins(host_ca: CertAuthority) -> list[str]:
    """The pins of every trusted host CA certificate (two during a rotation)."""
    return [pin_of_cert(cert) for cert in _host_ca(host_ca).tls_certs]


# -- exports (tctl auth export) -------------------------------------------------------------------------


def _comment(**values: str) -> str:
    return urllib.parse.urlencode(sorted(values.items()))


def export_known_hosts(host_ca: CertAuthority, *, proxy_host: str = "") -> str:
    """``known_hosts`` lines trusting the host CA, as ``tctl auth export --type=host`` prints::

        @cert-authority example.com,*.example.com ssh-ed25519 AAAA... type=host

    One line per trusted key (two during a rotation). ``proxy_host`` adds a host pattern first.
    """
    ca = _host_ca(host_ca)
    hosts = [ca.cluster_name, f"*.{ca.cluster_name}"]
    if proxy_host:
        if any(c.isspace() or c == "," for c in proxy_host):
            raise ValueError(f"invalid proxy host {proxy_host!r}")
        hosts.insert(0, proxy_host)
    patterns = ",".join(hosts)
    return "".join(f"@cert-authority {patterns} {k.ssh_public_key_line} {_comment(type='host')}\n" for k in ca.trusted)


def _user_ca(ca: CertAuthority) -> CertAuthority:
    if ca.kind is not CAType.USER:
        raise ValueError(f"expected the user CA, got the {ca.kind.value} CA")
    return ca


def export_authorized_keys(user_ca: CertAuthority) -> str:
    """``authorized_keys`` lines trusting the user CA, as ``tctl auth export --type=user`` prints::

    cert-authority ssh-ed25519 AAAA... clustername=example.com&type=user
    """
    ca = _user_ca(user_ca)
    comment = _comment(clustername=ca.cluster_name, type="user")
    return "".join(f"cert-authority {k.ssh_public_key_line} {comment}\n" for k in ca.trusted)


def export_trusted_user_ca_keys(user_ca: CertAuthority) -> str:
    """The user CA's public keys, one per line, for sshd's ``TrustedUserCAKeys`` file."""
    ca = _user_ca(user_ca)
    comment = _comment(clustername=ca.cluster_name, type="user")
    return "".join(f"{k.ssh_public_key_line} {comment}\n" for k in ca.trusted)


def export_tls_pem(ca: CertAuthority) -> bytes:
    """Every trusted TLS CA certificate of ``ca`` as concatenated PEM."""
    return b"".join(k.tls_cert_pem for k in ca.trusted)
