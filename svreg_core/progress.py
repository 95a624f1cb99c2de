"""Progress reporting shared by the engine, the CLI (tqdm bar or JSON lines) and the Slicer module."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ProgressEvent:
    """One progress update.

    Attributes:
        stage: short stage name (``"load"``, ``"affine"``, ``"deformable 4mm"``, ``"outputs"``...).
        step: steps done in this stage.
        total: steps in this stage (0 when unknown).
        fraction: overall completion in [0, 1].
        message: optional human-readable line.
        values: optional numbers (e.g. ``{"loss": -0.41}``).
    """

    stage: str
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    message: str = ""
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """A progress callback that ignores every event."""
