"""Colour maps, windows and slice-view layers for the registration outputs (MRML only, no Qt).

* λ map (regularisation weight, values in (0, 1]): sequential colour map (Viridis) over a window
  [L, 1] whose lower end L is one of :data:`LAMBDA_WINDOW_LOWS` (0, 0.5, 0.9, 0.99): the highest not
  above the map's 1st percentile. λ often varies over a narrow band (e.g. 0.99-1.0) that a [0, 1]
  window would show as one flat colour; a window stretched to each map's own range instead showed
  rounding noise of a map that is 1 everywhere as a full rainbow, gave one colour different λ in two
  runs, and kept the picture unchanged when a slider preview moved the whole map. The few fixed
  windows keep colours comparable between runs and previews of the same band.
* Jacobian determinant: diverging colour map centred at 1 (window [0, 2]): blue where the mapping
  compresses, white where it preserves volume, red where it expands; values <= 0 (folding) saturate
  blue.

Slicer's own colour tables are used when the scene has them (the application loads them at start);
otherwise (e.g. the bare MRML library of the tests) equivalent tables are created once per scene.
"""
from __future__ import annotations

import numpy as np

#: Slicer's built-in colour node IDs, tried in order.
SEQUENTIAL_COLOR_IDS = ("vtkMRMLColorTableNodeFileViridis.txt",)
DIVERGING_COLOR_IDS = ("vtkMRMLColorTableNodeFileDivergingBlueRed.txt",
                       "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")

#: Names of the fallback tables this module creates when the built-ins are missing.
SEQUENTIAL_FALLBACK_NAME = "SpatialVaryingReg sequential (viridis)"
DIVERGING_FALLBACK_NAME = "SpatialVaryingReg diverging (Jacobian)"

#: Viridis sampled at 9 evenly spaced points (the colour map is CC0), interpolated to 256 entries.
_VIRIDIS_ANCHORS = np.array([
    (0.2670, 0.0049, 0.3294), (0.2788, 0.1755, 0.4834), (0.2297, 0.3224, 0.5457),
    (0.1727, 0.4488, 0.5579), (0.1276, 0.5669, 0.5506), (0.1579, 0.6838, 0.5017),
    (0.3692, 0.7889, 0.3829), (0.6785, 0.8637, 0.1895), (0.9932, 0.9062, 0.1439)])
#: Blue - white - red, symmetric around the centre entry.
_DIVERGING_ANCHORS = np.array([(0.02, 0.19, 0.38), (0.26, 0.58, 0.76), (0.97, 0.97, 0.97),
                               (0.84, 0.38, 0.30), (0.40, 0.0, 0.12)])

#: Lower ends of the λ map's display windows (the upper end is 1, λ's maximum), see :func:`lambda_window`.
LAMBDA_WINDOW_LOWS = (0.0, 0.5, 0.9, 0.99)
#: Display window of the Jacobian determinant as (window, level): [0, 2], centred at 1.
JACOBIAN_WINDOW = (2.0, 1.0)

#: Opacity of the foreground layer when the first result is shown.
FOREGROUND_OPACITY = 0.5


def _interpolate(anchors: np.ndarray, n: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)


def _table_node(scene, name: str, anchors: np.ndarray):
    """Find the fallback table ``name`` in the scene or create it."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    colors = _interpolate(anchors)
    node.SetNumberOfColors(len(colors))
    node.GetLookupTable().SetTableRange(0, len(colors) - 1)
    for i, (r, g, b) in enumerate(colors):
        node.SetColor(i, f"{i}", float(r), float(g), float(b), 1.0)
    node.SetAttribute("Category", "SpatialVaryingReg")
    node.SetHideFromEditors(False)
    return node


def color_node_id(scene, kind: str) -> str:
    """ID of the colour node for ``kind`` (``"sequential"`` or ``"diverging"``), built-in if available."""
    if kind == "sequential":
        candidates, name, anchors = SEQUENTIAL_COLOR_IDS, SEQUENTIAL_FALLBACK_NAME, _VIRIDIS_ANCHORS
    elif kind == "diverging":
        candidates, name, anchors = DIVERGING_COLOR_IDS, DIVERGING_FALLBACK_NAME, _DIVERGING_ANCHORS
    else:
        raise ValueError(f"unknown colour map kind {kind!r}")
    for node_id in candidates:
        if scene.GetNodeByID(node_id) is not None:
            return node_id
    return _table_node(scene, name, anchors).GetID()


def _scalar_display(volume_node, color_id: str, window_level: tuple[float, float]) -> None:
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*window_level)
    display.SetInterpolate(1)


def lambda_window(values: np.ndarray) -> tuple[float, float]:
    """(window, level) of the λ map ``values``: [L, 1] with L the highest of :data:`LAMBDA_WINDOW_LOWS` not above
    the 1st percentile of the finite values ([0, 1] when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    low = float(np.percentile(v, 1.0)) if v.size else 0.0
    lo = max((x for x in LAMBDA_WINDOW_LOWS if x <= low), default=0.0)
    return 1.0 - lo, 0.5 * (1.0 + lo)


def apply_lambda_display(volume_node) -> tuple[float, float]:
    """λ map: sequential colour map over :func:`lambda_window`, automatic window/level off; returns the window's
    (lowest, highest) λ."""
    import vtk.util.numpy_support as ns

    scalars = volume_node.GetImageData().GetPointData().GetScalars()
    window, level = lambda_window(ns.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0))
    _scalar_display(volume_node, color_node_id(volume_node.GetScene(), "sequential"), (window, level))
    return level - window / 2, level + window / 2


def apply_jacobian_display(volume_node) -> None:
    """Jacobian determinant: diverging colour map centred at 1, window [0, 2]."""
    _scalar_display(volume_node, color_node_id(volume_node.GetScene(), "diverging"), JACOBIAN_WINDOW)


def apply_label_display(label_node, like=None) -> None:
    """Give a warped label map the colour table of the label map it came from."""
    if label_node.GetDisplayNode() is None:
        label_node.CreateDefaultDisplayNodes()
    source = like.GetDisplayNode() if like is not None else None
    if source is not None and source.GetColorNodeID():
        label_node.GetDisplayNode().SetAndObserveColorNodeID(source.GetColorNodeID())


def show_in_slice_views(scene, background=None, foreground=None, label=None,
                        foreground_opacity: float = FOREGROUND_OPACITY) -> int:
    """Set the layers of every slice view (composite node) of the scene; return how many were set."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    count = 0
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        if foreground is not None:
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(foreground_opacity)
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())
        count += 1
    return count
