#!/usr/bin/env bash
# Vendored browser libraries of the web UI (plugins/web/teleport_web/static/vendor/).
#
#   scripts/vendor-web.sh          fetch the pinned versions below with npm, check each tarball
#                                  against the registry's dist.integrity (sha512), copy the built
#                                  browser files and the licence, rewrite vendor/VERSIONS.json
#   scripts/vendor-web.sh --check  no network: the committed files match VERSIONS.json (sha256),
#                                  VERSIONS.json matches the pins below, no file is missing or extra,
#                                  every licence is one we accept (vendor/README.md is ours: kept)
#
# The pins are this block, and only this block: to move a library, edit its line and run the script.
# One line per package: npm name, exact version, folder under vendor/, files taken from the tarball
# (paths inside its package/ folder; each is copied under its base name).
set -euo pipefail

PINS='
@xterm/xterm            5.5.0   xterm                  lib/xterm.js css/xterm.css LICENSE
@xterm/addon-fit        0.10.0  xterm-addon-fit        lib/addon-fit.js LICENSE
@xterm/addon-web-links  0.11.0  xterm-addon-web-links  lib/addon-web-links.js LICENSE
asciinema-player        3.18.0  asciinema-player       dist/bundle/asciinema-player.min.js dist/bundle/asciinema-player.css LICENSE
'
LICENCES='MIT Apache-2.0'

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR=${VENDOR_WEB_DIR:-$ROOT/plugins/web/teleport_web/static/vendor}
export PINS LICENCES VENDOR

usage() { echo "usage: $0 [--check]" >&2; exit 2; }
case "${1-}" in
  "") mode=refresh ;;
  --check) mode=check ;;
  -h|--help) echo "usage: $0 [--check]"; exit 0 ;;
  *) echo "vendor-web: unknown argument '$1'" >&2; usage ;;
esac
[ $# -le 1 ] || { echo "vendor-web: one argument at most" >&2; usage; }

if [ "$mode" = check ]; then
  exec python3 - <<'PY'
import hashlib, json, os, sys
from pathlib import Path

vendor = Path(os.environ["VENDOR"])
pins = {line.split()[0]: line.split() for line in os.environ["PINS"].strip().splitlines()}
accepted = set(os.environ["LICENCES"].split())
problems: list[str] = []
try:
    recorded = json.loads((vendor / "VERSIONS.json").read_text())["packages"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"vendor-web --check: cannot read {vendor / 'VERSIONS.json'}: {exc}")
ours = {"VERSIONS.json", "README.md"}  # written by us, not taken from a tarball
listed = set(ours)
by_name = {package.get("name"): package for package in recorded}
for name in sorted(set(pins) - set(by_name)):
    problems.append(f"{name}: pinned in scripts/vendor-web.sh but not in VERSIONS.json (run the script)")
for name in sorted(set(by_name) - set(pins)):
    problems.append(f"{name}: in VERSIONS.json but not pinned in scripts/vendor-web.sh")
for name, package in sorted(by_name.items()):
    if name not in pins:
        continue
    _, version, folder, *sources = pins[name]
    if package.get("version") != version:
        problems.append(f"{name}: VERSIONS.json has {package.get('version')}, the pin is {version} (run the script)")
    if package.get("license") not in accepted:
        problems.append(f"{name}: licence {package.get('license')!r} is not one of {sorted(accepted)}")
    names = {entry["path"] for entry in package.get("files", [])}
    wanted = {f"{folder}/{os.path.basename(source)}" for source in sources}
    if names != wanted:
        problems.append(f"{name}: VERSIONS.json lists {sorted(names)}, the pin takes {sorted(wanted)}")
    if f"{folder}/LICENSE" not in names:
        problems.append(f"{name}: no LICENSE file")
    for entry in package.get("files", []):
        listed.add(entry["path"])
        path = vendor / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 {digest} differs from VERSIONS.json {entry['sha256']}")
for path in sorted(vendor.rglob("*")):
    relative = path.relative_to(vendor).as_posix()
    if path.is_file() and relative not in listed:
        problems.append(f"{relative}: not listed in VERSIONS.json")
if problems:
    print("vendor-web --check: FAILED", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    sys.exit(1)
print(f"vendor-web --check: {len(listed - ours)} files of {len(by_name)} packages match VERSIONS.json")
PY
fi

command -v npm >/dev/null || { echo "vendor-web: npm is needed to refresh (apt-get install -y npm)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
while read -r name version _; do
  [ -n "$name" ] || continue
  echo "vendor-web: $name@$version"
  npm view "$name@$version" dist.integrity license --json > "$WORK/$(echo "$name" | tr / _).view.json"
  (cd "$WORK" && npm pack --silent "$name@$version" > "$(echo "$name" | tr / _).file")
done <<< "$PINS"
export WORK
python3 - <<'PY'
import base64, hashlib, json, os, shutil, sys, tarfile
from pathlib import Path

work, vendor = Path(os.environ["WORK"]), Path(os.environ["VENDOR"])
accepted = set(os.environ["LICENCES"].split())
stage = work / "vendor"
stage.mkdir()
packages = []
for line in os.environ["PINS"].strip().splitlines():
    name, version, folder, *sources = line.split()
    key = name.replace("/", "_")
    view = json.loads((work / f"{key}.view.json").read_text())
    tarball = work / (work / f"{key}.file").read_text().strip()
    algorithm, _, expected = view["dist.integrity"].partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if algorithm != "sha512" or actual != expected:
        sys.exit(f"vendor-web: {name}@{version}: tarball {algorithm}-{actual} is not the registry's {view['dist.integrity']}")
    with tarfile.open(tarball) as archive:
        manifest = json.load(archive.extractfile("package/package.json"))
        if (manifest["name"], manifest["version"]) != (name, version):
            sys.exit(f"vendor-web: {tarball.name} holds {manifest['name']}@{manifest['version']}")
        licence = manifest.get("license")
        if licence not in accepted or licence != view["license"]:
            sys.exit(f"vendor-web: {name}@{version}: licence {licence!r} is not one of {sorted(accepted)}")
        files = []
        (stage / folder).mkdir()
        for source in sources:
            data = archive.extractfile(f"package/{source}").read()
            target = f"{folder}/{os.path.basename(source)}"
            (stage / target).write_bytes(data)
            files.append({"path": target, "from": source, "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()})
    scope, _, base = name.rpartition("/")
    packages.append({"name": name, "version": version, "license": licence,
                     "tarball": f"{name}/-/{base}-{version}.tgz", "integrity": view["dist.integrity"],
                     "files": files})
if (vendor / "README.md").is_file():
    shutil.copy(vendor / "README.md", stage / "README.md")
(stage / "VERSIONS.json").write_text(json.dumps(
    {"comment": "written by scripts/vendor-web.sh; 'tarball' is the path in the npm registry; do not edit",
     "packages": packages}, indent=2) + "\n")
if vendor.exists():
    shutil.rmtree(vendor)
vendor.parent.mkdir(parents=True, exist_ok=True)
shutil.copytree(stage, vendor)
total = sum(f["bytes"] for p in packages for f in p["files"])
print(f"vendor-web: wrote {vendor} ({len(packages)} packages, {total / 1024:.0f} kB)")
PY
