# Sourced by the eval.sh scripts of benchmarks/results/hyper_vs_fixed_*: defines `evaluate NAME [svreg register
# options...]`, which registers the three Mindboggle validation pairs (01→03, 01→04, 03→04; native spaces, affine
# stage) and, when BRAIN_PAIR=1, the brain pair (evaluation: --no-affine) with those options, then prints one line:
# the pairs' mean Dice over the labels present in both maps (as svreg tune scores it), their mean, the largest
# folding percent, the mean SDlogJ and, with BRAIN_PAIR=1, the brain pair's mean Dice over all labels.
# PAIRS="02 05,04 06,..." (fixed then moving subject, comma-separated) registers other Mindboggle pairs instead.
# Needs: $runs (registrations and reports go to $runs/eval); run from the repository root.
M=../shared/data/mindboggle_oasis20
B=../shared/data/brain_pair
SV=.venv/bin/svreg
BRAIN_PAIR=${BRAIN_PAIR:-0}
PAIRS=${PAIRS:-01 03,01 04,03 04}
evaluate() {
  local name=$1; shift
  mkdir -p "$runs/eval"
  local p pairs=()
  IFS=, read -ra pairs <<< "$PAIRS"
  for p in "${pairs[@]}"; do
    set -- $p "$@"; local f=$1 m=$2; shift 2
    $SV register $M/sub-$f/t1.nii.gz $M/sub-$m/t1.nii.gz -o "$runs/eval/$name-$f$m" --overwrite \
      --fixed-labels $M/sub-$f/labels.nii.gz --moving-labels $M/sub-$m/labels.nii.gz --progress none \
      --outputs transform "$@" > /dev/null 2>&1 || echo "$name $f$m failed"
  done
  if [ "$BRAIN_PAIR" = 1 ]; then
    $SV register $B/fixed.nii.gz $B/moving.nii.gz -o "$runs/eval/$name-bp" --overwrite --no-affine \
      --fixed-labels $B/fixed_seg.nii.gz --moving-labels $B/moving_seg.nii.gz --progress none --outputs transform \
      "$@" > /dev/null 2>&1 || echo "$name brain pair failed"
  fi
  .venv/bin/python - "$runs/eval" "$name" "$BRAIN_PAIR" "$PAIRS" <<'PY'
import json, sys
folder, name, brain_pair = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
pairs = [p.replace(" ", "") for p in sys.argv[4].split(",")]
rs = [json.load(open(f"{folder}/{name}-{p}/report.json"))["metrics"] for p in pairs]
bp = json.load(open(f"{folder}/{name}-bp/report.json"))["metrics"] if brain_pair else None
line = [name, *(f"{r['dice_mean']:.4f}" for r in rs), "mean", f"{sum(r['dice_mean'] for r in rs) / len(rs):.4f}",
        "folding", str(max(r["folding_percent"] for r in rs + ([bp] if bp else []))),
        "sdlogj", f"{sum(r['sdlogj'] for r in rs) / len(rs):.3f}"]
print(" ".join(line + (["brain-pair", f"{bp['dice_mean']:.4f}"] if bp else [])))
PY
}
