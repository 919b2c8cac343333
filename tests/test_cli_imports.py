"""What the CLIs and services import: paramiko without invoke (teleport_core/net/noinvoke.py), and
``import invoke`` still working for anyone else afterwards. Each check runs in a fresh interpreter
with ``python -X importtime`` (this one may have imported anything already)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

#: the modules ``tsh ssh`` runs (its paramiko is imported by sshclient's functions) and every
#: service factory ``teleport start`` may build (the node's and the proxy's import paramiko)
IMPORT_AS_THE_CLIS_DO = """
import json, sys
import teleport_core.cli.tsh, teleport_core.cli.tctl, teleport_core.cli.teleport
import teleport_core.tsh.commands, teleport_core.tsh.sshclient
import paramiko
from teleport_core.plugins import make_plugins
from teleport_core.refs import resolve
for name, (info, spec) in make_plugins().services().items():
    resolve(spec.factory)
loaded_before = "invoke" in sys.modules
config_invoke = paramiko.config.invoke
parsed = paramiko.SSHConfig.from_text("Host node-1\\n  User alice\\n  Port 3022\\n").lookup("node-1")
import invoke
print(json.dumps({"loaded_before": loaded_before, "config_invoke": repr(config_invoke),
                  "services_with_paramiko": sorted(m for m in sys.modules if m.startswith(("teleport_node", "teleport_proxy"))
                                                   and "paramiko" in vars(sys.modules[m])),
                  "parsed": [parsed["user"], parsed["port"]], "invoke_run": callable(invoke.run),
                  "invoke_file": invoke.__file__}))
"""


def run(code: str) -> tuple[dict[str, Any], list[str]]:
    """Run ``code`` with ``-X importtime``: its JSON line and the names of the modules it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            timeout=120, check=False, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    imported = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    return json.loads(result.stdout), imported


def test_the_clis_and_services_import_paramiko_without_invoke_and_invoke_still_imports_after() -> None:
    got, imported = run(IMPORT_AS_THE_CLIS_DO)
    assert "paramiko.transport" in imported
    assert got["services_with_paramiko"], "no node or proxy module imported paramiko: the check checks nothing"
    assert got["loaded_before"] is False
    # (importtime lists the refused `import invoke` too, with nothing under it)
    assert not [name for name in imported[: imported.index("paramiko")] if name.startswith("invoke.")]
    assert "not imported for paramiko.config by teleport-py" not in got["config_invoke"]  # None: paramiko's own
    assert got["config_invoke"] == "None"
    assert got["parsed"] == ["alice", "3022"]  # SSHConfig itself works (only 'Match exec' needs invoke)
    # the later, ordinary `import invoke` found the real package
    assert "invoke.collection" in imported and got["invoke_run"] is True and str(got["invoke_file"]).endswith("__init__.py")


def test_match_exec_says_why_invoke_is_missing() -> None:
    code = """
import teleport_core, paramiko
config = paramiko.SSHConfig.from_text("Match exec true\\n  User bob\\n")
try:
    config.lookup("node-1")
except ImportError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "'Match exec' is not supported" in result.stdout


def test_invoke_imported_before_paramiko_is_the_one_paramiko_uses() -> None:
    got, imported = run("""
import json, invoke, teleport_core, paramiko
print(json.dumps({"same": paramiko.config.invoke is invoke}))
""")
    assert got == {"same": True}
    assert imported.index("invoke") < imported.index("paramiko")


def test_tsh_help_imports_neither_paramiko_nor_httpx() -> None:
    code = "import sys; from teleport_core.cli.tsh import main; sys.argv = ['tsh', '--help']; sys.exit(main())"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "teleport_core.cli.tsh" in imported
    assert not imported & {"paramiko", "invoke", "httpx", "importlib.abc"}
