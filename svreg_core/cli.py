"""The ``svreg`` command line: ``svreg register``, ``svreg train``, ``svreg models`` and ``svreg tune``.

User errors print one plain line (``svreg: error: ...``) and exit with status 2; with
``--progress json`` they are also reported as ``{"event": "error", ...}`` on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from svreg_core.errors import InputError, SvregError
from svreg_core.interrupts import sigterm_as_interrupt
from svreg_core.optim.parameters import PRESETS, SIMILARITIES
from svreg_core.progress import ProgressEvent


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class ProgressPrinter:
    """Turns :class:`ProgressEvent` into a tqdm bar (terminal), JSON lines, or nothing."""

    def __init__(self, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]",
                             file=sys.stderr)

    def __call__(self, event: ProgressEvent) -> None:
        if self.mode == "json":
            _emit_json({"event": "progress", **event.to_dict()})
        elif self._bar is not None:
            self._bar.set_description(event.stage)
            if event.values and len(event.values) <= 4:  # loss terms of an iteration or a training step
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in event.values.items()}, refresh=False)
            if event.stage == "epoch" and event.message:  # a training epoch's summary line
                self._bar.write(event.message)
            self._bar.update(max(0.0, 100 * event.fraction - self._bar.n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def add_register_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", help="fixed (reference) image, NIfTI")
    p.add_argument("moving", help="moving image, NIfTI; any orientation, voxel size or oblique affine")
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--fixed-labels", help="label map on the fixed grid (for Dice/HD95)")
    p.add_argument("--moving-labels", help="label map on the moving grid; written warped as warped_labels.nii.gz")
    p.add_argument("--labels", type=int, nargs="+", help="label values to score (default: all labels in both maps)")
    p.add_argument("--label-interpolation", choices=("linear", "nearest"), default="linear",
                   help="label warping: one-hot trilinear + argmax (default) or nearest neighbour")
    p.add_argument("--fixed-mask", help="mask on the fixed grid restricting the similarity")
    p.add_argument("--moving-mask", help="mask on the moving grid restricting the similarity")
    p.add_argument("--preset", default="brain-mri",
                   help=f"parameter preset: {', '.join(PRESETS)}, or a preset JSON file (e.g. from svreg tune)")
    p.add_argument("--similarity", choices=SIMILARITIES, help="image similarity (default: from the preset)")
    p.add_argument("--model", help="use a learned SPR network: a shipped model's name (see 'svreg models'; "
                   "'default' = the default one) or a checkpoint folder from 'svreg train'")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="with --model: continue with N pairwise iterations of the same SPR loss (default 0)")
    p.add_argument("--no-spr", action="store_true",
                   help="spatially uniform regularizer of the same strength instead of the learned λ(x)")
    p.add_argument("--affine", dest="affine", action="store_true", default=None,
                   help="run the affine pre-alignment stage (default on)")
    p.add_argument("--no-affine", dest="affine", action="store_false", help="skip the affine stage")
    p.add_argument("--device", default=None, help="auto (CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="progress display: bar on a terminal (auto), JSON lines on stdout, or none")


def run_register(args: argparse.Namespace) -> int:
    from svreg_core.image import load_image
    from svreg_core.optim.parameters import load_parameters, preset_warning
    from svreg_core.outputs import write_outputs
    from svreg_core.outputs.writer import prepare_output_dir
    from svreg_core.registration import register

    t0 = time.perf_counter()
    inputs = [p for p in (args.fixed, args.moving, args.fixed_labels, args.moving_labels, args.fixed_mask,
                          args.moving_mask) if p]
    prepare_output_dir(args.output, overwrite=args.overwrite, inputs=inputs, create_parent=False)
    if args.refine and not args.model:
        raise InputError("--refine needs --model (it refines a learned model's prediction).")
    if args.refine < 0:
        raise InputError("--refine must be 0 or more iterations.")
    if args.model:
        from svreg_core.models.zoo import resolve_model
        resolve_model(args.model)  # a wrong name or path fails now, before any work
    params = load_parameters(args.preset, similarity=args.similarity, affine=args.affine, device=args.device,
                             seed=args.seed, spr=False if args.no_spr else None)
    warning = preset_warning(args.preset)
    if warning:
        print(f"svreg: warning: {warning}", file=sys.stderr)
    printer = ProgressPrinter(args.progress)
    try:
        printer(ProgressEvent("load", 0, 1, 0.0, "reading images"))
        fixed = load_image(args.fixed, name="fixed image")
        moving = load_image(args.moving, name="moving image")
        fixed_labels = load_image(args.fixed_labels, labels=True, name="fixed labels") if args.fixed_labels else None
        moving_labels = load_image(args.moving_labels, labels=True, name="moving labels") if args.moving_labels else None
        fixed_mask = load_image(args.fixed_mask, labels=True, name="fixed mask") if args.fixed_mask else None
        moving_mask = load_image(args.moving_mask, labels=True, name="moving mask") if args.moving_mask else None
        _check_same_grid(fixed_labels, fixed, "fixed labels", "fixed image")
        _check_same_grid(moving_labels, moving, "moving labels", "moving image")
        load_s = time.perf_counter() - t0
        result = register(fixed, moving, params, fixed_mask=fixed_mask, moving_mask=moving_mask, model=args.model,
                          refine=args.refine, progress=printer)
        result.timing["load_s"] = load_s
        printer(ProgressEvent("outputs", 0, 1, 0.96, "writing outputs"))
        report = write_outputs(result, args.output, fixed_labels=fixed_labels, moving_labels=moving_labels,
                               labels=args.labels, label_mode=args.label_interpolation, overwrite=args.overwrite,
                               inputs=inputs, extra={"inputs": {"fixed": str(args.fixed), "moving": str(args.moving)}},
                               started=t0)
        printer(ProgressEvent("done", 1, 1, 1.0, "finished"))
    finally:
        printer.close()
    out = Path(args.output).absolute()
    if args.progress == "json":
        _emit_json({"event": "done", "outdir": str(out), "report": report})
    else:
        m = report["metrics"]
        line = f"folding {m['folding_percent']:.4f} %, NDV {m['ndv_percent']:.4f} %"
        if "dice_mean" in m:  # a metric that could not be computed is null in the report
            dice_text = "n/a" if m["dice_mean"] is None else f"{m['dice_mean']:.4f}"
            hd95_text = "n/a" if m["hd95_mean"] is None else f"{m['hd95_mean']:.2f} mm"
            line = f"mean Dice {dice_text}, HD95 {hd95_text}, " + line
        how = "pairwise optimisation" if report["method"] == "pairwise" else (
            f"model {report['model'].get('name') or report['model']['architecture']}"
            + (f" + {report['refine_steps']} refinement steps" if report.get("refine_steps") else ""))
        print(f"Registered in {report['timing']['total_s']:.1f} s ({report['device']}, {how}): {line}")
        print(f"Outputs: {out}/  (figure: {out / 'report.png'})")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from svreg_core.models.zoo import describe, shipped_models

    found = shipped_models()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for name, meta in found.items():
            print(describe(name, meta))
        if not found:
            print("no shipped model found (train one with 'svreg train')", file=sys.stderr)
    return 0


def _check_same_grid(image, reference, name: str, ref_name: str) -> None:
    import numpy as np
    if image is not None and (image.shape != reference.shape or not np.allclose(image.affine, reference.affine,
                                                                                 atol=1e-3)):
        raise InputError(f"{name} {image.shape} is not on the grid of the {ref_name} {reference.shape}; "
                         "they must share shape and affine.")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="svreg", description="Diffeomorphic registration with a spatially "
                                     "varying regularizer (SPR).")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    reg = sub.add_parser("register", help="register a moving image to a fixed image (no training needed)")
    add_register_arguments(reg)
    handlers["register"] = run_register
    from svreg_core.training.cli import add_train_arguments, run_train
    train = sub.add_parser("train", help="train a learned SPR network (resumable; torchrun for several GPUs/nodes)")
    add_train_arguments(train)
    handlers["train"] = run_train
    models = sub.add_parser("models", help="list the shipped learned models, one per line, name first")
    models.add_argument("--json", action="store_true", help="print the models' descriptions as one JSON object")
    handlers["models"] = run_models
    try:
        from svreg_core.tuning.cli import add_tune_arguments, run_tune
    except ImportError:
        pass
    else:
        tune = sub.add_parser("tune", help="tune α′ and λ_max on labelled pairs with Optuna (resumable)")
        add_tune_arguments(tune)
        handlers["tune"] = run_tune
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    json_mode = getattr(args, "progress", None) == "json"
    with sigterm_as_interrupt():  # a scheduler's or the Slicer module's stop request, handled like Ctrl-C
        try:
            return handlers[args.command](args)
        except SvregError as exc:
            if json_mode:
                _emit_json({"event": "error", "message": str(exc), "kind": exc.__class__.__name__})
            print(f"svreg: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            resume = " (run the same command again to resume after the last finished epoch)" \
                if args.command == "train" else ""
            print(f"svreg: interrupted{resume}", file=sys.stderr)
            return 130
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            gpu = "CUDA" in str(exc) or exc.__class__.__name__ == "OutOfMemoryError"
            msg = ("the GPU ran out of memory; use --device cpu, crop the images, or use coarser --preset level "
                   "spacings." if gpu else "out of memory; crop the images or use coarser level spacings.")
            if json_mode:
                _emit_json({"event": "error", "message": msg, "kind": "OutOfMemory"})
            print(f"svreg: error: {msg}", file=sys.stderr)
            return 1


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for host ``MemoryError`` and torch's CUDA out-of-memory errors."""
    return isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError" or \
        "out of memory" in str(exc).lower()


if __name__ == "__main__":
    sys.exit(main())
