"""The report figure's scales: λ over its own range, det J on a log scale masked to the foreground."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from svreg_core.image import Image
from svreg_core.outputs.figure import (
    lambda_range,
    lambda_ticks,
    log2_jacobian,
    log2_range,
    ras_array_affine,
    to_ras_array,
    write_report_figure,
)


def test_lambda_range_is_lambdas_own() -> None:
    lam = np.linspace(0.916, 0.993, 1000)
    assert lambda_range(lam) == (0.916, 0.993)
    low, high = lambda_range(np.full(10, 0.5))
    assert low < 0.5 < high and high - low >= 1e-3 - 1e-12  # a constant λ still gets a drawable range


def test_lambda_ticks_tell_neighbours_apart_without_offset() -> None:
    assert lambda_ticks(0.0, 1.0) == ([0.0, 0.5, 1.0], ["0.00", "0.50", "1.00"])
    assert lambda_ticks(0.7, 1.0)[1] == ["0.70", "0.85", "1.00"]
    # a nearly constant λ (lambda_range widens it to 1e-3): the ticks 5e-4 apart need 4 decimals
    assert lambda_ticks(0.9995, 1.0005)[1] == ["0.9995", "1.0000", "1.0005"]
    assert lambda_ticks(0.5, 0.5)[1] == ["0.50", "0.50", "0.50"]  # no range: no division by zero


def test_jacobian_log_scale_masks_background_and_folds() -> None:
    jac = np.array([0.5, 1.0, 2.0, 8.0, -0.1])
    fg = np.array([True, True, True, False, True])
    values = log2_jacobian(jac, fg)
    np.testing.assert_allclose(values.compressed(), [-1.0, 0.0, 1.0])  # 8 is background, -0.1 folded
    assert values.mask.tolist() == [False, False, False, True, True]
    assert log2_range(jac, fg) == 1.0  # symmetric around det J = 1: 0.5 and 2 are equally far
    assert log2_range(np.array([0.5, 1.0, 1.5, 8.0]), fg[:4]) == 1.0  # the larger of |log2 0.5| and log2 1.5
    assert log2_range(np.ones(4), np.ones(4, bool)) == 0.25  # a flat Jacobian still has a range
    assert log2_range(np.array([-1.0, 2.0]), np.array([True, False])) == 0.25  # no valid voxel


def test_ras_array_affine_places_the_reoriented_array() -> None:
    affine = np.array([[0.0, -2.0, 0, 10], [3.0, 0, 0, -5], [0, 0, -1.5, 7], [0, 0, 0, 1]])
    image = Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), affine)
    ras, ras_aff = to_ras_array(image), ras_array_affine(image)
    assert np.all(np.diag(ras_aff[:3, :3]) > 0)  # axes run R, A, S
    ijk = np.array([1, 2, 3])
    world = ras_aff[:3, :3] @ ijk + ras_aff[:3, 3]
    original = np.linalg.solve(affine[:3, :3], world - affine[:3, 3])
    assert ras[tuple(ijk)] == image.data[tuple(np.rint(original).astype(int))]


def test_figure_with_dice(tmp_path: Path, monkeypatch) -> None:
    """The mean Dice before and after (3 decimals) follows the title, or is the title when there is none."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    data = np.zeros((20, 22, 18), np.float32)
    data[4:16, 5:17, 3:15] = rng.uniform(0.5, 1.0, (12, 12, 12))
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = Image(data, aff)
    jac = Image(rng.uniform(0.7, 1.4, data.shape).astype(np.float32), aff)
    lam = Image(rng.uniform(0.92, 0.99, data.shape).astype(np.float32), aff)
    drawn: list[Figure] = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), savefig(self, *a, **k))[1])
    titles = []
    for title, dice in (("t", (0.61, 0.83)), ("", (0.61264, 0.83489)), ("t", None)):
        path = write_report_figure(tmp_path / "r.png", fixed=img, moving_before=img, warped=img, weight=lam,
                                   jacobian=jac, title=title, dice=dice)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        titles.append(drawn[-1].get_suptitle())
    assert titles == ["t — mean Dice 0.610 → 0.830", "mean Dice 0.613 → 0.835", "t"]


