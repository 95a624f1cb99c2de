"""Install a trained checkpoint as a shipped model: ``svreg_core/models/shipped/<name>/``.

    .venv/bin/python scripts/install_model.py RUN_DIR/last brain-unet-spr --data "..." --command "..."

The checkpoint is loaded (weights verified against their SHA-256) and saved again under the model's
name, with the training record completed by ``--data`` and ``--command``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svreg_core.models import load_checkpoint, save_checkpoint  # noqa: E402
from svreg_core.models.zoo import SHIPPED_DIR  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="checkpoint folder (e.g. RUN_DIR/last or RUN_DIR/best)")
    ap.add_argument("name", help="model name (folder under svreg_core/models/shipped)")
    ap.add_argument("--data", required=True, help="what the model was trained on, one line")
    ap.add_argument("--command", required=True, help="the command that trained it")
    args = ap.parse_args()
    model, info = load_checkpoint(args.checkpoint)
    training = {**info.training, "data": args.data, "command": args.command}
    info = dataclasses.replace(info, name=args.name, training=training)
    target = save_checkpoint(SHIPPED_DIR / args.name, model, info)
    print(f"installed {args.name} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
