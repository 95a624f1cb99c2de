"""Write a registration's outputs into a folder, atomically, and never anywhere else.

Everything is written into a hidden sibling folder ``.NAME.partial-HOST-PID-XXXX`` first and renamed
into place only when complete, so an interrupted or failed run never leaves a folder that looks
finished; such hidden folders of dead runs (killed with SIGKILL, power loss) are removed by the next
run to the same output. Every output folder holds the marker file :data:`MARKER_FILE`;
``overwrite`` replaces only a folder holding that marker (or, from earlier versions, svreg's
``report.json``) and nothing but svreg's own files, and never the current or home folder, the
filesystem root, or a folder containing an input. A symbolic link given as output is followed: the
folder it points to is written (and replaced), the link itself is left as it is.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from svreg_core.errors import InputError, OutputError, shortened
from svreg_core.image import Grid, Image, save_image
from svreg_core.image.image import conform_to_grid
from svreg_core.image.io import DEFAULT_FIELD_GZIP_LEVEL, save_nifti
from svreg_core.image.resample import resample
from svreg_core.interrupts import interrupts_deferred
from svreg_core.metrics import dice, folding_percent, hd95, jacobian_determinant, ndv_percent, scored_labels, sdlogj
from svreg_core.metrics.landmarks import tre, tre_summary
from svreg_core.outputs.figure import write_report_figure
from svreg_core.outputs.itk import displacement_nifti, write_transform
from svreg_core.progress import REGISTERED_FRACTION, ProgressCallback, ProgressEvent, no_progress
from svreg_core.registration import RegistrationResult, summarize

#: Threads making, compressing and writing the output files (NumPy, torch, zlib and HDF5 release the GIL)
#: and computing the report's metrics while the main thread computes what several outputs share. (Two
#: more threads of their own for the metrics made the brain pair's outputs slower on 2 cores: 13.2 s
#: instead of 11.2-11.5 s.)
_WORKER_THREADS = 3

#: The marker file in every output folder: ``overwrite`` replaces only folders holding it.
MARKER_FILE = ".svreg-output"

OUTPUT_FILES = ("warped.nii.gz", "displacement.nii.gz", "transform.h5", "inverse_displacement.nii.gz",
                "regularization.nii.gz", "jacobian.nii.gz", "report.json", "report.png", MARKER_FILE)

#: Files written only for some inputs (``warped_labels.nii.gz`` with moving labels).
OPTIONAL_OUTPUT_FILES = ("warped_labels.nii.gz",)

#: The outputs a user may choose (``outputs=`` of :func:`write_outputs`, ``svreg register --outputs``) and
#: their files; ``report.json`` and the marker file are always written.
SELECTABLE_OUTPUTS = {"warped": "warped.nii.gz", "displacement": "displacement.nii.gz", "transform": "transform.h5",
                      "inverse": "inverse_displacement.nii.gz", "regularization": "regularization.nii.gz",
                      "jacobian": "jacobian.nii.gz", "labels": "warped_labels.nii.gz", "figure": "report.png"}

#: Hidden work folders next to an output: ``.NAME.partial-HOST-PID-TOKEN`` (being written) and
#: ``.NAME.old-HOST-PID-TOKEN`` (the replaced folder, until deleted).
_WORK_FOLDER = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[a-z0-9_]+")


def prepare_output_dir(outdir: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = (),
                       create_parent: bool = True, overwrite_switch: str = "--overwrite") -> Path:
    """Check that ``outdir`` can be (re)created and return it, resolved (symbolic links followed).

    Refuses (:class:`OutputError`, one line): an empty path; a path that is a file; the home folder;
    the filesystem root; a folder containing one of ``inputs``; the current folder or one containing
    it; an existing non-empty folder that svreg did not write or that holds files svreg did not
    write; without ``overwrite``, any existing non-empty folder; a location where no folder can be
    created (tested by creating and removing one: read-only disks, ``/proc``, ``/sys``). Removes the
    hidden work folders that dead runs left next to ``outdir`` (see
    :func:`remove_stale_work_folders`). With ``create_parent`` a missing parent folder is created;
    without, nothing is left behind (an early check that must leave no trace if the run fails later).
    ``overwrite_switch``: how the caller's user spells ``overwrite``, for the messages (a preview request's
    ``"overwrite": true``).
    """
    if not str(outdir).strip():
        raise OutputError("the output folder path is empty; name a new folder.")
    out = Path(outdir).resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out} exists and is not a folder.")
    if out == Path.home().resolve():
        raise OutputError(f"output folder {out} is your home folder; name a new folder instead.")
    if out.parent == out:
        raise OutputError(f"output folder {out} is the filesystem root; name a new folder instead.")
    for p in inputs:
        for path in {Path(os.path.abspath(p)), Path(p).resolve()}:  # as given, and with links followed
            if out == path or out in path.parents:
                raise OutputError(f"output folder {out} contains the input {p}; choose another folder.")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise OutputError(f"output folder {out} is or contains the current folder; name a new folder instead.")
    if out.is_dir() and any(out.iterdir()):
        _check_replaceable(out, overwrite, overwrite_switch)
    parent = out.parent
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise OutputError(f"cannot create {out}: {existing} is a file, not a folder.")
    _probe_writable(out, existing)
    if parent.is_dir():
        remove_stale_work_folders(out)
    if create_parent and not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"cannot create {parent}: {exc.strerror}.") from None
    return out


def check_output_file(path: str | Path, *, missing_folders: bool = False) -> None:
    """Before any work: :class:`OutputError` unless a file can be created in ``path``'s folder (which must exist;
    with ``missing_folders``, folders can be created from its nearest existing ancestor, which must be a folder):
    the folder is probed as :func:`prepare_output_dir` probes an output folder's parent."""
    path = Path(path).absolute()
    existing = _nearest_existing(path) if missing_folders else path.parent
    if missing_folders and not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder.")
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist.")
    _probe_writable(path, existing, "output file")


