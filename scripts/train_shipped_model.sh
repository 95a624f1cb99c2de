#!/usr/bin/env bash
# Train a shipped model from synthetic data only and install it into the package.
# Usage: [MODEL=brain-unet-spr|brain-unet-spr-lowalpha|brain-hyper-unet-spr|brain-hyper-unet-spr-low] \
#        bash scripts/train_shipped_model.sh [RUN_DIR]
#        (configuration scripts/$MODEL.yaml; default run folder runs/$MODEL; resumable)
# On a GPU machine: DEVICE=cuda WORKERS=13 bash scripts/train_shipped_model.sh (the synthesis workers bound the speed)
# INIT=brain-unet-spr starts from that checkpoint's weights (a shipped model's name or a checkpoint folder):
# continues training a shipped model in a new run folder; FRESH=lambda_head (with INIT) gives that submodule a
# fresh initialisation instead of the checkpoint's weights (svreg train --init-fresh)
# Needs ../shared/data/synthseg_label_maps (SynthSeg's 20 training label maps, Apache-2.0).
set -euo pipefail
# a relative RUN_DIR, SYNTHSEG_LABEL_MAPS or INIT checkpoint folder is taken from the folder the command is run in
run="${1:-}"
if [ -n "$run" ] && [ "${run#/}" = "$run" ]; then run="$PWD/$run"; fi
labels="${SYNTHSEG_LABEL_MAPS:-}"
if [ -n "$labels" ] && [ "${labels#/}" = "$labels" ]; then labels="$PWD/$labels"; fi
if [ -n "${INIT:-}" ] && [ "${INIT#/}" = "$INIT" ] && [ -e "$INIT" ]; then INIT="$PWD/$INIT"; fi  # not a model name
cd "$(dirname "$0")/.."
model="${MODEL:-brain-unet-spr}"
run="${run:-runs/$model}"
labels="${labels:-../shared/data/synthseg_label_maps}"
bash scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
.venv/bin/svreg train --config "scripts/$model.yaml" --synthetic "$labels" -o "$run" --device "${DEVICE:-auto}" --workers "${WORKERS:-1}" \
  ${INIT:+--init "$INIT"} ${FRESH:+--init-fresh $FRESH}
.venv/bin/python scripts/install_model.py "$run/best" "$model" \
  --data "SynthMorph-style same-map pairs synthesised from the 20 SynthSeg training label maps (Apache-2.0), one shared random contrast per pair" \
  --command "${INIT:+INIT=$INIT }${FRESH:+FRESH=$FRESH }MODEL=$model bash scripts/train_shipped_model.sh"
