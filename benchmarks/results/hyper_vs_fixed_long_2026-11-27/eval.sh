# The hyper model at its code search's best code against a fixed model fine-tuned at that code for as many
# steps as the hyper model's own fine-tuning (4,200: its last/ checkpoint), on three Mindboggle pairs that no
# choice was made on and on the brain pair (evaluation).
# Run from the repository root: bash benchmarks/results/hyper_vs_fixed_long_2026-11-27/eval.sh RUNS
# RUNS/fixed-best is the 4,200-step run (README.md here). Registrations and reports go to RUNS/eval.
set -u
runs="$1"
BRAIN_PAIR=1
PAIRS="02 05,06 07,08 09"
. benchmarks/eval_model_codes.sh
evaluate hyper-best --model brain-hyper-unet-spr --alpha-prime 0.34027570165633214 --lambda-max 0.577548405956182
evaluate fixed-best-4200 --model "$runs/fixed-best/last"