def _nearest_existing(out: Path) -> Path:
    """The parent of ``out``, or its nearest ancestor that exists (where folders must be created)."""
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    return existing


def _probe_writable(out: Path, existing: Path, what: str = "output folder") -> None:
    """Create and remove a hidden work folder in ``existing`` (a real test: permission bits do not show
    read-only disks, ``/proc`` or ``/sys``, nor what root may not do); :class:`OutputError` if it fails.

    The probe is named as a work folder of ``out`` (or of the first missing folder on the way to it),
    so one left behind by a killed run is removed by the next (:func:`remove_stale_work_folders`).
    """
    child = out if out.parent == existing else next(p for p in out.parents if p.parent == existing)
    probe = existing / (_work_folder_name(child, "partial") + secrets.token_hex(4))
    try:
        with interrupts_deferred():  # a SIGTERM between the two must not leave the probe behind
            probe.mkdir()
            probe.rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write the {what} {out}: creating a folder in {existing} fails "
                          f"({exc.strerror}); choose a folder on a writable disk.") from None


def expected_output_bytes(fixed_shape: Sequence[int], moving_shape: Sequence[int], *,
                          outputs: Sequence[str] | None = None, labels: bool = False) -> int:
    """Bytes the outputs of a registration of a ``fixed_shape`` image to a ``moving_shape`` one take,
    uncompressed (an upper bound: the fields are stored uncompressed by default, gzip saves much on images with
    background).

    ``outputs``: names from :data:`SELECTABLE_OUTPUTS` (default: all); ``labels``: moving labels are
    given (``warped_labels.nii.gz``). Per fixed voxel: float32 images (warped, λ, det J, int32
    labels) 4 bytes, the displacement and the ITK transform's float32 field 12 each; the inverse field 12
    per moving voxel; the figure, report.json and the files' headers at most 2 MB.
    """
    chosen = set(SELECTABLE_OUTPUTS if outputs is None else outputs)
    fixed, moving = int(np.prod(fixed_shape)), int(np.prod(moving_shape))
    per_fixed_voxel = {"warped": 4, "displacement": 12, "transform": 12, "regularization": 4, "jacobian": 4,
                       "labels": 4 if labels else 0}
    total = sum(size * fixed for name, size in per_fixed_voxel.items() if name in chosen)
    total += 12 * moving if "inverse" in chosen else 0
    return total + 2_000_000


