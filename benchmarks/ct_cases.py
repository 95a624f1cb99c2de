"""Known-warp CT cases with heterogeneous (sliding) motion, built from real CT (:mod:`fetch_ct_data`).

A case is a fixed image, a moving image made from the same CT through a known warp, label maps on
both grids, and the exact true displacement in the registration's convention
(:mod:`svreg_core.conventions`): the fixed point ``x`` (RAS mm) maps to the moving point ``x + u(x)``,
so that ``moving(x + u(x)) = fixed(x)``.

Cases
-----
* ``lung`` (pyradiomics ``lung1_image.nrrd``, 0.57 x 0.57 x 5 mm): the lungs slide along the chest
  wall. Working grid 2.5 x 2.5 x 5 mm (the 5 mm slices are kept: very anisotropic CT). The lungs move
  superior-inferior (up to 8 mm at the inferior end of the image, towards the diaphragm, tapering to
  0 at the apex, 25 % more posteriorly); the chest wall, spine and mediastinum outside the lungs stay
  put except for the normal push described below.
* ``aorta`` (TotalSegmentator ``ct_cropped.nii.gz`` with ``aorta.nii.gz``, contrast CT, 1.5 mm):
  the aorta moves against its surroundings (7.6 mm inferior and 2.5 mm posterior at the arch, 20 % less
  at its lower end). Working grid 2.5 mm isotropic. Vertebra T12 is a static neighbour.

Construction (both cases)
-------------------------
1. **Fixed image**: the original CT, Gaussian anti-aliased for the working voxel size
   (:func:`~svreg_core.image.resample.antialias_sigma`), sampled trilinearly at the working grid's
   voxel centres, plus independent Gaussian noise (``noise_hu``).
2. **Moving region** ``R`` (lungs / aorta) and its signed distance ``S`` (mm, negative inside,
   Gaussian-smoothed); ``n = ∇S / |∇S|``. From here on ``R`` is ``S < 0`` (trilinear ``S``).
3. **Generating warp** ``g`` on the moving grid (the same grid as the fixed image), RAS mm::

       g(y) = G(y)                              if S(y) < 0   (inside R: the region's own motion)
       g(y) = (G(y)·n) n exp(−S²/2ℓ²) w(y)      otherwise     (surroundings: pushed along the normal)

   ``w`` fades the push out where ``|∇S|`` collapses (medial axes of the outside). At ``S = 0`` the
   normal components agree and the tangential component jumps by ``G − (G·n)n``: ``R`` slides along
   its surroundings, without gap or overlap, and the surroundings are pushed where ``R`` moves
   against them (the diaphragm side of the lungs, the top of the aortic arch).
4. **Moving image** ``moving(y) = CT_aa(y + g(y))`` (trilinear, same anti-aliased CT), plus its own
   noise; **moving labels** ``fixed_labels(y + g(y))`` (nearest).
5. **True displacement**: for each fixed voxel ``x`` solve ``y + g(y) = x`` by fixed-point iteration
   ``y ← x − g_b(y)``, once per branch ``b`` (inside with ``G``, outside with the push; each is a
   contraction), and keep the branch whose solution lies on its own side of ``S = 0``; ``u = y − x``.
   Voxels where no branch or both branches are consistent are flagged invalid and left out of the
   EPE (they take the nearest valid value for the regularity of the true field). They lie at the
   interface: sliding a curved surface by a translation opens a gap (or an overlap) of about
   ``κ |slip|² / 2`` (κ the surface's curvature along the slip), which no bijection can fill. Their
   fraction and the largest inversion residual are stored in ``case.json`` and checked.

Tuning cases (the CT presets are tuned on these, never on the evaluation cases above; other patients)
-------------------------------------------------------------------------------------------------------
* ``lung2-tune`` (pyradiomics ``lung2_image.nrrd``, 0.63 x 0.63 x 5 mm): built exactly like ``lung``.
* ``abdomen-tune`` (TotalSegmentator ``example_ct_sm.nii.gz``, 3 mm, with ``example_seg.nii.gz``): the
  upper-abdominal organs (liver, spleen, stomach, gallbladder) move along the body axis, as in
  breathing (the moving image shows them 6.4 mm higher posteriorly to 8 mm anteriorly), sliding along
  the abdominal wall, the kidneys, bowel and spine. The label maps are
  TotalSegmentator's structures (:data:`TUNING_STRUCTURES`), so that ``svreg tune``'s Dice objective
  sees every organ, not only the moving region.

Evaluation masks (fixed grid): ``body``; ``band``: voxels within ``band_mm`` of the sliding interface
(``|S| ≤ band_mm``) where the slip ``|G − (G·n)n|`` is at least ``min_slip_mm`` (the *motion
boundary*); ``region``: ``R``; ``valid``: the inversion succeeded.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]

from svreg_core import metrics  # noqa: E402
from svreg_core.image import Grid, Image, load_image, save_image  # noqa: E402
from svreg_core.image.resample import antialias_sigma, gaussian_smooth, sample_at_points  # noqa: E402

#: Bumped whenever the construction changes: cases built by another version are rebuilt.
BUILDER_VERSION = 2

#: Largest accepted inversion residual (mm) of a valid voxel, and fraction of invalid body voxels.
MAX_RESIDUAL_MM = 1e-3
MAX_INVALID_FRACTION = 0.01


@dataclass(frozen=True)
class CaseSpec:
    """Parameters of one case (all lengths in mm)."""

    name: str
    description: str
    spacing: tuple[float, float, float]  #: working voxel size along (i, j, k); never finer than the source
    magnitude_mm: float                   #: largest |G| inside the moving region
    push_length_mm: float                 #: ℓ of the normal push into the surroundings
    sdf_sigma_mm: float                   #: Gaussian smoothing of the signed distance (≥ 1.2 voxels)
    band_mm: float = 5.0                  #: half-width of the motion-boundary band
    min_slip_mm: float = 1.0              #: least tangential jump for a band voxel
    noise_hu: float = 10.0                #: std of the independent noise added to each image
    seed: int = 0


SPECS = {
    "lung": CaseSpec("lung", "lungs sliding along the chest wall (pyradiomics lung1, 5 mm slices)",
                     spacing=(2.5, 2.5, 5.0), magnitude_mm=8.0, push_length_mm=10.0, sdf_sigma_mm=5.0),
    "aorta": CaseSpec("aorta", "aorta moving against its surroundings (TotalSegmentator contrast CT)",
                      spacing=(2.5, 2.5, 2.5), magnitude_mm=8.0, push_length_mm=10.0, sdf_sigma_mm=3.0),
}

#: Cases the CT presets are tuned on (other patients than the evaluation cases): never evaluated.
TUNING_SPECS = {
    "lung2-tune": CaseSpec("lung2-tune", "tuning: another patient's lungs sliding along the chest wall "
                           "(pyradiomics lung2, 5 mm slices)",
                           spacing=(2.5, 2.5, 5.0), magnitude_mm=8.0, push_length_mm=10.0, sdf_sigma_mm=5.0),
    "abdomen-tune": CaseSpec("abdomen-tune", "tuning: upper-abdominal organs sliding along the abdominal "
                             "wall (TotalSegmentator example CT, 3 mm)",
                             spacing=(3.0, 3.0, 3.0), magnitude_mm=8.0, push_length_mm=15.0, sdf_sigma_mm=6.0),
}
ALL_SPECS = {**SPECS, **TUNING_SPECS}

#: TotalSegmentator (v2 ``total`` task) structures of ``example_seg.nii.gz`` kept as labels of the
#: abdomen tuning case (those with at least 500 voxels), and the ones that move.
TUNING_STRUCTURES = {1: "spleen", 2: "kidney right", 3: "kidney left", 4: "gallbladder", 5: "liver",
                     6: "stomach", 7: "pancreas", 11: "lung lower lobe left", 14: "lung lower lobe right",
                     18: "small bowel", 19: "duodenum", 20: "colon", 30: "vertebra L2", 31: "vertebra L1",
                     32: "vertebra T12", 52: "aorta", 63: "inferior vena cava",
                     64: "portal and splenic vein", 86: "autochthon left", 87: "autochthon right",
                     117: "costal cartilages"}
ABDOMEN_MOVING = (1, 4, 5, 6)  #: spleen, gallbladder, liver, stomach

#: Label values and names of each case's label maps.
LABELS = {"lung": {1: "lungs", 2: "bone"}, "aorta": {1: "aorta", 2: "vertebra T12"},
          "lung2-tune": {1: "lungs", 2: "bone"}, "abdomen-tune": TUNING_STRUCTURES}


# ------------------------------------------------------------------------------------------------
# reading the sources


def read_pyradiomics(raw: Path, name: str) -> Image:
    """``<name>_image.nrrd`` (HU) as an :class:`Image` with a RAS affine (the file is LPS; read as ``svreg``
    reads any NRRD)."""
    return load_image(raw / "pyradiomics" / f"{name}_image.nrrd")


def read_nifti(path: Path) -> Image:
    import nibabel as nib

    nii = nib.load(str(path))
    return Image(np.asarray(nii.dataobj, dtype=np.float32), nii.affine)


# ------------------------------------------------------------------------------------------------
# grids, sampling, masks


def _tensor(data: np.ndarray) -> torch.Tensor:
    """``(I, J, K)`` or ``(I, J, K, C)`` array -> ``(1, C, I, J, K)`` float32 tensor."""
    arr = np.asarray(data, dtype=np.float32)
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def sample(field: torch.Tensor, grid: Grid, points: np.ndarray, *, mode: str = "bilinear") -> np.ndarray:
    """``field`` ``(1, C, I, J, K)`` on ``grid`` at RAS mm ``points`` ``(..., 3)``; returns ``(..., C)``,
    border-padded."""
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))[None]
    out = sample_at_points(field, grid, pts, mode=mode, padding_mode="border")[0]
    return np.moveaxis(out.numpy(), 0, -1)


def working_grid(source: Grid, spacing: tuple[float, float, float], box: tuple[np.ndarray, np.ndarray]) -> Grid:
    """Grid with the source's axis directions, voxel size ``max(source, spacing)`` per axis, over ``box``.

    ``box`` is (first, last) voxel index of the source, inclusive; the new grid starts at ``first``.
    """
    size = np.maximum(source.spacing, np.asarray(spacing, dtype=np.float64))
    extent = (np.asarray(box[1]) - np.asarray(box[0])) * source.spacing
    shape = np.floor(extent / size + 1e-6).astype(int) + 1
    affine = np.eye(4)
    affine[:3, :3] = source.direction * size
    affine[:3, 3] = source.affine[:3, :3] @ np.asarray(box[0], dtype=np.float64) + source.affine[:3, 3]
    return Grid(tuple(int(n) for n in shape), affine)


def antialiased(image: Image, spacing: tuple[float, float, float]) -> torch.Tensor:
    """The image smoothed against aliasing for the per-axis voxel size ``spacing``, ``(1, 1, I, J, K)``."""
    sigma = [antialias_sigma(image.grid, s)[a] for a, s in enumerate(spacing)]
    return gaussian_smooth(_tensor(image.data), tuple(sigma))


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` on a grid of voxel size ``spacing``."""
    r = np.maximum(np.floor(radius_mm / spacing), 0).astype(int)
    axes = np.ogrid[tuple(slice(-n, n + 1) for n in r)]
    return sum((a * s / radius_mm) ** 2 for a, s in zip(axes, spacing)) <= 1.0


