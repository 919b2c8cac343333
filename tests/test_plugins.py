"""The plugin manager: discovery, broken plugins, blocking, and what `teleport plugins` lists."""

from __future__ import annotations

import json

import pytest

from teleport_core import hookimpl
from teleport_core.discovery import entry_points
from teleport_core.plugins import make_plugins
from tests.conftest import make_distribution, run_cli

GOOD = """
from teleport_core import hookimpl
from teleport_core.specs import AuditSinkSpec

@hookimpl
def teleport_audit_sinks():
    return [AuditSinkSpec("syslogish", "x:y", "demo")]
"""


def test_builtins_are_listed_by_teleport_plugins():
    result = run_cli("teleport", "plugins", "--format=json")
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["sqlite"]["distribution"] == "teleport-core"
    assert listed["sqlite"]["builtin"] is True
    assert listed["sqlite"]["backends"] == ["dir", "sqlite"]
    assert listed["sqlite"]["hooks"] == ["teleport_storage_backends"]
    assert listed["file_sessions"]["session_storages"] == ["file"]
    assert listed["node_lookup"]["hooks"] == ["teleport_node_candidates"]
    for entry in listed.values():
        assert set(entry) >= {"distribution", "version", "status", "hooks", "services", "backends",
                              "session_storages", "audit_sinks", "commands"}
    text = run_cli("teleport", "plugins")
    assert "sqlite  teleport-core 0.1.0" in text.stdout and "backends: dir, sqlite" in text.stdout


def test_discovery_reads_installed_distributions(fake_site):
    make_distribution(fake_site, "teleport-good", "2.0.1", {"good": "good_plugin"}, {"good_plugin": GOOD})
    found = [ep for ep in entry_points("teleport", [str(fake_site)])]
    assert [(e.name, e.value, e.distribution, e.version) for e in found] == [
        ("good", "good_plugin", "teleport-good", "2.0.1")
    ]
    result = run_cli("teleport", "plugins", "--format=json", site=fake_site)
    good = {p["name"]: p for p in json.loads(result.stdout)}["good"]
    assert good == {**good, "distribution": "teleport-good", "version": "2.0.1", "status": "loaded",
                    "hooks": ["teleport_audit_sinks"], "audit_sinks": ["syslogish"]}