def check_output_space(outdir: str | Path, needed_bytes: int) -> None:
    """Raise :class:`OutputError` when the disk that will hold ``outdir`` has less free space (for this
    user) than ``needed_bytes`` (see :func:`expected_output_bytes`)."""
    out = Path(outdir).resolve()
    existing = _nearest_existing(out)
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OutputError(f"not enough free space for the outputs in {existing}: about {needed_bytes / 1e6:.1f} MB "
                          f"needed, {free / 1e6:.1f} MB free; free some space or choose another output folder.")


def _check_replaceable(out: Path, overwrite: bool, switch: str) -> None:
    """Refuse to replace the non-empty folder ``out`` unless ``overwrite`` (spelt ``switch`` in the messages) and
    svreg wrote all of it."""
    if not is_svreg_output(out):
        raise OutputError(f"output folder {out} already exists, is not empty and was not written by svreg; "
                          f"choose a new or empty folder ({switch} replaces only svreg's own output folders).")
    known = {*OUTPUT_FILES, *OPTIONAL_OUTPUT_FILES}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in known or p.is_symlink() or not p.is_file())
    if foreign:
        raise OutputError(f"output folder {out} holds files svreg did not write ({shortened(foreign, 3)}); "
                          "move them away or choose another folder.")
    if not overwrite:
        raise OutputError(f"output folder {out} already exists and is not empty; use {switch} to replace it.")


def is_svreg_output(folder: str | Path) -> bool:
    """True when ``folder`` holds svreg's marker file, or (written before the marker existed) a
    ``report.json`` naming svreg_core's version."""
    folder = Path(folder)
    marker = folder / MARKER_FILE
    if marker.is_file() and not marker.is_symlink():
        return True
    report = folder / "report.json"
    if not report.is_file() or report.is_symlink():
        return False
    try:
        content = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and isinstance(content.get("versions"), dict) \
        and "svreg_core" in content["versions"]


def _host() -> str:
    """This machine's name as it appears in work-folder names (letters, digits, dots, underscores)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _work_folder_name(out: Path, kind: str) -> str:
    """``.NAME.KIND-HOST-PID-`` (a prefix: a random token follows)."""
    return f".{out.name}.{kind}-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs; True when that cannot be known (not POSIX)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_work_folders(outdir: str | Path) -> list[Path]:
    """Remove the hidden ``.NAME.partial-*`` / ``.NAME.old-*`` folders that dead runs left next to ``outdir``.

    Only folders of this machine whose process is gone are removed (never those of a running
    process, nor of another machine sharing the file system); an ``.old`` folder is kept while
    ``outdir`` itself is missing (a run killed between the two renames: it is the only copy of the
    previous result). Returns the removed folders.
    """
    out = Path(outdir)
    removed = []
    for entry in out.parent.iterdir():
        match = _WORK_FOLDER.fullmatch(entry.name)
        if (match is None or match["name"] != out.name or match["host"] != _host() or entry.is_symlink()
                or not entry.is_dir() or _pid_alive(int(match["pid"]))
                or (match["kind"] == "old" and not out.exists())):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def finite_report(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` with every NaN or infinite number replaced by ``None`` (JSON ``null``).

    The replaced entries are named in a ``notes`` entry (a list of strings), so strict JSON parsers
    can read the report and readers learn why a value is missing.
    """
    replaced: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(where)
            return None
        return value

    out = clean(report, "")
    if replaced:
        out["notes"] = [*out.get("notes", []), "not a finite number (e.g. a metric of labels missing from a "
                        "map), written as null: " + ", ".join(replaced)]
    return out


