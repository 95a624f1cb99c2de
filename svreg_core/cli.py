"""The ``svreg`` command line: ``svreg register``, ``register-batch``, ``apply``, ``preview``, ``train``, ``models``
and ``tune``.

User errors print one plain line (``svreg: error: ...``) and exit with status 2; with
``--progress json`` they are also reported as ``{"event": "error", ...}`` on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from svreg_core.apply import (
    IMAGE_INTERPOLATIONS,
    apply_to_image,
    apply_to_labels,
    is_points_file,
    points_suffix,
    read_landmarks,
    transform_points_file,
)
from svreg_core.atomic import replaced_when_complete
from svreg_core.errors import InputError, SvregError, shortened
from svreg_core.image.io import image_stem, is_dicom_input
from svreg_core.image.sampling import LABEL_INTERPOLATIONS
from svreg_core.interrupts import interrupted_status, sigterm_as_interrupt
from svreg_core.optim.parameters import NETWORK_PRECISIONS, PRESETS, SIMILARITIES, preset_modality_warning
from svreg_core.outputs.writer import SELECTABLE_OUTPUTS
from svreg_core.progress import ProgressEvent, ProgressPrinter, emit_json
from svreg_core.text_input import PAIR_LIST_COLUMNS, read_table, table_path

if TYPE_CHECKING:
    import numpy as np

    from svreg_core.image import Grid, Image
    from svreg_core.image.itk_io import DicomSeries
    from svreg_core.models import ModelInfo
    from svreg_core.registration import LoadedModel

    #: The fixed-side images of a batch, read once: by (path, whether a label map), each with the warnings its
    #: reading gave.
    ImageCache = dict[tuple[str, bool], tuple[Image, list[str]]]


#: The image inputs every command reads (:func:`~svreg_core.image.io.load_image`), for help texts.
IMAGE_KINDS = "NIfTI, MGH, NRRD, MetaImage, or DICOM (a folder of one series, or one file of a series)"

REGISTER_EXAMPLES = """\
examples:
  svreg register fixed.nii.gz moving.nii.gz -o out
  svreg register fixed.nii.gz moving.nii.gz -o out --fixed-labels fixed_seg.nii.gz --moving-labels moving_seg.nii.gz
  svreg register fixed.nii.gz moving.nii.gz -o out --alpha-prime 0.1 --lambda-max 2 --level-spacings 4 2 \\
      --iterations 100 60 --outputs warped displacement figure --threads 8
  svreg register fixed.nii.gz moving.nii.gz -o out --model default --refine 20 --device cuda
  svreg register fixed.nii.gz moving.nii.gz -o out --model runs/hyper/best --alpha-prime 0.1 --lambda-max 5

outputs (choose with --outputs; report.json is always written):
  warped          warped.nii.gz: moving resampled onto the fixed grid
  displacement    displacement.nii.gz: the whole mapping, ITK/ANTs layout, LPS mm (fixed x -> x + u(x) in moving)
  transform       transform.h5: the same as an ITK composite transform (affine + field)
  inverse         inverse_displacement.nii.gz: the inverse mapping on the moving grid
  regularization  regularization.nii.gz: the λ map on the fixed grid
  jacobian        jacobian.nii.gz: Jacobian determinant on the fixed grid
  labels          warped_labels.nii.gz (with --moving-labels)
  figure          report.png: images, differences, λ and det J on three slices
Apply a result later with 'svreg apply OUT IMAGE -o FILE' (see svreg apply --help).
"""


#: ``--deterministic`` of ``svreg register``.
DETERMINISTIC_HELP = ("bit-identical results from run to run on CUDA (same GPU, driver and torch version); the "
                      "optimisation is many times slower (brain pair on an H200: 7.2-8.3 s; 1.0 s without it then, "
                      "0.24 s now with CUDA graphs); sets "
                      "CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set. Without it, CUDA runs differ in the last bits, "
                      "which the optimiser amplifies (brain pair: displacements up to 3.8 mm apart, mean Dice within "
                      "0.0002). On CPU it changes nothing: CPU runs are bit-identical anyway")


def add_runtime_arguments(p: argparse.ArgumentParser, *, affine_help: str, deterministic_help: str) -> None:
    """``--affine/--no-affine``, ``--device``, ``--threads`` and ``--deterministic`` (``register``, ``preview``);
    :func:`apply_runtime` acts on them."""
    affine = p.add_mutually_exclusive_group()  # both given: one line, not the last one silently winning
    affine.add_argument("--affine", dest="affine", action="store_true", default=None, help=affine_help)
    affine.add_argument("--no-affine", dest="affine", action="store_false", help="skip the affine stage")
    p.add_argument("--no-pose-search", dest="pose_search", action="store_false", default=None,
                   help="start the affine stage only from the centres of mass, not also from rotated starts (the "
                   "search finds images whose header orientations disagree by more than 30-40 degrees)")
    p.add_argument("--device", default=None, help="auto (CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads torch may use (default: all cores, or as "
                   "many as a container's or batch job's CPU quota allows)")
    p.add_argument("--deterministic", action="store_true", default=None, help=deterministic_help)


def threads_within_cpu_limit(root: Path | None = None, membership: Path | None = None) -> None:
    """Fewer torch threads than cores where this process's control groups allow less CPU time
    (:func:`~svreg_core.cgroups.cpu_limit`, rounded up): a 2-CPU container on a 64-core host ran 64 threads that
    mostly waited for each other. ``OMP_NUM_THREADS``, and ``--threads`` (set after), decide instead; ``root`` and
    ``membership``: the control-group tree and this process's place in it (default: the system's)."""
    from svreg_core.cgroups import CGROUP_MEMBERSHIP, CGROUP_ROOT, cpu_limit

    limit = cpu_limit(root or CGROUP_ROOT, membership or CGROUP_MEMBERSHIP)
    if limit is None or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch
    torch.set_num_threads(max(1, min(torch.get_num_threads(), math.ceil(limit - 1e-9))))


def set_threads(args: argparse.Namespace) -> None:
    """torch's CPU thread count from ``--threads`` (before any work)."""
    if args.threads is not None:
        if args.threads < 1:
            raise InputError("--threads must be 1 or more.")
        import torch
        torch.set_num_threads(args.threads)


def set_deterministic_environment(params) -> None:
    """With deterministic parameters, ``CUBLAS_WORKSPACE_CONFIG`` if unset (before CUDA starts, as cuBLAS
    requires)."""
    if params.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def add_gzip_level_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gzip-level", type=int, choices=range(10), metavar="0-9", default=None,
                   help="compression of the .nii.gz outputs: 0 stores them uncompressed inside the gzip "
                        "container (fastest to write: for files read at once, e.g. by the Slicer module) to 9 "
                        "(smallest); default 1 for the images and the Jacobian map and 0 for the displacement "
                        "fields (transform.h5's too), which gzip hardly shrinks")


def add_prediction_arguments(p: argparse.ArgumentParser) -> None:
    """``--one-way``, ``--passes`` and ``--precision``: how a learned model predicts (``register``, ``preview``)."""
    p.add_argument("--one-way", dest="symmetric_prediction", action="store_false", default=None,
                   help="with --model: the network predicts moving -> fixed only, instead of averaging both directions "
                        "(the default: twice the network evaluations, a little more accurate and smoother)")
    p.add_argument("--passes", dest="prediction_passes", type=int, metavar="N",
                   help="with --model: network passes, each predicting the deformation left after the previous ones "
                        "(default 2; more: closer alignment, less smooth)")
    p.add_argument("--precision", dest="network_precision", choices=NETWORK_PRECISIONS,
                   help="with --model: the network's arithmetic (default auto: bfloat16 on a CPU that computes it "
                        "natively, about twice as fast; float32 elsewhere, GPUs included)")


