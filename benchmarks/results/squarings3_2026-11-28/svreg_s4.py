#!/usr/bin/env python
"""Experiment only: svreg with brain-mri's earlier 4 scaling-and-squaring steps (run it with the project's
.venv python first on PATH, or as `.venv/bin/python svreg_s4.py`)."""
import dataclasses
import sys

from svreg_core.cli import main
from svreg_core.optim import parameters

parameters.PRESETS["brain-mri"] = dataclasses.replace(parameters.PRESETS["brain-mri"], integration_steps=4)
sys.exit(main())
