"""``scripts/vendor-web.sh``: the vendored browser libraries are the files VERSIONS.json names.

Network-free: ``--check`` runs with a PATH that holds only bash, dirname and python3 (no npm, no
curl); the refresh runs against an ``npm`` stand-in serving tarballs the test builds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "vendor-web.sh"
VENDOR = REPO / "plugins" / "web" / "teleport_web" / "static" / "vendor"
if not SCRIPT.exists():  # the wheel test's tree holds the tests, not the checkout's scripts
    pytest.skip("scripts/vendor-web.sh is not beside these tests", allow_module_level=True)


def check(tmp_path: Path, vendor: Path = VENDOR, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the script (``--check`` unless ``args``) with no network tool on PATH."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        for tool in ("bash", "dirname"):
            found = shutil.which(tool)
            assert found, f"{tool} is needed"
            (bin_dir / tool).symlink_to(found)
        (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())  # the interpreter, not a shim
    env = {"PATH": str(bin_dir), "VENDOR_WEB_DIR": str(vendor), "HOME": str(tmp_path)}
    return subprocess.run([str(bin_dir / "bash"), str(SCRIPT), *(args or ("--check",))], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def versions() -> list[dict]:
    return list(json.loads((VENDOR / "VERSIONS.json").read_text())["packages"])


def test_committed_files_match_versions_json(tmp_path):
    result = check(tmp_path)
    assert result.returncode == 0, result.stderr
    files = sum(len(package["files"]) for package in versions())
    assert f"{files} files of 4 packages match VERSIONS.json" in result.stdout


def test_pinned_packages_and_licences():
    packages = {package["name"]: package for package in versions()}
    assert sorted(packages) == ["@xterm/addon-fit", "@xterm/addon-web-links", "@xterm/xterm", "asciinema-player"]
    assert packages["@xterm/xterm"]["version"].startswith("5.")
    assert packages["asciinema-player"]["version"].startswith("3.")
    for package in packages.values():
        assert package["integrity"].startswith("sha512-")
        assert package["license"] in ("MIT", "Apache-2.0")
        folder = package["files"][0]["path"].split("/")[0]
        licence = (VENDOR / folder / "LICENSE").read_text()
        assert ("Apache License" in licence) == (package["license"] == "Apache-2.0")
        assert ("Permission is hereby granted, free of charge" in licence) == (package["license"] == "MIT")


def _edit_byte(vendor: Path) -> None:
    path = vendor / "xterm" / "xterm.js"
    data = bytearray(path.read_bytes())
    data[1000] ^= 1
    path.write_bytes(bytes(data))


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(vendor: Path) -> None:
        document = json.loads((vendor / "VERSIONS.json").read_text())
        change(document)
        (vendor / "VERSIONS.json").write_text(json.dumps(document))
    return edit


def _set_version(document: dict) -> None:
    document["packages"][3]["version"] = "3.17.0"


def _set_licence(document: dict) -> None:
    document["packages"][0]["license"] = "GPL-3.0-only"


def _drop_package(document: dict) -> None:
    del document["packages"][1]


@pytest.mark.parametrize(("edit", "message"), [
    (_edit_byte, "xterm/xterm.js: sha256 "),
    (lambda vendor: (vendor / "asciinema-player" / "asciinema-player.css").unlink(),
     "asciinema-player/asciinema-player.css: missing"),
    (lambda vendor: (vendor / "xterm" / "xterm.js.map").write_text("{}"), "xterm/xterm.js.map: not listed"),
    (lambda vendor: (vendor / "xterm-addon-fit" / "LICENSE").write_text("MIT\n"), "xterm-addon-fit/LICENSE: sha256 "),
    (_edit_json(_set_version), "asciinema-player: VERSIONS.json has 3.17.0, the pin is 3.18.0"),
    (_edit_json(_set_licence), "@xterm/xterm: licence 'GPL-3.0-only' is not one of"),
    (_edit_json(_drop_package), "@xterm/addon-fit: pinned in scripts/vendor-web.sh but not in VERSIONS.json"),
    (lambda vendor: (vendor / "VERSIONS.json").write_text("{not json"), "cannot read"),
], ids=["edited", "missing", "extra", "licence-edited", "version", "licence", "unlisted-pin", "bad-json"])
def test_check_fails_on_a_changed_tree(tmp_path, edit, message):
    vendor = tmp_path / "vendor"
    shutil.copytree(VENDOR, vendor)
    assert check(tmp_path, vendor).returncode == 0
    edit(vendor)
    result = check(tmp_path, vendor)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("--chek",), ("--check", "extra")])
def test_bad_arguments_are_refused(tmp_path, args):
    result = check(tmp_path, VENDOR, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "unknown argument '--chek'" in result.stderr or "one argument at most" in result.stderr


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


FAKE_NPM = """#!PYTHON
# npm stand-in: `npm view NAME@VERSION dist.integrity license --json` and `npm pack --silent NAME@VERSION`
# answer from the tarballs and metadata the test wrote to $FAKE_NPM_DIR.
import json, os, shutil, sys
folder = os.environ["FAKE_NPM_DIR"]
args = sys.argv[1:]
spec = next(arg for arg in args[1:] if "@" in arg[1:])
key = spec.replace("/", "_")
if args[0] == "view":
    print(open(os.path.join(folder, key + ".json")).read())
