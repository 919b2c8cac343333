"""teleport.yaml loading: every key that can be wrong is sent wrong and the message checked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from teleport_core import hookimpl
from teleport_core.config.load import Flags, load_config, parse_config, parse_labels_flag, read_yaml
from teleport_core.config.reader import SectionReader
from teleport_core.config.values import NetAddr, format_duration, parse_addr, parse_duration
from teleport_core.errors import ConfigError
from teleport_core.pki.secret import Secret
from teleport_core.specs import ServiceSpec
from tests.conftest import kernel_plugins

PIN = "sha256:" + "ab" * 32


class DemoServices:
    """Stands in for the auth, proxy and node plugins: provides the three standard sections."""

    @hookimpl
    def teleport_services(self):
        return [
            ServiceSpec("auth_service", "auth", "x:y"),
            ServiceSpec("proxy_service", "proxy", "x:y", after=("auth_service",)),
            ServiceSpec("ssh_service", "node", "x:y", after=("auth_service",)),
        ]

    @hookimpl
    def teleport_config_section(self, section, reader):
        if section == "proxy_service":
            return {"web_listen_addr": reader.addr("web_listen_addr", "0.0.0.0:3080")}
        if section == "ssh_service":
            return {"labels": reader.labels("labels"), "listen_addr": reader.addr("listen_addr", "0.0.0.0:3022")}
        if section == "auth_service":
            return {"ttl": reader.duration("ttl", "12h")}
        return None


@pytest.fixture
def plugins():
    return kernel_plugins(DemoServices())


@pytest.fixture
def core_only():
    """The kernel's built-ins alone, as with only teleport-core installed."""
    return kernel_plugins()


def parse(plugins, text: str, **flags):
    return parse_config(yaml.safe_load(text), plugins, Flags(**flags))


def test_defaults_match_teleport(plugins):
    config = parse(plugins, "")
    assert config.version == "v1"
    assert config.data_dir == Path("/var/lib/teleport")
    assert config.storage.type == "sqlite"
    assert config.storage.audit_events_uri == ("file:///var/lib/teleport/log",)
    assert config.storage.audit_sessions_uri == "file:///var/lib/teleport/log/records"
    assert [s.name for s in config.enabled_services()] == ["auth_service", "proxy_service", "ssh_service"]
    assert config.settings("proxy_service") == {"web_listen_addr": NetAddr("0.0.0.0", 3080)}
    assert config.diag_addr is None


def test_full_config_parses(plugins):
    config = parse(
        plugins,
        f"""
version: v3
teleport:
  nodename: node-1
  data_dir: /tmp/tp
  auth_token: abc123
  ca_pin: {PIN}
  auth_server: auth.example.com
  diag_addr: 127.0.0.1:3000
  advertise_ip: 10.1.2.3
  log: {{output: stdout, severity: debug, format: {{output: json, extra_fields: [caller]}}}}
  storage:
    type: dir
    audit_events_uri: ['file:///tmp/tp/log', 'stdout://']
    audit_sessions_uri: file:///tmp/tp/rec
auth_service: {{enabled: yes, ttl: 1h0m0s}}
proxy_service: {{enabled: no}}
ssh_service:
  enabled: "yes"
  labels: {{env: prod, tier: 2}}
""",
    )
    assert config.nodename == "node-1"
    assert config.auth_token == Secret("abc123") or config.auth_token.matches("abc123")
    assert config.ca_pins == (PIN,)
    assert config.auth_servers == (NetAddr("auth.example.com", 3025),)
    assert config.diag_addr == NetAddr("127.0.0.1", 3000)
    assert config.log.severity == "DEBUG" and config.log.format == "json" and config.log.output == "stdout"
    assert config.storage.type == "dir"
    assert config.storage.audit_events_uri == ("file:///tmp/tp/log", "stdout://")
    assert config.settings("auth_service") == {"ttl": dt.timedelta(hours=1)}
    assert config.settings("ssh_service")["labels"] == {"env": "prod", "tier": "2"}
    assert [s.name for s in config.enabled_services()] == ["auth_service", "ssh_service"]
    assert not config.services["proxy_service"].enabled
    assert config.services["proxy_service"].settings is not None  # disabled sections are still validated


