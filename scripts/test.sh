#!/usr/bin/env bash
# Run every check: lint, types, and the tests of the kernel, each plugin and the example plugin.
set -euo pipefail
BIN=${1:-.venv/bin}
cd "$(dirname "$0")/.."
echo "== ruff"; "$BIN/ruff" check .
echo "== mypy"; "$BIN/mypy"
echo "== pytest"
"$BIN/pytest" -q -p no:cacheprovider tests plugins/*/tests examples/*/tests "${@:2}"
