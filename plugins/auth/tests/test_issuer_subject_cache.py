"""A TLS user certificate's subject is built once per distinct subject and reused: certificates
for the same identity share it, and any difference (name, roles, logins, traits, route) gives
its own subject, read back from the certificate as issued."""

from __future__ import annotations

from typing import Any

import pytest
from teleport_auth import issuer
from teleport_auth.authority import generate_authority
from teleport_auth.issuer import identity_from_tls_cert, issue_tls_user_cert

from teleport_core.pki import keys
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import Identity

CLUSTER = "subject.example"


@pytest.fixture(scope="module")
def ca() -> Any:
    return generate_authority("user", CLUSTER)


def issued(ca: Any, identity: Identity) -> Identity:
    subject = keys.public_key_openssh(keys.generate_private_key("ed25519"))
    cert = issue_tls_user_cert(ca, make_plugins().hook, public_key=subject, identity=identity)
    return identity_from_tls_cert(cert.data, [ca])


def traits(identity: Identity) -> dict[str, list[str]]:
    return {key: list(values) for key, values in identity.traits.items()}


def test_the_same_identity_reuses_its_subject(ca: Any) -> None:
    joe = Identity("joe", roles=("access",), traits={"logins": ["root"]}, logins=("root",), cluster=CLUSTER)
    issuer._name_of.cache_clear()
    first = issued(ca, joe)
    second = issued(ca, joe)
    info = issuer._name_of.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert first.name == second.name == "joe" and first.roles == second.roles == ("access",)


@pytest.mark.parametrize("other", [
    {"name": "ann"},
    {"roles": ("access", "editor")},
    {"traits": {"logins": ["root", "ubuntu"]}, "logins": ("root", "ubuntu")},
    {"traits": {}},
])
def test_any_difference_gives_its_own_subject(ca: Any, other: dict[str, Any]) -> None:
    base: dict[str, Any] = {"name": "joe", "roles": ("access",), "traits": {"logins": ["root"]},
                            "logins": ("root",), "cluster": CLUSTER}
    joe = issued(ca, Identity(**base))
    changed = {**base, **other}
    them = issued(ca, Identity(**changed))
    assert them.name == changed["name"] and them.roles == tuple(changed["roles"])
    assert traits(them) == {key: list(values) for key, values in changed["traits"].items()}
    assert (them.name, them.roles, traits(them)) != (joe.name, joe.roles, traits(joe))