def write_report_json(path: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write ``report`` as strict JSON (non-finite numbers as ``null``, see :func:`finite_report`);
    return what was written."""
    clean = finite_report(report)
    Path(path).write_text(json.dumps(clean, indent=2, allow_nan=False), encoding="utf-8")
    return clean


def _versions() -> dict[str, str]:
    import h5py
    import torch

    from svreg_core import __version__
    return {"svreg_core": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "nibabel": nib.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


def describe_input(image: Image | Grid, path: str | Path | None = None) -> dict[str, Any]:
    """An input image's (or its grid's) ``path`` (when given), ``shape``, ``spacing_mm`` and ``orientation`` (axis
    codes, e.g. ``LAS``)."""
    entry: dict[str, Any] = {"path": str(path)} if path is not None else {}
    entry.update(shape=list(image.shape), spacing_mm=[round(float(v), 6) for v in image.spacing],
                 orientation="".join(nib.aff2axcodes(image.affine)))
    return entry


def foreground(image: Image) -> np.ndarray:
    """Where the regularity metrics are measured: the voxels of ``image`` above its minimum (its background)."""
    data = np.asarray(image.data)
    return data > float(np.min(data))


def compute_metrics(result: RegistrationResult, jac: np.ndarray, *, fixed_labels: Image | None = None,
                    warped_labels: Image | None = None, labels: Sequence[int] | None = None,
                    moving_labels: Image | None = None, label_mode: str = "linear",
                    landmarks: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The report's quick metrics: regularity of the mapping inside the fixed :func:`foreground` (Jacobian ≤ 0
    percentage, SDlogJ, Jacobian minimum and maximum) and, with labels, ``dice`` after registration and, with
    ``moving_labels``, before it (``dice_before``: the moving labels resampled through the identity with
    ``label_mode``, scored on the same ``labels``; pass :func:`~svreg_core.metrics.scored_labels`). The
    slower ones, NDV and HD95, are :func:`ndv_percent` and :func:`distance_metrics` (run meanwhile). With
    ``landmarks`` (fixed and moving points, RAS mm, corresponding one to one): the target registration error
    summaries (mm) ``tre`` (each fixed point mapped by the registration against its moving point) and
    ``tre_before`` (the identity in world space), and their ``count``."""
    fg = foreground(result.fixed)
    metrics: dict[str, Any] = {
        "folding_percent": folding_percent(jac, fg),
        "sdlogj": sdlogj(jac, fg),
        "jacobian_min": float(jac[fg].min()) if fg.any() else float(jac.min()),
        "jacobian_max": float(jac[fg].max()) if fg.any() else float(jac.max()),
    }
    if fixed_labels is not None and moving_labels is not None:
        # the moving labels on the fixed grid before registration: identity in world space, warped as after it
        before_labels = result.warp_image(moving_labels, labels=True, label_mode=label_mode, identity=True)
        before = dice(fixed_labels.data, before_labels.data, labels)
        metrics["dice_mean_before"] = float(np.mean(list(before.values()))) if before else float("nan")
        metrics["dice_before"] = {str(k): float(v) for k, v in before.items()}
    if fixed_labels is not None and warped_labels is not None:
        d = dice(fixed_labels.data, warped_labels.data, labels)
        metrics["dice_mean"] = float(np.mean(list(d.values()))) if d else float("nan")
        metrics["dice"] = {str(k): float(v) for k, v in d.items()}
    if landmarks is not None:
        fixed_points, moving_points = landmarks
        metrics["tre_before"] = tre_summary(tre(fixed_points, moving_points, lambda x: x))
        metrics["tre"] = tre_summary(tre(fixed_points, moving_points, result.transform_points))
        metrics["tre"]["count"] = metrics["tre_before"]["count"] = len(fixed_points)
    return metrics


