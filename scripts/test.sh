#!/usr/bin/env bash
# Run every check: lint, types, and the tests of the kernel, each plugin and the example plugin.
set -euo pipefail
BIN=${1:-.venv/bin}
cd "$(dirname "$0")/.."
echo "== ruff"; "$BIN/ruff" check .
echo "== mypy"; "$BIN/mypy"
echo "== pytest"
# Machine hygiene (docs/testing.md): where root's shell runs `pyenv init`, every root session the
# tests open (our node's, sshd's) rehashes under one lock file, and a shell killed mid-rehash leaves
# the lock behind: every later root session then waits 60 s for it and times out its test. While the
# tests run, a lock that no running pyenv-rehash holds, seen twice 2 s apart, is removed and reported.
shim_lock="${PYENV_ROOT:-$HOME/.pyenv}/shims/.pyenv-shim"
if [ -d "$(dirname "$shim_lock")" ]; then
  (
    seen=""
    while sleep 2; do
      if [ -e "$shim_lock" ] && ! pgrep -f libexec/pyenv-rehash >/dev/null; then
        if [ -n "$seen" ]; then
          rm -f "$shim_lock" && echo "test.sh: $(date -u +%H:%M:%S) removed a stale pyenv rehash lock" >&2
          seen=""
        else
          seen=1
        fi
      else
        seen=""
      fi
    done
  ) &
  watchdog=$!
  trap 'kill "$watchdog" 2>/dev/null || true' EXIT
fi
# Bytecode: where the environment sets PYTHONDONTWRITEBYTECODE (these machines do), nothing was
# cached, and each of the thousands of processes the tests start (`teleport start`, tsh, tctl)
# compiled the project's modules again, as each worker did every test module: 15-20% of the CPU
# of a test that runs the CLIs. The __pycache__ directories are git-ignored and never packaged.
unset PYTHONDONTWRITEBYTECODE
# Most tests wait on processes, sockets and timers, not the CPU: more workers than the two cores
# (TEST_WORKERS=0 runs them in this one process). --dist loadfile keeps a test file on one worker,
# so a module's cluster starts once; docs/testing.md says how tests stay parallel-safe. The queue
# of files is the collection order, where tests/conftest.py puts the files of `slow` tests first
# (xdist's default reorder, by number of tests, started the longest files last).
"$BIN/pytest" -q -p no:cacheprovider -n "${TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder \
  --durations=20 tests plugins/*/tests examples/*/tests "${@:2}"
