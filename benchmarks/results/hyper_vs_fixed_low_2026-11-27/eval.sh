# brain-hyper-unet-spr-low at its code search's best code against a fixed model fine-tuned at that code from the
# same starting weights (brain-unet-spr-lowalpha) for 800 steps, and both at the fixed low-α′ model's code, on
# three Mindboggle pairs that no choice was made on and on the brain pair (evaluation).
# Run from the repository root: bash benchmarks/results/hyper_vs_fixed_low_2026-11-27/eval.sh RUNS
# RUNS/fixed-low-searched is the 800-step run (README.md here). Registrations and reports go to RUNS/eval.
set -u
runs="$1"
BRAIN_PAIR=1
PAIRS="02 05,06 07,08 09"
. benchmarks/eval_model_codes.sh
evaluate hyper-low-searched --model brain-hyper-unet-spr-low --alpha-prime 0.0026280900010606824 --lambda-max 1.0569922601095982
evaluate fixed-low-searched-800 --model "$runs/fixed-low-searched/last"
evaluate hyper-low-default --model brain-hyper-unet-spr-low
evaluate fixed-lowalpha --model brain-unet-spr-lowalpha
