#!/usr/bin/env bash
# Build every distribution as a wheel, install the wheels (not the checkout) into a fresh venv,
# and run the tests against them from a directory that holds no source: what users get.
# First teleport-core alone (it must work by itself), then everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT  # and any install still running (none left: kill fails, set -e must not end the trap)
DISTS=(. plugins/auth plugins/proxy plugins/node plugins/audit_json plugins/storage_s3 plugins/storage_etcd plugins/web
  examples/audit-sink-sqlite
  examples/access-request-webhook
  examples/storage-lmdb)

WORKERS=${TEST_WORKERS:-4}  # pytest-xdist workers, as in scripts/test.sh
SECONDS=0
stage() { echo "== $* (at ${SECONDS} s)"; }

"$PYTHON" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install -q build
# setuptools copies into build/lib and never removes what is gone from the source: a build/ left by
# an earlier build would put deleted modules in the wheel
for dist in "${DISTS[@]}"; do rm -rf "$dist/build"; done
# each build waits on its own isolated environment's install most of the time: four at once
printf '%s\n' "${DISTS[@]}" | xargs -P 4 -I{} "$WORK/build-venv/bin/python" -m build -q --wheel \
  --outdir "$WORK/wheels" {} >/dev/null
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

# The venvs install in the background (pip mostly waits on downloads and unpacking) while the
# tests of the one before run; `ready NAME` waits for one and shows pip's output if it failed.
declare -A INSTALLING
install_venv() {  # name, then pip install's arguments
  local name=$1; shift
  ("$PYTHON" -m venv "$WORK/$name" && "$WORK/$name/bin/pip" install -q "$@") > "$WORK/$name.log" 2>&1 &
  INSTALLING[$name]=$!
}
ready() {
  wait "${INSTALLING[$1]}" || { cat "$WORK/$1.log"; echo "wheels: installing the $1 venv failed"; exit 1; }
}
TEST_DEPS=(pytest pytest-timeout pytest-xdist httpx paramiko hypothesis schemathesis)
install_venv core "$WORK"/wheels/teleport_core-*.whl "${TEST_DEPS[@]}"
install_venv all "$WORK"/wheels/*.whl "${TEST_DEPS[@]}" "moto[server]>=5"
# what the README's "Install as a user" says (checked below)
install_venv user --find-links "$WORK/wheels" teleport-core teleport-auth teleport-proxy teleport-node teleport-web
install_venv laptop --find-links "$WORK/wheels" teleport-core

stage "teleport-core alone"
ready core
check_installed "$WORK/core"
(cd "$WORK/tree" && "$WORK/core/bin/teleport" plugins --format=json > /dev/null)
# what packaging can break with the kernel alone (`make test` ran the whole suite on the same code):
# every module imports without the plugins, the console scripts and their lazy imports, entry-point
# discovery, the pytest plugin, the hooks and their call sites in a real `teleport start`, the
# import graph and the moved aliases of the installed tree, the test extra, and the conformance
# suites run from the wheel against the kernel's own backend and session storage
CORE_TESTS=(tests/test_packaging.py tests/test_cli.py tests/test_plugins.py tests/test_pytest_plugin.py
  tests/test_hooks.py tests/test_hooks_documented.py tests/test_process.py tests/test_layout.py tests/test_moved.py
  tests/test_docs.py tests/test_backend_sqlite.py tests/test_file_sessions.py)
(cd "$WORK/tree" && "$WORK/core/bin/pytest" -q -p no:cacheprovider -n "$WORKERS" --dist loadfile "${CORE_TESTS[@]}")

stage "every distribution"
ready all
check_installed "$WORK/all"
# `make test` already ran every test on the checkout; here what packaging can break: the kernel's
# packaging tests above with every plugin installed (hook call sites, the plugins' import graphs,
# entry points), the kernel tests that read the plugins' config sections or start them by flags,
# each plugin's discovery and config tests, the conformance suites run against the installed
# backends and sinks, the example plugin, then one end-to-end run from the wheels: a cluster of
# installed plugins, tsh login and tsh ssh.
(cd "$WORK/tree" && "$WORK/all/bin/pytest" -q -p no:cacheprovider -n "$WORKERS" --dist loadfile \
  -m "not e2e and not slow" "${CORE_TESTS[@]}" tests/test_limits.py tests/test_teleport_start_flags.py \
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
stage "a user's install: pip install teleport-core teleport-auth teleport-proxy teleport-node teleport-web"
ready user
provides "$WORK/user" auth_service proxy_service ssh_service sqlite file stdout
# the web UI's templates and static files are in its wheel
"$WORK/user/bin/python" -c 'from importlib import resources; r = resources.files("teleport_web"); assert (r / "templates" / "base.html").is_file() and (r / "static" / "style.css").is_file()'

"$WORK/user/bin/pip" install -q --find-links "$WORK/wheels" teleport-storage-etcd teleport-storage-s3
provides "$WORK/user" etcd s3
stage "a laptop: pip install teleport-core (tsh only)"
ready laptop
(cd "$WORK" && "$WORK/laptop/bin/tsh" version && "$WORK/laptop/bin/tsh" --help > /dev/null)
provides "$WORK/laptop" sqlite
echo "wheels: every check passed in ${SECONDS} s"
