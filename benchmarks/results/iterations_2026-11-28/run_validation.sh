#!/usr/bin/env bash
# Iterations of the brain-mri pyramid (4 mm, 2 mm) on the Mindboggle validation pairs, step 3 (the preset's).
# Run from the repository root: bash benchmarks/results/iterations_2026-11-28/run_validation.sh
set -euo pipefail
here=benchmarks/results/iterations_2026-11-28
for iters in "80 50" "80 40" "60 50" "60 40"; do
  t="${iters// /-}"
  for pair in "01 02" "03 04" "05 06"; do
    .venv/bin/python benchmarks/cohort.py --subjects $pair --variants pairwise \
      --extra="--iterations $iters" --tag "it$t-${pair// /}"
  done
done
mv benchmarks/results/cohort_*_it*-*.{json,md} "$here"/