BAD = [
    # (yaml, expected message)
    ("[1, 2]", "config: expected a mapping of sections, got a list"),
    ("version: v9", 'version: expected "v1" or "v2" or "v3", got "v9"'),
    ("teleport: [a]", "teleport: expected a mapping of keys, got a list"),
    ("teleport: {nodname: x}", 'teleport.nodname: unknown key (did you mean "nodename"?)'),
    ("teleport: {zzzz: x}", "teleport.zzzz: unknown key; valid keys: advertise_ip, auth_server"),
    ("teleport: {nodename: [x]}", "teleport.nodename: expected a string, got a list"),
    ("teleport: {data_dir: 5}", "teleport.data_dir: expected a file path, got 5"),
    ("teleport: {auth_token: ''}", "teleport.auth_token: expected a non-empty string"),
    ("teleport: {ca_pin: abc}", 'teleport.ca_pin: expected "sha256:" followed by 64 lowercase hex digits, got "abc"'),
    (f"teleport: {{ca_pin: [{PIN}, 'sha256:XY']}}", "teleport.ca_pin[1]: expected \"sha256:\""),
    ("teleport: {auth_server: 'a:b'}", 'teleport.auth_server: expected host:port, got "a:b" (bad port \'b\')'),
    ("teleport: {auth_servers: ['a:1', 'b:99999']}", 'teleport.auth_servers[1]: expected host:port, got "b:99999"'),
    ("teleport: {auth_server: a, auth_servers: [b]}", "teleport.auth_servers: set either auth_server or auth_servers"),
    ("teleport: {auth_server: a, proxy_server: b}", "teleport.proxy_server: set either auth_server or proxy_server"),
    ("teleport: {diag_addr: abc}", 'teleport.diag_addr: expected host:port, got "abc" (missing port)'),
    ("teleport: {diag_addr: '::1:3000'}", "teleport.diag_addr: expected host:port, got \"::1:3000\" (IPv6 addresses need"),
    ("teleport: {log: {severity: loud}}", 'teleport.log.severity: expected one of TRACE, DEBUG, INFO, WARN, WARNING, ERROR'),
    ("teleport: {log: {format: {output: xml}}}", 'teleport.log.format.output: expected "text" or "json", got "xml"'),
    ("teleport: {log: {format: {extra_fields: [caller, pid]}}}", 'teleport.log.format.extra_fields[1]: unknown field "pid"; valid fields: timestamp, level, component, caller'),
    ("teleport: {log: {outptu: x}}", 'teleport.log.outptu: unknown key (did you mean "output"?)'),
    ("teleport: {join_params: {method: iam}}", 'teleport.join_params.method: expected "token", got "iam"'),
    ("teleport: {auth_token: a, join_params: {token_name: b}}", "teleport.join_params: set either auth_token or"),
    ("teleport: {storage: {type: etcd}}", 'teleport.storage.type: backend "etcd" is not available: '),
    ("teleport: {storage: {type: sqlit}}", 'teleport.storage.type: unknown backend "sqlit" (did you mean "sqlite"?)'),
    ("teleport: {storage: {audit_events_uri: [/var/log]}}", "teleport.storage.audit_events_uri[0]: expected a URI"),
    ("teleport: {storage: {audit_sessions_uri: x}}", "teleport.storage.audit_sessions_uri: expected a URI"),
    ("teleport: {storage: {pth: /x}}", 'teleport.storage.pth: unknown key (did you mean "path"?)'),
    ("proxy_service: {web_listen_addr: abc}", 'proxy_service.web_listen_addr: expected host:port, got "abc"'),
    ("proxy_service: {enabled: maybe}", 'proxy_service.enabled: expected yes or no, got "maybe"'),
    ("proxy_service: {web_listen_adr: x}", 'proxy_service.web_listen_adr: unknown key (did you mean "web_listen_addr"?)'),
    ("ssh_service: {labels: [a]}", "ssh_service.labels: expected a mapping of strings, got a list"),
    ("ssh_service: {labels: {a: [b]}}", "ssh_service.labels.a: expected a string, got a list"),
    ("auth_service: {ttl: 30}", 'auth_service.ttl: expected a duration like "30m" or "1h0m0s", got 30'),
    ("auth_service: {ttl: 5 minutes}", 'auth_service.ttl: expected a duration like "30m" or "1h0m0s", got "5 minutes"'),
    ("ssh_servce: {enabled: no}", 'ssh_servce: unknown key (did you mean "ssh_service"?)'),
    ("kube_service: {enabled: yes}", "kube_service: no installed plugin provides this section (sections: auth_service, proxy_service, ssh_service)"),
    ("ssh_servic: {enabled: no}", 'ssh_servic: unknown key (did you mean "ssh_service"?)'),
    ("sssh_service: {enabled: no}", 'sssh_service: unknown key (did you mean "ssh_service"?)'),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_value_names_key_and_expectation(plugins, text, message):
    with pytest.raises(ConfigError) as err:
        parse(plugins, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_error_names_config_path_prefix_for_wrong_root(plugins):
    with pytest.raises(ConfigError, match=r"^config: expected a mapping"):
        parse_config("just a string", plugins)


def test_enabled_section_without_plugin_says_what_to_install(core_only):
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: yes}"
    with pytest.raises(ConfigError) as err:
        parse(core_only, text)
    # teleport-node is installed in development checkouts (as a skeleton), so the hint may say so
    assert str(err.value).startswith("ssh_service is enabled but no installed plugin provides it: ")
    assert "teleport-node" in str(err.value)


def test_missing_plugin_hint_is_pip_install_when_not_installed(core_only, monkeypatch):
    from teleport_core import plugins as plugins_module

    monkeypatch.setattr(plugins_module, "install_hint", lambda package: f"pip install {package}")
    from teleport_core.config import load

    monkeypatch.setattr(load, "install_hint", plugins_module.install_hint)
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}"
    with pytest.raises(ConfigError) as err:
        parse(core_only, text)
    assert str(err.value) == "ssh_service is enabled but no installed plugin provides it: pip install teleport-node"