def _axial_axis(grid: Grid) -> int:
    """The voxel axis closest to the world superior-inferior direction."""
    return int(np.argmax(np.abs(grid.direction[2])))


def body_mask(hu: np.ndarray, grid: Grid, threshold: float = -500.0) -> np.ndarray:
    """The patient: ``hu > threshold``, opened, largest component, holes filled slice by slice (lungs in)."""
    mask = ndimage.binary_opening(hu > threshold, structure=_ball(3.0, grid.spacing))
    lab, n = ndimage.label(mask)
    if n == 0:
        raise SystemExit("ct_cases: no body found above the threshold")
    mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    axis = _axial_axis(grid)
    filled = np.moveaxis(mask, axis, 0).copy()
    for s in range(filled.shape[0]):
        filled[s] = ndimage.binary_fill_holes(filled[s])
    return np.moveaxis(filled, 0, axis)


def lung_mask(hu: np.ndarray, body: np.ndarray, grid: Grid) -> np.ndarray:
    """Lungs: air (< −400 HU) inside the body, large components, closed and filled (vessels inside)."""
    lab, n = ndimage.label((hu < -400.0) & body)
    sizes = np.bincount(lab.ravel())[1:]
    if n == 0:
        raise SystemExit("ct_cases: no lung found inside the body")
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    lungs = np.isin(lab, keep)
    lungs = ndimage.binary_closing(lungs, structure=_ball(5.0, grid.spacing), border_value=0)
    return ndimage.binary_fill_holes(lungs) & body


