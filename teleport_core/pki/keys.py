"""Key generation and (de)serialization: CAs, host and user certificates, tsh and servers.

Supported algorithms: Ed25519 (the SSH default), ECDSA P-256 (the TLS default) and RSA-2048
(for old clients). Private keys are serialized as unencrypted PKCS#8 PEM or OpenSSH; public
keys in OpenSSH ``authorized_keys`` format or PEM SubjectPublicKeyInfo. Private key files are
written atomically with mode 0600 from the moment they exist.
"""

from __future__ import annotations

import base64
import binascii
import enum
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import ssh

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_KEY_SIZE = 2048
"""Size of the RSA keys we generate (``rsa2048``)."""
MIN_RSA_KEY_SIZE = 2048
"""Smallest RSA key accepted anywhere (CA or subject key)."""
ALLOWED_CURVES: tuple[type[ec.EllipticCurve], ...] = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
"""ECDSA curves accepted for subject keys (OpenSSH's nistp256/384/521); we generate P-256 only."""


class KeyAlgorithm(enum.Enum):
    """An algorithm we can generate keys for."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    RSA2048 = "rsa2048"

    @classmethod
    def parse(cls, value: str | KeyAlgorithm) -> KeyAlgorithm:
        """``ed25519``, ``ecdsa-p256`` (or ``ecdsa``), ``rsa2048`` (or ``rsa``, ``rsa-2048``)."""
        if isinstance(value, KeyAlgorithm):
            return value
        name = value.strip().lower()
        aliases = {"ecdsa": cls.ECDSA_P256, "rsa": cls.RSA2048, "rsa-2048": cls.RSA2048}
        if name in aliases:
            return aliases[name]
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise ValueError(f"unsupported key algorithm {value!r} (supported: {choices})") from None


class UnsupportedKey(ValueError):
    """A key of a type or size we do not accept."""


def generate_private_key(algorithm: str | KeyAlgorithm) -> PrivateKey:
    """A new private key of ``algorithm``."""
    alg = KeyAlgorithm.parse(algorithm)
    if alg is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)


def key_algorithm(key: PrivateKey | PublicKey) -> KeyAlgorithm:
    """The :class:`KeyAlgorithm` of one of our keys (raises :class:`UnsupportedKey` for others)."""
    check_supported(key)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return KeyAlgorithm.ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyAlgorithm.ECDSA_P256
        raise UnsupportedKey(f"ECDSA curve {key.curve.name} is accepted but is not one we generate")
    if key.key_size == RSA_KEY_SIZE:
        return KeyAlgorithm.RSA2048
    raise UnsupportedKey(f"RSA-{key.key_size} is accepted but is not one we generate")


def check_supported(key: object) -> None:
    """Raise :class:`UnsupportedKey` unless ``key`` is Ed25519, ECDSA on a NIST curve, or RSA >= 2048."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ALLOWED_CURVES):
            return
        raise UnsupportedKey(f"unsupported ECDSA curve {key.curve.name}")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_KEY_SIZE:
            raise UnsupportedKey(f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_KEY_SIZE})")
        return
    raise UnsupportedKey(f"unsupported key type {type(key).__name__}")


# -- private keys ----------------------------------------------------------------------------------


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_openssh(key: PrivateKey) -> bytes:
    """``key`` in OpenSSH format (``-----BEGIN OPENSSH PRIVATE KEY-----``), unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def load_private_key(data: bytes | str) -> PrivateKey:
    """Load an unencrypted private key from PEM (PKCS#8 or traditional) or OpenSSH format."""
    raw = data.encode() if isinstance(data, str) else data
    key: object
    try:
        if raw.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = ssh.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The parser's message never includes key material.
        raise UnsupportedKey(f"cannot load private key: {exc}") from None
    check_supported(key)
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


# -- public keys -----------------------------------------------------------------------------------


def public_key_of(key: PrivateKey | PublicKey) -> PublicKey:
    """The public half of ``key`` (``key`` itself when it is public)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


#: an Ed25519 key's OpenSSH wire blob before its 32 bytes: string "ssh-ed25519", then the key's length
_ED25519_BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
_ED25519_LINE = b"ssh-ed25519 "


def openssh_blob(key: PrivateKey | PublicKey) -> bytes:
    """The public key's OpenSSH wire form (RFC 4253 6.6: what the base64 of its line holds)."""
    public = public_key_of(key)
    if isinstance(public, ed25519.Ed25519PublicKey):  # cryptography encodes it in Python, for every key type
        return _ED25519_BLOB + public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split(b" ")[1])


def public_key_openssh(key: PrivateKey | PublicKey) -> str:
    """The public key as one ``authorized_keys`` line without comment (``ssh-ed25519 AAAA...``)."""
    public = public_key_of(key)
    if isinstance(public, ed25519.Ed25519PublicKey):  # the same line as cryptography's, a fifth of its cost
        return "ssh-ed25519 " + base64.b64encode(openssh_blob(public)).decode()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``)."""
    return public_key_of(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_der(key: PrivateKey | PublicKey) -> bytes:
    """The public key as DER SubjectPublicKeyInfo."""
    return public_key_of(key).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(data: str | bytes) -> PublicKey:
    """Load a public key from an OpenSSH line (``ssh-ed25519 AAAA... comment``) or PEM SPKI.

    Certificates are refused: pass the plain key.
    """
    raw = data.encode() if isinstance(data, str) else data
    raw = raw.strip()
    if raw.startswith(_ED25519_LINE):
        plain = _ed25519_line(raw)
        if plain is not None:
            return plain
    key: object
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = ssh.load_ssh_public_identity(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UnsupportedKey(f"cannot load public key: {exc}") from None
    if isinstance(key, ssh.SSHCertificate):
        raise UnsupportedKey("expected a public key, got an SSH certificate")
    check_supported(key)
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key


def _ed25519_line(raw: bytes) -> ed25519.Ed25519PublicKey | None:
    """The key of a well-formed ``ssh-ed25519 <base64> [comment]`` line, else None (the general
    parser then decides, with its errors): exactly the key that parser returns for such a line."""
    fields = raw.split(b" ", 2)
    try:
        blob = binascii.a2b_base64(fields[1], strict_mode=True)
    except (binascii.Error, IndexError):
        return None
    if len(blob) != len(_ED25519_BLOB) + 32 or not blob.startswith(_ED25519_BLOB):
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(blob[len(_ED25519_BLOB):])


def ssh_fingerprint(key: PrivateKey | PublicKey) -> str:
    """The SHA-256 fingerprint ``ssh-keygen -l`` prints: ``SHA256:<unpadded base64>``."""
    digest = ssh.ssh_key_fingerprint(public_key_of(key), hashes.SHA256())
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def same_public_key(a: PrivateKey | PublicKey, b: PrivateKey | PublicKey) -> bool:
    """Whether two keys have the same public half."""
    return public_key_der(a) == public_key_der(b)


# -- files -----------------------------------------------------------------------------------------
