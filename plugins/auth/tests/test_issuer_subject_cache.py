"""A TLS user certificate's subject is built once per distinct subject and reused: certificates
for the same identity share it, and any difference (name, roles, logins, traits, route) gives
its own subject, read back from the certificate as issued."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import ssh
from teleport_auth import issuer
from teleport_auth.authority import generate_authority
from teleport_auth.issuer import identity_from_tls_cert, issue_ssh_user_cert, issue_tls_user_cert

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


@pytest.mark.parametrize("other", [
    {"roles": ("access", "editor")},
    {"traits": {"logins": ["root", "ubuntu"]}, "logins": ("root", "ubuntu")},
    {"traits": {"logins": ["root"], "env": ["prod"]}},
    {"traits": {}},
])
def test_the_ssh_extensions_follow_the_identity(ca: Any, other: dict[str, Any]) -> None:
    """The roles and traits JSON of an SSH certificate are kept per distinct value: a certificate for
    the same identity reads the same, any change its own, each as the identity says."""
    base: dict[str, Any] = {"name": "joe", "roles": ("access",), "traits": {"logins": ["root"]},
                            "logins": ("root",), "cluster": CLUSTER}

    def extensions(fields: dict[str, Any]) -> dict[bytes, bytes]:
        subject = keys.public_key_openssh(keys.generate_private_key("ed25519"))
        cert = issue_ssh_user_cert(ca, make_plugins().hook, public_key=subject, identity=Identity(**fields))
        parsed = ssh.load_ssh_public_identity(cert.data)
        assert isinstance(parsed, ssh.SSHCertificate)
        return dict(parsed.extensions)

    first, again, changed = extensions(base), extensions(base), extensions({**base, **other})
    assert first == again
    wanted = {**base, **other}
    assert json.loads(changed[b"teleport-roles"]) == {"roles": list(wanted["roles"])}
    assert json.loads(changed[b"teleport-traits"]) == {k: list(v) for k, v in wanted["traits"].items()}
    assert changed != first


def test_traits_json_with_lists_is_not_kept_but_the_same() -> None:
    traits = {"logins": ["root"], "env": ("prod",)}  # a list: not hashable, encoded each time
    assert issuer._traits_json(traits) == '{"env":["prod"],"logins":["root"]}'
    assert issuer._traits_json({"logins": ("root",), "env": ("prod",)}) == issuer._traits_json(traits)


def test_the_subject_key_line_is_the_keys_own() -> None:
    """The OpenSSH line kept for the last key object is never another key's."""
    first, second = (keys.generate_private_key("ed25519").public_key() for _ in range(2))
    for key in (first, first, second, first, second):
        assert issuer._openssh_line(key) == keys.public_key_openssh(key)


def test_with_logins_keeps_an_identity_that_already_has_them() -> None:
    joe = Identity("joe", roles=("access",), traits={"logins": ["root"]}, logins=("root",), cluster=CLUSTER)
    assert issuer._with_logins(joe, ("root",), CLUSTER) is joe
    other = issuer._with_logins(joe, ("root", "admin"), "other.example")
    assert (other.logins, other.cluster, other.name, other.roles) == (("root", "admin"), "other.example", "joe",
                                                                       ("access",))