def distance_metrics(fixed_labels: Image, warped_labels: Image, labels: Sequence[int] | None) -> dict[str, Any]:
    """``hd95`` per label (mm) and their mean over the finite ones, ``hd95_mean``."""
    h = hd95(fixed_labels.data, warped_labels.data, labels, linear=fixed_labels.affine[:3, :3])  # any grid: world mm
    finite = [v for v in h.values() if np.isfinite(v)]
    return {"hd95_mean": float(np.mean(finite)) if finite else float("nan"),
            "hd95": {str(k): float(v) for k, v in h.items()}}


def write_outputs(result: RegistrationResult, outdir: str | Path, *, fixed_labels: Image | None = None,
                  moving_labels: Image | None = None, labels: Sequence[int] | None = None,
                  label_mode: str = "linear", overwrite: bool = False, inputs: Sequence[str | Path] = (),
                  extra: dict[str, Any] | None = None, started: float | None = None,
                  outputs: Sequence[str] | None = None, sources: Mapping[str, str | Path] | None = None,
                  gzip_level: int | None = None,
                  landmarks: tuple[np.ndarray, np.ndarray] | None = None,
                  progress: ProgressCallback = no_progress) -> dict[str, Any]:
    """Write the outputs of ``result`` into ``outdir`` and return the report (also ``report.json``).

    Args:
        fixed_labels: label map on the fixed grid (scores Dice/HD95 when ``moving_labels`` is given).
        moving_labels: label map on the moving grid; written warped as ``warped_labels.nii.gz``.
        labels: label values to score (default: every non-zero label present in both input label maps; one the
            warp erased scores Dice 0).
        label_mode: ``"linear"`` (one-hot trilinear + argmax) or ``"nearest"``.
        overwrite: replace an existing output folder that svreg wrote (see :func:`prepare_output_dir`).
        inputs: input file paths, which the output folder must not contain (nor those of ``sources``).
        extra: additional top-level report entries.
        started: ``time.perf_counter()`` at the start of the whole run (image loading included); the
            report's ``timing.total_s`` is measured from it, else it is registration plus outputs.
        outputs: names from :data:`SELECTABLE_OUTPUTS` to write (default: all); ``report.json`` is
            always written. ``labels`` needs ``moving_labels``.
        sources: input file paths by role (``fixed``, ``moving``, ``fixed_labels``, …), recorded in the
            report's ``inputs`` with each image's shape, spacing and orientation (those of other roles, e.g.
            ``fixed_mask``, with their path only).
        gzip_level: compression of the ``.nii.gz`` outputs, 0 (stored: fastest, e.g. for files another
            program reads at once) to 9 (:func:`~svreg_core.image.io.save_nifti`); ``None``: the images at
            :data:`~svreg_core.image.io.DEFAULT_GZIP_LEVEL` (1, the Jacobian map too), the displacement fields
            (``transform.h5``'s too) stored (:data:`~svreg_core.image.io.DEFAULT_FIELD_GZIP_LEVEL`: gzip hardly
            shrinks them).
        landmarks: corresponding fixed and moving points (``(N, 3)`` RAS mm each): the report's metrics get
            the target registration error before and after (:func:`compute_metrics`).
        progress: gets stage ``"outputs"`` events as the parts are made (the chosen outputs among the warped image,
            Jacobian, warped labels and figure; then the metrics, files and report), rising from
            :data:`~svreg_core.progress.REGISTERED_FRACTION` to 0.99 of the run (the caller ends it at 1).
    """
    chosen = set(SELECTABLE_OUTPUTS if outputs is None else outputs)
    unknown = sorted(chosen - set(SELECTABLE_OUTPUTS))
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}; choose from {', '.join(SELECTABLE_OUTPUTS)}.")
    if outputs is not None and "labels" in chosen and moving_labels is None:  # asked for, it was silently not written
        raise InputError("the labels output is the warped moving labels; it needs moving_labels.")
    # the files named in ``sources`` are inputs too: a folder holding one is never replaced
    out = prepare_output_dir(outdir, overwrite=overwrite, inputs=[*inputs, *(sources or {}).values()])
    if fixed_labels is not None:
        fixed_labels = conform_to_grid(fixed_labels, result.fixed.grid, "fixed labels", "fixed image")
    if moving_labels is not None:
        moving_labels = conform_to_grid(moving_labels, result.moving.grid, "moving labels", "moving image")
    t0 = time.perf_counter()
    # the parts progress names: only the chosen outputs, and what every run makes (the work of one not named, e.g.
    # the Jacobian the metrics need, counts towards the next)
    parts = tuple(part for part, named in (
        ("warped image", "warped" in chosen), ("Jacobian", "jacobian" in chosen),
        ("warped labels", "labels" in chosen and moving_labels is not None), ("metrics", True),
        ("figure", "figure" in chosen), ("files", True), ("report", True)) if named)

    def made(part: str) -> None:
        """Progress: ``part`` is made and the next of ``parts`` begins; nothing for a part not among them."""
        if part not in parts:
            return
        done = parts.index(part) + 1
        following = f"; {parts[done]}" if done < len(parts) else ""
        progress(ProgressEvent("outputs", done, len(parts), REGISTERED_FRACTION + (0.99 - REGISTERED_FRACTION)
                               * done / len(parts), f"writing outputs: {part} done{following}"))

    progress(ProgressEvent("outputs", 0, len(parts), REGISTERED_FRACTION, f"writing outputs: {parts[0]}"))
    tmp = out.with_name(_work_folder_name(out, "partial") + secrets.token_hex(4))
    threads = f"svreg-outputs-{secrets.token_hex(4)}"  # this call's writer threads
    kept: Path | None = None  # where the finished outputs are, when they could not take the output's name
    try:  # created inside the ``try``: an interrupt right after ``mkdir`` still removes it
        tmp.mkdir()  # with the permissions the umask gives, as every file in it
        versions = _versions()
        (tmp / MARKER_FILE).write_text(f"Written by svreg (svreg_core {versions['svreg_core']}); "
                                       "svreg register --overwrite may replace this folder.\n", encoding="utf-8")
        with ThreadPoolExecutor(max_workers=_WORKER_THREADS, thread_name_prefix=threads) as pool:
            pending = []

            def save(name: str, write: Callable[[], Any]) -> None:
                """Make and write output ``name`` in a worker thread, if it was chosen."""
                if name in chosen:
                    pending.append(pool.submit(write))

            # the slow metrics (NDV first, HD95 once the labels are warped) run in workers while the main thread
            # makes the rest and draws the figure
            ndv_job = pool.submit(ndv_percent, result.displacement, result.fixed.affine, foreground(result.fixed))
            fixed_grid = result.fixed.grid
            field_level = DEFAULT_FIELD_GZIP_LEVEL if gzip_level is None else gzip_level
            warped = result.warped if chosen & {"warped", "figure"} else None
            if warped is not None:
                save("warped", lambda: save_image(warped, tmp / "warped.nii.gz", gzip_level=gzip_level))
            made("warped image")
            save("displacement", lambda: save_nifti(displacement_nifti(result.displacement, fixed_grid),
                                                    tmp / "displacement.nii.gz", gzip_level=field_level))
            save("transform", lambda: write_transform(tmp / "transform.h5", result.affine,
                                                      result.deformable_displacement, fixed_grid,
                                                      gzip_level=field_level))
            jac = jacobian_determinant(result.displacement, result.fixed.affine)
            jac_image = Image.on(fixed_grid, jac.astype(np.float32))
            save("jacobian", lambda: save_image(jac_image, tmp / "jacobian.nii.gz", gzip_level=gzip_level))
            made("Jacobian")
            before_job = pool.submit(_moving_on_fixed_grid, result) if "figure" in chosen else None
            warped_labels = None
            if moving_labels is not None:
                warped_labels = result.warp_image(moving_labels, labels=True, label_mode=label_mode)
                save("labels", lambda: save_image(warped_labels, tmp / "warped_labels.nii.gz", dtype=np.int32,
                                                  gzip_level=gzip_level))
            made("warped labels")
            if fixed_labels is not None and moving_labels is not None:  # a label the warp erased scores 0
                labels = scored_labels(fixed_labels.data, moving_labels.data, labels)
            distance_job = None if fixed_labels is None or warped_labels is None else \
                pool.submit(distance_metrics, fixed_labels, warped_labels, labels)
            save("inverse", lambda: save_nifti(displacement_nifti(result.inverse_displacement(), result.moving.grid),
                                               tmp / "inverse_displacement.nii.gz", gzip_level=field_level))
            metrics = compute_metrics(result, jac, fixed_labels=fixed_labels, warped_labels=warped_labels,
                                      labels=labels, moving_labels=moving_labels, label_mode=label_mode,
                                      landmarks=landmarks)
            weight = result.regularization_map()
            save("regularization", lambda: save_image(weight, tmp / "regularization.nii.gz", gzip_level=gzip_level))
            made("metrics")
            if before_job is not None:
                assert warped is not None  # made when the figure is chosen
                write_report_figure(tmp / "report.png", fixed=result.fixed,
                                    moving_before=Image.on(fixed_grid, before_job.result()), warped=warped,
                                    weight=weight, jacobian=jac_image, dice=_dice_pair(metrics),
                                    title=f"{figure_title(result)} — Jacobian ≤ 0: {metrics['folding_percent']:.4f} %")
            made("figure")
            metrics["ndv_percent"] = ndv_job.result()
            if distance_job is not None:
                metrics.update(distance_job.result())
            for future in pending:
                future.result()  # re-raises the first failed write
            made("files")
        images = {"fixed": result.fixed, "moving": result.moving, "fixed_labels": fixed_labels,
                  "moving_labels": moving_labels}
        described = {role: describe_input(image, (sources or {}).get(role)) for role, image in images.items()
                     if image is not None}
        # inputs of other roles (the masks): their paths, so the report says every file the registration used
        described.update({role: {"path": str(p)} for role, p in (sources or {}).items() if role not in described})
        report = {**summarize(result), "inputs": described, "metrics": metrics, "label_interpolation": label_mode,
                  "outputs": sorted(n for n in SELECTABLE_OUTPUTS if n in chosen
                                    and (n != "labels" or moving_labels is not None)),
                  "versions": versions, **(extra or {})}
        report["units"] = report_units(report)
        if math.isnan(metrics["ndv_percent"]):  # e.g. a 2-slice slab: NDV needs a voxel inside the border
            report["notes"] = [f"ndv_percent cannot be computed: no foreground voxel of the fixed image "
                               f"({'x'.join(map(str, result.fixed.shape))} voxels) lies inside its one-voxel "
                               "border; NDV needs at least 3 voxels along every axis."]
        report["timing"]["outputs_s"] = time.perf_counter() - t0
        report["timing"]["total_s"] = (time.perf_counter() - started if started is not None else
                                       report["timing"]["registration_s"] + report["timing"]["outputs_s"])
        report = write_report_json(tmp / "report.json", report)
        with interrupts_deferred():  # a SIGTERM during the swap must not leave the replaced folder behind
            # checked again: the folder may have been made or filled meanwhile (by the user, by another run to the
            # same output), and only what prepare_output_dir would replace is replaced
            if out.exists() and not out.is_dir():
                raise OutputError(f"output path {out} was made a file while svreg wrote the outputs; nothing "
                                  "was written.")
            if out.is_dir() and any(out.iterdir()):
                _check_replaceable(out, overwrite, "--overwrite")
            try:
                _replace_dir(tmp, out)
            except OSError as exc:  # e.g. a file in the earlier folder held open (Windows), a mount point
                kept = _keep_finished(tmp, out)
                raise OutputError(f"the outputs are complete but could not be moved to {out} "
                                  f"({exc.strerror or exc}); they are in {kept}.") from None
        made("report")
    except BaseException:
        _join_threads(threads)
        if kept is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _keep_finished(tmp: Path, out: Path) -> Path:
    """The finished output folder ``tmp`` that could not take the name of ``out``, renamed to the visible sibling
    ``NAME.svreg-XXXX`` (a hidden work folder is removed as stale by the next run to ``out``); ``tmp`` itself where
    that fails too."""
    kept = out.with_name(f"{out.name}.svreg-{secrets.token_hex(4)}")
    try:
        tmp.rename(kept)
    except OSError:
        return tmp
    return kept


