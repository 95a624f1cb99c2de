"""Corresponding fiducials (markups point lists) on the fixed and moving images: target registration error.

Point ``n`` of the fixed list corresponds to point ``n`` of the moving list (same order, same count).
After a registration the moving list is placed under the result transform, which maps its points
onto the fixed image (a point under a transform is moved by the transform *to parent*, the inverse of
the resampling mapping); the TRE is the distance, in RAS mm, between each mapped moving point and its
fixed point, reported with the distance before registration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def points_through(markups_node, to_world: np.ndarray | None) -> np.ndarray:
    """``(N, 3)`` positions of the node's control points in its own coordinates (no parent transform), mapped by
    the 4x4 ``to_world`` (``None``: as they are); e.g. a moving list's positions before this module's result
    transform, with the linear transforms the registration starts from."""
    points = np.zeros((markups_node.GetNumberOfControlPoints(), 3))
    for n in range(len(points)):
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPosition(n, position)
        points[n] = position
    return points if to_world is None else points @ to_world[:3, :3].T + to_world[:3, 3]


def world_points(markups_node) -> np.ndarray:
    """``(N, 3)`` RAS mm positions of the node's control points in the world (parent transforms applied)."""
    points = np.zeros((markups_node.GetNumberOfControlPoints(), 3))
    for n in range(len(points)):
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(n, position)
        points[n] = position
    return points


@dataclass(frozen=True)
class TargetRegistrationError:
    """Distances (mm) between corresponding points: ``before`` and ``after`` registration, per pair."""

    before: np.ndarray
    after: np.ndarray

    @property
    def count(self) -> int:
        return len(self.after)

    def text(self) -> str:
        """``"TRE 1.23 mm (max 2.34, before 5.67 mm) over 4 point pairs"``."""
        return (f"TRE {self.after.mean():.2f} mm (max {self.after.max():.2f}, before {self.before.mean():.2f} mm) "
                f"over {self.count} point pair{'s' if self.count != 1 else ''}")


def pair_count_problem(fixed_node, moving_node) -> str:
    """Why the two lists cannot be paired ('' when they can): a list without points, a point not placed (a
    template's unplaced point, a point being placed: its position means nothing), or different numbers of points."""
    n_fixed, n_moving = fixed_node.GetNumberOfControlPoints(), moving_node.GetNumberOfControlPoints()
    if n_fixed == 0 or n_moving == 0:
        return "a fiducial list has no points"
    for node, side in ((fixed_node, "fixed"), (moving_node, "moving")):
        for n in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(n) != node.PositionDefined:
                return (f"point {n + 1} ('{node.GetNthControlPointLabel(n)}') of the {side} list is not placed "
                        "(place it or delete it)")
    if n_fixed != n_moving:
        return f"the fixed list has {n_fixed} points and the moving list {n_moving} (pairs go by order)"
    return ""


def target_registration_error(fixed_points: np.ndarray, moving_before: np.ndarray,
                              moving_after: np.ndarray) -> TargetRegistrationError:
    """TRE of corresponding ``(N, 3)`` world points: moving points before and after the transform."""
    fixed = np.asarray(fixed_points, dtype=np.float64)
    return TargetRegistrationError(np.linalg.norm(np.asarray(moving_before) - fixed, axis=1),
                                   np.linalg.norm(np.asarray(moving_after) - fixed, axis=1))