def test_anisotropic_ball_is_drawn_round(tmp_path: Path, monkeypatch) -> None:
    """A ball on 1 x 1.5 x 3 mm voxels (an oblique-free, thick-slice scan): in every view its drawn width and height
    (pixels of the slice times the panel's screen units per pixel, after matplotlib applied the aspect) agree."""
    from matplotlib.figure import Figure

    spacing = np.array([1.0, 1.5, 3.0])
    shape = (48, 32, 16)
    ijk = np.indices(shape).transpose(1, 2, 3, 0)
    mm = (ijk - (np.asarray(shape) - 1) / 2.0) * spacing
    data = (np.linalg.norm(mm, axis=-1) < 18.0).astype(np.float32)
    img = Image(data, np.diag([*spacing, 1.0]))
    ones = Image(np.ones(shape, np.float32), img.affine)
    drawn: list[Figure] = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), savefig(self, *a, **k))[1])
    write_report_figure(tmp_path / "r.png", fixed=img, moving_before=img, warped=img, weight=ones, jacobian=ones)
    axes = drawn[0].axes
    for row in range(3):
        ax = axes[row * 7]  # the fixed column
        ball = np.argwhere(np.asarray(ax.images[0].get_array()) > 0.5)
        rows, cols = ball.max(0) - ball.min(0) + 1  # voxels up, voxels across
        origin, right, up = ax.transData.transform([[0, 0], [1, 0], [0, 1]])
        width, height = cols * (right - origin)[0], rows * (up - origin)[1]
        assert abs(width / height - 1.0) < 0.12, (row, width, height)


def test_orientation_letters_are_readable_on_every_panel(tmp_path: Path) -> None:
    """The yellow orientation letters are outlined in dark: on the det J panels (white where det J = 1, the usual
    case) and a λ near its maximum (viridis' yellow) plain yellow letters could not be read. Every yellow pixel of
    the panels has a dark one within two pixels."""
    from matplotlib.image import imread
    from scipy import ndimage

    data = np.zeros((20, 22, 18), np.float32)
    data[3:17, 3:19, 3:15] = np.random.default_rng(1).uniform(0.5, 1.0, (14, 16, 12))
    img = Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    ones = Image(np.ones(data.shape, np.float32), img.affine)  # det J = 1 (white), λ constant
    path = write_report_figure(tmp_path / "r.png", fixed=img, moving_before=img, warped=img, weight=ones,
                               jacobian=ones)
    rgb = imread(str(path))[..., :3]
    panels = rgb[: int(0.86 * len(rgb))]  # above the colour bars (viridis' own yellow end)
    yellow = (panels[..., 0] > 0.8) & (panels[..., 1] > 0.8) & (panels[..., 2] < 0.3)
    dark = panels @ np.array([0.2126, 0.7152, 0.0722]) < 0.3
    assert yellow.sum() > 200  # 4 letters on each of 21 panels
    assert ndimage.maximum_filter(dark, size=5)[yellow].all()


def test_orientation_letter_l_keeps_its_foot() -> None:
    """At the figure's 7 points and 90 dpi a regular "L" lost its foot (thinner than a pixel, snapped away) at a third
    of the positions, so on the black background of the image and difference panels it read as "I"; wherever it is
    drawn its yellow now spans several pixel columns, as an "L" does."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from svreg_core.outputs.figure import orientation_letter

    widths = []
    for x, y in np.random.default_rng(0).uniform(0.3, 0.7, (25, 2)):
        fig = Figure(figsize=(1, 1), dpi=90)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(np.zeros((4, 4)), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        orientation_letter(ax, "L", (x, y), ("center", "center"))
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 150) & (rgb[..., 2] < 100)
        widths.append(int(np.count_nonzero(yellow.any(axis=0))))
    assert min(widths) >= 3, widths


def test_folded_voxels_are_drawn_not_left_blank(tmp_path: Path) -> None:
    """Voxels with det J ≤ 0, the ones a user looks for, were left blank on the det J panels: white, as det J = 1 and
    the background are. They are now drawn in their own colour, and only inside the foreground."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from svreg_core.outputs.figure import FOLD_COLOUR

    data = np.zeros((20, 22, 18), np.float32)
    data[3:17, 3:19, 3:15] = np.random.default_rng(1).uniform(0.5, 1.0, (14, 16, 12))
    img = Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    jac = np.ones(data.shape, np.float32)
    jac[7:13, 8:14, 6:12] = -0.5  # a folded block at the centre, on every slice through it
    jac[0:2] = -0.5  # folds in the background: not drawn
    path = write_report_figure(tmp_path / "r.png", fixed=img, moving_before=img, warped=img,
                               weight=Image(np.ones(data.shape, np.float32), img.affine),
                               jacobian=Image(jac, img.affine))
    rgb = imread(str(path))[..., :3]
    panels = rgb[: int(0.86 * len(rgb))]  # above the colour bars
    fold = np.all(np.abs(panels - np.asarray(to_rgb(FOLD_COLOUR))) < 0.1, axis=-1)
    det_j_column = fold[:, int(6 / 7 * fold.shape[1]):]
    assert det_j_column.sum() > 3 * 100  # the block on each of the 3 det J panels
    assert fold.sum() == det_j_column.sum()  # nowhere else (no λ panel's green)
    cols = np.nonzero(det_j_column.any(axis=0))[0]
    assert cols.max() - cols.min() < 0.5 * det_j_column.shape[1]  # the central block, not the background's folds
