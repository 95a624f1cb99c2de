# The hyper model and fixed models fine-tuned at a grid of codes (α′ 0.0608, λ_max 0.5 / 1.057 / 3.35 / 8; and the
# control at α′ 0.175, λ_max 3.35), on the three Mindboggle validation pairs (mean Dice over the labels present in
# both maps, as svreg tune scores it) and on the brain pair (evaluation: --no-affine, mean Dice over all labels).
# Run from the repository root: bash benchmarks/results/hyper_vs_fixed_grid_2026-11-27/eval.sh RUNS
# RUNS holds the fine-tuning runs RUNS/run-NAME (svreg train ... --init brain-unet-spr, see README.md here);
# registrations and reports go to RUNS/eval.
set -u
runs="$1"
M=../shared/data/mindboggle_oasis20
B=../shared/data/brain_pair
SV=.venv/bin/svreg
run() {  # name, extra args...
  name=$1; shift
  for p in "01 03" "01 04" "03 04"; do
    set -- $p "$@"; f=$1; m=$2; shift 2
    $SV register $M/sub-$f/t1.nii.gz $M/sub-$m/t1.nii.gz -o "$runs/eval/$name-$f$m" --overwrite \
      --fixed-labels $M/sub-$f/labels.nii.gz --moving-labels $M/sub-$m/labels.nii.gz --progress none --outputs transform "$@" > /dev/null 2>&1 || echo "$name $f$m failed"
  done
  $SV register $B/fixed.nii.gz $B/moving.nii.gz -o "$runs/eval/$name-bp" --overwrite --no-affine \
    --fixed-labels $B/fixed_seg.nii.gz --moving-labels $B/moving_seg.nii.gz --progress none --outputs transform "$@" > /dev/null 2>&1 || echo "$name brain pair failed"
  .venv/bin/python -c "
import json
rs = [json.load(open(f'$runs/eval/$name-{p}/report.json'))['metrics'] for p in ('0103', '0104', '0304', 'bp')]
print('$name', ' '.join(f\"{r['dice_mean']:.4f}\" for r in rs[:3]), 'mean', f\"{sum(r['dice_mean'] for r in rs[:3])/3:.4f}\", 'folding', max(r['folding_percent'] for r in rs), 'sdlogj', f\"{sum(r['sdlogj'] for r in rs[:3])/3:.3f}\", 'brain-pair', f\"{rs[3]['dice_mean']:.4f}\")"
}
mkdir -p "$runs/eval"
for code in "l050 0.0608 0.5" "searched 0.0607878 1.05699" "l335 0.0608 3.35" "l800 0.0608 8.0" "own 0.175 3.35"; do
  set -- $code
  run hyper-$1 --model brain-hyper-unet-spr --alpha-prime $2 --lambda-max $3
  [ -d "$runs/run-$1/best" ] && run fixed-$1 --model "$runs/run-$1/best"
done
