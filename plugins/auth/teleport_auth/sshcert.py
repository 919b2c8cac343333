"""OpenSSH certificates signed by an Ed25519 CA, serialized directly (PROTOCOL.certkeys).

``cryptography``'s ``SSHCertificateBuilder`` produces the same bytes (tested byte for byte:
Ed25519 signatures are deterministic, so with the same nonce the certificates are identical),
but it assembles them through many small Python objects and then parses the result back into an
``SSHCertificate``; that was most of an SSH certificate's cost at auth (about 9x the signature
itself). Any other CA key type, and any input the builder would refuse or that is out of the
ordinary, goes through the builder, so its checks and errors stay the only ones.
"""

from __future__ import annotations

import binascii
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh

from teleport_core.pki import keys

CERT_SUFFIX = b"-cert-v01@openssh.com"
MAX_PRINCIPALS = 256  # what the builder allows
#: subject key types whose OpenSSH public blob is (type, fields) as a certificate embeds them
SUBJECT_TYPES = frozenset({b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                           b"ecdsa-sha2-nistp521", b"ssh-rsa"})


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _options(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Critical options or extensions: sorted by name, a non-empty value wrapped in a string."""
    return b"".join(_string(name) + _string(_string(value) if value else b"")
                    for name, value in sorted(items, key=lambda item: item[0]))


def _builder(signer: Any, subject: Any, serial: int, cert_type: ssh.SSHCertificateType, key_id: bytes,
             principals: Sequence[bytes], valid_after: int, valid_before: int,
             critical_options: Sequence[tuple[bytes, bytes]], extensions: Sequence[tuple[bytes, bytes]]) -> bytes:
    builder = (ssh.SSHCertificateBuilder().public_key(subject).serial(serial).type(cert_type).key_id(key_id)
               .valid_principals(list(principals)).valid_after(valid_after).valid_before(valid_before))
    for name, value in critical_options:
        builder = builder.add_critical_option(name, value)
    for name, value in extensions:
        builder = builder.add_extension(name, value)
    return builder.sign(signer).public_bytes()


def sign_certificate(signer: Any, subject: Any, *, serial: int, cert_type: ssh.SSHCertificateType, key_id: bytes,
                     principals: Sequence[bytes], valid_after: int, valid_before: int,
                     critical_options: Mapping[bytes, bytes], extensions: Mapping[bytes, bytes],
                     nonce: bytes | None = None) -> bytes:
    """The certificate in OpenSSH's one-line form (``<type>-cert-v01@openssh.com <base64>``).

    ``nonce`` (32 random bytes when None) is only given by tests.
    """
    critical, exts = list(critical_options.items()), list(extensions.items())
    public = keys.openssh_blob(subject)
    key_type = public[4:4 + struct.unpack(">I", public[:4])[0]]
    ordinary = (isinstance(signer, ed25519.Ed25519PrivateKey) and key_type in SUBJECT_TYPES
                and 0 < len(principals) <= MAX_PRINCIPALS and 0 <= serial < 2 ** 64
                and 0 <= valid_after <= valid_before < 2 ** 64
                and len({name for name, _ in critical}) == len(critical) and len({n for n, _ in exts}) == len(exts))
    if not ordinary:
        return _builder(signer, subject, serial, cert_type, key_id, principals, valid_after, valid_before,
                        critical, exts)
    fields = public[4 + len(key_type):]  # the blob without its type string
    prefix = key_type + CERT_SUFFIX
    ca_public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = b"".join((
        _string(prefix),
        _string(os.urandom(32) if nonce is None else nonce),
        fields,
        struct.pack(">QI", serial, cert_type.value),
        _string(key_id),
        _string(b"".join(_string(p) for p in principals)),
        struct.pack(">QQ", valid_after, valid_before),
        _string(_options(critical)),
        _string(_options(exts)),
        _string(b""),  # reserved
        _string(_string(b"ssh-ed25519") + _string(ca_public)),
    ))
    signature: bytes = signer.sign(body)
    cert = body + _string(_string(b"ssh-ed25519") + _string(signature))
    return prefix + b" " + binascii.b2a_base64(cert, newline=False)
