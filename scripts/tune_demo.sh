#!/usr/bin/env bash
# Tune the SPR hyperparameters (α′, λ_max) on a tiny demo validation set, then write a report and the
# best parameters as a preset file (searched values only: the quick settings below stay in the study).
#
# The validation set is built from data bundled with nilearn (MNI152 template + grey/white-matter maps
# at 6 mm, moving images deformed by known smooth fields): nothing is downloaded. Needs the "demo" extra.
#
# Usage: bash scripts/tune_demo.sh [OUTDIR] [N_TRIALS]       (defaults: tune-demo, 12)
# Re-running resumes the same study; run it in two terminals at once and the workers share the trials.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-tune-demo}"        # relative to the current folder
n_trials="${2:-12}"
py="$root/.venv/bin/python"
[ -x "$py" ] || py=python3
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -d "$out/validation" ]; then
  "$py" - "$out/validation" <<'PY'
import sys
from svreg_core.tuning.demo import make_demo_pairs
for p in make_demo_pairs(sys.argv[1], n_pairs=2):
    print("demo pair:", p)
PY
fi

"$py" -m svreg_core.cli tune "$out/validation" --storage "$out/study.db" --study-name demo --n-trials "$n_trials" \
  --seed 0 --level-spacings 12 6 --iterations 20 20 --no-affine \
  --report "$out/report" --apply-best "$out/tuned-preset.json"

echo "report:  $out/report/summary.md"
echo "preset:  $out/tuned-preset.json  (svreg register --preset $out/tuned-preset.json ...)"