def test_disabled_section_without_plugin_is_ignored(core_only):
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no, whatever: 1}"
    config = parse(core_only, text)
    assert config.enabled_services() == []


# -- command-line flags ----------------------------------------------------------------------


def test_flags_override_file(plugins, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = parse(
        plugins,
        "teleport: {nodename: a, auth_server: x:1, diag_addr: '127.0.0.1:1'}\nssh_service: {labels: {env: dev, a: b}}",
        roles="node,proxy",
        token=str(token_file),
        ca_pins=(PIN,),
        auth_servers=("10.0.0.1:3025", "10.0.0.2"),
        nodename="b",
        labels="env=prod,role=db",
        diag_addr="127.0.0.1:2",
        insecure=True,
        debug=True,
    )
    assert config.nodename == "b"
    assert config.auth_token is not None and config.auth_token.reveal() == "from-file"
    assert config.ca_pins == (PIN,)
    assert config.auth_servers == (NetAddr("10.0.0.1", 3025), NetAddr("10.0.0.2", 3025))
    assert config.diag_addr == NetAddr("127.0.0.1", 2)
    assert config.insecure is True
    assert config.log.severity == "DEBUG"
    assert config.settings("ssh_service")["labels"] == {"env": "prod", "a": "b", "role": "db"}
    assert [s.name for s in config.enabled_services()] == ["proxy_service", "ssh_service"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"diag_addr": "abc"}, '--diag-addr: expected host:port, got "abc"'),
        ({"auth_servers": ("h:x",)}, '--auth-server: expected host:port, got "h:x"'),
        ({"ca_pins": ("sha256:zz",)}, '--ca-pin: expected "sha256:" followed by 64'),
        ({"roles": "nod"}, '--roles: unknown role "nod" (did you mean "node"?)'),
        ({"roles": ","}, "--roles: expected a comma-separated list of auth, node, proxy"),
        ({"labels": "env"}, '--labels: expected key=value[,key=value...], got "env"'),
        ({"token": ""}, "--token: expected a non-empty string"),
    ],
)
def test_bad_flag_names_the_flag(plugins, flags, message):
    with pytest.raises(ConfigError) as err:
        parse(plugins, "", **flags)
    assert message in str(err.value)