def signed_distance(region: np.ndarray, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Smoothed signed distance (mm) to the surface of ``region``: negative inside, positive outside.

    Smoothing rounds the corners of the voxelised surface, so that the normals, and the push along
    them, turn slowly enough for the surroundings not to fold (checked in :func:`build_case`).
    """
    spacing = grid.spacing
    sdf = ndimage.distance_transform_edt(~region, sampling=spacing) - ndimage.distance_transform_edt(
        region, sampling=spacing)
    sdf = np.where(region, sdf + 0.5 * spacing.min(), sdf - 0.5 * spacing.min())  # zero midway between voxels
    # at least 1.2 voxels along every axis: the terraces of thick slices must not tilt the normals
    smoothed = gaussian_smooth(_tensor(sdf), tuple(max(float(sigma_mm / s), 1.2) for s in spacing))
    return smoothed[0, 0].numpy().astype(np.float64)


def world_gradient(scalar: np.ndarray, grid: Grid) -> np.ndarray:
    """``∇`` of a scalar field in RAS per mm, ``(I, J, K, 3)`` (central differences)."""
    d_ijk = np.stack(np.gradient(scalar), axis=-1)  # per voxel index
    return d_ijk @ np.linalg.inv(grid.affine[:3, :3])  # ∇_x = M^{-T} ∇_ijk, as rows


# ------------------------------------------------------------------------------------------------
# the warp and its inverse


@dataclass
class Warp:
    """The generating warp ``g`` of a case (module docstring, step 3), sampled on ``grid``.

    ``inside``: ``G`` ``(1, 3, I, J, K)``; ``push``: the outside field; ``sdf``: ``S`` ``(1, 1, I, J, K)``.
    """

    grid: Grid
    inside: torch.Tensor
    push: torch.Tensor
    sdf: torch.Tensor

    @classmethod
    def build(cls, grid: Grid, motion: np.ndarray, sdf: np.ndarray, push_length_mm: float) -> Warp:
        grad = world_gradient(sdf, grid)
        norm = np.linalg.norm(grad, axis=-1, keepdims=True)
        normal = grad / np.maximum(norm, 1e-6)
        fade = np.clip((norm - 0.3) / 0.4, 0.0, 1.0)  # 1 where |∇S| ≈ 1 (near the surface), 0 at ridges
        decay = np.exp(-0.5 * (sdf / push_length_mm) ** 2)[..., None]
        push = np.sum(motion * normal, axis=-1, keepdims=True) * normal * decay * fade
        return cls(grid, _tensor(motion), _tensor(push), _tensor(sdf))

    def at_voxels(self) -> np.ndarray:
        """``g`` at the voxel centres, ``(I, J, K, 3)`` RAS mm."""
        inside = (self.sdf[0, 0] < 0).numpy()[..., None]
        return np.where(inside, _array(self.inside), _array(self.push))

    def invert(self, points: np.ndarray, iterations: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Solve ``y + g(y) = x`` for each point ``x`` ``(..., 3)``.

        Returns ``(y, valid, residual)``: ``valid`` where exactly one branch is consistent, ``residual``
        ``|y + g(y) − x|`` (mm) of the kept branch (NaN where invalid).
        """
        x = np.asarray(points, dtype=np.float64)
        found, ok, res = [], [], []
        for field_, side in ((self.inside, -1.0), (self.push, 1.0)):
            y = x.copy()
            for _ in range(iterations):
                y = x - sample(field_, self.grid, y)
            r = np.linalg.norm(y + sample(field_, self.grid, y) - x, axis=-1)
            s = sample(self.sdf, self.grid, y)[..., 0]
            found.append(y)
            ok.append((r < MAX_RESIDUAL_MM) & ((s < 0) if side < 0 else (s >= 0)))
            res.append(r)
        valid = ok[0] ^ ok[1]
        y = np.where(ok[0][..., None], found[0], found[1])
        residual = np.where(valid, np.where(ok[0], res[0], res[1]), np.nan)
        return y, valid, residual


def _array(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t[0].numpy().astype(np.float64), 0, -1)


# ------------------------------------------------------------------------------------------------
# the cases


@dataclass
class Anatomy:
    """What a case is made of, on its working grid: the anti-aliased CT source, masks and motion."""

    source: Image
    source_aa: torch.Tensor
    grid: Grid
    hu: np.ndarray
    body: np.ndarray
    region: np.ndarray
    static: np.ndarray
    motion: Callable[[np.ndarray, np.ndarray], np.ndarray]  #: (world points, region mask) -> G, RAS mm
    labels: np.ndarray | None = None  #: fixed label map; ``None``: 1 = region, 2 = static (off the band)


def _resampled(source: Image, source_aa: torch.Tensor, grid: Grid) -> np.ndarray:
    return sample(source_aa, source.grid, grid.world_points())[..., 0]


def lung_anatomy(raw: Path, spec: CaseSpec, source: str = "lung1") -> Anatomy:
    ct = read_pyradiomics(raw, source)
    aa = antialiased(ct, spec.spacing)
    full = working_grid(ct.grid, spec.spacing, (np.zeros(3, int), np.asarray(ct.shape) - 1))
    hu = _resampled(ct, aa, full)
    body = body_mask(hu, full)
    idx = np.argwhere(body)
    margin = np.ceil(10.0 / full.spacing).astype(int)
    start, stop = np.maximum(idx.min(0) - margin, 0), np.minimum(idx.max(0) + 1 + margin, full.shape)
    grid = full.cropped(tuple(start), tuple(stop))
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    hu, body = hu[crop], body[crop]
    lungs = lung_mask(hu, body, grid)
    bone = (hu > 200.0) & body

    def motion(points: np.ndarray, region: np.ndarray) -> np.ndarray:
        z, y = points[..., 2], points[..., 1]
        z_lo, z_hi = z[region].min(), z[region].max()
        r = np.clip((z_hi - z) / (z_hi - z_lo), 0.0, 1.0)
        ramp = r * r * (3.0 - 2.0 * r)  # 1 at the inferior end, 0 at the apex
        y_post, y_ant = y[region].min(), y[region].max()
        posterior = np.clip((y_ant - y) / (y_ant - y_post), 0.0, 1.0)
        amplitude = spec.magnitude_mm * ramp * (0.8 + 0.2 * posterior)
        out = np.zeros(points.shape)
        out[..., 2] = amplitude  # g > 0 along S: the moving image shows content from higher up (inhale)
        return out

    return Anatomy(ct, aa, grid, hu, body, lungs, bone, motion)


def aorta_anatomy(raw: Path, spec: CaseSpec) -> Anatomy:
    models = raw / "totalsegmentator" / "models"
    ct = read_nifti(models / "ct_cropped.nii.gz")
    aa = antialiased(ct, spec.spacing)
    grid = working_grid(ct.grid, spec.spacing, (np.zeros(3, int), np.asarray(ct.shape) - 1))
    hu = _resampled(ct, aa, grid)

    def mask(name: str) -> np.ndarray:
        m = read_nifti(models / name)
        if not m.grid.same_as(ct.grid):
            raise SystemExit(f"ct_cases: {name} is not on the grid of ct_cropped.nii.gz")
        m = Image((m.data > 0).astype(np.float32), m.affine)
        return _resampled(m, antialiased(m, spec.spacing), grid) >= 0.5

    body = body_mask(hu, grid)
    aorta = mask("aorta.nii.gz") & body
    vertebra = mask("vertebrae_T12.nii.gz") & body

    def motion(points: np.ndarray, region: np.ndarray) -> np.ndarray:
        z = points[..., 2]
        z_lo, z_hi = z[region].min(), z[region].max()
        scale = 0.8 + 0.2 * np.clip((z - z_lo) / (z_hi - z_lo), 0.0, 1.0)  # 1 at the arch, 0.8 at the bottom
        direction = np.array([0.0, 2.0, 6.0]) / np.hypot(2.0, 6.0)  # moving shows content from above/front
        return spec.magnitude_mm * scale[..., None] * direction

    return Anatomy(ct, aa, grid, hu, body, aorta, vertebra, motion)


def abdomen_anatomy(raw: Path, spec: CaseSpec) -> Anatomy:
    folder = raw / "totalsegmentator"
    ct = read_nifti(folder / "example_ct_sm.nii.gz")
    seg = read_nifti(folder / "example_seg.nii.gz")
    if not seg.grid.same_as(ct.grid):
        raise SystemExit("ct_cases: example_seg.nii.gz is not on the grid of example_ct_sm.nii.gz")
    aa = antialiased(ct, spec.spacing)
    grid = working_grid(ct.grid, spec.spacing, (np.zeros(3, int), np.asarray(ct.shape) - 1))
    if not grid.same_as(ct.grid):
        raise SystemExit("ct_cases: the abdomen case works on the CT's own 3 mm grid")
    hu = _resampled(ct, aa, grid)
    body = body_mask(hu, grid)
    structures = np.rint(seg.data).astype(np.int32)
    labels = np.where(np.isin(structures, list(TUNING_STRUCTURES)), structures, 0) * body
    organs = np.isin(structures, ABDOMEN_MOVING) & body
    bone = (hu > 200.0) & body

    def motion(points: np.ndarray, region: np.ndarray) -> np.ndarray:
        y = points[..., 1]
        y_post, y_ant = y[region].min(), y[region].max()
        anterior = np.clip((y - y_post) / (y_ant - y_post), 0.0, 1.0)
        out = np.zeros(points.shape)
        out[..., 2] = -spec.magnitude_mm * (0.8 + 0.2 * anterior)  # moving shows content from below (exhale)
        return out

    return Anatomy(ct, aa, grid, hu, body, organs, bone, motion, labels)


ANATOMY: dict[str, Callable[[Path, CaseSpec], Anatomy]] = {
    "lung": lung_anatomy, "aorta": aorta_anatomy,
    "lung2-tune": lambda raw, spec: lung_anatomy(raw, spec, source="lung2"), "abdomen-tune": abdomen_anatomy}


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def build_case(name: str, raw: Path, out: Path, log=print) -> Path:
    """Build case ``name`` into ``out`` (idempotent: kept when ``case.json`` matches this builder)."""
    spec = ALL_SPECS[name]
    meta_path = out / "case.json"
    wanted = {"builder_version": BUILDER_VERSION, "spec": asdict(spec)}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == json.loads(json.dumps(wanted)) and (out / "truth.npz").is_file():
            log(f"ct_cases: {name}: present in {out}")
            return out
    log(f"ct_cases: {name}: building in {out}")
    out.mkdir(parents=True, exist_ok=True)
    a = ANATOMY[name](raw, spec)
    grid = a.grid
    points = grid.world_points()
    sdf = signed_distance(a.region, grid, spec.sdf_sigma_mm)
    region = sdf < 0
    motion = a.motion(points, region)
    warp = Warp.build(grid, motion, sdf, spec.push_length_mm)

    g = warp.at_voxels()
    rng = np.random.default_rng(spec.seed)
    fixed = a.hu + rng.normal(0.0, spec.noise_hu, a.hu.shape)
    moving = sample(a.source_aa, a.source.grid, points + g)[..., 0] + rng.normal(0.0, spec.noise_hu, a.hu.shape)
    if a.labels is None:
        labels = np.zeros(grid.shape, np.int32)
        labels[a.static & ~ndimage.binary_dilation(region, _ball(spec.band_mm, grid.spacing))] = 2
        labels[region] = 1
    else:
        labels = a.labels
    moving_labels = sample(_tensor(labels), grid, points + g, mode="nearest")[..., 0].round().astype(np.int32)

    y, valid, residual = warp.invert(points)
    u = (y - points).astype(np.float32)
    nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    u = u[tuple(nearest)]  # invalid voxels (left out of the EPE) take the nearest valid value
    grad = world_gradient(sdf, grid)
    n = grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-6)
    slip = np.linalg.norm(motion - np.sum(motion * n, axis=-1, keepdims=True) * n, axis=-1)
    band = (np.abs(sdf) <= spec.band_mm) & (slip >= spec.min_slip_mm) & a.body

    interface = ndimage.binary_dilation(region, iterations=1) & ~ndimage.binary_erosion(region, iterations=1)
    gen_det = metrics.jacobian_determinant(g, grid.affine)
    det = metrics.jacobian_determinant(u.astype(np.float64), grid.affine)
    body_valid = a.body & valid
    checks = {
        "invalid_fraction_body": float(1.0 - body_valid.sum() / a.body.sum()),
        "invalid_voxels_band": int((band & ~valid).sum()),
        "inversion_residual_max_mm": float(np.nanmax(residual[a.body])),
        "generating_det_min_off_interface": float(gen_det[a.body & ~interface].min()),
        "true_det_min": float(det[body_valid].min()),
    }
    meta = {
        **json.loads(json.dumps(wanted)),
        "name": name,
        "description": spec.description,
        "grid": {"shape": list(grid.shape), "spacing_mm": [round(float(s), 4) for s in grid.spacing],
                 "affine": grid.affine.tolist()},
        "source_spacing_mm": [round(float(s), 4) for s in a.source.grid.spacing],
        "labels": {str(k): v for k, v in LABELS[name].items()},
        "voxels": {"body": int(a.body.sum()), "region": int(region.sum()), "band": int(band.sum()),
                   "band_valid": int((band & valid).sum())},
        "true_displacement_mm": {"body": _stats(np.linalg.norm(u[body_valid], axis=-1)),
                                 "band": _stats(np.linalg.norm(u[band & valid], axis=-1)),
                                 "slip_band": _stats(slip[band])},
        "true_regularity": {"sdlogj": metrics.sdlogj(det, a.body),
                            "pct_detj_le0": metrics.folding_percent(det, a.body),
                            "ndv_pct": metrics.ndv_percent(u.astype(np.float64), grid.affine, a.body)},
        "checks": checks,
    }
    problems = []
    if checks["invalid_fraction_body"] > MAX_INVALID_FRACTION:
        problems.append(f"{checks['invalid_fraction_body']:.2%} of the body has no unique inverse")
    if checks["generating_det_min_off_interface"] <= 0:
        problems.append("the generating warp folds away from the sliding interface")
    if problems:
        raise SystemExit(f"ct_cases: {name}: " + "; ".join(problems))

    for fname, data, dtype in (("fixed", fixed, np.float32), ("moving", moving, np.float32),
                               ("fixed_seg", labels, np.int16), ("moving_seg", moving_labels, np.int16)):
        save_image(Image(np.asarray(data, dtype=dtype), grid.affine), out / f"{fname}.nii.gz")
    np.savez_compressed(out / "truth.npz", u=u, valid=valid, body=a.body, band=band, region=region,
                        slip=slip.astype(np.float32), sdf=sdf.astype(np.float32))
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    log(f"ct_cases: {name}: grid {grid.shape} at {meta['grid']['spacing_mm']} mm; |u| mean "
        f"{meta['true_displacement_mm']['body']['mean']:.2f} / max {meta['true_displacement_mm']['body']['max']:.2f}"
        f" mm; band {meta['voxels']['band']} voxels; invalid {checks['invalid_fraction_body']:.3%}; residual "
        f"{checks['inversion_residual_max_mm']:.1e} mm")
    return out


def load_truth(case_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of ``truth.npz``: ``u`` (RAS mm), masks ``valid body band region``, ``slip``, ``sdf``."""
    with np.load(case_dir / "truth.npz") as z:
        return {k: z[k] for k in z.files}
