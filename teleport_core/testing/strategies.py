"""Hypothesis strategies for the property tests of parsers of hostile input (test-only: needs
``hypothesis``, from the ``test`` extra).

- :data:`scalars`, :func:`documents`: YAML/JSON-like values, nested, with keys mostly drawn
  from the names a parser knows (so generated documents get past the first check);
- :func:`mutations`: a valid blob cut short, with a byte flipped, or with bytes inserted;
- :func:`ssh_user_certs`: OpenSSH certificates *signed by a given CA* with arbitrary key IDs,
  principals, critical options, extensions and validity (what a parser sees after the
  signature check, where a crash would be reachable by anyone the CA ever signed for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import ssh
from hypothesis import strategies as st

MAX_U64 = 2**64 - 1

scalars: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.sampled_from(["0", "1h", "30m", "127.0.0.1:0", "[::1]:3025", "~nobody-here/x", "~", "yes", "off", "v3",
                       "text", "json", "sqlite", "file:///tmp/x", "otp", "1e999h", "99999999999999999999h",
                       "proxy:tok", "sha256:" + "a" * 64, "{{internal.logins}}", "^a(b$", "*", "a\x00b"])
    | st.dates() | st.datetimes()
)


def documents(keys: Sequence[str]) -> st.SearchStrategy[Any]:
    """Nested mappings and lists (at most 25 leaves) whose keys are mostly from ``keys``."""
    key = st.sampled_from(list(keys)) | st.text(max_size=8) | st.integers(-3, 3)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(key, children, max_size=6),
        max_leaves=25,
    )


def mutations(blob: bytes) -> st.SearchStrategy[bytes]:
    """``blob`` cut short, with one byte flipped, or with a few bytes inserted."""
    return st.one_of(
        st.integers(0, len(blob)).map(lambda n: blob[:n]),
        st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)).map(
            lambda t: blob[:t[0]] + bytes([blob[t[0]] ^ t[1]]) + blob[t[0] + 1:]),
        st.tuples(st.integers(0, len(blob)), st.binary(min_size=1, max_size=8)).map(
            lambda t: blob[:t[0]] + t[1] + blob[t[0]:]),
    )


_NAMES = st.sampled_from([b"teleport-roles", b"teleport-traits", b"source-address", b"permit-pty", b"\xff",
                          b"force-command", b"x-teleport-role"]) | st.binary(max_size=6)
_VALUES = st.sampled_from([b'{"roles": ["access"]}', b'{"roles": "abc"}', b'{"roles": [1, null]}', b"[]", b"{}",
                           b'{"logins": ["a"]}', b'{"logins": "ab"}', b'{"a": [1]}', b"null", b"127.0.0.1/32",
                           b"::1,10.0.0.0/8", b"\xff\xfe", b"1e999", b"[" * 5000]) | st.binary(max_size=12)


@st.composite
def ssh_user_certs(draw: st.DrawFn, ca: ed25519.Ed25519PrivateKey, *, principals: Sequence[bytes] = (b"alice",)
                   ) -> bytes:
    """An OpenSSH certificate line signed by ``ca`` with arbitrary fields (user type mostly)."""
    after = draw(st.integers(0, MAX_U64 - 1) | st.just(0))
    before = draw(st.integers(after + 1, MAX_U64) | st.just(MAX_U64))
    cert_type = draw(st.sampled_from([ssh.SSHCertificateType.USER] * 3 + [ssh.SSHCertificateType.HOST]))
    builder = (ssh.SSHCertificateBuilder().public_key(ed25519.Ed25519PrivateKey.generate().public_key())
               .serial(draw(st.integers(0, MAX_U64))).type(cert_type)
               .key_id(draw(st.sampled_from([b"alice", b"\xff"]) | st.binary(max_size=10)))
               .valid_after(after).valid_before(before))
    names = draw(st.lists(st.sampled_from(list(principals)) | st.binary(max_size=8), max_size=3, unique=True))
    builder = builder.valid_principals(names) if names else builder.valid_for_all_principals()  # type: ignore[no-untyped-call]
    for name, value in sorted(draw(st.dictionaries(_NAMES, _VALUES, max_size=2)).items()):
        builder = builder.add_critical_option(name, value)
    for name, value in sorted(draw(st.dictionaries(_NAMES, _VALUES, max_size=4)).items()):
        builder = builder.add_extension(name, value)
    return bytes(builder.sign(ca).public_bytes())
