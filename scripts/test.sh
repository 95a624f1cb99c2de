#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
# The tuning tests start a throwaway PostgreSQL server on loopback; install Debian's server if we can.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
    >/dev/null 2>&1 || echo "note: PostgreSQL could not be installed; its test will be skipped."
fi
# two worker processes (pytest-xdist; a test file stays in one worker), one thread each: the child processes many
# tests start run single-threaded, so one process left half of a 2-core machine idle (16 min there, 9 min so)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
# lint and type-check first (under a minute; settings in pyproject.toml [tool.ruff], [tool.mypy])
.venv/bin/ruff check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest -m "not slow" -n 2 --dist loadfile "$@"
