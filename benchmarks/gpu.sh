#!/usr/bin/env bash
# GPU benchmark of the 1 mm brain pair: pairwise SPR and the learned model on CUDA (see benchmarks/gpu.py).
# Usage: bash benchmarks/gpu.sh [--pair DIR] [--runs N] [--model NAME_OR_CHECKPOINT ...] [--cpu-threads N ...]
#        [--no-deterministic]
# Runs with the main venv's python when there is one, else with python3 (a machine with torch+CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$python" benchmarks/gpu.py "$@"