def add_parameter_arguments(p: argparse.ArgumentParser) -> None:
    """The registration parameters shared by ``svreg register`` and ``svreg register-batch``."""
    p.add_argument("--labels", type=int, nargs="+", help="label values to score (default: all labels in both maps)")
    p.add_argument("--label-interpolation", choices=LABEL_INTERPOLATIONS, default=None,
                   help="label warping: one-hot trilinear + argmax (linear, the default) or nearest neighbour; needs "
                        "moving labels")
    p.add_argument("--preset", default="brain-mri",
                   help=f"parameter preset: {', '.join(PRESETS)}, or a preset JSON file (e.g. from svreg tune)")
    p.add_argument("--similarity", choices=SIMILARITIES, help="image similarity (default: from the preset)")
    p.add_argument("--alpha-prime", type=float,
                   help="hyperprior weight α′ on λ (default: from the preset). With --model: a hyper model "
                        "predicts for this value (inside its trained range, see 'svreg models'; default: the "
                        "model's own) and refines with it; a plain model only uses it for --refine. --refine "
                        "without these flags regularises with the preset's values")
    p.add_argument("--lambda-max", type=float,
                   help="strength of the λ-weighted regularizer (default: from the preset); with --model as "
                        "--alpha-prime")
    p.add_argument("--level-spacings", type=float, nargs="+", metavar="MM",
                   help="working voxel sizes of the pyramid, coarse to fine, mm (default: from the preset)")
    p.add_argument("--control-spacing", type=float, metavar="MM",
                   help="finest voxel size of the control grid holding the velocity and λ, mm (default: from the "
                        "preset, 2 for MRI, 4 for CT); a level's control grid is the coarser of this and its "
                        "--level-spacings value; for small fields of view (small animals) with --level-spacings")
    p.add_argument("--iterations", type=int, nargs="+", metavar="N",
                   help="optimiser iterations per level (one number: the same at every level); not with --model "
                        "(--refine N sets them)")
    p.add_argument("--model", help="use a learned SPR network: a shipped model's name (see 'svreg models'; "
                   "'default' = the default one) or a checkpoint folder from 'svreg train'")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="with --model: continue with N pairwise iterations of the SPR loss at each level of the "
                        "preset's pyramid, or of --level-spacings (default 0)")
    add_prediction_arguments(p)
    p.add_argument("--no-spr", action="store_true",
                   help="spatially uniform regularizer of the same strength instead of the learned λ(x)")
    add_runtime_arguments(p, affine_help="run the affine pre-alignment stage (default on)",
                          deterministic_help=DETERMINISTIC_HELP)
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # retired, see registration_parameters
    p.add_argument("--outputs", nargs="+", metavar="NAME", choices=tuple(SELECTABLE_OUTPUTS),
                   help=f"write only these outputs ({', '.join(SELECTABLE_OUTPUTS)}; default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_gzip_level_argument(p)
    p.add_argument("--progress", choices=("auto", "bar", "lines", "json", "none"), default="auto",
                   help="progress display: a bar on a terminal, else plain lines on stderr (auto); JSON lines on "
                   "stdout; or none")


def add_register_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", help=f"fixed (reference) image: {IMAGE_KINDS}")
    p.add_argument("moving", help="moving image, the same kinds; any orientation, voxel size or oblique affine")
    p.add_argument("-o", "--output", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--fixed-labels", help="label map on the fixed grid (for Dice/HD95)")
    p.add_argument("--moving-labels", help="label map on the moving grid; written warped as warped_labels.nii.gz")
    p.add_argument("--fixed-mask", help="mask on the fixed grid restricting the similarity")
    p.add_argument("--crop-fixed", type=float, nargs=6, metavar=("R1", "A1", "S1", "R2", "A2", "S2"),
                   help="register only the fixed image's voxels inside this world box (two opposite corners, RAS "
                        "mm; e.g. a Slicer ROI's bounds), for big CT: the fixed labels and mask are cropped alike "
                        "and every output is on the cropped grid")
    p.add_argument("--moving-mask", help="mask on the moving grid restricting the similarity")
    p.add_argument("--fixed-landmarks", help="points on the fixed image (.csv with x, y, z in RAS mm, Slicer .fcsv or "
                                             ".mrk.json): with --moving-landmarks, the report gives the target "
                                             "registration error before and after")
    p.add_argument("--moving-landmarks", help="the corresponding points on the moving image, in the same order")
    p.add_argument("--initial-transform", metavar="FILE",
                   help="a linear ITK transform (.tfm, .txt, .h5, .mat: a rigid or affine alignment from Slicer or "
                        "ANTs, mapping fixed points to moving points) to start from: the affine stage starts there, "
                        "or with --no-affine the deformable stage")
    add_parameter_arguments(p)


#: The parameters the command line sets, by their name in :mod:`svreg_core.optim.parameters`' messages: the flag
#: and its attribute of the parsed arguments.
FLAGS_OF_PARAMETERS = {"alpha_prime": ("--alpha-prime", "alpha_prime"), "lambda_max": ("--lambda-max", "lambda_max"),
                       "level_spacings": ("--level-spacings", "level_spacings"),
                       "iterations": ("--iterations", "iterations"),
                       "min_control_spacing": ("--control-spacing", "control_spacing"),
                       "prediction_passes": ("--passes", "prediction_passes")}


@contextlib.contextmanager
def flag_names(args: argparse.Namespace) -> Iterator[None]:
    """Inside: a parameter's :class:`InputError` (``prediction_passes 0 is out of range ...``) names the flag that
    gave the value (``--passes 0 is out of range ...``); a value from a preset file keeps its name there."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        for name, (flag, attribute) in FLAGS_OF_PARAMETERS.items():
            if message.startswith(f"{name} ") and getattr(args, attribute, None) is not None:
                raise InputError(flag + message[len(name):]) from None
        raise


def registration_parameters(args: argparse.Namespace):
    """The preset with the command line's overrides; sets torch's thread count (``--threads``) and, with
    deterministic parameters (``--deterministic``), ``CUBLAS_WORKSPACE_CONFIG`` if unset (before CUDA
    starts, as cuBLAS requires). A preset file that changes fixed settings of its base preset gets a warning
    (:func:`~svreg_core.optim.parameters.preset_warning`).

    ``--seed`` of earlier versions is still accepted, with a warning, so that existing scripts run on.
    """
    from svreg_core.optim.parameters import RETIRED, load_parameters, preset_warning

    if args.seed is not None:
        print(f"svreg: warning: ignoring --seed ({RETIRED['seed']}).", file=sys.stderr)
    if args.refine and not args.model:
        raise InputError("--refine needs --model (it refines a learned model's prediction).")
    if args.refine < 0:
        raise InputError("--refine must be 0 or more iterations.")
    for flag, value in (("--one-way", args.symmetric_prediction), ("--passes", args.prediction_passes),
                        ("--precision", args.network_precision)):
        if value is not None and not args.model:
            raise InputError(f"{flag} needs --model (it chooses how a learned model predicts).")
    if args.model:  # flags a learned model would ignore
        for flag, value in (("--no-spr", args.no_spr), ("--similarity", args.similarity)):
            if value:
                raise InputError(f"{flag} does not apply with --model: a learned model predicts, and --refine "
                                 "refines, with the similarity and the spatially varying regulariser it was trained "
                                 "with; register without --model to choose them.")
        if args.iterations:
            raise InputError("--iterations does not apply with --model: --refine N sets the refinement's iterations "
                             "per level.")
        for flag, value in (("--level-spacings", args.level_spacings), ("--control-spacing", args.control_spacing)):
            if value is not None and not args.refine:
                raise InputError(f"{flag} only applies to a refinement of the learned model's prediction "
                                 "(--refine N); the network alone does not use it.")
    if args.no_spr and args.alpha_prime is not None:  # a warning: scripts pass the same flags to both variants
        print("svreg: warning: ignoring --alpha-prime: it weighs the hyperprior on the spatially varying λ, and "
              "--no-spr keeps λ ≡ 1 (--lambda-max sets the uniform regulariser's strength).", file=sys.stderr)
    set_threads(args)
    if args.model:
        from svreg_core.models import read_model_info
        from svreg_core.models.zoo import resolve_model
        read_model_info(resolve_model(args.model))  # a wrong name or path, or a bad model.json, fails now
    with flag_names(args):
        params = load_parameters(args.preset, similarity=args.similarity, affine=args.affine,
                                 pose_search=args.pose_search, device=args.device, deterministic=args.deterministic,
                                 spr=False if args.no_spr else None, symmetric_prediction=args.symmetric_prediction,
                                 prediction_passes=args.prediction_passes, network_precision=args.network_precision,
                                 min_control_spacing=args.control_spacing, alpha_prime=args.alpha_prime,
                                 lambda_max=args.lambda_max)
    if args.model:
        check_masks_used(args, affine=params.affine, refine=args.refine)
    if args.model and args.refine and params.refine_codes is not None \
            and (args.alpha_prime, args.lambda_max) != (None, None):
        # the flags regularise the refinement; the one not given keeps the preset's refinement code
        params = params.replace(refine_codes=tuple(code if flag is None else flag for code, flag in
                                                   zip(params.refine_codes, (args.alpha_prime, args.lambda_max))))
    if args.model and args.refine:
        from svreg_core.registration import refinement_parameters
        refinement_parameters(params, args.refine)  # --refine beyond the iteration limit fails now, not at the end
    spacings = tuple(args.level_spacings) if args.level_spacings else params.level_spacings
    iterations = params.iterations
    if args.iterations:
        iterations = tuple(args.iterations * len(spacings) if len(args.iterations) == 1 else args.iterations)
        if len(iterations) != len(spacings):
            raise InputError(f"--iterations gives {len(iterations)} numbers for {len(spacings)} levels; give one "
                             "number or one per level.")
    elif args.model and args.level_spacings:
        iterations = (args.refine,) * len(spacings)  # the refinement's pyramid (refinement_parameters)
    elif len(iterations) != len(spacings):
        raise InputError(f"--level-spacings gives {len(spacings)} levels and the preset has {len(iterations)}; "
                         "give --iterations too.")
    if args.level_spacings or args.iterations:
        with flag_names(args):
            params = params.replace(level_spacings=spacings, iterations=iterations)
    set_deterministic_environment(params)
    warning = preset_warning(args.preset)
    if warning:
        print(f"svreg: warning: {warning}", file=sys.stderr)
    return params


def learned_codes(args: argparse.Namespace) -> tuple[float, float] | None:
    """With ``--model``: the codes (α′, λ_max) that ``--alpha-prime``/``--lambda-max`` ask for (the model's
    own for the one not given), checked against the model (its ``model.json`` only) before any work;
    ``None`` without ``--model``, when neither flag is given, or for a plain model's refinement (its codes
    are the parameters', which hold the flags: :func:`~svreg_core.registration.model_parameters`). A
    hyper model predicts for the codes and refines with them."""
    if not args.model or (args.alpha_prime is None and args.lambda_max is None):
        return None
    from svreg_core.models import read_model_info
    from svreg_core.models.zoo import resolve_model
    from svreg_core.registration import model_codes

    info = read_model_info(resolve_model(args.model))
    if info.code_ranges is None and args.refine:
        return None
    codes = (info.alpha_prime if args.alpha_prime is None else args.alpha_prime,
             info.lambda_max if args.lambda_max is None else args.lambda_max)
    return model_codes(info, codes, args.refine)


@dataclass(frozen=True)
class Pair:
    """The files of one registration: images, optional label maps and masks, and the output folder."""

    fixed: str
    moving: str
    output: str
    fixed_labels: str | None = None
    moving_labels: str | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    initial_transform: str | None = None

    def inputs(self) -> list[str]:
        return [p for p in (self.fixed, self.moving, self.fixed_labels, self.moving_labels, self.fixed_mask,
                            self.moving_mask, self.fixed_landmarks, self.moving_landmarks, self.initial_transform)
                if p]

    def sources(self) -> dict[str, str]:
        """The input files by role (``fixed``, ``moving``, ``fixed_labels``, ..., ``fixed_landmarks``), as the report
        records them (the initial transform has its own entry)."""
        return {role: getattr(self, role) for role in ("fixed", "moving", "fixed_labels", "moving_labels",
                                                       "fixed_mask", "moving_mask", "fixed_landmarks",
                                                       "moving_landmarks") if getattr(self, role)}


@dataclass
class PairImages:
    """The images of a :class:`Pair`, loaded and checked (label maps on their images' grids), the fixed-side
    ones cropped to ``--crop-fixed`` (``extra``: the report entries recording the box and the initial transform's
    file), and the initial transform's 4x4 RAS matrix, or ``None``."""

    fixed: Image
    moving: Image
    fixed_labels: Image | None = None
    moving_labels: Image | None = None
    fixed_mask: Image | None = None
    moving_mask: Image | None = None
    extra: dict | None = None
    landmarks: tuple | None = None
    initial: np.ndarray | None = None


def load_pair_images(pair: Pair, box: Sequence[float] | None, cache: ImageCache) -> PairImages:
    """Read the images of ``pair`` (fixed-side ones from ``cache`` when loaded before, and kept there with the
    warnings reading them gave, which are given again for each pair), check
    the label maps' grids and crop the fixed side to ``box`` (two RAS corners, 6 numbers; ``None``: no crop);
    read its landmarks (``(fixed, moving)`` RAS mm arrays), which must correspond one to one, and its initial
    transform."""
    import numpy as np

    from svreg_core.image import crop_to_box, load_image
    from svreg_core.image.image import conform_to_grid
    from svreg_core.outputs.read import read_linear_transform

    def load(path: str | None, name: str, labels: bool = False, keep: bool = False):
        if not path:
            return None
        if (path, labels) in cache:
            image, noted = cache[(path, labels)]
            for message in noted:  # as if read again: each pair's output and report.json carry them
                warnings.warn(message, stacklevel=2)
            return image
        with _recorded_warnings() as noted:
            image = load_image(path, labels=labels, name=name)
        if keep:
            cache[(path, labels)] = image, noted
        return image

    # the small files first: a bad one is refused before the images (a DICOM series, say) are read
    landmarks = read_landmarks(pair.fixed_landmarks, pair.moving_landmarks,
                               names=("--fixed-landmarks", "--moving-landmarks"))
    initial = read_linear_transform(pair.initial_transform) if pair.initial_transform else None
    fixed = load(pair.fixed, "fixed image", keep=True)
    moving = load(pair.moving, "moving image")
    fixed_labels = load(pair.fixed_labels, "fixed labels", labels=True, keep=True)
    moving_labels = load(pair.moving_labels, "moving labels", labels=True)
    fixed_mask = load(pair.fixed_mask, "fixed mask", labels=True, keep=True)
    moving_mask = load(pair.moving_mask, "moving mask", labels=True)
    fixed_labels, moving_labels, fixed_mask, moving_mask = (
        None if image is None else conform_to_grid(image, reference.grid, what, ref_name)
        for image, reference, what, ref_name in ((fixed_labels, fixed, "fixed labels", "fixed image"),
                                                 (moving_labels, moving, "moving labels", "moving image"),
                                                 (fixed_mask, fixed, "fixed mask", "fixed image"),
                                                 (moving_mask, moving, "moving mask", "moving image")))
    extra: dict[str, object] = {}
    if box:
        fixed, fixed_labels, fixed_mask = (None if image is None else crop_to_box(image, box[:3], box[3:], name)
                                           for image, name in ((fixed, "fixed image"), (fixed_labels, "fixed labels"),
                                                               (fixed_mask, "fixed mask")))
        for image, what in ((fixed_mask, "fixed mask"), (fixed_labels, "fixed label map")):
            if image is not None and not np.asarray(image.data).any():  # else "the fixed mask is empty", later
                raise InputError(f"the --crop-fixed box holds none of the {what}'s non-zero voxels; choose a box "
                                 f"that overlaps them, or leave the {what} out.")
        extra["crop_fixed_ras_mm"] = [list(box[:3]), list(box[3:])]
    for points, image, side in zip(landmarks or (), (fixed, moving), ("fixed", "moving")):
        outside = int(np.count_nonzero(~image.grid.contains(points)))
        if outside:  # their TRE is measured where the registration extrapolates, or not at all
            warnings.warn(f"{outside} of {len(points)} {side} landmarks lie outside the {side} image"
                          f"{' (its --crop-fixed box)' if box and side == 'fixed' else ''}: are they in its space and "
                          "frame (a .csv is read as RAS: x towards the right, y to the front)?", stacklevel=2)
    if initial is not None:
        extra["initial_transform"] = {"path": str(pair.initial_transform), "affine_ras": initial.tolist()}
    return PairImages(fixed, moving, fixed_labels, moving_labels, fixed_mask, moving_mask, extra, landmarks,
                      initial)


def _register_pair(pair: Pair, args: argparse.Namespace, params, codes: tuple[float, float] | None,
                   printer: ProgressPrinter, cache: ImageCache, model: LoadedModel | None = None) -> dict:
    """Register one pair and write its outputs; fixed-side images come from ``cache`` when loaded before. The
    warnings of reading the images and of the registration go into the report (``warnings``).

    ``codes``: a learned model's regularisation (:func:`learned_codes`); ``model``: ``args.model`` loaded
    before (a batch loads it once), else it is loaded here."""
    from svreg_core.models.zoo import shipped_model_modality_warning
    from svreg_core.outputs import write_outputs
    from svreg_core.outputs.writer import check_output_space, expected_output_bytes
    from svreg_core.registration import register, warm_up

    t0 = time.perf_counter()
    printer(ProgressEvent("load", 0, 1, 0.0, "reading images"))
    gpu_ready = warm_up(params)  # on CUDA: the GPU starts while the images are read
    with _recorded_warnings() as warned:
        images = load_pair_images(pair, getattr(args, "crop_fixed", None), cache)
        check_scored_labels(args.labels, images)
        check_output_space(pair.output, expected_output_bytes(images.fixed.shape, images.moving.shape,
                                                              outputs=args.outputs,
                                                              labels=images.moving_labels is not None))
        gpu_ready()
        load_s = time.perf_counter() - t0
        note = shipped_model_modality_warning(args.model, images.fixed.data, images.moving.data) if args.model else \
            preset_modality_warning(args.preset, params.similarity, images.fixed.data, images.moving.data)
        if note:
            warnings.warn(note, stacklevel=1)
        result = register(images.fixed, images.moving, params, fixed_mask=images.fixed_mask,
                          moving_mask=images.moving_mask, model=model or args.model, refine=args.refine, codes=codes,
                          initial_affine=images.initial, progress=printer)
    result.timing["load_s"] = load_s
    # --outputs labels in a batch: the warped labels of the pairs that have moving labels (check_label_arguments)
    outputs = args.outputs if args.outputs is None or images.moving_labels is not None else \
        [name for name in args.outputs if name != "labels"]
    report = write_outputs(result, pair.output, fixed_labels=images.fixed_labels, moving_labels=images.moving_labels,
                           labels=args.labels, label_mode=args.label_interpolation or "linear",
                           overwrite=args.overwrite,
                           inputs=pair.inputs(), started=t0, outputs=outputs, sources=pair.sources(),
                           gzip_level=args.gzip_level, landmarks=images.landmarks,
                           extra={**(images.extra or {}), **({"warnings": warned} if warned else {})},
                           progress=printer)
    printer(ProgressEvent("done", 1, 1, 1.0, "finished"))
    return report


def check_scored_labels(labels: Sequence[int] | None, images: PairImages) -> None:
    """Refuse, before the registration, ``--labels`` values that neither label map of the pair holds (after
    ``--crop-fixed``): Dice and HD95 would skip them, so a typo would go unnoticed (or, when no listed label is
    there, the run would end with no score at all)."""
    import numpy as np

    from svreg_core.metrics.overlap import present_labels

    if not labels or images.fixed_labels is None or images.moving_labels is None:
        return
    present = np.union1d(present_labels(images.fixed_labels.data), present_labels(images.moving_labels.data))
    absent = [v for v in dict.fromkeys(labels) if v not in present]
    if absent:
        held = shortened(present, 12)
        raise InputError(f"--labels {' '.join(map(str, absent))}: neither the fixed nor the moving label map holds "
                         f"{'this label' if len(absent) == 1 else 'these labels'}, so Dice and HD95 could not score "
                         f"{'it' if len(absent) == 1 else 'them'} (the maps hold {held}).")


def _summary(report: dict) -> str:
    m = report["metrics"]
    ndv = "n/a" if m["ndv_percent"] is None else f"{m['ndv_percent']:.4f} %"  # null: could not be computed
    line = f"folding {m['folding_percent']:.4f} %, NDV {ndv}"
    if "dice_mean" in m:  # a metric that could not be computed is null in the report
        dice_text = "n/a" if m["dice_mean"] is None else f"{m['dice_mean']:.4f}"
        if m.get("dice_mean_before") is not None and m["dice_mean"] is not None:
            dice_text = f"{m['dice_mean_before']:.4f} -> {dice_text}"
        hd95_text = "n/a" if m["hd95_mean"] is None else f"{m['hd95_mean']:.2f} mm"
        line = f"mean Dice {dice_text}, HD95 {hd95_text}, " + line
    if "tre" in m:
        line = f"mean TRE {m['tre_before']['mean']:.2f} -> {m['tre']['mean']:.2f} mm, " + line
    codes = report.get("codes") or {}
    how = "pairwise optimisation" if report["method"] == "pairwise" else (
        f"model {report['model'].get('name') or report['model']['architecture']}"
        + (f" at alpha_prime {codes['alpha_prime']:g}, lambda_max {codes['lambda_max']:g}"
           if codes.get("conditioned") else "")
        + (f" + {report['refine_steps']} refinement steps" if report.get("refine_steps") else ""))
    return f"Registered in {report['timing']['total_s']:.1f} s ({report['device']}, {how}): {line}"


def run_register(args: argparse.Namespace) -> int:
    from svreg_core.outputs.writer import prepare_output_dir

    pair = Pair(args.fixed, args.moving, args.output, args.fixed_labels, args.moving_labels, args.fixed_mask,
                args.moving_mask, args.fixed_landmarks, args.moving_landmarks, args.initial_transform)
    check_label_arguments([pair], args)
    prepare_output_dir(args.output, overwrite=args.overwrite, inputs=pair.inputs(), create_parent=False)
    params = registration_parameters(args)
    codes = learned_codes(args)
    printer = ProgressPrinter(args.progress)
    try:
        report = _register_pair(pair, args, params, codes, printer, {})
    finally:
        printer.close()
    out = Path(args.output).absolute()
    if args.progress == "json":
        emit_json({"event": "done", "outdir": str(out), "report": report})
    else:
        print(_summary(report))
        figure = f"  (figure: {out / 'report.png'})" if (out / "report.png").is_file() else ""
        print(f"Outputs: {out}/{figure}")
    return 0


BATCH_EXAMPLES = """\
examples:
  svreg register-batch --fixed atlas.nii.gz --moving sub-*_T1w.nii.gz -o results
  svreg register-batch --fixed atlas.nii.gz --fixed-labels atlas_seg.nii.gz --moving sub-01_T1w.nii.gz \\
      sub-02_T1w.nii.gz --moving-labels sub-01_seg.nii.gz sub-02_seg.nii.gz -o results   # Dice and HD95 too
  svreg register-batch --pairs pairs.csv -o results --shard $SLURM_ARRAY_TASK_ID/10   # sbatch --array=0-9

pairs.csv has a header with the columns fixed and moving, and optionally fixed_labels, moving_labels,
fixed_mask, moving_mask, fixed_landmarks, moving_landmarks (point files: the summary then gives the TRE),
initial_transform (as register's --initial-transform) and output (the pair's folder inside -o, a relative
path without '..', not inside another pair's; default: the moving file's name without its image ending such
as .nii.gz, or the folder's name for a DICOM series given by a file or its folder); relative paths are
relative to the CSV file's folder. Each pair gets its own output
folder under -o, as 'svreg register' writes it. Fixed images, labels and masks are loaded once and reused.
A pair that fails is reported and skipped; the exit status is then 2. summary.csv under -o (with --shard I/N:
summary_shard-I-of-N.csv) has one row per pair, rewritten after each: status, error, mean Dice, HD95, TRE,
folding, NDV, SDlogJ, registration seconds. After an interruption (Ctrl-C, a killed job) the same command with
--resume keeps the pairs finished before and registers the rest. With --progress json, each pair ends in
one "done" event (outdir, report; "kept": true for a pair --resume kept) or "error" event (message, outdir).
"""


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", help="CSV of pairs (see below)")
    p.add_argument("--fixed", help="the fixed image of every pair (with --moving)")
    p.add_argument("--moving", nargs="+", help="moving images, each registered to --fixed")
    p.add_argument("--fixed-labels", help="with --fixed: its label map (Dice/HD95, with --moving-labels)")
    p.add_argument("--moving-labels", nargs="+", metavar="LABELS",
                   help="with --moving: their label maps, one per moving image in the same order")
    p.add_argument("--fixed-mask", help="with --fixed: its mask")
    p.add_argument("-o", "--output", required=True, help="folder holding one output folder per pair")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run only pairs I, I+N, I+2N, ... (0 <= I < N; a job array's task index; default 0/1)")
    p.add_argument("--resume", action="store_true",
                   help="go on with a batch that was interrupted: pairs whose output folder holds a finished "
                   "registration of the same images are kept, the others registered (refused if the kept ones "
                   "were registered with other parameters)")
    add_parameter_arguments(p)


def _stem(path: str) -> tuple[str, str]:
    """A pair's default output folder name and the name of the folder that holds what it names: the moving image's
    file name without its image ending; for a DICOM series (a folder, or a file standing for its series), the name
    of the series' folder."""
    moving = Path(path)
    if moving.is_file() and is_dicom_input(moving):
        series = moving.resolve().parent
        return series.name, series.parent.name
    return image_stem(moving.name) or moving.name, moving.resolve().parent.name


def default_outputs(movings: Sequence[str]) -> list[str]:
    """The output folder names of pairs without one of their own: each moving image's :func:`_stem`, with its
    folder's name in front where two stems are alike (``sub-01/T1.nii.gz``, ``sub-02/T1.nii.gz`` → ``sub-01_T1``,
    ``sub-02_T1``)."""
    stems = [_stem(m) for m in movings]
    names = [name for name, _ in stems]
    return [f"{folder}_{name}" if names.count(name) > 1 and folder else name for name, folder in stems]


#: The columns of a pairs CSV that name input files (``output`` names the pair's folder under ``-o``).
_PAIR_FILE_COLUMNS = tuple(column for column in PAIR_LIST_COLUMNS if column != "output")


def read_pairs(args: argparse.Namespace) -> list[Pair]:
    """The pairs of ``--pairs CSV`` (:func:`~svreg_core.text_input.read_table`: files relative to its folder) or of
    ``--fixed`` with ``--moving``, output folders under ``-o``."""
    if not args.output.strip():  # an unset variable in a script's -o "$OUT": not the current folder
        raise InputError("the output folder path (-o) is empty; name the folder to hold the pairs' folders.")
    root = Path(args.output)
    if bool(args.pairs) == bool(args.fixed or args.moving):
        raise InputError("give either --pairs CSV or --fixed with --moving.")
    files: list[dict[str, str]] = []  # each pair's input files by column
    if not args.pairs:
        if not (args.fixed and args.moving):
            raise InputError("--fixed and --moving go together.")
        moving_labels = args.moving_labels or [None] * len(args.moving)
        if len(moving_labels) != len(args.moving):
            raise InputError(f"--moving-labels gives {len(moving_labels)} label maps for {len(args.moving)} moving "
                             "images; give one per moving image, in the same order.")
        rows = [{"fixed": args.fixed, "moving": m, "fixed_labels": args.fixed_labels, "moving_labels": labels,
                 "fixed_mask": args.fixed_mask} for m, labels in zip(args.moving, moving_labels)]
        files = [{key: row[key] for key in _PAIR_FILE_COLUMNS if row.get(key)} for row in rows]
    else:
        flags = [flag for flag, value in (("--fixed-labels", args.fixed_labels),
                                          ("--moving-labels", args.moving_labels), ("--fixed-mask", args.fixed_mask))
                 if value]
        if flags:
            raise InputError(f"{', '.join(flags)} go(es) with --fixed and --moving; a pairs file names each pair's "
                             "label maps and masks in its columns (fixed_labels, moving_labels, fixed_mask, ...).")
        path = Path(args.pairs)
        table = read_table(path, "pairs file", ("fixed", "moving"), known=PAIR_LIST_COLUMNS)
        if not table:
            raise InputError(f"pairs file {path} lists no pairs: one row per pair under its header.")
        rows = [row for _, row in table]
        for line, row in table:
            files.append({key: str(table_path(row[key], path)) for key in _PAIR_FILE_COLUMNS if row.get(key)})
            for role in ("fixed", "moving"):
                if role not in files[-1]:
                    raise InputError(f"pairs file {path}, line {line}: no {role} image.")
            name = row.get("output")
            if name and (Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).parts):
                raise InputError(f"pairs file {path}, line {line}: output {name!r} is not a folder inside -o; name "
                                 "one relative to it, without '..' (e.g. sub-01).")
    unnamed = [i for i, row in enumerate(rows) if not row.get("output")]
    names = {i: row["output"] for i, row in enumerate(rows) if row.get("output")}
    names.update(zip(unnamed, default_outputs([files[i]["moving"] for i in unnamed])))
    pairs = [Pair(output=str(root / names[i]), **entry) for i, entry in enumerate(files)]
    outputs = [p.output for p in pairs]
    if len(set(outputs)) != len(outputs):
        duplicate = next(o for o in outputs if outputs.count(o) > 1)
        first, second = [p.moving for p in pairs if p.output == duplicate][:2]
        remedy = "add an output column to the CSV" if args.pairs else "give the pairs as a CSV with an output column"
        raise InputError(f"two pairs (moving {first} and {second}) would write the same folder {duplicate}; {remedy}.")
    taken = set(outputs)
    for pair in pairs:  # a pair's folder inside another's: replaced with it (--overwrite), or found in its results
        outer = next((str(parent) for parent in Path(pair.output).parents if str(parent) in taken), None)
        if outer is not None:
            raise InputError(f"the output folder {pair.output} (moving {pair.moving}) lies inside {outer}, another "
                             "pair's output folder; give each pair a folder of its own in the output column.")
    return pairs


def check_label_arguments(pairs: Sequence[Pair], args: argparse.Namespace) -> None:
    """Refuse, before any work, label options that would do nothing: fixed labels without moving labels (Dice and
    HD95 compare the fixed labels with the warped moving labels), ``--labels`` without a pair having both label
    maps, ``--outputs labels`` or ``--label-interpolation`` without a pair having moving labels (``svreg preview``
    too); and landmarks of one image of a pair only."""
    columns = bool(getattr(args, "pairs", None))  # register-batch --pairs: the pairs file's columns
    fixed, moving = ("fixed_labels", "moving_labels") if columns else ("--fixed-labels", "--moving-labels")
    lonely = next((pair for pair in pairs if pair.fixed_labels and not pair.moving_labels), None)
    if lonely is not None:
        whose = f"the pair of moving image {lonely.moving} has {fixed} but no {moving}" if columns \
            else f"{fixed} needs {moving}"
        raise InputError(f"{whose}: Dice and HD95 compare the fixed labels with the warped moving labels (give both, "
                         "or neither).")
    if args.labels and not any(pair.fixed_labels and pair.moving_labels for pair in pairs):
        raise InputError(f"--labels chooses the labels Dice and HD95 score; it needs {fixed} and {moving}.")
    outputs = getattr(args, "outputs", None)  # svreg preview: each request's
    if outputs and "labels" in outputs and not any(pair.moving_labels for pair in pairs):
        raise InputError(f"--outputs labels writes the warped moving labels; it needs {moving}.")
    if args.label_interpolation and not any(pair.moving_labels for pair in pairs):
        raise InputError(f"--label-interpolation chooses how the moving labels are warped; it needs {moving}.")
    half = next((pair for pair in pairs if bool(pair.fixed_landmarks) != bool(pair.moving_landmarks)), None)
    if half is not None:  # else found after the images are read, or a pairs file's pair 57 fails hours in
        both = "fixed_landmarks and moving_landmarks" if columns else "--fixed-landmarks and --moving-landmarks"
        whose = f"the pair of moving image {half.moving}: " if columns else ""
        raise InputError(f"{whose}give both {both} (corresponding points), or neither.")


def shard_numbers(spec: str) -> tuple[int, int]:
    """``(I, N)`` of ``--shard`` ``"I/N"`` (0 <= I < N; ``"01/04"`` is ``(1, 4)``)."""
    try:
        index, count = (int(v) for v in spec.split("/"))
    except ValueError:
        raise InputError(f"--shard {spec!r}: use I/N with whole numbers, e.g. 0/4.") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {spec!r}: I must be from 0 to N - 1 and N at least 1.")
    return index, count


def shard(items: list, spec: str) -> list:
    """The items ``I, I+N, …`` of ``spec`` ``"I/N"`` (0 <= I < N)."""
    index, count = shard_numbers(spec)
    return items[index::count]


def run_register_batch(args: argparse.Namespace) -> int:
    from svreg_core.registration import load_model, resolve_device

    every = read_pairs(args)
    check_label_arguments(every, args)
    pairs = shard(every, args.shard)
    params = registration_parameters(args)
    if args.model:  # a pairs file's masks (the flags: with the parameters)
        check_masks_used(args, affine=params.affine, refine=args.refine, pairs=every)
    codes = learned_codes(args)
    # once, before any pair: corrupt weights are refused before the first pair's images are read
    model = load_model(args.model, resolve_device(params.device)) if args.model else None
    finished, summary = _prepare_batch(pairs, args, params, model and (model[1], codes))
    cache: ImageCache = {}
    rows: list[dict[str, object]] = []
    failed = 0
    for number, pair in enumerate(pairs, 1):
        if pair.output in finished:
            rows.append(batch_summary_row(pair, finished[pair.output]))
            write_batch_summary(summary, rows)
            if args.progress == "json":  # each pair ends in one "done" or "error" event, kept ones too
                emit_json({"event": "done", "pair": number, "outdir": str(Path(pair.output).absolute()),
                           "report": finished[pair.output], "kept": True})
            else:
                print(f"[{number}/{len(pairs)}] {pair.moving} -> {pair.fixed}: registered before, kept",
                      file=sys.stderr)
            continue
        if args.progress != "json":
            print(f"[{number}/{len(pairs)}] {pair.moving} -> {pair.fixed}", file=sys.stderr)
        # a script reading the JSON lines of a batch tells the pairs' progress events apart by these
        printer = ProgressPrinter(args.progress, {"pair": number, "outdir": str(Path(pair.output).absolute())})
        try:
            report = _register_pair(pair, args, params, codes, printer, cache, model)
        except Exception as exc:  # noqa: BLE001 - any pair's failure is reported and skipped (Ctrl-C stops the batch)
            failed += 1
            kind, message = (exc.__class__.__name__, str(exc)) if isinstance(exc, SvregError) else (
                _machine_failure(exc) or (exc.__class__.__name__, f"{exc.__class__.__name__}: {exc}"))
            if args.progress == "json":
                emit_json({"event": "error", "message": message, "kind": kind, "pair": number,
                           "outdir": str(Path(pair.output).absolute())})
            print(f"svreg: error: {pair.moving}: {message}", file=sys.stderr)
            rows.append(batch_summary_row(pair, None, message))
            write_batch_summary(summary, rows)
            continue
        finally:
            printer.close()
        rows.append(batch_summary_row(pair, report))
        write_batch_summary(summary, rows)
        if args.progress == "json":
            emit_json({"event": "done", "pair": number, "outdir": str(Path(pair.output).absolute()),
                       "report": report})
        else:
            print(f"{pair.output}: {_summary(report)}")
    write_batch_summary(summary, rows)  # also a shard without pairs: its header
    if args.progress != "json":
        print(f"Summary of {len(pairs)} pair{'' if len(pairs) == 1 else 's'}: {summary}")
    if failed:
        print(f"svreg: error: {failed} of {len(pairs)} pairs failed (see above and {summary.name}).", file=sys.stderr)
        return 2
    return 0


def _prepare_batch(pairs: list[Pair], args: argparse.Namespace, params,
                   learned: tuple[ModelInfo, tuple[float, float] | None] | None) -> tuple[dict[str, dict], Path]:
    """Before the first registration of a batch: every input file exists, every output folder can be written, and
    an earlier run's results are not replaced unasked. ``learned``: with ``--model``, the model's description and
    the codes asked for (:func:`learned_codes`). Returns the reports of the pairs finished before that ``--resume``
    keeps (by output folder) and the path of the batch's summary CSV."""
    from svreg_core.outputs.writer import prepare_output_dir

    check_batch_inputs(pairs)
    if args.resume and args.overwrite:
        raise InputError("--resume keeps the pairs registered before and --overwrite replaces them; choose one.")
    finished = {pair.output: report for pair in pairs if (report := finished_report(pair))}
    if finished and not (args.resume or args.overwrite):
        raise InputError(f"{next(iter(finished))} holds a finished registration of its pair (an earlier run of this "
                         "batch?); use --resume to keep the finished pairs and register the rest, --overwrite to "
                         "redo every pair, or another output folder.")
    if args.overwrite:
        finished = {}
    check_same_batch(finished, args, params, learned)
    for pair in pairs:
        if pair.output not in finished:
            prepare_output_dir(pair.output, overwrite=args.overwrite, inputs=pair.inputs(), create_parent=False)
    summary = Path(args.output) / batch_summary_name(args.shard)
    if summary.exists() and not (args.overwrite or args.resume):
        raise InputError(f"{summary} exists (an earlier batch's summary); use --resume to go on with that batch, "
                         "--overwrite to replace it, or another output folder.")
    Path(args.output).mkdir(parents=True, exist_ok=True)
    return finished, summary


#: Parameters that do not change a pairwise registration's result (beyond the last bits): not compared by --resume.
_RESUME_IGNORED = ("device", "deterministic", "network_precision", "symmetric_prediction", "prediction_passes",
                   "refine_codes")


def check_same_batch(finished: dict[str, dict], args: argparse.Namespace, params,
                     learned: tuple[ModelInfo, tuple[float, float] | None] | None = None) -> None:
    """Refuse ``--resume`` where a kept pair was registered otherwise than this command would, naming the first
    difference: pairwise against a learned model; other pairwise parameters (an α′ changed between runs, say); with
    a learned model (``learned``: its description and the codes asked for), another model, other refinement steps
    or other parameters of the prediction and refinement (the codes among them). The batch's results would mix both
    without a word."""
    from svreg_core.registration import learned_parameters, refinement_parameters

    model: dict[str, object] = {}  # the model's description as a report records it
    if learned is None:
        wanted = json.loads(json.dumps(params.to_dict()))
    else:
        info, codes = learned
        run = learned_parameters(info, params, codes, args.refine)
        wanted = json.loads(json.dumps((refinement_parameters(run, args.refine) if args.refine else run).to_dict()))
        model = json.loads(json.dumps({key: value for key, value in info.to_dict().items() if key != "config"}))
    for output, report in finished.items():
        recorded: dict = report["parameters"] if isinstance(report.get("parameters"), dict) else {}
        used: dict = report["model"] if isinstance(report.get("model"), dict) else {}
        if (report.get("method") == "pairwise") != (learned is None):
            was = "pairwise optimisation" if report.get("method") == "pairwise" else "a learned model"
            now = "a learned model (--model)" if args.model else "pairwise optimisation"
            difference = f"with {was}, this command with {now}"
        elif learned is not None and (key := next((k for k, value in model.items() if used.get(k) != value), None)):
            difference = (f"with a model whose {key} is {json.dumps(used.get(key))}, this command's {args.model} "
                          f"has {json.dumps(model[key])}")
        elif learned is not None and report.get("refine_steps") != args.refine:
            difference = f"with {report.get('refine_steps')} refinement steps, this command with {args.refine}"
        elif key := next((k for k, value in wanted.items() if k not in _RESUME_IGNORED
                          and k in recorded and recorded[k] != value), None):
            difference = f"with {key} {json.dumps(recorded[key])}, this command with {json.dumps(wanted[key])}"
        else:
            continue
        raise InputError(f"--resume: {output} was registered {difference}; not the same batch. Give the earlier "
                         "run's parameters to go on with it, --overwrite to redo every pair, or another output "
                         "folder.")


def finished_report(pair: Pair) -> dict | None:
    """The report of ``pair``'s output folder when a registration of the same moving and fixed images completed
    there (:func:`is_output_folder`, the report naming those files: the same file, or for a path the report holds
    relative to the folder the batch ran in, which may not be this one, the same file name), else ``None``."""
    if not is_output_folder(pair.output):
        return None
    try:
        report = json.loads((Path(pair.output) / "report.json").read_text(encoding="utf-8"))
        named = [Path(report["inputs"][role]["path"]) for role in ("fixed", "moving")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = all(old.resolve() == Path(new).resolve() or (not old.is_absolute() and old.name == Path(new).name)
               for old, new in zip(named, (pair.fixed, pair.moving)))
    return report if same else None


def check_batch_inputs(pairs: list[Pair]) -> None:
    """Before the first registration: :class:`InputError` naming the input files of ``pairs`` that do not exist (at
    most five, then how many more), so that a typo in pair 57 does not wait hours to be found."""
    roles = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask", "fixed_landmarks",
             "moving_landmarks", "initial_transform")
    missing = list(dict.fromkeys(f"{role.replace('_', ' ')} {path}" for pair in pairs for role in roles
                                 if (path := getattr(pair, role)) and not Path(path).exists()))
    if missing:
        more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"{len(missing)} input file(s) of the batch not found ({'; '.join(missing[:5])}{more}); "
                         "nothing was registered.")


#: Columns of a batch's summary CSV (:func:`batch_summary_row`): the pair, whether it registered, and the report's
#: headline metrics (empty when not computed: Dice and HD95 need both label maps, TRE both landmark files).
BATCH_SUMMARY_COLUMNS = ("fixed", "moving", "output", "status", "error", "dice_mean", "hd95_mean", "tre_mean_mm",
                         "folding_percent", "ndv_percent", "sdlogj", "registration_s")


def batch_summary_name(spec: str) -> str:
    """``summary.csv`` for a whole batch, ``summary_shard-I-of-N.csv`` for shard ``"I/N"`` of a job array (the
    shards of one batch write side by side), whichever way the numbers are written (``01/04`` as ``1/4``)."""
    index, count = shard_numbers(spec)
    return "summary.csv" if count == 1 else f"summary_shard-{index}-of-{count}.csv"


def batch_summary_row(pair: Pair, report: dict | None, error: str = "") -> dict[str, object]:
    """One pair's row of the batch summary: ``report`` (``None``: the pair failed with ``error``)."""
    row: dict[str, object] = {"fixed": pair.fixed, "moving": pair.moving, "output": pair.output,
                              "status": "failed" if report is None else "ok", "error": error}
    if report is not None:
        metrics = report["metrics"]
        row.update({key: metrics.get(key) for key in ("dice_mean", "hd95_mean", "folding_percent", "ndv_percent",
                                                      "sdlogj")})
        row["tre_mean_mm"] = (metrics.get("tre") or {}).get("mean")
        row["registration_s"] = report["timing"].get("registration_s")
    return {key: "" if row.get(key) is None else row[key] for key in BATCH_SUMMARY_COLUMNS}


def write_batch_summary(path: Path, rows: list[dict[str, object]]) -> None:
    """Write the rows so far (after every pair: an interrupted batch keeps its summary), replacing the file when
    complete (:func:`~svreg_core.atomic.replaced_when_complete`)."""
    import csv

    with replaced_when_complete(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=BATCH_SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


PREVIEW_EXAMPLES = """\
examples:
  svreg preview fixed.nii.gz moving.nii.gz --model brain-hyper-unet-spr --threads 2
  then one JSON request per line on standard input, e.g.
  {"alpha_prime": 0.1, "lambda_max": 2, "output": "previews/p1", "outputs": ["displacement", "regularization"], "id": 1}
  {"quit": true}

The images are read, the model loaded and the affine stage run once; each request then runs the network
alone at its codes (inside the model's trained ranges) and writes the outputs as 'svreg register' does
(report.json included; identical files to 'svreg register ... --model M --alpha-prime A --lambda-max L
--outputs ...'). Answers are JSON lines on standard output: a "ready" event once started, then per request
"progress" events and one "done" (outdir, report) or "error" (message) event, with the request's "id".
A bad request gets an "error" event and the engine serves on; {"quit": true} or the end of input ends it.
request fields: alpha_prime, lambda_max (default: the model's own), output (a new folder; required),
outputs (default: all), overwrite, label_metrics (Dice/HD95 with both label maps; default false), id.
"""


def add_preview_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", help=f"fixed (reference) image: {IMAGE_KINDS}")
    p.add_argument("moving", help="moving image, the same kinds; any orientation, voxel size or oblique affine")
    p.add_argument("--model", required=True, help="a HyperSPR model: a shipped model's name (see 'svreg models') or "
                   "a checkpoint folder from 'svreg train --hyper-alpha-prime LO HI --hyper-lambda-max LO HI ...'")
    p.add_argument("--fixed-labels", help="label map on the fixed grid (Dice/HD95 of requests with label_metrics)")
    p.add_argument("--moving-labels", help="label map on the moving grid (the 'labels' output)")
    p.add_argument("--fixed-mask", help="mask on the fixed grid restricting the affine stage's similarity")
    p.add_argument("--moving-mask", help="mask on the moving grid restricting the affine stage's similarity")
    p.add_argument("--crop-fixed", type=float, nargs=6, metavar=("R1", "A1", "S1", "R2", "A2", "S2"),
                   help="register only the fixed image's voxels inside this world box (as svreg register)")
    p.add_argument("--labels", type=int, nargs="+", help="label values to score (default: all labels in both maps)")
    p.add_argument("--label-interpolation", choices=LABEL_INTERPOLATIONS, default=None,
                   help="label warping: one-hot trilinear + argmax (linear, the default) or nearest neighbour; needs "
                        "moving labels")
    p.add_argument("--preset", default="brain-mri",
                   help=f"parameter preset (its affine stage and device): {', '.join(PRESETS)}, or a preset JSON file")
    add_runtime_arguments(p, affine_help="run the affine pre-alignment stage, once (default on)",
                          deterministic_help="PyTorch's deterministic mode on CUDA (as svreg register)")
    add_prediction_arguments(p)
    add_gzip_level_argument(p)


def check_masks_used(args: argparse.Namespace, *, affine: bool, refine: int, pairs: Sequence[Pair] = ()) -> None:
    """Refuse ``--fixed-mask``/``--moving-mask`` (and the masks of ``pairs``, a pairs file's) with a learned model
    that would not use them: they restrict the similarity of the affine stage and of a refinement, and without
    either the network alone ignores them."""
    masks = [flag for flag, value in (("--fixed-mask", getattr(args, "fixed_mask", None)),
                                      ("--moving-mask", getattr(args, "moving_mask", None))) if value]
    masks += [f"{column} (pairs file)" for column in ("fixed_mask", "moving_mask")
              if any(getattr(pair, column) for pair in pairs)]
    if masks and not refine and not affine:
        verb = "restricts" if len(masks) == 1 else "restrict"
        raise InputError(f"{' and '.join(masks)} {verb} the similarity of the affine stage and of a refinement of "
                         "the learned model's prediction (svreg register --refine N); without either (--no-affine) "
                         "the network alone does not use them.")


def run_preview(args: argparse.Namespace) -> int:
    """``svreg preview``: checks and loads everything before the affine stage, then serves stdin's requests."""
    from svreg_core.models import read_model_info
    from svreg_core.models.zoo import resolve_model
    from svreg_core.optim.parameters import load_parameters
    from svreg_core.preview_engine import PreviewEngine, check_hyper_model
    from svreg_core.registration import prepare_pair

    t0 = time.perf_counter()
    pair = Pair(args.fixed, args.moving, "", args.fixed_labels, args.moving_labels, args.fixed_mask, args.moving_mask)
    check_label_arguments([pair], args)
    set_threads(args)
    check_hyper_model(read_model_info(resolve_model(args.model)))
    with flag_names(args):
        params = load_parameters(args.preset, affine=args.affine, pose_search=args.pose_search, device=args.device,
                                 deterministic=args.deterministic, symmetric_prediction=args.symmetric_prediction,
                                 prediction_passes=args.prediction_passes, network_precision=args.network_precision)
    check_masks_used(args, affine=params.affine, refine=0)
    set_deterministic_environment(params)
    printer = ProgressPrinter("json")
    printer(ProgressEvent("load", 0, 1, 0.0, "reading images"))
    images = load_pair_images(pair, args.crop_fixed, {})
    check_scored_labels(args.labels, images)
    load_s = time.perf_counter() - t0
    prepared = prepare_pair(images.fixed, images.moving, params, fixed_mask=images.fixed_mask,
                            moving_mask=images.moving_mask, model=args.model)
    engine = PreviewEngine(prepared.align(printer), fixed_labels=images.fixed_labels,
                           moving_labels=images.moving_labels, labels=args.labels,
                           label_mode=args.label_interpolation or "linear", inputs=pair.inputs(),
                           sources=pair.sources(),
                           extra=images.extra, gzip_level=args.gzip_level)
    prepared.timing["load_s"] = load_s
    info = prepared.info
    assert info is not None and info.code_ranges is not None  # a hyper model (--model, check_hyper_model)
    emit_json({"event": "ready", "device": str(prepared.device), "timing": dict(prepared.timing),
                "model": info.name or info.architecture, "code_ranges": info.code_ranges.to_dict(),
                "default_codes": {"alpha_prime": info.alpha_prime, "lambda_max": info.lambda_max}})
    if isinstance(sys.stdin, io.TextIOWrapper):  # JSON lines are UTF-8; a byte that is not ends as one error answer
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")
    engine.serve(iter(sys.stdin.readline, ""), emit_json)
    return 0


APPLY_EXAMPLES = """\
examples:
  svreg apply OUT moving_t2.nii.gz -o t2_on_fixed.nii.gz            # like warped.nii.gz, another image
  svreg apply OUT moving_seg.nii.gz -o seg_on_fixed.nii.gz --labels
  svreg apply OUT fixed_atlas.nii.gz -o atlas_on_moving.nii.gz --labels --inverse
  svreg apply OUT moving_ct.nrrd -o ct_on_fixed.nrrd                # NRRD (Slicer) or MetaImage in and out
  svreg apply OUT/transform.h5 moving.nii.gz -o out.nii.gz --reference other_grid.nii.gz --interpolation bspline
  svreg apply OUT landmarks_fixed.mrk.json -o landmarks_moving.mrk.json     # points: fixed -> moving
  svreg apply OUT landmarks_moving.csv -o landmarks_fixed.csv --inverse --coordinates lps

directions: the forward transform resamples a moving-space image onto the fixed grid (out(x) = image(T(x)))
and maps points from the fixed world to the moving world (T(x), as ITK's TransformPoint with the same file);
--inverse does the opposite (from an output folder through its inverse_displacement.nii.gz, otherwise
inverted numerically, which needs --reference for images).
"""


def add_apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("transform", help="an svreg output folder, an ITK transform (.h5/.tfm) or a displacement "
                   "NIfTI in the ITK/ANTs layout (LPS mm)")
    p.add_argument("input", help=f"image or label map ({IMAGE_KINDS}), or points (.csv with x,y,z columns, Slicer "
                   ".fcsv or .mrk.json)")
    p.add_argument("-o", "--output", required=True, help="output file, same kind as the input (images: .nii.gz, "
                   ".nii, .nrrd, .nhdr, .mha or .mhd)")
    p.add_argument("--inverse", action="store_true", help="apply the inverse mapping (moving -> fixed side)")
    p.add_argument("--reference", help="image whose grid the output is sampled on (default: the transform's "
                   "grid: fixed grid forward, moving grid inverse)")
    p.add_argument("--labels", action="store_true", help="the input is a label map (integer output)")
    p.add_argument("--interpolation", choices=tuple(dict.fromkeys((*IMAGE_INTERPOLATIONS, *LABEL_INTERPOLATIONS))),
                   default=None,
                   help="images: linear (default) or bspline; label maps: linear (one-hot trilinear + argmax, "
                   "default) or nearest")
    p.add_argument("--coordinates", choices=("ras", "lps"), default=None,
                   help="frame of the x,y,z columns of a .csv (default ras; .fcsv and .mrk.json declare theirs)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run_apply(args: argparse.Namespace) -> int:
    import numpy as np

    from svreg_core.image import load_image, save_image
    from svreg_core.image.io import check_writable_name, load_grid
    from svreg_core.image.itk_io import data_files
    from svreg_core.outputs.read import load_transform
    from svreg_core.outputs.writer import check_output_file

    if not args.output.strip():  # Path("") is the current folder: "output file . already exists"
        raise InputError("the output file path (-o) is empty; name the file to write.")
    out = Path(args.output)
    _check_apply_output(out, args)
    check_output_file(out)
    points = is_points_file(args.input)
    if points != is_points_file(out):
        raise InputError("input and output must both be images or both be point files of the same format.")
    if points and points_suffix(args.input) != points_suffix(out):
        raise InputError(f"{out.name} would hold the points of {Path(args.input).name} in another format; name an "
                         f"output ending in {points_suffix(args.input)} (the same format as the input).")
    _check_apply_flags(args, points)
    if not points:
        check_writable_name(out)
        taken = [p for p in data_files(out) if p.exists()]
        if taken and not args.overwrite:
            raise InputError(f"{taken[0]} already exists, and writing {out.name} would replace it (its data file); "
                             "use --overwrite to replace it.")
    kept_inverse = args.inverse and (Path(args.transform) / "inverse_displacement.nii.gz").is_file()
    if is_output_folder(args.transform) and not _kept_transform(args.transform) and not kept_inverse:
        raise InputError(f"{args.transform} kept no transform (its run's --outputs left out displacement and "
                         f"transform{', and inverse for --inverse' if args.inverse else ''}); register again with "
                         "them to apply the result.")
    transform = load_transform(args.transform, inverse=args.inverse)
    if points:
        count = transform_points_file(transform, args.input, out, coordinates=args.coordinates or "ras")
        print(f"Mapped {count} point{'' if count == 1 else 's'}: {out}")
        return 0
    if transform.grid is None and not args.reference:  # before the input is read (a whole DICOM series, say)
        raise InputError(f"{args.transform} has no grid of its own (a linear transform, or an inverse computed "
                         "numerically): give the grid to sample the output on with --reference IMAGE.")
    reference = load_grid(args.reference, name="reference image") if args.reference else None
    if args.labels:
        labels = load_image(args.input, labels=True, name="label map")
        mode = args.interpolation or "linear"
        if mode not in LABEL_INTERPOLATIONS:
            raise InputError(f"label maps take --interpolation {' or '.join(LABEL_INTERPOLATIONS)}, not {mode}.")
        save_image(apply_to_labels(transform, labels, reference=reference, interpolation=mode), out, dtype=np.int32)
    else:
        image = load_image(args.input, name="input image")
        mode = args.interpolation or "linear"
        if mode not in IMAGE_INTERPOLATIONS:
            raise InputError("--interpolation nearest is for label maps (add --labels); images take linear or "
                             "bspline.")
        save_image(apply_to_image(transform, image, reference=reference, interpolation=mode), out)
    print(f"Wrote {out}")
    return 0


def _check_apply_flags(args: argparse.Namespace, points: bool) -> None:
    """Refuse, before anything is read, ``svreg apply`` flags that the input's kind would ignore: ``--labels``,
    ``--interpolation`` and ``--reference`` for points (they are mapped, not resampled), ``--coordinates`` for an
    image or for a point file that declares its frame (``.fcsv``, ``.mrk.json``)."""
    if points:
        flag = next((flag for flag, value in (("--labels", args.labels), ("--interpolation", args.interpolation),
                                              ("--reference", args.reference)) if value), None)
        if flag is not None:
            raise InputError(f"{flag} is for images and label maps; {Path(args.input).name} holds points, which are "
                             f"mapped, not resampled: leave {flag} out.")
        if args.coordinates is not None and points_suffix(args.input) != ".csv":
            raise InputError(f"--coordinates is for the x, y, z columns of a .csv; {Path(args.input).name} declares "
                             "its own frame: leave --coordinates out.")
    elif args.coordinates is not None:
        raise InputError(f"--coordinates is for point files (.csv); {Path(args.input).name} is an image: leave "
                         "--coordinates out.")


def _check_apply_output(out: Path, args: argparse.Namespace) -> None:
    """Refuse an ``svreg apply`` output that exists (without ``--overwrite``), is a folder, or would replace one of
    the command's own files, even with ``--overwrite``: the input, the transform (a file, or any file in a
    transform folder) or the reference image."""
    if out.exists() and not args.overwrite:
        raise InputError(f"output file {out} already exists; use --overwrite to replace it.")
    if out.is_dir():
        raise InputError(f"output {out} is a folder; name a file.")
    target = out.resolve()
    transform = Path(args.transform).resolve()
    own = [("the input file", Path(args.input).resolve()), ("the transform file", transform)]
    if args.reference:
        own.append(("the reference image", Path(args.reference).resolve()))
    what = next((name for name, path in own if target == path), None)
    if what is None and transform.is_dir() and target.is_relative_to(transform):
        what = f"inside the transform folder {args.transform}"
    if what is not None:
        raise InputError(f"the output file {out} is {what}; name another output.")


def run_models(args: argparse.Namespace) -> int:
    from svreg_core.models import read_model_info
    from svreg_core.models.zoo import describe, resolve_model, shipped_models

    found = shipped_models()
    if args.checkpoints:  # as their model.json describes them, checked as --model checks it (weights not read)
        found = {}
        for given in args.checkpoints:
            folder = resolve_model(given)
            info = read_model_info(folder)
            found[info.name or (folder if folder.is_dir() else folder.parent).name] = info.to_dict()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for name, meta in found.items():
            print(describe(name, meta))
        if not found:
            print("no shipped model found (train one with 'svreg train')", file=sys.stderr)
    return 0


INFO_EXAMPLES = """\
examples:
  svreg info fixed.nii.gz moving.nrrd            # where each image lies, and how much the first overlaps the others
  svreg info ct_series_folder/ --json            # a DICOM series, as JSON
  svreg info study_folder/                       # a folder of several DICOM series: each, with a file that reads it
  svreg info 0GenericAffine.mat out/transform.h5 # what a transform does: rotation, scales, translation, field size
  svreg info out/                                # an svreg output folder: which images, method, metrics, transform
"""


def describe_image(image: Image | Grid, path: str) -> dict:
    """What ``svreg info`` prints about an image: :func:`~svreg_core.outputs.writer.describe_input`'s shape,
    voxel size and orientation code, the RAS extent of its voxel centres (mm) and its value range (of an
    :class:`Image`; a :class:`Grid` alone, whose voxels svreg refuses, has none)."""
    import numpy as np

    from svreg_core.image import Grid
    from svreg_core.outputs.writer import describe_input

    grid = image if isinstance(image, Grid) else image.grid
    corners = grid.corner_points()
    entry = {**describe_input(image, path), "ras_min_mm": [round(float(v), 3) for v in corners.min(0)],
             "ras_max_mm": [round(float(v), 3) for v in corners.max(0)]}
    if not isinstance(image, Grid):
        data = np.asarray(image.data)
        entry.update(value_min=float(data.min()), value_max=float(data.max()))
    return entry


def describe_transform(path: str) -> dict:
    """What ``svreg info`` prints about a transform file (:func:`~svreg_core.outputs.read.load_transform`): its
    steps in the order they act on a fixed-world point, in RAS mm. A linear step: its 4x4 matrix, the rotation
    nearest to its linear part (degrees, about a unit RAS axis; none under 0.01°), its scales (the linear part's
    singular values) and its translation (the image of the origin); a displacement field: its grid and the
    largest and mean length of its vectors. ``maps``: ``"moving to fixed"`` for an svreg output folder's
    ``inverse_displacement.nii.gz``, else ``"fixed to moving"`` (what a registration's transform file maps)."""
    import numpy as np

    from svreg_core.optim.pose_search import rotation_degrees
    from svreg_core.outputs.read import DisplacementField, load_transform

    steps: list[dict] = []
    for step in load_transform(path).steps:
        if isinstance(step, np.ndarray):
            u, scales, vt = np.linalg.svd(step[:3, :3])
            rotation = u @ vt
            degrees = rotation_degrees(step, np.eye(4))
            values, vectors = np.linalg.eig(rotation)
            axis = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
            skew = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0],
                             rotation[1, 0] - rotation[0, 1]])
            axis = axis if axis @ skew >= 0 else -axis  # turning by +degrees about it (right-handed)
            steps.append({"type": "linear", "matrix_ras": step.tolist(), "rotation_degrees": round(degrees, 4),
                          "rotation_axis_ras": _rounded(axis, 4) if degrees >= 0.01 else None,
                          "scales": _rounded(scales, 5), "translation_mm": _rounded(step[:3, 3], 4)})
        elif isinstance(step, DisplacementField):
            length = np.linalg.norm(step.displacement, axis=-1)
            steps.append({"type": "displacement field", "shape": list(step.grid.shape),
                          "spacing_mm": _rounded(step.grid.spacing, 4),
                          "max_mm": round(float(length.max()), 4), "mean_mm": round(float(length.mean()), 4)})
    inverse = Path(path).name == "inverse_displacement.nii.gz" and is_output_folder(str(Path(path).parent))
    return {"path": path, "maps": "moving to fixed" if inverse else "fixed to moving", "transform": steps}


def _rounded(values: Iterable[float], digits: int) -> list[float]:
    return [round(float(v), digits) + 0.0 for v in values]  # + 0.0: no "-0.00" in the text


def is_output_folder(path: str) -> bool:
    """Whether ``path`` is an output folder of ``svreg register`` (its marker file and ``report.json``)."""
    from svreg_core.outputs.writer import MARKER_FILE

    folder = Path(path)
    return (folder / MARKER_FILE).is_file() and (folder / "report.json").is_file()


def is_displacement_file(path: str) -> bool:
    """Whether ``path`` is a NIfTI displacement field in the ITK/ANTs layout (``svreg register``'s
    ``displacement.nii.gz`` and ``inverse_displacement.nii.gz``, ANTs' ``Warp.nii.gz``): 5-D ``(I, J, K, 1, 3)``, or
    4-D ``(I, J, K, 3)`` with the NIfTI intent *vector*; only its header is read."""
    import nibabel as nib

    if not path.lower().endswith((".nii", ".nii.gz")) or not Path(path).is_file():
        return False
    logger = nib.imageglobals.logger
    quiet, logger.disabled = logger.disabled, True  # the header's fixes are told when the file is read
    try:
        image = nib.load(path)
    except Exception:  # noqa: BLE001 - not a readable NIfTI: described (or refused) as an image
        return False
    finally:
        logger.disabled = quiet
    if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 included
        return False
    shape, intent = tuple(image.header.get_data_shape()), image.header.get_intent()[0]
    return (len(shape) == 5 and shape[3:] == (1, 3)) or (len(shape) == 4 and shape[3] == 3 and intent == "vector")


def _kept_transform(folder: str) -> bool:
    """Whether an output folder holds a forward transform file (its run's ``--outputs`` may have left them out)."""
    return any((Path(folder) / name).is_file() for name in ("displacement.nii.gz", "transform.h5"))


def describe_output(path: str) -> dict:
    """What ``svreg info`` prints about an svreg output folder: from its ``report.json`` the method (and model),
    the fixed and moving images, the metrics; from its files the transform (:func:`describe_transform`)."""
    try:  # a report.json of another shape (edited, of another tool) fails anywhere in here
        report = json.loads((Path(path) / "report.json").read_text(encoding="utf-8"))
        inputs = report["inputs"]
        output = {"method": report.get("method"), "model": (report.get("model") or {}).get("name"),
                  "fixed": inputs.get("fixed", {}).get("path"), "moving": inputs.get("moving", {}).get("path"),
                  "summary": _summary(report).removeprefix("Registered "), "metrics": report["metrics"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: its report.json is unreadable; the folder is not a complete svreg output.") from None
    transform = describe_transform(path) if _kept_transform(path) else {"path": path, "transform": []}
    return {**transform, "svreg_output": output}


def _transform_line(entry: dict) -> str:
    parts = []
    for step in entry["transform"]:
        if step["type"] == "linear":
            axis = step["rotation_axis_ras"]
            turn = (f"rotation {step['rotation_degrees']:.2f}° about ({', '.join(f'{v:.2f}' for v in axis)})"
                    if axis else "no rotation")
            parts.append(f"linear: {turn}, scales {' / '.join(f'{v:.3f}' for v in step['scales'])}, translation "
                         f"({', '.join(f'{v:.2f}' for v in step['translation_mm'])}) mm")
        else:
            parts.append(f"displacement field on {' x '.join(map(str, step['shape']))} voxels of "
                         f"{' x '.join(f'{v:.4g}' for v in step['spacing_mm'])} mm, vectors up to "
                         f"{step['max_mm']:.2f} mm (mean {step['mean_mm']:.2f})")
    output = entry.get("svreg_output")
    heading = "" if output is None else (
        f"svreg output: {output['moving']} registered to {output['fixed']} {output['summary']}; ")
    if not parts:
        return f"{entry['path']}: {heading}no transform file kept (the run's --outputs left them out)"
    direction = ("moving-world to fixed-world points (RAS; the registration's inverse)"
                 if entry.get("maps") == "moving to fixed" else "fixed-world to moving-world points (RAS)")
    return f"{entry['path']}: {heading}transform of {direction}, acting in turn: " + "; ".join(parts)


def info_inputs(paths: list[str]) -> list[tuple[str, DicomSeries | None]]:
    """``svreg info``'s images: each path with its DICOM series (``None`` for other files); a folder holding
    several series stands for each of them, named by its first file (the name that reads that series)."""
    from svreg_core.image.io import is_dicom_input
    from svreg_core.image.itk_io import find_dicom_series

    inputs: list[tuple[str, DicomSeries | None]] = []
    for path in paths:
        try:
            series = find_dicom_series(Path(path)) if is_dicom_input(Path(path)) else []
        except RuntimeError:  # unreadable: load_image says why
            series = []
        if len(series) > 1:
            inputs += [(found.files[0], found) for found in series]
        else:
            inputs.append((path, series[0] if series else None))
    return inputs


def run_info(args: argparse.Namespace) -> int:
    """Describe each image and transform file; with several images, the share of the first one's foreground in each
    other's field of view."""
    import numpy as np

    from svreg_core.image import load_image
    from svreg_core.image.image import foreground_inside
    from svreg_core.image.io import load_grid
    from svreg_core.outputs.read import ITK_TRANSFORM_SUFFIXES

    is_transform = lambda path: (path.lower().endswith(ITK_TRANSFORM_SUFFIXES) or is_output_folder(path)  # noqa: E731
                                 or is_displacement_file(path))
    transforms = [describe_output(path) if is_output_folder(path) else describe_transform(path)
                  for path in args.images if is_transform(path)]
    inputs = info_inputs([path for path in args.images if not is_transform(path)])
    paths = [path for path, _ in inputs]
    images: list[Image | None] = []
    entries = []
    for path in paths:
        with _recorded_warnings() as shown:
            try:
                image = load_image(path)
                entries.append(describe_image(image, path))
                images.append(image)
            except InputError as exc:  # its voxels (NaN, constant...): the geometry is described, with the reason
                with warnings.catch_warnings(record=True) as again:  # read again: a header's warning given once
                    warnings.simplefilter("always")
                    grid = load_grid(path)
                for caught in again:
                    if str(caught.message) not in shown:
                        warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
                entries.append({**describe_image(grid, path), "problem": str(exc)})
                images.append(None)
    for entry, (_, found) in zip(entries, inputs):
        if found is not None:
            entry["dicom_series"] = {"uid": found.uid, "description": found.description,
                                     "modality": found.modality, "files": len(found.files)}
    first = images[0] if images else None
    for entry, other in zip(entries[1:], images[1:]):
        if first is not None and other is not None:
            entry["first_foreground_inside"] = foreground_inside(first, other.grid)
    if args.json:
        print(json.dumps([*entries, *transforms], indent=2))
        return 0
    for transform in transforms:
        print(_transform_line(transform))
    for entry, (_, found) in zip(entries, inputs):
        extent = ", ".join(f"{axis} {lo:.1f} to {hi:.1f}" for axis, lo, hi in
                           zip("RAS", entry["ras_min_mm"], entry["ras_max_mm"]))
        dicom = f"; DICOM series {found.summary()}" if found is not None else ""
        values = f"cannot be registered: {entry['problem']}" if "problem" in entry else \
            f"values {entry['value_min']:.6g} to {entry['value_max']:.6g}"
        print(f"{entry['path']}: {' x '.join(map(str, entry['shape']))} voxels of "
              f"{' x '.join(f'{v:.4g}' for v in entry['spacing_mm'])} mm, {entry['orientation']}; voxel centres "
              f"{extent} mm; {values}{dicom}")
    centres = [(np.array(entry["ras_min_mm"]) + np.array(entry["ras_max_mm"])) / 2 for entry in entries]
    for entry, centre in zip(entries[1:], centres[1:]):
        if "first_foreground_inside" in entry:
            print(f"{100 * entry['first_foreground_inside']:.1f} % of {paths[0]}'s foreground lies in the field "
                  f"of view of {entry['path']} (their centres are {np.linalg.norm(centre - centres[0]):.0f} mm "
                  "apart)")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    from svreg_core import __version__

    parser = argparse.ArgumentParser(prog="svreg", description="Diffeomorphic registration with a spatially "
                                     "varying regularizer (SPR).")
    parser.add_argument("--version", action="version", version=f"svreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}
    reg = sub.add_parser("register", help="register a moving image to a fixed image (no training needed)",
                         epilog=REGISTER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_register_arguments(reg)
    handlers["register"] = run_register
    batch = sub.add_parser("register-batch", help="register many pairs (one fixed and many moving images, or a "
                           "CSV of pairs), optionally one shard of a job array", epilog=BATCH_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_batch_arguments(batch)
    handlers["register-batch"] = run_register_batch
    apply = sub.add_parser("apply", help="apply a saved transform to an image, a label map or points",
                           description="Apply a transform from 'svreg register' (or any ITK displacement/linear "
                           "transform) to an image, a label map or a point file.", epilog=APPLY_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_apply_arguments(apply)
    handlers["apply"] = run_apply
    prev = sub.add_parser("preview", help="keep a HyperSPR model and an aligned pair loaded and register at the "
                          "codes of each JSON request line on stdin (the Slicer module's live preview)",
                          epilog=PREVIEW_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preview_arguments(prev)
    handlers["preview"] = run_preview
    from svreg_core.training.cli import add_train_arguments, run_train
    train = sub.add_parser("train", help="train a learned SPR network (resumable; torchrun for several GPUs/nodes)")
    add_train_arguments(train)
    handlers["train"] = run_train
    info = sub.add_parser("info", help="describe images (size, voxel size, orientation, where they lie in RAS mm, "
                          "values, whether they overlap) and transform files (rotation, scales, translation)",
                          epilog=INFO_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("images", nargs="+", help="image files, DICOM files or DICOM folders (any format svreg reads), "
                      "transform files (.h5, .tfm, .txt, .mat, a displacement .nii.gz in the ITK/ANTs layout) and "
                      "svreg output folders")
    info.add_argument("--json", action="store_true", help="print a JSON list: one object per image, then one per "
                      "transform file or output folder")
    handlers["info"] = run_info
    models = sub.add_parser("models", help="list the shipped learned models, one per line, name first (or describe "
                            "the checkpoints given)")
    models.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                        help="describe these instead: a checkpoint folder (model.json beside model.safetensors, e.g. "
                        "RUN/best from svreg train), a file in it, or a shipped model's name")
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
    json_mode = getattr(args, "progress", None) == "json" or args.command == "preview"
    threads_within_cpu_limit()
    # sigterm: a scheduler's or the Slicer module's stop request, handled like Ctrl-C
    with sigterm_as_interrupt(), warnings.catch_warnings():
        _one_line_warnings()
        try:
            return handlers[args.command](args)
        except SvregError as exc:
            if json_mode:
                emit_json({"event": "error", "message": str(exc), "kind": exc.__class__.__name__})
            print(f"svreg: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            resume = " (run the same command again to resume after the last finished epoch)" \
                if args.command == "train" else ""
            print(f"svreg: interrupted{resume}", file=sys.stderr)
            return interrupted_status(exc)
        except Exception as exc:
            failure: tuple[str, str] | None = _machine_failure(exc)
            status = 1
            if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a path given: the user's to change
                where = f"the path {exc.filename} has" if exc.filename else "a path given has"
                failure, status = ("InputError", f"{where} a file or folder name too long for the file system (most "
                                   "allow 255 bytes per name); choose a shorter one."), 2
            if failure is None:
                raise
            kind, msg = failure
            if json_mode:
                emit_json({"event": "error", "message": msg, "kind": kind})
            print(f"svreg: error: {msg}", file=sys.stderr)
            return status


def _machine_failure(exc: BaseException) -> tuple[str, str] | None:
    """``(kind, one-line message)`` for a failure of the machine rather than of the input: memory ran out, the disk
    filled up, or a data-loading worker of ``svreg train`` died (killed, e.g. by the system's out-of-memory killer);
    ``None`` for any other error (a bug: its traceback is shown)."""
    if _is_out_of_memory(exc):
        gpu = "CUDA" in str(exc) or exc.__class__.__name__ == "OutOfMemoryError"
        return "OutOfMemory", ("the GPU ran out of memory; use --device cpu, crop the images, or use coarser --preset "
                               "level spacings." if gpu else "out of memory; crop the images or use coarser level "
                               "spacings.")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" (writing {exc.filename})" if exc.filename else ""
        return "DiskFull", (f"the disk is full or over quota{where}; free some space or write elsewhere, then run the "
                            "same command again (svreg train resumes after the last finished epoch).")
    if isinstance(exc, RuntimeError) and "DataLoader worker" in str(exc):
        return "WorkerDied", (f"a data-loading worker process stopped ({str(exc).strip().rstrip('.')}); the system "
                              "may have run out of memory. Run the same command again to resume after the last "
                              "finished epoch, with fewer --workers if memory is short.")
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for host ``MemoryError``, torch's CUDA out-of-memory errors and its CPU allocator's failure."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError" or \
        "out of memory" in text or "can't allocate memory" in text


def _from_svreg(filename: str) -> bool:
    """Whether a warning was raised in svreg_core's own code (``filename`` of :func:`warnings.showwarning`)."""
    return Path(__file__).resolve().parent in Path(filename).resolve().parents


@contextlib.contextmanager
def _recorded_warnings() -> Iterator[list[str]]:
    """Inside: svreg's own warnings are shown as usual and their messages collected in the list yielded (the
    report's ``warnings``, which the Slicer module shows). Each use starts afresh: Python shows a warning once per
    place in the code, and without that the second pair of a batch would neither show nor record a warning the
    first had shown (entering ``catch_warnings`` forgets which were shown)."""
    messages: list[str] = []
    with warnings.catch_warnings():  # restores showwarning too
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None) -> None:
            if _from_svreg(filename):
                messages.append(str(message))
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        yield messages


def _one_line_warnings() -> None:
    """Inside ``warnings.catch_warnings()``: svreg's own warnings (e.g. a retired parameter in a preset
    file) print as one ``svreg: warning: ...`` line on stderr; other libraries' as Python prints them."""
    python_way = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if _from_svreg(filename):
            print(f"svreg: warning: {message}", file=sys.stderr)
        else:
            python_way(message, category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
