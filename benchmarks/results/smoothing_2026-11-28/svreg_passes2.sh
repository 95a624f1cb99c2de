#!/bin/bash
# Experiment only (run from the repository root): `svreg register` with the 2-pass candidate preset file.
if [ "$1" = "register" ]; then exec .venv/bin/svreg register --preset benchmarks/results/smoothing_2026-11-28/candidate.json "${@:2}"; fi
exec .venv/bin/svreg "$@"
