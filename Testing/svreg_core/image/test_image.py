"""crop_to_box: the voxels of an image inside a world box, positions unchanged; plain errors. foreground_inside:
hand-counted fractions."""
from __future__ import annotations

import numpy as np
import pytest

from svreg_core.errors import InputError
from svreg_core.image import Grid, Image, crop_to_box
from svreg_core.image.image import conform_to_grid, foreground_inside


def _image() -> Image:
    affine = np.array([[0.0, -2.0, 0.0, 20.0], [1.5, 0.0, 0.0, -10.0], [0.0, 0.0, 3.0, 5.0], [0, 0, 0, 1.0]])
    data = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    return Image(data, affine)


def test_crop_keeps_world_positions() -> None:
    image = _image()
    # voxel (i, j, k) sits at R = 20 - 2 j, A = -10 + 1.5 i, S = 5 + 3 k; keep i 2..5, j 1..3, k 4..6
    cropped = crop_to_box(image, [20 - 2 * 3 - 0.5, -10 + 1.5 * 2 - 0.1, 5 + 3 * 4 - 1],
                          [20 - 2 * 1 + 0.5, -10 + 1.5 * 5 + 0.1, 5 + 3 * 6 + 1], "fixed image")
    assert cropped.shape == (4, 3, 3)
    np.testing.assert_array_equal(cropped.data, image.data[2:6, 1:4, 4:7])
    np.testing.assert_allclose(cropped.grid.world_points(), image.grid.world_points()[2:6, 1:4, 4:7], atol=1e-9)


@pytest.mark.parametrize(("a", "b", "message"), [
    ([500, 500, 500], [600, 600, 600], "misses the fixed image"),
    ([0, -10, 5], [20.5, 5, 5.5], "fewer than 2 voxels"),  # one slice along k
])
def test_bad_boxes_raise_one_line(a, b, message) -> None:
    with pytest.raises(InputError, match=message) as err:
        crop_to_box(_image(), a, b, "fixed image")
    assert "\n" not in str(err.value) and "R/A/S" in str(err.value)


