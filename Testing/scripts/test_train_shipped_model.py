"""``scripts/train_shipped_model.sh``'s own logic: which folders it hands to ``svreg train``. It runs from a copy of
the ``scripts/`` folder whose environment set-up is skipped (it would install packages) and whose ``svreg`` and
``python`` record their arguments: the training itself is covered by ``svreg train``'s tests."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _recorded(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_relative_folders_are_taken_from_where_it_is_run(tmp_path: Path) -> None:
    """``bash path/to/scripts/train_shipped_model.sh runs/mine`` trained into the repository's ``runs/mine``, and a
    relative ``SYNTHSEG_LABEL_MAPS`` or ``INIT`` checkpoint folder was looked for in the repository: they are now
    the caller's; a shipped model's name in ``INIT`` stays a name."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "train_shipped_model.sh", repo / "scripts")
    (repo / "scripts" / "setup_env.sh").write_text("exit 0\n")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("svreg", "python"):
        (bin_dir / tool).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/{tool}_args.txt"\n')
        (bin_dir / tool).chmod(0o755)
    caller = tmp_path / "work"
    (caller / "ckpt").mkdir(parents=True)
    env = {**os.environ, "SYNTHSEG_LABEL_MAPS": "maps", "INIT": "ckpt"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "train_shipped_model.sh"), "runs/mine"], cwd=caller, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = _recorded(bin_dir / "svreg_args.txt")
    assert train[train.index("-o") + 1] == str(caller / "runs" / "mine")
    assert train[train.index("--synthetic") + 1] == str(caller / "maps")
    assert train[train.index("--init") + 1] == str(caller / "ckpt")
    assert _recorded(bin_dir / "python_args.txt")[1] == str(caller / "runs" / "mine" / "best")  # the model installed
    env = {**os.environ, "INIT": "brain-unet-spr"}
    env.pop("SYNTHSEG_LABEL_MAPS", None)
    proc = subprocess.run(["bash", str(repo / "scripts" / "train_shipped_model.sh")], cwd=caller, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = _recorded(bin_dir / "svreg_args.txt")
    assert train[train.index("-o") + 1] == "runs/brain-unet-spr"  # the defaults: inside the repository
    assert train[train.index("--synthetic") + 1] == "../shared/data/synthseg_label_maps"
    assert train[train.index("--init") + 1] == "brain-unet-spr"
