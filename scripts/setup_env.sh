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
# torch, pinned first so the open range in pyproject installs nothing else. From PyPI on Linux this is the
# CUDA build (multi-GB; it runs on CPU too). For the small CPU-only build set
# SVREG_TORCH_INDEX to the URL of PyTorch's CPU wheel index (any pip index serving torch 2.13.0).
if [ -n "${SVREG_TORCH_INDEX:-}" ]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url "${SVREG_TORCH_INDEX}"
else
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
