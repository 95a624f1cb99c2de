# Mean Dice (labels present in both maps, as svreg tune scores it) of each model on the three Mindboggle
# validation pairs. Run from the repository root: bash benchmarks/results/hyper_vs_fixed_2026-11-26/eval.sh RUNS
# RUNS holds the two fine-tuning runs (RUNS/run-own, RUNS/run-searched, from svreg train ... --init brain-unet-spr);
# registrations and reports go to RUNS/eval.
set -u
runs="$1"
. benchmarks/eval_model_codes.sh
evaluate hyper-own --model brain-hyper-unet-spr
evaluate hyper-searched --model brain-hyper-unet-spr --alpha-prime 0.0607878 --lambda-max 1.05699
evaluate plain-shipped --model brain-unet-spr
evaluate fixed-own-ft --model "$runs/run-own/best"
evaluate fixed-searched-ft --model "$runs/run-searched/best"