elif args[0] == "pack":
    shutil.copy(os.path.join(folder, key + ".tgz"), os.getcwd())
    print(key + ".tgz")
else:
    sys.exit("fake npm: " + " ".join(args))
"""


def fake_registry(tmp_path: Path, licence: str = "", bad_integrity: str = "") -> dict[str, str]:
    """Tarballs of the pinned packages holding the committed files, and an ``npm`` on PATH that
    serves them: the environment for a refresh with no network."""
    registry = tmp_path / "registry"
    registry.mkdir()
    for package in versions():
        key = f"{package['name']}@{package['version']}".replace("/", "_")
        manifest = {"name": package["name"], "version": package["version"],
                    "license": licence if licence and package["name"] == "@xterm/xterm" else package["license"]}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            members = [("package/package.json", json.dumps(manifest).encode())]
            members += [(f"package/{entry['from']}", (VENDOR / entry["path"]).read_bytes()) for entry in package["files"]]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        (registry / f"{key}.tgz").write_bytes(buffer.getvalue())
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(buffer.getvalue()).digest()).decode()
        if bad_integrity == package["name"]:
            integrity = integrity[:-6] + "AAAAA="
        (registry / f"{key}.json").write_text(json.dumps({"dist.integrity": integrity, "license": manifest["license"]}))
    check(tmp_path, VENDOR)  # makes bin/
    npm = tmp_path / "bin" / "npm"
    npm.write_text(FAKE_NPM.replace("PYTHON", str(Path(sys.executable).resolve())))
    npm.chmod(0o755)
    for tool in ("mktemp", "rm", "tr"):
        (tmp_path / "bin" / tool).symlink_to(shutil.which(tool) or tool)
    return {"PATH": str(tmp_path / "bin"), "FAKE_NPM_DIR": str(registry), "HOME": str(tmp_path)}


def refresh(env: dict[str, str], vendor: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False,
                          env={**env, "VENDOR_WEB_DIR": str(vendor)})


def test_refresh_writes_the_pinned_files_and_versions_json(tmp_path):
    vendor = tmp_path / "vendor"
    shutil.copytree(VENDOR, vendor)
    (vendor / "xterm" / "old-file.js").write_text("gone after a refresh")
    result = refresh(fake_registry(tmp_path), vendor)
    assert result.returncode == 0, result.stderr
    assert "4 packages" in result.stdout
    for package in versions():
        for entry in package["files"]:
            assert (vendor / entry["path"]).read_bytes() == (VENDOR / entry["path"]).read_bytes()
    assert not (vendor / "xterm" / "old-file.js").exists()
    assert (vendor / "README.md").read_text() == (VENDOR / "README.md").read_text()  # ours: kept
    written = json.loads((vendor / "VERSIONS.json").read_text())["packages"]
    assert [(p["name"], p["version"], p["files"]) for p in written] == [
        (p["name"], p["version"], p["files"]) for p in versions()]
    assert check(tmp_path, vendor).returncode == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bad_integrity": "asciinema-player"}, "asciinema-player@3.18.0: tarball sha512-"),
    ({"licence": "GPL-3.0-only"}, "@xterm/xterm@5.5.0: licence 'GPL-3.0-only' is not one of"),
], ids=["integrity", "licence"])
def test_refresh_refuses_a_bad_tarball_and_leaves_the_files(tmp_path, kwargs, message):
    vendor = tmp_path / "vendor"
    shutil.copytree(VENDOR, vendor)
    before = {path: path.read_bytes() for path in vendor.rglob("*") if path.is_file()}
    result = refresh(fake_registry(tmp_path, **kwargs), vendor)
    assert result.returncode == 1
    assert message in result.stderr
    assert {path: path.read_bytes() for path in vendor.rglob("*") if path.is_file()} == before
