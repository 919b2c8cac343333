#!/usr/bin/env bash
# Build every distribution as a wheel, install the wheels (not the checkout) into a fresh venv,
# and run the tests against them from a directory that holds no source: what users get.
# First teleport-core alone (it must work by itself), then everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DISTS=(. plugins/auth plugins/proxy plugins/node plugins/audit_json plugins/storage_s3 plugins/storage_etcd plugins/web
  examples/audit-sink-sqlite
  examples/storage-lmdb)

"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install -q build
for dist in "${DISTS[@]}"; do
  "$WORK/build-venv/bin/python" -m build -q --wheel --outdir "$WORK/wheels" "$dist" >/dev/null
done
ls "$WORK/wheels"

# the tests, docs and test plugins, without any package source beside them
mkdir -p "$WORK/tree/plugins" "$WORK/tree/examples"
cp -r tests docs "$WORK/tree/"
for dist in plugins/*/; do mkdir -p "$WORK/tree/$dist" && cp -r "$dist/tests" "$WORK/tree/$dist"; done
cp -r examples "$WORK/tree/"  # the guide quotes these files (tests/test_docs.py)
cp pyproject.toml "$WORK/tree/"  # pytest settings only; the [project] table is not installed from here

check_installed() {  # the code under test must come from site-packages, not the checkout
  (cd "$WORK/tree" && "$1/bin/python" -c "import teleport_core, sys; p = teleport_core.__file__; print('teleport_core from', p); sys.exit('site-packages' not in p)")
}

echo "== teleport-core alone"
"$PYTHON" -m venv "$WORK/core"
"$WORK/core/bin/pip" install -q "$WORK"/wheels/teleport_core-*.whl pytest pytest-timeout httpx paramiko hypothesis \
  schemathesis
check_installed "$WORK/core"
(cd "$WORK/tree" && "$WORK/core/bin/teleport" plugins --format=json > /dev/null)
(cd "$WORK/tree" && "$WORK/core/bin/pytest" -q -p no:cacheprovider tests)

echo "== every distribution"
"$PYTHON" -m venv "$WORK/all"
"$WORK/all/bin/pip" install -q "$WORK"/wheels/*.whl pytest pytest-timeout httpx paramiko hypothesis schemathesis \
  "moto[server]>=5"
check_installed "$WORK/all"
# `make test` already ran every test on the checkout; here what packaging can break: the kernel's
# suite with every plugin installed (hook call sites, layout: every module imports from the
# installed tree), each plugin's discovery and config tests, the conformance suites run against
# the installed backends and sinks, the example plugin, then one end-to-end run from the wheels:
# a cluster of installed plugins, tsh login and tsh ssh.
(cd "$WORK/tree" && "$WORK/all/bin/pytest" -q -p no:cacheprovider -m "not e2e and not slow" tests \
  plugins/*/tests/test_*plugin.py plugins/*/tests/test_*conformance.py plugins/storage_s3/tests/test_storage_s3.py \
  examples/*/tests)
(cd "$WORK/tree" && "$WORK/all/bin/pytest" -q -p no:cacheprovider plugins/proxy/tests/test_login_without_otp.py)

# What the README's "Install as a user" says, exactly: the distributions by name (found among the
# built wheels; their dependencies from the package index), then `teleport plugins` (non-zero
# when any plugin is broken) and the services each set must bring.
provides() {  # venv, then what `teleport plugins --format=json` must list
  local venv=$1; shift
  (cd "$WORK" && "$venv/bin/teleport" plugins --format=json) | "$venv/bin/python" -c '
import json, sys
listed = json.load(sys.stdin)
have = {name for p in listed for key in ("services", "backends", "session_storages", "audit_sinks") for name in p[key]}
missing = set(sys.argv[1:]) - have
sys.exit(f"missing after the install: {sorted(missing)}" if missing else 0)' "$@"
}
echo "== a user's install: pip install teleport-core teleport-auth teleport-proxy teleport-node teleport-web"
"$PYTHON" -m venv "$WORK/user"
"$WORK/user/bin/pip" install -q --find-links "$WORK/wheels" teleport-core teleport-auth teleport-proxy teleport-node \
  teleport-web
provides "$WORK/user" auth_service proxy_service ssh_service sqlite file stdout
# the web UI's templates and static files are in its wheel
"$WORK/user/bin/python" -c 'from importlib import resources; r = resources.files("teleport_web"); assert (r / "templates" / "base.html").is_file() and (r / "static" / "style.css").is_file()'

"$WORK/user/bin/pip" install -q --find-links "$WORK/wheels" teleport-storage-etcd teleport-storage-s3
provides "$WORK/user" etcd s3
echo "== a laptop: pip install teleport-core (tsh only)"
"$PYTHON" -m venv "$WORK/laptop"
"$WORK/laptop/bin/pip" install -q --find-links "$WORK/wheels" teleport-core
(cd "$WORK" && "$WORK/laptop/bin/tsh" version && "$WORK/laptop/bin/tsh" --help > /dev/null)
provides "$WORK/laptop" sqlite
echo "wheels: every check passed"
