#!/usr/bin/env python
"""Experiment only: svreg whose Adam step per pyramid level comes from LEVEL_LR (e.g. "3,2")."""
import os
import sys

import svreg_core.optim.spr as spr

_Adam = spr.Adam
_steps = [float(x) for x in os.environ["LEVEL_LR"].split(",")]
_count = [0]


def adam(params, rates, *args, **kwargs):
    rate = _steps[min(_count[0], len(_steps) - 1)]
    _count[0] += 1
    print("level step", rate, file=sys.stderr)
    return _Adam(params, [rate], *args, **kwargs)


spr.Adam = adam
from svreg_core.cli import main  # noqa: E402

sys.exit(main())
