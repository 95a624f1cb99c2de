"""Final SPR loss terms per pyramid level of the pairwise optimiser at Adam steps 2 and 3 voxels.

Mindboggle validation pair 05 → 06 (fixed sub-06), ``brain-mri`` preset otherwise, 2 threads; run from the
repository root: ``.venv/bin/python benchmarks/results/refine_step_2026-11-27/final_loss.py``.
"""
import torch

from svreg_core.image.io import load_image
from svreg_core.optim.parameters import PRESETS
from svreg_core.registration import register

torch.set_num_threads(2)
DATA = "../shared/data/mindboggle_oasis20/"
fixed, moving = load_image(DATA + "sub-06/t1.nii.gz"), load_image(DATA + "sub-05/t1.nii.gz")
for step in (2.0, 3.0):
    result = register(fixed, moving, PRESETS["brain-mri"].replace(learning_rate=step))
    print(step, [{k: round(v, 5) for k, v in level.items()} for level in result.losses], flush=True)