def _join_threads(prefix: str) -> None:
    """Wait for the threads named ``prefix…`` to end. A Ctrl-C inside ``ThreadPoolExecutor.submit`` can come after
    a new worker thread started and before the pool counted it, so the pool's own shutdown does not wait for that
    thread, which still writes into the folder being removed. Such a thread may not be running yet (``join`` then
    raises ``RuntimeError``): it is waited for until it runs."""
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread is not threading.current_thread():
            while True:
                try:
                    thread.join()
                    break
                except RuntimeError:  # started but not yet running (threading's "limbo")
                    time.sleep(0.001)


def _moving_on_fixed_grid(result: RegistrationResult) -> np.ndarray:
    """The moving image on the fixed grid before registration (identity in world space; trilinear), for the
    figure."""
    moving = torch.as_tensor(np.asarray(result.moving.data, np.float32))[None, None]
    return resample(moving, result.moving.grid, result.fixed.grid)[0, 0].numpy()  # a copy on the same grid


#: The unit of each metric the report may hold (``report.json``'s ``units``).
METRIC_UNITS = {
    "folding_percent": "% of the fixed image's foreground voxels", "ndv_percent": "% of the foreground volume",
    "sdlogj": "1 (standard deviation of ln det J)", "jacobian_min": "1 (volume ratio)",
    "jacobian_max": "1 (volume ratio)", "dice_mean": "1 (0 to 1)", "dice": "1 (0 to 1)",
    "dice_mean_before": "1 (0 to 1)", "dice_before": "1 (0 to 1)", "hd95_mean": "mm", "hd95": "mm",
    "tre": "mm (count: points)", "tre_before": "mm (count: points)"}