def test_broken_plugin_reported_by_distribution_without_traceback(fake_site, tmp_path):
    make_distribution(fake_site, "teleport-broken", "1.2.3", {"broken": "broken_plugin"},
                      {"broken_plugin": "import nonexistent_dependency_xyz\n"})
    listed = run_cli("teleport", "plugins", site=fake_site)
    assert listed.returncode == 1  # a script can tell a broken install
    assert "broken [BROKEN]  teleport-broken 1.2.3" in listed.stdout
    assert "error: failed to import: ModuleNotFoundError: No module named 'nonexistent_dependency_xyz'" in listed.stdout
    assert "to go on without it: pip uninstall teleport-broken, or set TELEPORT_DISABLE_PLUGINS=broken" in listed.stdout
    as_json = run_cli("teleport", "plugins", "--format=json", site=fake_site)
    assert as_json.returncode == 1
    entry = {p["name"]: p for p in json.loads(as_json.stdout)}["broken"]
    assert entry["fix"] == "pip uninstall teleport-broken, or set TELEPORT_DISABLE_PLUGINS=broken"
    config = tmp_path / "t.yaml"
    config.write_text("auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    started = run_cli("teleport", "start", "--config", str(config), site=fake_site)
    assert started.returncode == 1
    assert started.stderr.strip() == (
        'ERROR: plugin "teleport-broken" 1.2.3 (entry point "broken") is broken: failed to import: '
        "ModuleNotFoundError: No module named 'nonexistent_dependency_xyz' (to go on without it: "
        "pip uninstall teleport-broken, or set TELEPORT_DISABLE_PLUGINS=broken)"
    )
    assert "Traceback" not in started.stderr
    blocked = run_cli("teleport", "plugins", site=fake_site, env={"TELEPORT_DISABLE_PLUGINS": "broken"})
    assert blocked.returncode == 0 and "broken [DISABLED]" in blocked.stdout
    helped = run_cli("tsh", "--help", site=fake_site)  # other commands warn and go on
    assert helped.returncode == 0 and 'warning: plugin "teleport-broken" 1.2.3' in helped.stdout


def test_unknown_hook_is_reported_with_suggestion(fake_site):
    source = "from teleport_core import hookimpl\n\n@hookimpl\ndef teleport_servces():\n    return []\n"
    make_distribution(fake_site, "teleport-typo", "0.9", {"typo": "typo_plugin"}, {"typo_plugin": source})
    result = run_cli("teleport", "plugins", "--format=json", site=fake_site)
    typo = {p["name"]: p for p in json.loads(result.stdout)}["typo"]
    assert typo["status"] == "broken"
    assert typo["error"] == 'implements unknown hook teleport_servces (did you mean "teleport_services"?)'


def test_hook_with_unknown_argument_is_broken():
    class BadArgs:
        @hookimpl
        def teleport_cli_commands(self, tool, verbose):
            return []

    plugins = make_plugins(entry_points=False, extra=[], objects=[("badargs", BadArgs())])
    info = plugins.info_for("badargs")
    assert info.status == "broken"
    assert "cannot register" in info.error and "verbose" in info.error


def test_disable_plugins_by_name_or_distribution(fake_site, monkeypatch):
    make_distribution(fake_site, "teleport-good", "2.0.1", {"good": "good_plugin"}, {"good_plugin": GOOD})
    for blocked in ("good", "teleport-good", "other,good"):
        result = run_cli("teleport", "plugins", "--format=json", site=fake_site,
                         env={"TELEPORT_DISABLE_PLUGINS": blocked})
        good = {p["name"]: p for p in json.loads(result.stdout)}["good"]
        assert good["status"] == "disabled" and good["audit_sinks"] == []
    monkeypatch.setenv("TELEPORT_DISABLE_PLUGINS", "sqlite")
    plugins = make_plugins()
    assert plugins.info_for("sqlite").status == "disabled"
    assert "sqlite" not in plugins.backends()


def test_teleport_plugins_env_loads_modules(monkeypatch):
    monkeypatch.setenv("TELEPORT_PLUGINS", "tests.plugins.cli_demo")
    plugins = make_plugins()
    info = plugins.info_for("tests.plugins.cli_demo")
    assert info.status == "loaded" and info.hooks == ["teleport_cli_commands"]
    assert "hello" in plugins.cli_commands("tctl")


def test_each_factory_call_builds_a_fresh_manager():
    first, second = make_plugins(), make_plugins()
    assert first.pm is not second.pm


def test_first_distribution_on_path_wins(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_distribution(a, "teleport-dup", "1.0", {"dup": "dup_a"}, {"dup_a": GOOD})
    make_distribution(b, "teleport-dup", "2.0", {"dup": "dup_b"}, {"dup_b": GOOD})
    assert [(e.value, e.version) for e in entry_points("teleport", [str(a), str(b)])] == [("dup_a", "1.0")]


def test_a_name_a_broken_plugin_provides_names_that_plugin():
    """Asking for a backend of a broken plugin says which plugin and how to fix it, not just
    "unknown backend" (the real teleport-storage-etcd is installed here, so the broken one is built
    by hand)."""
    import pluggy

    from teleport_core.errors import UnknownNameError
    from teleport_core.plugins import PluginInfo, Plugins

    broken = PluginInfo("storage_etcd", "teleport-storage-etcd", "9.9", status="broken",
                        error="failed to import: RuntimeError: needs a newer httpx")
    plugins = Plugins(pluggy.PluginManager("teleport"), [broken])
    with pytest.raises(UnknownNameError) as raised:
        plugins.lookup("backend", "etcd", {})
    assert str(raised.value) == (
        'backend "etcd" is provided by plugin "teleport-storage-etcd" 9.9 (entry point "storage_etcd") is broken: '
        "failed to import: RuntimeError: needs a newer httpx (to go on without it: pip uninstall "
        "teleport-storage-etcd, or set TELEPORT_DISABLE_PLUGINS=storage_etcd)")


def test_an_unknown_name_lists_the_broken_plugins(fake_site, tmp_path):
    """``configure --test`` with a name no plugin provides lists the broken plugins that might."""
    make_distribution(fake_site, "teleport-mystery", "1.0", {"mystery": "mystery_plugin"},
                      {"mystery_plugin": "raise ImportError('no')\n"})
    config = tmp_path / "t.yaml"
    config.write_text("teleport:\n  storage:\n    type: lmdb\n"
                      "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    # the example teleport-storage-lmdb (examples/storage-lmdb) may be installed: block it
    tested = run_cli("teleport", "configure", "--test", str(config), site=fake_site,
                     env={"TELEPORT_DISABLE_PLUGINS": "storage_lmdb"})
    assert tested.returncode == 1
    assert 'unknown backend "lmdb"' in tested.stderr
    assert 'broken plugins, which may provide it: plugin "teleport-mystery" 1.0' in tested.stderr


BAD_FACTORY_PLUGIN = '''
from teleport_core import hookimpl
from teleport_core.specs import BackendSpec

@hookimpl
def teleport_storage_backends():
    return [BackendSpec(name="lmdb", factory="lmdb_impl:open_backend")]
'''


def test_a_factory_module_that_fails_names_plugin_module_key_and_fix(fake_site, tmp_path):
    """Any exception in a factory's module (here a RuntimeError at import, not an ImportError)
    is reported on one line with the plugin, the module, the config key and how to go on."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    make_distribution(fake_site, "teleport-lmdb", "0.3", {"lmdb": "lmdb_plugin"},
                      {"lmdb_plugin": BAD_FACTORY_PLUGIN, "lmdb_impl": "raise RuntimeError('liblmdb.so.0 missing')\n"})
    script = (
        "import asyncio, pathlib, sys\n"
        "from teleport_core.config.model import StorageConfig\n"
        "from teleport_core.plugins import make_plugins\n"
        "from teleport_core.resources import open_backend\n"
        "from teleport_core.errors import PluginError\n"
        "try:\n"
        "    asyncio.run(open_backend(make_plugins(), StorageConfig('lmdb', None), pathlib.Path(sys.argv[1])))\n"
        "except PluginError as exc:\n"
        "    print(exc)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": f"{fake_site}:{ROOT}",
           "TELEPORT_DISABLE_PLUGINS": "storage_lmdb"}  # the example teleport-storage-lmdb also provides "lmdb"
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                          check=False, timeout=60)
    assert done.stdout.strip() == (
        'plugin "teleport-lmdb" 0.3 (entry point "lmdb"): opening backend "lmdb" (teleport.storage.type): '
        "cannot import 'lmdb_impl' (from 'lmdb_impl:open_backend'): RuntimeError: liblmdb.so.0 missing "
        "(to go on without it: pip uninstall teleport-lmdb, or set TELEPORT_DISABLE_PLUGINS=lmdb)"), done.stderr


@pytest.mark.parametrize(("storage", "expected"), [
    ("audit_events_uri: ['file://var/log/teleport']",
     "teleport.storage.audit_events_uri: expected file:///absolute/directory"),
    ("audit_events_uri: ['file:///var/lib/teleport/log', 'stdout://x']",
     "teleport.storage.audit_events_uri: expected stdout:// (nothing after the slashes), got 'stdout://x'"),
    ("audit_events_uri: ['syslog://localhost']",
     'teleport.storage.audit_events_uri[0]: unknown audit sink "syslog"'),
    ("audit_sessions_uri: 's3://Bad_Bucket/x'", "is not a valid S3 bucket name"),
    ("audit_sessions_uri: 'file://relative'", "expected file:///absolute/directory"),
])
def test_configure_test_checks_audit_and_session_uris(tmp_path, storage, expected):
    """``teleport configure --test`` asks the plugin of each URI's scheme to check it, so a bad
    URI is found before ``teleport start``."""
    pytest.importorskip("teleport_audit_json")
    pytest.importorskip("teleport_storage_s3")
    config = tmp_path / "t.yaml"
    config.write_text(f"teleport:\n  data_dir: {tmp_path}\n  storage:\n    {storage}\n"
                      "auth_service: {enabled: yes}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    tested = run_cli("teleport", "configure", "--test", str(config))
    assert tested.returncode == 1
    assert expected in tested.stderr, tested.stderr
    good = tmp_path / "good.yaml"
    good.write_text(f"teleport:\n  data_dir: {tmp_path}\n  storage:\n    audit_events_uri: ['file://{tmp_path}/a']\n"
                    "auth_service: {enabled: yes}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    assert run_cli("teleport", "configure", "--test", str(good)).returncode == 0


def test_trace_hooks_logs_every_call_and_result(monkeypatch, caplog):
    """TELEPORT_TRACE_HOOKS=1 logs each hook call: through ``plugins.hook`` (with the plugins that
    run and the result) and through ``collect`` (per plugin); a Secret argument stays masked."""
    import logging

    from teleport_core.pki.secret import Secret
    from teleport_core.policy.access import LoginRequest
    from tests.conftest import kernel_plugins

    class Denier:
        @hookimpl
        def teleport_authenticate(self, request):
            raise ValueError("no logins on Sundays")

    monkeypatch.setenv("TELEPORT_TRACE_HOOKS", "1")
    caplog.set_level(logging.INFO, logger="teleport.hooks")
    plugins = kernel_plugins(Denier())
    plugins.backends()
    with pytest.raises(ValueError, match="Sundays"):
        plugins.hook.teleport_authenticate(request=LoginRequest("joe", Secret("hunter2-password")))
    text = "\n".join(str(record.msg) for record in caplog.records)
    assert "teleport_storage_backends" in text and "sqlite" in text  # collect: per plugin, with its result
    assert "teleport_authenticate" in text and "no logins on Sundays" in text
    assert "joe" in text and "hunter2" not in text
    monkeypatch.delenv("TELEPORT_TRACE_HOOKS")
    caplog.clear()
    kernel_plugins(Denier()).backends()
    assert not [r for r in caplog.records if r.name == "teleport.hooks"]


def test_a_leftover_egg_info_and_teleport_plugins_name_the_egg_info_and_the_fix(tmp_path):
    """The development loop of docs/writing-plugins.md: ``pip install -e .`` leaves
    ``<pkg>.egg-info`` in the plugin's folder, and ``pip uninstall`` leaves it there. With the folder
    on sys.path (``PYTHONPATH=.``) that egg-info looks installed, so ``TELEPORT_PLUGINS`` loads the
    same hook module a second time: the report names the egg-info and says to delete it."""
    folder = tmp_path / "teleport-good"
    info = folder / "good_pkg.egg-info"  # what setuptools writes for ``pip install -e .``
    info.mkdir(parents=True)
    (info / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: teleport-good\nVersion: 0.3.0\n\n")
    (info / "entry_points.txt").write_text("[teleport]\ngood = good_pkg.plugin\n")
    (folder / "good_pkg").mkdir()
    (folder / "good_pkg" / "__init__.py").write_text("")
    (folder / "good_pkg" / "plugin.py").write_text(GOOD)
    found = [e for e in entry_points("teleport", [str(folder)])]
    assert [(e.name, e.distribution, e.path) for e in found] == [("good", "teleport-good", str(info))]
    result = run_cli("teleport", "plugins", site=folder, env={"TELEPORT_PLUGINS": "good_pkg.plugin"})
    assert result.returncode == 1
    assert "good_pkg.plugin [BROKEN]" in result.stdout
    assert (f'error: its module is already loaded as plugin "teleport-good" 0.3.0 (entry point "good") ({info}); '
            "that .egg-info makes its folder look installed whenever the folder is on sys.path") in result.stdout
    assert f"delete it: rm -r {info}" in result.stdout
    assert "Plugin already registered" not in result.stdout  # not pluggy's dump of its registry
    as_json = {p["name"]: p for p in json.loads(run_cli("teleport", "plugins", "--format=json", site=folder).stdout)}
    assert as_json["good"]["location"] == str(info) and as_json["good"]["status"] == "loaded"
    # an older egg-info names a hook module that was renamed since: the fix names the leftover too
    (info / "entry_points.txt").write_text("[teleport]\ngood = good_pkg.hooks\n")
    stale = run_cli("teleport", "plugins", site=folder)
    assert stale.returncode == 1 and "No module named 'good_pkg.hooks'" in stale.stdout
    assert (f"to go on without it: pip uninstall teleport-good (if pip says it is not installed, delete the "
            f"leftover {info}), or set TELEPORT_DISABLE_PLUGINS=good") in stale.stdout


def test_an_installed_plugin_also_in_teleport_plugins_says_load_it_one_way(fake_site):
    make_distribution(fake_site, "teleport-good", "2.0.1", {"good": "good_plugin"}, {"good_plugin": GOOD})
    result = run_cli("teleport", "plugins", site=fake_site, env={"TELEPORT_PLUGINS": "good_plugin"})
    assert result.returncode == 1
    assert ('error: its module is already loaded as plugin "teleport-good" 2.0.1 (entry point "good") '
            f"({fake_site / 'teleport_good-2.0.1.dist-info'}); load it one way: drop it from TELEPORT_PLUGINS, "
            "or pip uninstall teleport-good") in result.stdout


def test_an_entry_point_name_used_twice_names_both_distributions(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_distribution(a, "teleport-one", "1.0", {"dup": "dup_one"}, {"dup_one": GOOD})
    make_distribution(b, "teleport-two", "2.0", {"dup": "dup_two"}, {"dup_two": GOOD.replace("syslogish", "other")})
    monkeypatch.syspath_prepend(str(b))
    monkeypatch.syspath_prepend(str(a))
    first, second = [i for i in make_plugins().infos if i.name == "dup"]
    assert first.status == "loaded" and second.status == "broken"
    assert second.error == (
        'entry point name "dup" is used twice: plugin "teleport-one" 1.0 (entry point "dup") has it too '
        f"({a / 'teleport_one-1.0.dist-info'}) (and this one: {b / 'teleport_two-2.0.dist-info'})")


BAD_OPTIONS_PLUGIN = """
from teleport_core import hookimpl
from teleport_core.specs import BackendSpec

@hookimpl
def teleport_storage_backends():
    return [BackendSpec(name="lmdb2", factory="x:y", parse_options="lmdb2_plugin:parse")]

def parse(reader):
    return {"size": int(reader.raw("map_size"))}  # a bug: raw None -> TypeError
"""


def test_a_failing_option_parser_names_plugin_key_and_fix(fake_site, tmp_path):
    """A backend's parse_options that raises (a bug, not a ConfigError) is reported on one line as
    that plugin's, with the section it was reading and how to go on without it."""
    make_distribution(fake_site, "teleport-lmdb2", "0.1", {"lmdb2": "lmdb2_plugin"},
                      {"lmdb2_plugin": BAD_OPTIONS_PLUGIN})
    config = tmp_path / "t.yaml"
    config.write_text("teleport:\n  storage:\n    type: lmdb2\n"
                      "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    tested = run_cli("teleport", "configure", "--test", str(config), site=fake_site)
    assert tested.returncode == 1 and "Traceback" not in tested.stderr
    line = tested.stderr.strip()
    assert line.startswith('ERROR: plugin "teleport-lmdb2" 0.1 (entry point "lmdb2"): reading the options of backend '
                           '"lmdb2" (teleport.storage) failed at '), line
    assert "lmdb2_plugin.py:" in line and "TypeError" in line
    assert line.endswith("(to go on without it: pip uninstall teleport-lmdb2, or set TELEPORT_DISABLE_PLUGINS=lmdb2)")
