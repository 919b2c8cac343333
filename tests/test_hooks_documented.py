"""Every hook is documented in docs/hooks.md with its exact signature, and has a test.

Modelled on datasette's test that plugin hooks are documented and tested.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from teleport_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("teleport_"))


def signature_text(name: str) -> str:
    return f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")


def test_there_are_hooks():
    assert len(HOOKS) >= 14


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented_with_exact_signature(name):
    docs = (ROOT / "docs" / "hooks.md").read_text()
    assert f"### `{signature_text(name)}`" in docs


@pytest.mark.parametrize("name", HOOKS)
def test_first_result_semantics_are_stated(name):
    spec = getattr(hookspecs, name)
    first = spec.teleport_spec["firstresult"]
    assert ("First result wins" in (spec.__doc__ or "")) == first
    docs = (ROOT / "docs" / "hooks.md").read_text()
    section = docs.split(f"### `{signature_text(name)}`", 1)[1].split("\n### ", 1)[0]
    assert ("**First result wins.**" in section) == first


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name):
    assert f"test_hook_{name}" in _test_names()


@pytest.mark.parametrize("name", HOOKS)
def test_spec_docstring_says_arguments_and_return(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 80
    assert "Return" in doc or "return" in doc


def _section(name: str) -> str:
    docs = (ROOT / "docs" / "hooks.md").read_text()
    return docs.split(f"### `{signature_text(name)}`", 1)[1].split("\n### ", 1)[0]


@pytest.mark.parametrize("name", HOOKS)
def test_hook_doc_says_who_calls_it_and_where_its_types_live(name):
    """Each hook's section says which code calls it, in which process, and gives an import path
    for every type a plugin author needs; each of those imports works."""
    import importlib
    import re

    section = _section(name)
    assert "**Called by**" in section and "process" in section.split("**Types:**")[0]
    imports = re.findall(r"`from ([\w.]+) import ([\w, ]+)`", section.split("**Types:**", 1)[1])
    assert imports
    for module_name, names in imports:
        module = importlib.import_module(module_name)
        for attr in names.split(","):
            assert hasattr(module, attr.strip()), f"{module_name}.{attr.strip()} (docs/hooks.md, {name})"


def _call_site_tests() -> dict[str, list[str]]:
    """hook -> the tests marked ``@pytest.mark.hook_call_site(hook, ...)``."""
    found: dict[str, list[str]] = {}
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr == "hook_call_site"):
                    for arg in deco.args:
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                            found.setdefault(arg.value, []).append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_driven_through_its_real_call_site(name):
    """Besides its unit test, each hook has a test marked ``hook_call_site`` that runs a service
    (a ``teleport start`` process, or the process object with its services) with a plugin
    implementing the hook and checks what the service did with the result, through the CLI or the
    API, as datasette tests its hooks where they are called."""
    sites = _call_site_tests()
    assert set(sites) <= set(HOOKS), f"marked for unknown hooks: {sorted(set(sites) - set(HOOKS))}"
    assert sites.get(name), f"no test is marked @pytest.mark.hook_call_site({name!r})"
