# The hyper model and fixed models fine-tuned at a grid of codes (α′ 0.0608, λ_max 0.5 / 1.057 / 3.35 / 8; and the
# control at α′ 0.175, λ_max 3.35), on the three Mindboggle validation pairs (mean Dice over the labels present in
# both maps, as svreg tune scores it) and on the brain pair (evaluation: --no-affine, mean Dice over all labels).
# Run from the repository root: bash benchmarks/results/hyper_vs_fixed_grid_2026-11-27/eval.sh RUNS
# RUNS holds the fine-tuning runs RUNS/run-NAME (svreg train ... --init brain-unet-spr, see README.md here);
# registrations and reports go to RUNS/eval.
set -u
runs="$1"
BRAIN_PAIR=1
. benchmarks/eval_model_codes.sh
for code in "l050 0.0608 0.5" "searched 0.0607878 1.05699" "l335 0.0608 3.35" "l800 0.0608 8.0" "own 0.175 3.35"; do
  set -- $code
  evaluate hyper-$1 --model brain-hyper-unet-spr --alpha-prime $2 --lambda-max $3
  [ -d "$runs/run-$1/best" ] && evaluate fixed-$1 --model "$runs/run-$1/best"
done