def test_roles_flag_enabling_missing_plugin_says_so(core_only):
    with pytest.raises(ConfigError, match=r"ssh_service is enabled but no installed plugin provides it: .*--roles"):
        parse(core_only, "", roles="node")


def test_parse_labels_flag():
    assert parse_labels_flag("a=1, b = two") == {"a": "1", "b": "two"}


# -- files ---------------------------------------------------------------------------------------


def test_load_reads_file_and_reports_yaml_position(plugins, tmp_path):
    good = tmp_path / "teleport.yaml"
    good.write_text("teleport:\n  nodename: from-file\n")
    assert load_config(good, plugins).nodename == "from-file"
    assert load_config(good, plugins).source == good
    bad = tmp_path / "bad.yaml"
    bad.write_text("teleport:\n  nodename: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: invalid YAML at line 3, column 1"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match=r"cannot read config file: No such file or directory"):
        load_config(tmp_path / "missing.yaml", plugins)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(binary)


def test_yaml_is_loaded_safely(plugins, tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("teleport: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil, plugins)


def test_secret_never_in_error_or_repr(plugins):
    config = parse(plugins, "teleport: {auth_token: hunter2-secret}")
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError) as err:
        parse(plugins, "teleport: {auth_token: [hunter2-secret]}")
    assert "hunter2" not in str(err.value)


# -- value types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h0m0s", 3600), ("1.5h", 5400), ("300ms", 0.3), ("2h45m", 9900), ("0", 0), ("10s", 10),
     ("1h30m15s", 5415), (".5s", 0.5), ("-1m", -60), ("1us", 1e-6), ("1000ns", 1e-6)],
)
def test_durations_use_go_syntax(text, seconds):
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "m", "1d", "1 h", "1h-", "h1", "1.2.3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_like_go():
    assert format_duration(dt.timedelta(hours=1)) == "1h0m0s"
    assert format_duration(dt.timedelta(minutes=30)) == "30m0s"
    assert format_duration(dt.timedelta(seconds=45)) == "45s"
    assert format_duration(dt.timedelta(0)) == "0s"
    assert format_duration(dt.timedelta(hours=30, seconds=1.5)) == "30h0m1.5s"


@pytest.mark.parametrize(
    ("text", "addr"),
    [("127.0.0.1:3025", NetAddr("127.0.0.1", 3025)), ("[::1]:3080", NetAddr("::1", 3080)),
     ("tcp://auth:3025", NetAddr("auth", 3025)), ("0.0.0.0:0", NetAddr("0.0.0.0", 0))],
)
def test_addresses(text, addr):
    assert parse_addr(text) == addr
    assert str(parse_addr(str(addr))) == str(addr)


@pytest.mark.parametrize("text", ["abc", "a:b", "a:65536", "::1", "[::1", "[127.0.0.1]:1", "a b:1", "[::1]x", ":"])
def test_bad_addresses(text):
    with pytest.raises(ValueError):
        parse_addr(text)


