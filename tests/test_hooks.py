"""One test per hook: the kernel calls it where documented and honours its result semantics.

(The process hooks are tested in test_process.py with a real running process.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket

import pytest
import yaml

from teleport_core import hookimpl
from teleport_core.cli.tctl import main as tctl
from teleport_core.config.load import Flags, parse_config
from teleport_core.config.sample import SampleOptions, render_sample
from teleport_core.errors import (
    AuthenticationFailed,
    CertificateVetoed,
    ConfigError,
    PluginError,
    UnknownNameError,
)
from teleport_core.pki.certs import CertAdditions, CertFormat, CertRequest, CertType, apply_plugins
from teleport_core.pki.secret import Secret
from teleport_core.plugins import make_plugins
from teleport_core.policy.access import AccessRequest, Decision, Identity, LoginRequest, authenticate, check_access
from teleport_core.resources import open_audit_log, open_session_storage, storage_config
from teleport_core.specs import AuditSinkSpec, BackendSpec, ServiceSpec, SessionStorageSpec
from teleport_core.state.audit import AuditError, AuditPage, AuditQuery, AuditSink, new_event
from teleport_core.state.nodes import AmbiguousHost, MatchStrength, NodeInfo, NodeMatch, NodeNotFound, find_nodes
from tests.conftest import kernel_plugins


def with_plugins(*objects, entry_points=False):
    """The kernel's built-in plugins plus test objects."""
    return kernel_plugins(*objects)


# -- registration ------------------------------------------------------------------------------


class DemoService:
    @hookimpl
    def teleport_services(self):
        return [ServiceSpec("demo_service", "demo", "x:y", description="a demo", sample="port: 9\nname: $nodename")]

    @hookimpl
    def teleport_config_section(self, section, reader):
        if section == "demo_service":
            return {"port": reader.integer("port", 9), "name": reader.string("name", "")}
        return None


def test_hook_teleport_services():
    plugins = with_plugins(DemoService())
    assert plugins.services()["demo_service"][1].role == "demo"
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n"
    config = parse_config(yaml.safe_load(text + "demo_service: {port: 5}"), plugins)
    assert [s.name for s in config.enabled_services()] == ["demo_service"]
    assert config.settings("demo_service") == {"port": 5, "name": ""}
    assert parse_config(yaml.safe_load(text), plugins, Flags(roles="demo")).settings("demo_service")["port"] == 9
    sample = render_sample(plugins, SampleOptions(nodename="n1"))
    assert "demo_service:\n  enabled: yes\n  port: 9\n  name: n1" in sample
    with pytest.raises(PluginError, match=r'service "demo_service" is provided by both .*DemoService.* and'):
        with_plugins(DemoService(), type("Other", (DemoService,), {})()).services()


