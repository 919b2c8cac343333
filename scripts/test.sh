#!/usr/bin/env bash
# Run every check: lint, types, and the tests of the kernel, each plugin and the example plugin.
set -euo pipefail
BIN=${1:-.venv/bin}
cd "$(dirname "$0")/.."
echo "== ruff"; "$BIN/ruff" check .
echo "== mypy"; "$BIN/mypy"
echo "== pytest"
# Most tests wait on processes, sockets and timers, not the CPU: more workers than the two cores
# (TEST_WORKERS=0 runs them in this one process). --dist loadfile keeps a test file on one worker,
# so a module's cluster starts once; docs/testing.md says how tests stay parallel-safe.
"$BIN/pytest" -q -p no:cacheprovider -n "${TEST_WORKERS:-4}" --dist loadfile --durations=20 \
  tests plugins/*/tests examples/*/tests "${@:2}"
