"""Property tests (hypothesis) of the kernel's parsers of hostile or careless input.

Each parser, whatever it is given, returns its result or raises its own typed refusal
(ConfigError with a key path, InvalidRole, AccessDenied, TeleportError ...), never another
exception. Example counts are bounded (the whole property suite stays within a minute);
a crash once found is kept as an explicit ``@example``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from teleport_core.config.load import parse_config, read_yaml
from teleport_core.config.model import TeleportConfig
from teleport_core.config.values import parse_addr, parse_duration
from teleport_core.errors import AccessDenied, ConfigError, TeleportError
from teleport_core.plugins import make_plugins
from teleport_core.policy.roles import InvalidRole, Role, parse_role, parse_roles_yaml
from teleport_core.state.nodes import is_label_selector, parse_label_selector
from teleport_core.testing.strategies import documents, mutations, scalars
from teleport_core.tsh.commands import split_host_port
from teleport_core.tsh.forward import BadForwardSpec, parse_local_forward
from teleport_core.tsh.hostcert import verify_host_cert

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG_KEYS = ["version", "teleport", "auth_service", "proxy_service", "ssh_service", "storage", "log", "format", "extra_fields", "output", "severity", "nodename", "data_dir", "auth_token", "join_params", "method", "token_name", "ca_pin", "auth_server", "auth_servers", "proxy_server", "diag_addr", "advertise_ip", "type", "audit_events_uri", "audit_sessions_uri", "path", "enabled", "cluster_name", "listen_addr", "public_addr", "tokens", "authentication", "second_factor", "session_recording", "proxy_public_addr", "ca_key_algorithm", "web_listen_addr", "ssh_public_addr", "tunnel_listen_addr", "tunnel_public_addr", "https_keypairs", "key_file", "cert_file", "labels", "commands", "name", "command", "period", "peers", "prefix", "insecure"]

# -- the config reader ----------------------------------------------------------------------------

PLUGINS = make_plugins()


def config_docs() -> st.SearchStrategy[Any]:
    section = st.dictionaries(st.sampled_from(CONFIG_KEYS), documents(CONFIG_KEYS), max_size=8)
    return st.one_of(
        documents(CONFIG_KEYS),
        st.fixed_dictionaries({}, optional={
            "version": scalars, "teleport": section, "auth_service": section, "proxy_service": section,
            "ssh_service": section, "kube_service": section}),
    )


@FAST
@given(config_docs())
@example({"teleport": {"data_dir": "~nobody-here/x"}})  # expanduser of an unknown user: RuntimeError
@example({"teleport": {"log": {"severity": 5}}})
@example({"teleport": {"diag_addr": "a\x00b:1"}})
def test_config_any_document_is_a_config_or_a_config_error(doc: Any) -> None:
    try:
        config = parse_config(doc, PLUGINS)
    except ConfigError as exc:
        assert isinstance(exc.path, str)
        assert str(exc)
    else:
        assert isinstance(config, TeleportConfig)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.sampled_from(["[" * 5000, "{a: " * 3000, "- " * 3000 + "x", "!!python/object:os.system x",
                                                "a: &x [*x]", "\ufeffversion: v3"]))
@example("[" * 100_000)  # nested too deeply for the YAML composer: RecursionError
def test_config_any_yaml_text_is_read_or_refused(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "teleport.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        parse_config(read_yaml(path), PLUGINS, source=path)
    except ConfigError as exc:
        assert str(exc)


@FAST
@given(st.text(max_size=40))
@example("99999999999999999999h")  # too large for a timedelta: OverflowError
@example("1" + "0" * 400 + "h")
def test_duration_is_a_timedelta_or_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_duration(text), dt.timedelta)


@FAST
@given(st.text(max_size=40), st.none() | st.integers(0, 65535))
@example("[::1]:٣٠٢٥", None)  # Unicode digits: str.isdigit() is true but int() may refuse them
@example("host:²", None)
def test_addr_is_parsed_or_value_error(text: str, default: int | None) -> None:
    try:
        addr = parse_addr(text, default)
    except ValueError:
        return
    assert 0 <= addr.port <= 65535
    assert parse_addr(str(addr)) == addr


# -- the role parser ------------------------------------------------------------------------------

ROLE_KEYS = ["kind", "version", "metadata", "spec", "name", "description", "labels", "namespace", "allow", "deny", "options", "logins", "node_labels", "rules", "resources", "verbs", "max_session_ttl", "forward_agent", "port_forwarding", "role", "v5", "v6", "v7", "node", "user", "*", "list", "read", "create", "update", "delete", "env"]


def role_docs() -> st.SearchStrategy[Any]:
    conditions = st.fixed_dictionaries({}, optional={
        "logins": documents(ROLE_KEYS), "node_labels": documents(ROLE_KEYS),
        "rules": st.lists(st.fixed_dictionaries({}, optional={
            "resources": st.lists(st.sampled_from(["node", "role", "*", "user", "nope"]) | st.text(max_size=5)),
            "verbs": st.lists(st.sampled_from(["list", "read", "*", "zap"]) | st.text(max_size=5)),
            "where": st.sampled_from(["contains(session.participants, user.metadata.name)",
                                      'equals(resource.metadata.name, "x")', "!(", ""])
            | st.text(max_size=40) | scalars}), max_size=3)
        | documents(ROLE_KEYS)})
    options = st.fixed_dictionaries({}, optional={
        "max_session_ttl": scalars, "forward_agent": scalars, "port_forwarding": scalars})
    structured = st.fixed_dictionaries(
        {"kind": st.just("role") | scalars, "version": st.sampled_from(["v5", "v6", "v7", "v3"]) | scalars},
        optional={
            "metadata": st.fixed_dictionaries({}, optional={
                "name": st.text(max_size=12) | scalars, "description": scalars, "labels": documents(ROLE_KEYS),
                "namespace": scalars}),
            "spec": st.fixed_dictionaries({}, optional={"allow": conditions, "deny": conditions,
                                                        "options": options}) | scalars,
        })
    return structured | documents(ROLE_KEYS)


def _valid_role(**spec: Any) -> dict[str, Any]:
    return {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": spec}


@FAST
@given(role_docs())
@example(_valid_role(options={"max_session_ttl": "99999999999999999999h"}))  # OverflowError in timedelta
@example(_valid_role(allow={"node_labels": {"env": "^a{99999999999}$"}}))  # OverflowError from re.compile
@example(_valid_role(allow={"node_labels": {"env": "^" + "(" * 2000 + "$"}}))
@example({"kind": "role", "version": "v7", "metadata": {"name": "a\x01b"}})
@example({"kind": "role", "version": ["v7"], "metadata": {"name": "r"}})
def test_role_any_document_is_a_role_or_invalid_role(doc: Any) -> None:
    try:
        role = parse_role(doc)
    except InvalidRole as exc:
        assert str(exc).startswith("role")
    else:
        assert isinstance(role, Role)
        from teleport_core.policy.roles import role_to_dict

        assert parse_role(role_to_dict(role)) == role  # what we accept we can write back and read again


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
@example("[" * 100_000)
def test_roles_yaml_any_text_is_roles_or_invalid_role(text: str) -> None:
    try:
        assert parse_roles_yaml(text)
    except InvalidRole as exc:
        assert str(exc)


# -- tsh targets and label selectors -------------------------------------------------------------

@FAST
@given(st.text(max_size=30), st.integers(0, 65535))
@example("[::1]:abc", 0)  # int() of a non-number: ValueError
@example("host:²", 0)  # str.isdigit() is true for "²", int() refuses it
@example("host:99999", 0)
def test_tsh_target_is_host_and_port_or_teleport_error(target: str, default: int) -> None:
    try:
        host, port = split_host_port(target, default)
    except TeleportError:
        return
    assert isinstance(host, str)
    assert 0 <= port <= 65535


@FAST
@given(st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), st.integers(1, 65535))
def test_tsh_target_round_trip(host: str, port: int) -> None:
    assert split_host_port(f"{host}:{port}") == (host, port)
    assert split_host_port(f"[{host}]:{port}") == (host, port)
    assert split_host_port(host, 7) == (host, 7)


@FAST
@given(st.text(max_size=40))
@example("1:h:²")
@example("0:h:1")
def test_local_forward_spec_is_parsed_or_refused(spec: str) -> None:
    try:
        fwd = parse_local_forward(spec)
    except BadForwardSpec as exc:
        assert "invalid -L spec" in str(exc)
        return
    assert 1 <= fwd.port <= 65535 and 1 <= fwd.host_port <= 65535 and fwd.host


@FAST
@given(st.text(max_size=40))
def test_label_selector_parses_any_text(target: str) -> None:
    if is_label_selector(target):
        selector = parse_label_selector(target)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items())


@FAST
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
                       st.from_regex(r"[a-z0-9_.-]{1,8}", fullmatch=True), min_size=1, max_size=4))
def test_label_selector_round_trip(labels: dict[str, str]) -> None:
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    assert is_label_selector(text)
    assert parse_label_selector(text) == labels


# -- the host certificate check of tsh ------------------------------------------------------------

HOST_CA = ed25519.Ed25519PrivateKey.generate()
HOST_CA_LINE = HOST_CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
HOST_KEY = ed25519.Ed25519PrivateKey.generate()


def _host_cert(*, cert_type: ssh.SSHCertificateType = ssh.SSHCertificateType.HOST, key_id: bytes = b"h",
               principals: list[bytes] | None = None, extensions: dict[bytes, bytes] | None = None,
               valid_after: int = 0, valid_before: int = 2**64 - 1) -> bytes:
    builder = (ssh.SSHCertificateBuilder().public_key(HOST_KEY.public_key()).serial(1).type(cert_type)
               .key_id(key_id).valid_after(valid_after).valid_before(valid_before))
    builder = builder.valid_principals(principals) if principals else builder.valid_for_all_principals()
    for name, value in sorted((extensions or {}).items()):
        builder = builder.add_extension(name, value)
    line = builder.sign(HOST_CA).public_bytes()
    return base64.b64decode(line.split()[1])


GOOD_HOST_BLOB = _host_cert(principals=[b"node-1"], extensions={b"x-teleport-role": b"Node"})
KEY_TYPE = "ssh-ed25519-cert-v01@openssh.com"


@FAST
@given(st.sampled_from([KEY_TYPE, "ssh-ed25519", "ssh-rsa-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                        "x\udcff-cert-v01@openssh.com"]) | st.text(max_size=20),
       st.binary(max_size=300) | mutations(GOOD_HOST_BLOB),
       st.none() | st.text(max_size=10), st.none() | st.sampled_from(["Node", "Proxy"]) | st.text(max_size=5))
@example("x\udcff-cert-v01@openssh.com", GOOD_HOST_BLOB, None, None)  # a key type that is not UTF-8
def test_host_cert_any_blob_is_refused_or_accepted(key_type: str, blob: bytes, principal: str | None,
                                                   role: str | None) -> None:
    try:
        verify_host_cert(key_type, blob, [HOST_CA_LINE], principal, role=role)
    except AccessDenied as exc:
        assert str(exc)


@FAST
@given(key_id=st.binary(max_size=10), principals=st.lists(st.binary(max_size=10), max_size=3),
       extensions=st.dictionaries(st.sampled_from([b"x-teleport-role", b"\xff", b"permit-pty"]) | st.binary(max_size=5),
                                  st.binary(max_size=10), max_size=3),
       valid_after=st.integers(0, 2**64 - 1), valid_before=st.integers(0, 2**64 - 1),
       principal=st.none() | st.sampled_from(["node-1", "\udcff"]) | st.text(max_size=5),
       role=st.none() | st.sampled_from(["Node", "Proxy"]),
       host=st.booleans())
@example(key_id=b"", principals=[], extensions={b"x-teleport-role": b"\xff"}, valid_after=0, valid_before=2**64 - 1,
         principal=None, role="Node", host=True)
@example(key_id=b"", principals=[b"a"], extensions={}, valid_after=0, valid_before=2**64 - 1,
         principal="\udcff", role=None, host=True)  # a principal that cannot be encoded
def test_host_cert_signed_with_any_fields_is_refused_or_accepted(
        key_id: bytes, principals: list[bytes], extensions: dict[bytes, bytes], valid_after: int, valid_before: int,
        principal: str | None, role: str | None, host: bool) -> None:
    cert_type = ssh.SSHCertificateType.HOST if host else ssh.SSHCertificateType.USER
    valid_after, valid_before = sorted((valid_after, valid_before))
    if valid_after == valid_before:  # the builder wants after < before
        valid_after, valid_before = (valid_after - 1, valid_before) if valid_after else (0, 1)
    blob = _host_cert(cert_type=cert_type, key_id=key_id, principals=principals, extensions=extensions,
                      valid_after=valid_after, valid_before=valid_before)
    try:
        verify_host_cert(KEY_TYPE, blob, [HOST_CA_LINE], principal, role=role)
    except AccessDenied as exc:
        assert str(exc)
    else:
        assert host


def test_host_cert_good_one_is_accepted() -> None:
    verify_host_cert(KEY_TYPE, GOOD_HOST_BLOB, [HOST_CA_LINE], "node-1", role="Node")
    with pytest.raises(AccessDenied, match="role 'Node', not 'Proxy'"):
        verify_host_cert(KEY_TYPE, GOOD_HOST_BLOB, [HOST_CA_LINE], "node-1", role="Proxy")


def test_yaml_fixture_file_is_utf8(tmp_path: Path) -> None:
    """read_yaml refuses a file that is not UTF-8 with a ConfigError naming the file."""
    path = tmp_path / "t.yaml"
    path.write_bytes(b"\xff\xfe: x")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(path)
