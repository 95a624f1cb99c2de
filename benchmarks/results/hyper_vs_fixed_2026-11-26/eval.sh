# Mean Dice (labels present in both maps, as svreg tune scores it) of each model on the three Mindboggle
# validation pairs. Run from the repository root: bash benchmarks/results/hyper_vs_fixed_2026-11-26/eval.sh RUNS
# RUNS holds the two fine-tuning runs (RUNS/run-own, RUNS/run-searched, from svreg train ... --init brain-unet-spr);
# registrations and reports go to RUNS/eval.
set -u
runs="$1"
M=../shared/data/mindboggle_oasis20
SV=.venv/bin/svreg
run() {  # name, extra args...
  name=$1; shift
  for p in "01 03" "01 04" "03 04"; do
    set -- $p "$@"; f=$1; m=$2; shift 2
    $SV register $M/sub-$f/t1.nii.gz $M/sub-$m/t1.nii.gz -o "$runs/eval/$name-$f$m" --overwrite \
      --fixed-labels $M/sub-$f/labels.nii.gz --moving-labels $M/sub-$m/labels.nii.gz --progress none --outputs transform "$@" > /dev/null 2>&1 || echo "$name $f$m failed"
  done
  .venv/bin/python -c "
import json, sys
rs = [json.load(open(f'$runs/eval/$name-{p}/report.json'))['metrics'] for p in ('0103', '0104', '0304')]
print('$name', ' '.join(f\"{r['dice_mean']:.4f}\" for r in rs), 'mean', f\"{sum(r['dice_mean'] for r in rs)/3:.4f}\", 'folding', max(r['folding_percent'] for r in rs), 'sdlogj', f\"{sum(r['sdlogj'] for r in rs)/3:.3f}\")"
}
mkdir -p "$runs/eval"
run hyper-own --model brain-hyper-unet-spr
run hyper-searched --model brain-hyper-unet-spr --alpha-prime 0.0607878 --lambda-max 1.05699
run plain-shipped --model brain-unet-spr
run fixed-own-ft --model "$runs/run-own/best"
run fixed-searched-ft --model "$runs/run-searched/best"
