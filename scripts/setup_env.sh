#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with svreg_core and its extras.
# Usage: bash scripts/setup_env.sh [EXTRAS]   (EXTRAS e.g. "test" or "demo"; default "demo")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch: pinned CPU build first, so the open range in pyproject installs nothing larger.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
