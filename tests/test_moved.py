"""The regrouped kernel: old import paths are aliases of the new modules, with a warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_an_old_import_path_is_the_new_module_with_a_deprecation_warning():
    script = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import teleport_core.state.audit as new\n"
        "try:\n"
        "    import teleport_core.audit\n"
        "except DeprecationWarning as w:\n"
        "    print('warned:', w)\n"
        "warnings.simplefilter('ignore')\n"
        "import teleport_core.audit as old\n"
        "from teleport_core.keys import generate_private_key\n"
        "from teleport_core.pki.keys import generate_private_key as new_gen\n"
        "import teleport_core.backends.sqlite as old_sqlite, teleport_core.state.backends.sqlite as new_sqlite\n"
        "print(old is new, generate_private_key is new_gen, old_sqlite is new_sqlite)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "warned: teleport_core.audit moved to teleport_core.state.audit; import it from there",
        "True True True",
    ]


def test_the_kernel_top_level_holds_only_the_kernel_proper():
    """The regrouping stays: a new module lands in a folder that says what it holds."""
    import teleport_core

    assert teleport_core.__file__ is not None
    top = sorted(p.name for p in Path(teleport_core.__file__).parent.iterdir() if p.suffix == ".py")
    assert top == ["__init__.py", "_moved.py", "datadir.py", "discovery.py", "errors.py", "files.py",
                   "hookspecs.py", "logs.py", "metrics.py", "plugins.py", "process.py", "refs.py",
                   "resources.py", "service.py", "specs.py", "suggest.py", "webui.py"]
