"""The three tools' shared behaviour: help, lazy imports, one-line errors, config errors at start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

HEAVY = ("yaml", "structlog", "starlette", "hypercorn", "cryptography", "paramiko", "asyncio", "importlib.metadata",
         "prometheus_client", "sqlite3")


@pytest.mark.parametrize("tool", ["teleport", "tctl", "tsh"])
def test_help_lists_commands(tool):
    result = run_cli(tool, "--help")
    assert result.returncode == 0
    assert "commands:" in result.stdout and "version" in result.stdout


@pytest.mark.parametrize("tool", ["teleport", "tsh"])
def test_help_imports_nothing_heavy(tool):
    """`--help` must stay fast (tsh runs per SSH connection): the heavy modules stay unimported.

    bench/cli_startup.py measures the wall time; this test guards the cause without timing.
    """
    code = (f"import sys; from teleport_core.cli.{tool} import main; main(['--help']); "
            "print('\\nMODULES=' + ','.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(result.stdout.split("MODULES=")[1].strip().split(","))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_version_formats():
    assert run_cli("tsh", "version").stdout.startswith("Teleport (teleport-py) v0.1.0")
    assert json.loads(run_cli("tctl", "version", "--format=json").stdout)["version"] == "0.1.0"


def test_unknown_command_and_bad_flag():
    result = run_cli("teleport", "strat")
    assert result.returncode == 1
    assert result.stderr.strip() == 'ERROR: unknown command "strat" (did you mean "start"?); run "teleport --help"'
    bad = run_cli("teleport", "plugins", "--format=xml")
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr


def test_missing_tctl_command_says_which_package():
    # teleport-auth provides "tctl tokens" when installed: take it away
    result = run_cli("tctl", "tokens", "ls", env={"TELEPORT_DISABLE_PLUGINS": "teleport-auth"})
    assert result.returncode == 1
    assert result.stderr.startswith('ERROR: "tctl tokens" comes from teleport-auth: ')


START_ERRORS = [
    ("teleport:\n  nodname: x\n", 'ERROR: teleport.nodname: unknown key (did you mean "nodename"?)'),
    ("teleport:\n  diag_addr: abc\n", 'ERROR: teleport.diag_addr: expected host:port, got "abc" (missing port)'),
    ("teleport:\n  storage: {type: etcd}\n",
     'ERROR: teleport.storage.type: backend "etcd" is not available: {hint} (installed: dir, sqlite)'),
    ("teleport:\n  storage: {type: postgres}\n",
     'ERROR: teleport.storage.type: unknown backend "postgres"; installed: dir, sqlite'),
]


@pytest.mark.parametrize(("text", "message"), START_ERRORS)
def test_start_with_bad_config_gives_one_line(tmp_path, monkeypatch, text, message):
    from teleport_core.plugins import install_hint

    # the etcd and example lmdb plugins may be installed (development) or not (teleport-core alone): block them
    env = {"TELEPORT_DISABLE_PLUGINS": "storage_etcd,storage_lmdb"}
    monkeypatch.setenv("TELEPORT_DISABLE_PLUGINS", "storage_etcd,storage_lmdb")
    message = message.replace("{hint}", install_hint("teleport-storage-etcd"))
    config = tmp_path / "teleport.yaml"
    config.write_text(text + "auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    result = run_cli("teleport", "start", "--config", str(config), env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == message
    tested = run_cli("teleport", "configure", "--test", str(config), env=env)
    assert tested.returncode == 1 and tested.stderr.strip() == message


def test_install_hint_says_install_unblock_or_upgrade(monkeypatch):
    from teleport_core.plugins import install_hint

    assert install_hint("teleport-no-such-plugin") == "pip install teleport-no-such-plugin"
    monkeypatch.setenv("TELEPORT_DISABLE_PLUGINS", "sqlite")
    assert install_hint("teleport-core") == "teleport-core is installed but disabled by TELEPORT_DISABLE_PLUGINS"
    monkeypatch.delenv("TELEPORT_DISABLE_PLUGINS")
    assert install_hint("pytest").startswith("pytest ")
    assert install_hint("pytest").endswith("is installed but does not provide it; upgrade: pip install -U pytest")


def test_start_flag_error_names_flag(tmp_path):
    config = tmp_path / "teleport.yaml"
    config.write_text("auth_service: {enabled: no}\nproxy_service: {enabled: no}\nssh_service: {enabled: no}\n")
    result = run_cli("teleport", "start", "--config", str(config), "--diag-addr", "nowhere")
    assert result.stderr.strip() == 'ERROR: --diag-addr: expected host:port, got "nowhere" (missing port)'


def test_configure_output_validates(tmp_path):
    result = run_cli("teleport", "configure", "--data-dir", str(tmp_path / "data"), "--cluster-name", "example.com")
    assert result.returncode == 0
    assert f"data_dir: {tmp_path / 'data'}" in result.stdout
    path = tmp_path / "teleport.yaml"
    path.write_text(result.stdout)
    tested = run_cli("teleport", "configure", "--test", str(path))
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.strip() == f"{path}: OK"


def test_debug_flag_shows_traceback(tmp_path):
    result = run_cli("teleport", "configure", "--test", str(tmp_path / "nope.yaml"), "-d")
    assert "Traceback" in result.stderr and "ERROR: " in result.stderr
