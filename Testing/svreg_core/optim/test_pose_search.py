"""The pose search's pieces on hand-made cases: the spread of the candidate rotations, angles between matrices,
which candidates are kept, and which result is chosen."""
from __future__ import annotations

import numpy as np
import pytest

from svreg_core.optim.pose_search import (
    POSE_CANDIDATES,
    SAME_POSE_DEGREES,
    choose_pose,
    promising_rotations,
    rotation_candidates,
    rotation_degrees,
)


def _about_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def test_candidates_are_rotations_spread_over_every_orientation(geo) -> None:
    """Proper rotations (orthonormal, det +1: never a mirror image); every one of 2,000 random orientations lies
    within 38° of a candidate (the optimiser's reach is 30-40°), 21° on average."""
    candidates = rotation_candidates()
    assert candidates.shape == (POSE_CANDIDATES, 3, 3)
    np.testing.assert_allclose(candidates @ candidates.transpose(0, 2, 1), np.broadcast_to(np.eye(3), candidates.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(candidates), 1.0, atol=1e-12)
    rng = np.random.default_rng(0)
    targets = np.array([geo.rotation(rng.normal(size=3), np.degrees(a)) for a in rng.uniform(0, np.pi, 2000)])
    traces = np.einsum("tij,cij->tc", targets, candidates)  # trace(T Cᵀ) = 1 + 2 cos(angle between T and C)
    nearest = np.degrees(np.arccos(np.clip((traces.max(axis=1) - 1.0) / 2.0, -1.0, 1.0)))
    assert rotation_degrees(targets[0], candidates[traces[0].argmax()]) == pytest.approx(nearest[0])
    assert nearest.max() < 38.0 and 19.0 < nearest.mean() < 23.0, (nearest.max(), nearest.mean())
    np.testing.assert_array_equal(rotation_candidates(), candidates)  # deterministic


def test_rotation_degrees_hand_values(geo) -> None:
    assert rotation_degrees(_about_z(90.0), np.eye(3)) == pytest.approx(90.0)
    assert rotation_degrees(_about_z(30.0), _about_z(-20.0)) == pytest.approx(50.0)
    assert rotation_degrees(_about_z(180.0), np.eye(3)) == pytest.approx(180.0)
    # scalings and shears do not count; 4x4 matrices are read by their linear part
    scaled = np.eye(4)
    scaled[:3, :3] = geo.rotation([1.0, 2.0, -1.0], 40.0) @ np.diag([1.3, 0.8, 1.0])
    scaled[:3, 3] = [50.0, -20.0, 7.0]
    assert rotation_degrees(scaled, np.eye(4)) == pytest.approx(40.0)


def test_promising_rotations_best_first_and_none_when_the_usual_start_scores_best() -> None:
    """The score here is the angle to a target rotation: the kept candidates are the nearest, best first; a
    target at the identity keeps none (the usual start scores best)."""
    candidates = rotation_candidates()
    target = _about_z(150.0)
    kept = promising_rotations(lambda r: rotation_degrees(r, target), candidates, keep=3)
    distances = sorted(rotation_degrees(c, target) for c in candidates)
    assert [rotation_degrees(r, target) for r in kept] == pytest.approx(distances[:3])
    assert promising_rotations(lambda r: rotation_degrees(r, np.eye(3)), candidates) == []


def test_choose_pose_keeps_the_usual_result_unless_another_pose_is_better() -> None:
    usual, turned, near = np.eye(4), np.eye(4), np.eye(4)
    turned[:3, :3] = _about_z(120.0)
    near[:3, :3] = _about_z(SAME_POSE_DEGREES / 2)
    assert choose_pose([usual, turned], [-0.5, -0.9]) == 1  # another pose, better
    assert choose_pose([usual, turned], [-0.9, -0.5]) == 0  # another pose, worse
    assert choose_pose([usual, near, turned], [-0.5, -0.95, -0.9]) == 0  # the best is the usual alignment again
    assert choose_pose([usual, turned, turned], [-0.5, -0.9, -0.9]) == 1
