"""Which rotation the affine stage starts from: a search over rotations of the moving image (pose search).

The affine optimiser converges from starts within about 30–40° of the answer (the brain pair's moving image
rotated about S: 30° recovered, 45° not). Images whose headers disagree by more — a scan whose orientation
was lost or written wrongly, a specimen or an animal placed another way, a header rotated by hand — are
aligned from the wrong side and end in a wrong pose. The search scores near-uniformly spread rotations about
the centres of mass on the coarsest affine level and keeps the affine stage's own start unless one of them
leads to a better alignment (:func:`svreg_core.optim.affine.affine_register` runs it). Only proper rotations
are tried: a mirror image (a left-right flip in a header) looks as plausible as the truth for symmetric
anatomy and is never "corrected".

Rotations are 3x3 matrices acting on RAS millimetre vectors.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: Rotations scored: 200 spread over all orientations (no orientation is more than 38° from one of them;
#: 21° on average).
POSE_CANDIDATES = 200
#: The best-scoring rotations optimised briefly on the coarsest level (the scores alone rank a rotation near
#: the truth above one that merely matches the outline less often than this).
POSE_KEEP = 4
#: Adam iterations of that brief optimisation.
POSE_REFINE_ITERATIONS = 30
#: Of those, how many run the whole affine pyramid beside the usual start.
POSE_FINALISTS = 2
#: Two results whose rotations differ by less than this (degrees) found the same alignment: the usual start's
#: result is kept.
SAME_POSE_DEGREES = 20.0


def rotation_candidates(count: int = POSE_CANDIDATES) -> np.ndarray:
    """``count`` rotations ``(count, 3, 3)`` spread evenly over all orientations: the unit quaternions of a
    super-Fibonacci spiral (Alexa, CVPR 2022), deterministic."""
    phi, psi = np.sqrt(2.0), 1.533751168755204288118041  # psi: the real root of psi**4 = psi + 4
    s = np.arange(count) + 0.5
    r, big_r = np.sqrt(s / count), np.sqrt(1.0 - s / count)
    alpha, beta = 2 * np.pi * s / phi, 2 * np.pi * s / psi
    x, y, z, w = r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rotation_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """The angle (degrees) of the rotation between the linear parts of two matrices (3x3 or 4x4): that of the
    rotation nearest to ``a b⁻¹`` (its polar factor), so scalings and shears do not count."""
    u, _, vt = np.linalg.svd(np.asarray(a)[:3, :3] @ np.linalg.inv(np.asarray(b)[:3, :3]))
    rotation = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))


def promising_rotations(score: Callable[[np.ndarray], float], candidates: np.ndarray,
                        keep: int = POSE_KEEP) -> list[np.ndarray]:
    """The ``keep`` candidates with the lowest ``score`` (a loss of a start rotating the moving image), best
    first; none when the identity (the usual start) scores at least as well as every candidate."""
    usual = score(np.eye(3))
    scores = np.array([score(rotation) for rotation in candidates])
    if usual <= scores.min():
        return []
    return [candidates[i] for i in np.argsort(scores, kind="stable")[:keep]]


def choose_pose(matrices: Sequence[np.ndarray], losses: Sequence[float]) -> int:
    """Index of the result to keep: ``matrices[0]`` (from the usual start) unless another has a lower loss and
    a rotation more than :data:`SAME_POSE_DEGREES` away from it."""
    best = int(np.argmin(losses))
    if best and losses[best] < losses[0] and rotation_degrees(matrices[best], matrices[0]) > SAME_POSE_DEGREES:
        return best
    return 0