@pytest.mark.parametrize("size", [12, 160])  # 160³ voxels: counted on every 2nd voxel along each axis
def test_foreground_inside_counts_the_foreground_in_the_other_field_of_view(size: int) -> None:
    """A cube of 1 mm voxels with a bright slab (i < size / 2) on a background of -5; another grid whose field of
    view starts at i = size / 4 - 0.9 (so holds i ≥ size / 4) holds half of the slab, one beyond the image none."""
    data = np.full((size, size, size), -5.0, np.float32)
    data[: size // 2] = 1.0
    image = Image(data, np.eye(4))
    half = Grid((size, size, size), np.array([[1.0, 0, 0, size / 4 - 0.4], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert foreground_inside(image, half) == pytest.approx(0.5)
    assert foreground_inside(image, image.grid) == 1.0
    far = Grid((size, size, size), np.array([[1.0, 0, 0, 3.0 * size], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert foreground_inside(image, far) == 0.0
    spot = np.full((size, size, size), -5.0, np.float32)
    spot[1, 1, 1] = 1.0  # a foreground the every-2nd-voxel sample misses: all voxels are looked at
    assert foreground_inside(Image(spot, np.eye(4)), image.grid) == 1.0


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("flips", [(), (0,), (1, 2), (0, 1, 2)])
def test_conform_to_grid_reorders_the_same_voxels(order, flips) -> None:
    """A label map holding the image's voxels in another axis order and direction (reordered with NumPy, its
    affine composed by hand: new voxel ``n`` is old voxel ``P n + t``) comes back as the image's array, on the
    image's grid."""
    image = _image()
    labels = np.arange(image.data.size, dtype=np.int32).reshape(image.shape)
    moved = np.transpose(labels, order)  # new axis a runs along old axis order[a]
    moved = np.flip(moved, [a for a, axis in enumerate(order) if axis in flips]) if flips else moved
    step = np.eye(4)
    step[:3, :3] = 0.0
    for a, axis in enumerate(order):
        step[axis, a] = -1.0 if axis in flips else 1.0
        step[axis, 3] = image.shape[axis] - 1 if axis in flips else 0.0
    other = Image(moved, image.affine @ step)
    for index in ((0, 0, 0), (2, 3, 4), tuple(n - 1 for n in moved.shape)):  # the same world voxel, same label
        original = np.rint(np.linalg.solve(image.affine, other.affine @ [*index, 1.0])[:3]).astype(int)
        assert labels[tuple(original)] == moved[index]
    back = conform_to_grid(other, image.grid, "labels", "image")
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_allclose(back.affine, image.affine)
    assert conform_to_grid(Image(labels, image.affine), image.grid, "labels", "image").data is labels


@pytest.mark.parametrize("flipped", [False, True])
def test_conform_to_grid_pads_a_part_and_cuts_a_background_margin(flipped: bool) -> None:
    """A label map of the voxels i 2-5, j 1-8, k 3-6 only (as 3D Slicer saves a segmentation with the extent of its
    segments), optionally stored with i reversed, comes back padded with 0; one with a zero margin of 2 voxels
    around the image comes back cut to it. The block is placed by hand, independently of the function."""
    image = _image()
    labels = np.zeros(image.shape, np.int32)
    labels[2:6, 1:9, 3:7] = np.arange(4 * 8 * 4).reshape(4, 8, 4) % 5 + 1
    part, corner = labels[2:6, 1:9, 3:7], np.array([2, 1, 3])
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ corner + image.affine[:3, 3]  # voxel (0, 0, 0) of the part
    if flipped:  # stored i-reversed: its voxel 0 along i is the image's i = 5
        part = part[::-1]
        affine[:3, 3] += 3 * image.affine[:3, 0]
        affine[:3, 0] *= -1
    back = conform_to_grid(Image(part, affine), image.grid, "labels", "image")
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_allclose(back.affine, image.affine)
    margin = np.pad(labels, 2)
    wide = image.affine.copy()
    wide[:3, 3] -= image.affine[:3, :3] @ [2, 2, 2]
    np.testing.assert_array_equal(conform_to_grid(Image(margin, wide), image.grid, "labels", "image").data, labels)
    margin[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"reaches beyond the image's grid \(8, 9, 10\) with labels there"):
        conform_to_grid(Image(margin, wide), image.grid, "labels", "image")


@pytest.mark.parametrize("change", ["half a voxel", "voxel size", "disjoint", "rotated", "shifted by a voxel"])
def test_conform_to_grid_refuses_other_voxels(change: str) -> None:
    image = _image()
    affine = image.affine.copy()
    data = np.zeros(image.shape, np.int32)
    if change == "half a voxel":
        affine[:3, 3] += 0.5 * affine[:3, 0]
    elif change == "voxel size":
        affine[:3, :3] *= 1.01
    elif change == "disjoint":  # on the lattice, but beyond the image
        affine[:3, 3] += 20 * affine[:3, 0]
    elif change == "shifted by a voxel":  # the image's size, one voxel off: a broken header, not a part
        affine[:3, 3] += affine[:3, 2]
    else:
        c, s = np.cos(0.2), np.sin(0.2)
        affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ affine[:3, :3]
    with pytest.raises(InputError, match=r"moving labels \(.*\) is not on the grid of the moving image \(8, 9, 10\): "
                                         r"they must hold the same voxels") as info:
        conform_to_grid(Image(data, affine), image.grid, "moving labels", "moving image")
    # how the grids differ: the voxel sizes and the distance between the first voxels' centres
    apart = np.linalg.norm(affine[:3, 3] - image.affine[:3, 3])
    assert str(info.value).endswith(f"; voxel sizes {' x '.join(f'{v:.4g}' for v in Image(data, affine).spacing)} and "
                                    f"{' x '.join(f'{v:.4g}' for v in image.spacing)} mm, first voxels {apart:.1f} mm "
                                    "apart.")


def test_an_array_or_a_nibabel_image_in_place_of_an_image_is_refused_in_one_line() -> None:
    """``register(nib.load(...), ...)`` or a bare NumPy array (the usual first try of the Python API) ended in an
    AttributeError about ``.data``; it is refused saying what to pass."""
    import nibabel as nib

    from svreg_core import register

    volume = np.zeros((4, 4, 4), np.float32)
    for given, kind in ((volume, "numpy.ndarray"), (nib.Nifti1Image(volume, np.eye(4)), "nibabel.nifti1.Nifti1Image")):
        with pytest.raises(InputError) as err:
            register(given, given)
        assert str(err.value) == ("fixed image must be an svreg Image (svreg_core.load_image(path), or Image(array, "
                                  f"affine) with its voxel-to-RAS affine), not {kind}.")
