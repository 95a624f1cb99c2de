# brain-hyper-unet-spr-low at its code search's best code against a fixed model fine-tuned at that code from the
# same starting weights (brain-unet-spr-lowalpha) for 800 and for 3,600 steps (as long as the hyper model), and
# both at the fixed low-α′ model's code, on three Mindboggle pairs that no choice was made on and on the brain
# pair (evaluation).
# Run from the repository root: bash benchmarks/results/hyper_vs_fixed_low_2026-11-27/eval.sh RUNS [NAME ...]
# RUNS/fixed-low-searched is the 3,600-step run, RUNS/fixed-low-searched-800 a copy of its last/ after epoch 8
# (README.md here). NAME...: only these rows. Registrations and reports go to RUNS/eval.
set -u
runs="$1"; shift
only=" $* "
BRAIN_PAIR=1
PAIRS="02 05,06 07,08 09"
. benchmarks/eval_model_codes.sh
row() { if [ "$only" = "  " ] || [[ "$only" == *" $1 "* ]]; then evaluate "$@"; fi; }
row hyper-low-searched --model brain-hyper-unet-spr-low --alpha-prime 0.0026280900010606824 --lambda-max 1.0569922601095982
row fixed-low-searched-800 --model "$runs/fixed-low-searched-800"
row fixed-low-searched-3600 --model "$runs/fixed-low-searched/last"
row hyper-low-default --model brain-hyper-unet-spr-low
row fixed-lowalpha --model brain-unet-spr-lowalpha