def test_sample_config_round_trips_through_the_parser(tmp_path):
    from teleport_core.cli.teleport import main as teleport

    plugins = with_plugins(DemoService(), entry_points=True)
    text = render_sample(plugins, SampleOptions(data_dir=tmp_path, roles=("demo",)))
    config = parse_config(yaml.safe_load(text), plugins)
    assert config.data_dir == tmp_path
    assert [s.name for s in config.enabled_services()] == ["demo_service"]
    out = tmp_path / "t.yaml"
    assert teleport(["configure", "--data-dir", str(tmp_path), "-o", str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert teleport(["configure", "-o", str(out)]) == 1  # never overwrites


class DemoBackend:
    @hookimpl
    def teleport_storage_backends(self):
        def parse(reader):
            return {"endpoint": reader.addr("endpoint")}

        return [BackendSpec("demo", "x:y", parse_options=parse, aliases=("dm",))]


def test_hook_teleport_storage_backends():
    plugins = with_plugins(DemoBackend(), entry_points=True)
    assert plugins.backend("dm") is plugins.backend("demo")
    assert storage_config(plugins, {"type": "demo", "endpoint": "h:1"}).options["endpoint"].port == 1
    with pytest.raises(ConfigError, match=r'^teleport\.storage\.endpoint: expected host:port, got "nope"'):
        storage_config(plugins, {"type": "demo", "endpoint": "nope"})
    with pytest.raises(ConfigError, match=r'^teleport\.storage\.endpont: unknown key \(did you mean "endpoint"\?\)'):
        storage_config(plugins, {"type": "demo", "endpoint": "h:1", "endpont": 1})
    with pytest.raises(UnknownNameError, match=r'backend "etcd" is not available: .*teleport-storage-etcd.*installed: '
                       r"demo, dir, dm, sqlite"):
        plugins.backend("etcd")
    with pytest.raises(UnknownNameError, match=r'^unknown backend "mysql"; installed: demo, dir, dm, sqlite$'):
        plugins.backend("mysql")
    with pytest.raises(PluginError, match=r'backend "demo" is provided by both'):
        with_plugins(DemoBackend(), type("Again", (DemoBackend,), {})()).backends()


class DemoSessions:
    @hookimpl
    def teleport_session_storages(self):
        async def factory(uri, data_dir):
            # "demo://" maps onto the kernel's file storage in data_dir/demo
            return await open_session_storage(make_plugins(), f"file://{data_dir / 'demo'}", data_dir)

        return [SessionStorageSpec("demo", factory)]


def test_hook_teleport_session_storages(tmp_path):
    plugins = with_plugins(DemoSessions(), entry_points=True)

    async def run():
        storage = await open_session_storage(plugins, "demo://", tmp_path)
        src = tmp_path / "rec"
        src.write_bytes(b'{"version": 2}\n')
        await storage.upload("sid-1", src)
        assert [r.session_id for r in await storage.list()] == ["sid-1"]
        await storage.close()

    asyncio.run(run())
    assert (tmp_path / "demo" / "sid-1.cast").read_bytes() == b'{"version": 2}\n'
    with pytest.raises(ConfigError, match=r'audit_sessions_uri: unknown session storage "gs"; installed: demo, file'):
        asyncio.run(open_session_storage(plugins, "gs://bucket", tmp_path))


class ListSink(AuditSink):
    """An in-memory sink for this test only."""

    def __init__(self, fail=False):
        self.events, self.fail, self.closed = [], fail, False

    async def emit(self, event):
        if self.fail:
            raise OSError("disk full")
        self.events.append(event)

    async def search(self, query):
        return AuditPage(tuple(e for e in self.events if query.matches(e)))

    async def close(self):
        self.closed = True


class DemoSinks:
    def __init__(self):
        self.made = {}

    @hookimpl
    def teleport_audit_sinks(self):
        def factory(uri, data_dir):
            self.made[uri] = ListSink(fail=uri.startswith("broken"))
            return self.made[uri]

        return [AuditSinkSpec("mem", factory), AuditSinkSpec("broken", factory)]


def test_hook_teleport_audit_sinks(tmp_path):
    demo = DemoSinks()
    plugins = with_plugins(demo)
    now = dt.datetime.now(dt.UTC)
    query = AuditQuery(since=now - dt.timedelta(minutes=1), until=now + dt.timedelta(minutes=1), user="joe")

    async def run():
        log = await open_audit_log(plugins, ("mem://a", "mem://b"), tmp_path)
        await log.emit(new_event("user.login", user="joe"))
        page = await log.search(query)
        assert [e.code for e in page.events] == ["T1000I"]
        assert len(demo.made["mem://b"].events) == 1  # every sink got it
        await log.close()
        assert demo.made["mem://a"].closed
        log = await open_audit_log(plugins, ("broken://", "mem://c"), tmp_path)
        with pytest.raises(AuditError, match=r"audit event user.login .* not stored: ListSink: disk full"):
            await log.emit(new_event("user.login", "failure", user="joe"))
        assert len(demo.made["mem://c"].events) == 1  # a broken sink does not stop the others

    asyncio.run(run())
    with pytest.raises(ConfigError, match=r"audit_events_uri\[1\]: audit sink \"file\" is not available: "):
        asyncio.run(open_audit_log(plugins, ("mem://a", "file:///x"), tmp_path))
    assert demo.made["mem://a"].closed  # a half-opened log closes what it opened


def test_hook_teleport_cli_commands(monkeypatch, capsys):
    monkeypatch.setenv("TELEPORT_PLUGINS", "tests.plugins.cli_demo")
    assert tctl(["-c", "/etc/t.yaml", "hello", "world"]) == 7
    assert "hello world config=/etc/t.yaml tool=tctl command=hello" in capsys.readouterr().out
    assert tctl(["hello", "you", "--config", "x.yaml"]) == 7  # global options after the command too
    assert "config=x.yaml" in capsys.readouterr().out
    assert tctl(["--help"]) == 0
    assert "hello" in capsys.readouterr().out and "greet someone" in capsys.readouterr().out + "greet someone"
    assert tctl(["helo"]) == 1
    assert 'unknown command "helo" (did you mean "hello"?)' in capsys.readouterr().err

    class Clash:
        @hookimpl
        def teleport_cli_commands(self, tool):
            from teleport_core.specs import CliCommand

            return [CliCommand("version", "x", "x:y")]

    with pytest.raises(PluginError, match=r'adds "tctl version", a built-in command'):
        with_plugins(Clash()).cli_commands("tctl", reserved=["version"])


# -- configuration ------------------------------------------------------------------------------


def test_hook_teleport_config_section():
    class First(DemoService):
        @hookimpl(tryfirst=True)
        def teleport_config_section(self, section, reader):
            if section == "demo_service":
                return {"first": reader.string("name", "x")}
            return None

    plugins = with_plugins(First())
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n"
    config = parse_config(yaml.safe_load(text + "demo_service: {name: n}"), plugins)
    assert config.settings("demo_service") == {"first": "n"}  # first result wins
    with pytest.raises(ConfigError, match=r'^demo_service\.nme: unknown key \(did you mean "name"\?\)$'):
        parse_config(yaml.safe_load(text + "demo_service: {nme: n}"), plugins)
    with pytest.raises(ConfigError, match=r"^demo_service\.port: expected an integer, got \"x\"$"):
        parse_config(yaml.safe_load(text + "demo_service: {enabled: no, port: x}"), with_plugins(DemoService()))


def test_hook_teleport_config_loaded():
    class CrossCheck:
        @hookimpl
        def teleport_config_loaded(self, config):
            if config.diag_addr and config.diag_addr.port == 1:
                raise ConfigError("teleport.diag_addr", "port 1 is reserved here")

    plugins = with_plugins(CrossCheck())
    text = "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n"
    assert parse_config(yaml.safe_load(text), plugins).diag_addr is None
    with pytest.raises(ConfigError, match=r"^teleport\.diag_addr: port 1 is reserved here$"):
        parse_config(yaml.safe_load(text + "teleport: {diag_addr: '127.0.0.1:1'}"), plugins)


# -- identity --------------------------------------------------------------------------------------


class Directory:
    """Authenticates users named ldap-*; wrong password raises."""

    @hookimpl
    def teleport_authenticate(self, request):
        if not request.username.startswith("ldap-"):
            return None
        if not request.password.matches("right"):
            raise AuthenticationFailed(f"invalid credentials for user {request.username!r}")
        return Identity(request.username, roles=("access",))


class Everyone:
    @hookimpl(trylast=True)
    def teleport_authenticate(self, request):
        return Identity(request.username, roles=("fallback",))


def test_hook_teleport_authenticate():
    hook = with_plugins(Directory()).hook
    assert authenticate(hook, LoginRequest("ldap-joe", Secret("right"))).roles == ("access",)
    with pytest.raises(AuthenticationFailed) as err:
        authenticate(hook, LoginRequest("ldap-joe", Secret("wrong-pw-123")))
    assert "wrong-pw-123" not in str(err.value)
    with pytest.raises(AuthenticationFailed, match="invalid credentials for user 'bob'"):
        authenticate(hook, LoginRequest("bob", Secret("x")))  # nobody claims bob: denied
    both = with_plugins(Everyone(), Directory()).hook
    assert authenticate(both, LoginRequest("ldap-joe", Secret("right"))).roles == ("access",)  # first result wins
    assert authenticate(both, LoginRequest("bob", Secret("x"))).roles == ("fallback",)
    assert "right" not in repr(LoginRequest("ldap-joe", Secret("right")))


def test_hook_teleport_authorize():
    class AllowReaders:
        @hookimpl
        def teleport_authorize(self, request):
            return Decision.allow("reader") if request.verb == "read" else None

    class DenySecrets:
        @hookimpl
        def teleport_authorize(self, request):
            return Decision.deny("secrets are off limits") if request.kind == "secret" else None

    class Crashes:
        @hookimpl
        def teleport_authorize(self, request):
            if request.name == "boom":
                raise RuntimeError("db down")
            return None

    hook = with_plugins(AllowReaders(), DenySecrets(), Crashes()).hook
    joe = Identity("joe")
    assert check_access(hook, AccessRequest(joe, "read", "role")).allowed
    denied = check_access(hook, AccessRequest(joe, "read", "secret"))
    assert not denied.allowed and denied.reason == "secrets are off limits"  # deny wins over allow
    default = check_access(hook, AccessRequest(joe, "delete", "role", "admin"))
    assert not default.allowed and default.reason == "access denied to 'joe': no role allows delete on role 'admin'"
    crashed = check_access(hook, AccessRequest(joe, "read", "role", "boom"))
    assert not crashed.allowed and "db down" in crashed.reason  # an error denies
    assert not check_access(with_plugins().hook, AccessRequest(joe, "read", "role")).allowed  # deny by default


def cert_request(**extensions):
    now = dt.datetime.now(dt.UTC)
    return CertRequest(CertType.USER, CertFormat.SSH, Identity("joe"), ("root",), now, now + dt.timedelta(hours=1),
                       "ssh-ed25519 AAAA", extensions={"permit-pty": "", **extensions})


def test_hook_teleport_certificate_extensions():
    class AddsTicket:
        @hookimpl
        def teleport_certificate_extensions(self, request):
            return CertAdditions(extensions={"ticket@example.com": "T-1"}, critical_options={"force-command": "id"})

    class Widens:
        @hookimpl
        def teleport_certificate_extensions(self, request):
            return CertAdditions(extensions={"permit-pty": "x"})

    signed = apply_plugins(with_plugins(AddsTicket()).hook, cert_request())
    assert signed.extensions == {"permit-pty": "", "ticket@example.com": "T-1"}
    assert signed.critical_options == {"force-command": "id"}
    with pytest.raises(PluginError, match="certificate extension 'permit-pty' set twice with different values"):
        apply_plugins(with_plugins(Widens()).hook, cert_request())


def test_hook_teleport_certificate_veto():
    class NoRoot:
        @hookimpl
        def teleport_certificate_veto(self, request):
            return "root logins need a ticket" if "root" in request.principals else None

    class Never:
        @hookimpl(trylast=True)
        def teleport_certificate_veto(self, request):
            raise AssertionError("first result wins: not reached")

    with pytest.raises(CertificateVetoed, match="^certificate issuance refused: root logins need a ticket$"):
        apply_plugins(with_plugins(Never(), NoRoot()).hook, cert_request())
    assert apply_plugins(with_plugins().hook, cert_request()).extensions == {"permit-pty": ""}


# -- node lookup -------------------------------------------------------------------------------


NODES = [
    NodeInfo("11111111-aaaa", "web-1", "127.0.0.1:3022", {"env": "prod", "role": "web"}),
    NodeInfo("22222222-bbbb", "web-2", "10.0.0.2:3022", {"env": "prod", "role": "web"}),
    NodeInfo("33333333-cccc", "db", "10.0.0.3:3022", {"env": "dev"}),
    NodeInfo("44444444-dddd", "web-1", "10.0.0.4:3022", {"env": "dev"}),  # duplicate nodename
    NodeInfo("55555555-eeee", "tunnelled", "", {"env": "edge"}, tunnel=True),
]


def test_hook_teleport_node_candidates():
    hook = kernel_plugins().hook  # the kernel's built-in node_lookup plugin
    assert [n.uuid for n in find_nodes(hook, "33333333-cccc", NODES)] == ["33333333-cccc"]
    assert [n.nodename for n in find_nodes(hook, "db", NODES)] == ["db"]
    assert [n.nodename for n in find_nodes(hook, "10.0.0.2:3022", NODES)] == ["web-2"]
    assert [n.nodename for n in find_nodes(hook, "10.0.0.2", NODES)] == ["web-2"]
    assert [n.nodename for n in find_nodes(hook, "tunnelled", NODES)] == ["tunnelled"]
    assert [n.uuid for n in find_nodes(hook, "env=prod", NODES)] == ["11111111-aaaa", "22222222-bbbb"]
    assert [n.uuid for n in find_nodes(hook, "env=prod,role=web", NODES)] == ["11111111-aaaa", "22222222-bbbb"]
    with pytest.raises(AmbiguousHost, match="^ambiguous host could match multiple nodes$"):
        find_nodes(hook, "web-1", NODES)
    with pytest.raises(NodeNotFound, match="^target host nowhere.invalid is offline or does not exist$"):
        find_nodes(hook, "nowhere.invalid", NODES)
    with pytest.raises(NodeNotFound, match="^target host env=staging is offline or does not exist$"):
        find_nodes(hook, "env=staging", NODES)
    # a name that resolves through DNS to a registered address is a weak match
    assert socket.gethostbyname("localhost") == "127.0.0.1"
    assert [n.uuid for n in find_nodes(hook, "localhost", NODES)] == ["11111111-aaaa"]

    class Cmdb:
        """A strong match from elsewhere beats the DNS (weak) match."""

        @hookimpl
        def teleport_node_candidates(self, target, nodes):
            if target == "localhost":
                return [NodeMatch(nodes[2], MatchStrength.STRONG, "cmdb")]
            return None

    plugins = kernel_plugins(Cmdb())
    assert [n.nodename for n in find_nodes(plugins.hook, "localhost", NODES)] == ["db"]


def test_cli_command_name_equal_to_an_option_value(monkeypatch, capsys):
    """`tctl -c hello hello x`: the config path "hello" is not taken for the command."""
    monkeypatch.setenv("TELEPORT_PLUGINS", "tests.plugins.cli_demo")
    assert tctl(["-c", "hello", "hello", "x"]) == 7
    assert "hello x config=hello tool=tctl command=hello" in capsys.readouterr().out
