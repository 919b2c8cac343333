"""Shared fixtures: fake installed distributions and a subprocess runner for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files holding a ``slow`` test first, each file's tests kept in order (a stable sort).

    Under ``--dist loadfile`` a worker takes the next file of the queue as it frees up
    (``scripts/test.sh`` passes ``--no-loadscope-reorder``: xdist's default queue, by number of
    tests, put the files of a few long tests last, and the run ended on them). Long files first,
    the many short ones fill the workers in at the end. Called with every collected item, whichever
    directory they come from (a conftest's collection hook is not limited to its directory).
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def make_distribution(site: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write an installed-looking distribution (dist-info + modules) into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[console_scripts]\nx = y:z\n\n[teleport]\n{lines}\n")
    for name, source in modules.items():
        path = site / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


@pytest.fixture
def fake_site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    return site


def run_cli(*args: str, site: Path | None = None, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m teleport_core.cli.<tool>`` in a subprocess, with ``site`` on PYTHONPATH."""
    tool, *rest = args
    full_env = {**os.environ, **(env or {})}
    paths = [str(site)] if site else []
    full_env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT)])
    return subprocess.run([sys.executable, "-m", f"teleport_core.cli.{tool}", *rest], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, check=False)


def kernel_plugins(*objects: object, extra: list[str] | None = None):
    """The kernel's built-in plugins plus test ``objects``, whatever else is installed."""
    from teleport_core.plugins import make_plugins
    from teleport_core.state import lookup_plugin
    from teleport_core.state.backends import file_sessions_plugin, sqlite_plugin

    builtins = [("sqlite", sqlite_plugin), ("file_sessions", file_sessions_plugin), ("node_lookup", lookup_plugin)]
    return make_plugins(entry_points=False, extra=extra or [],
                        objects=builtins + [(type(o).__name__, o) for o in objects])
