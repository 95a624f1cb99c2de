#!/usr/bin/env python
"""Experiment only: svreg with the refinement's levels/iterations/learning rate from the environment."""
import os
import sys

import svreg_core.registration as reg

_orig = reg.optimize_spr


def patched(*args, initial=None, **kwargs):
    if initial is not None:
        params = args[5]
        levels = os.environ.get("REFINE_LEVELS")
        iters = os.environ.get("REFINE_ITERS")
        lr = os.environ.get("REFINE_LR")
        frac = os.environ.get("REFINE_FRAC")
        changes = {}
        if levels:
            changes["level_spacings"] = tuple(float(x) for x in levels.split(","))
            changes["iterations"] = tuple(int(x) for x in iters.split(","))
        if lr:
            changes["learning_rate"] = float(lr)
        if frac:
            changes["final_learning_rate_fraction"] = float(frac)
        if os.environ.get("REFINE_LAMBDA"):
            changes["lambda_max"] = float(os.environ["REFINE_LAMBDA"])
        params = params.replace(**changes)
        print("refine params:", params.level_spacings, params.iterations, params.learning_rate,
              params.final_learning_rate_fraction, params.alpha_prime, params.lambda_max, file=sys.stderr)
        args = args[:5] + (params,) + args[6:]
    return _orig(*args, initial=initial, **kwargs)


reg.optimize_spr = patched
from svreg_core.cli import main  # noqa: E402

sys.exit(main())