def test_default_port_for_bare_hosts():
    assert parse_addr("auth.example.com", 3025) == NetAddr("auth.example.com", 3025)
    assert NetAddr("0.0.0.0", 1).connect_host == "127.0.0.1"


# -- the reader plugins use -----------------------------------------------------------------------


def test_reader_getters_and_unknown_keys():
    reader = SectionReader(
        {"n": 3, "on": "yes", "list": ["a"], "sub": {"k": "v"}, "items": [{"x": 1}, {"y": 2}], "typo": 1},
        "my_service",
    )
    assert reader.integer("n", minimum=1) == 3
    assert reader.boolean("on") is True
    assert reader.strings("list") == ("a",)
    assert reader.string("missing", "dflt") == "dflt"
    sub = reader.section("sub")
    assert sub.string("k") == "v"
    sub.finish()
    items = reader.sections("items")
    assert items[0].integer("x") == 1
    with pytest.raises(ConfigError, match=r"^my_service\.items\[1\]\.y: unknown key; valid keys: x$"):
        items[1].integer("x", 0)
        items[1].finish()
    with pytest.raises(ConfigError, match=r"^my_service\.typo: unknown key"):
        reader.finish()
    with pytest.raises(ConfigError, match=r"^my_service\.req: required: expected a string$"):
        reader.string("req")
    with pytest.raises(ConfigError, match=r"^my_service\.n: expected an integer, got 3 \(must be at least 5\)$"):
        reader.integer("n", minimum=5)
    with pytest.raises(ConfigError, match=r"^my_service\.k: expected a mapping of keys"):
        SectionReader(["x"], "my_service.k")


# -- the plugins: section (hook-only plugins' own configuration) ----------------------------------


class office_hours:  # registered under its class name: the name teleport.yaml uses
    """A hook-only plugin with a ``plugins.office_hours`` section."""

    @hookimpl
    def teleport_config_section(self, section, reader):
        if section != "plugins.office_hours":
            return None
        return {"start": reader.integer("start", 8), "end": reader.integer("end", 18),
                "timezone": reader.string("timezone", "UTC")}


class no_config:
    @hookimpl
    def teleport_authorize(self, request):
        return None


def plugin_config(plugins_section):
    data = {"teleport": {"data_dir": "/tmp/x"}, "auth_service": {"enabled": False},
            "proxy_service": {"enabled": False}, "ssh_service": {"enabled": False}}
    if plugins_section is not None:
        data["plugins"] = plugins_section
    return parse_config(data, kernel_plugins(office_hours(), no_config()))


def test_plugins_section_is_read_by_the_plugin_with_typed_getters():
    config = plugin_config({"office_hours": {"start": 7, "timezone": "Europe/Paris"}})
    assert config.plugin("office_hours") == {"start": 7, "end": 18, "timezone": "Europe/Paris"}
    assert plugin_config(None).plugin("office_hours") == {"start": 8, "end": 18, "timezone": "UTC"}  # defaults
    assert plugin_config(None).plugin("no_config") is None


@pytest.mark.parametrize(("section", "message"), [
    ({"office_hours": {"start": "early"}}, "plugins.office_hours.start: expected an integer"),
    ({"office_hours": {"strat": 7}}, 'plugins.office_hours.strat: unknown key (did you mean "start"?)'),
    ({"ofice_hours": {}}, "plugins.ofice_hours: no installed plugin is called 'ofice_hours' (did you mean \"office_hours\"?)"),
    ({"no_config": {"x": 1}}, "plugins.no_config: its plugin takes no configuration"),
    ({"sqlite": {"x": 1}}, "plugins.sqlite: its plugin takes no configuration"),
    (["office_hours"], "plugins: expected a mapping"),
])
def test_plugins_section_errors_name_the_key(section, message):
    with pytest.raises(ConfigError) as raised:
        plugin_config(section)
    assert str(raised.value).startswith(message), str(raised.value)