def report_units(report: Mapping[str, Any]) -> dict[str, Any]:
    """The ``units`` entry of ``report``: those of its metrics (:data:`METRIC_UNITS`), its timings and affine."""
    metrics = {key: METRIC_UNITS[key] for key in report.get("metrics", {}) if key in METRIC_UNITS}
    return {"metrics": metrics, "timing": "s", "affine_ras": "4x4 matrix, fixed-world RAS mm to moving-world RAS mm",
            "inputs": "spacing_mm: mm; orientation: the voxel axes' RAS codes"}


def figure_title(result: RegistrationResult) -> str:
    """What the figure's title calls the registration: ``SPR registration`` (pairwise), ``uniform-regularisation
    registration (λ ≡ 1)`` (pairwise with ``spr`` off, ``--no-spr``), or the learned model's name, its
    regularisation and its refinement steps."""
    model = result.model
    spr = result.parameters.spr if model is None else model.spr
    kind = "SPR" if spr else "uniform-regularisation"
    if model is None:
        return f"{kind} registration" + ("" if spr else " (λ ≡ 1)")
    refined = f", {result.refine_steps} refinement steps per level" if result.refine_steps else ""
    return f"learned {kind} model {model.name or model.architecture}{refined}"


def _dice_pair(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """(mean Dice before, after) when both are finite numbers, for the figure's title."""
    before, after = metrics.get("dice_mean_before"), metrics.get("dice_mean")
    if isinstance(before, float) and isinstance(after, float) and math.isfinite(before) and math.isfinite(after):
        return before, after
    return None


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``, replacing an existing ``out`` only at the end."""
    if out.exists():
        old = out.with_name(_work_folder_name(out, "old") + secrets.token_hex(4))
        try:
            out.rename(old)
            new.rename(out)
        except BaseException:  # e.g. interrupted between the two renames: put the earlier output back
            if old.exists() and not out.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)
