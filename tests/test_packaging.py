"""What a wheel can break that the other tests would only see by chance: every module of the
kernel imports. ``scripts/wheels.sh`` runs this against teleport-core installed alone (no
plugin, only the declared dependencies and the test extra), so a module that needs a plugin or an
undeclared dependency, or a subpackage left out of the wheel, fails here by name."""

from __future__ import annotations

import json
import subprocess
import sys

import teleport_core

#: walks the installed package in a fresh interpreter (an import's side effects stay out of this one)
IMPORT_ALL = """
import importlib, json, pkgutil, sys, warnings
import teleport_core
warnings.simplefilter("ignore")  # the moved modules' aliases warn by design (tests/test_moved.py)
failed = {}
def note(name):
    failed[name] = repr(sys.exc_info()[1])
names = [m.name for m in pkgutil.walk_packages(teleport_core.__path__, "teleport_core.", onerror=note)]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps({"file": teleport_core.__file__, "modules": names, "failed": failed}))
"""


def test_every_kernel_module_imports() -> None:
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["file"] == teleport_core.__file__  # the same installation as this test's
    assert report["failed"] == {}
    # the kernel's folders are all there (docs/architecture.md)
    folders = {name.split(".")[1] for name in report["modules"]}
    assert {"pki", "policy", "state", "net", "api", "config", "cli", "tsh", "testing", "recording"} <= folders
