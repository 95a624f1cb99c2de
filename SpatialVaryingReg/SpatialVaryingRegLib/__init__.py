"""Helpers of the SpatialVaryingReg Slicer module, free of Qt so that they run (and are tested) with the
bare MRML library too:

* :mod:`.geometry` — volumes <-> NIfTI files, displacement fields -> grid transform nodes (RAS/LPS).
* :mod:`.display` — colour maps, windows and slice-view layers of the outputs.
* :mod:`.runner` — the engine's child process (JSON-lines progress, cancel = kill the process tree).
* :mod:`.logic` — the registration workflow on MRML nodes (used by the button and the console).
* :mod:`.tuning` — the background tuning process and its SQLite study.
* :mod:`.dependencies` — checks for torch and the engine's Python packages (install only on request).
* ``torch_env.py`` — a script run by a ``PythonSlicer`` child to check/install torch (never imported).

Nothing is imported eagerly: importing this package never imports torch, Qt or the engine.
"""
