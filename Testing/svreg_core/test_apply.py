"""Saved transforms applied to images, label maps and points, checked against SimpleITK with the same files.

A known mapping ``T(x) = A(x + u(x))`` (an analytic smooth ``u`` on an oblique fixed grid, a rotation +
translation ``A``) is written as an svreg output folder would hold it (``displacement.nii.gz``,
``transform.h5``, ``inverse_displacement.nii.gz``), then read back by :mod:`svreg_core.apply` and by
SimpleITK independently.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from svreg_core.apply import apply_to_image, apply_to_labels, apply_to_points, read_points, transform_points_file
from svreg_core.cli import main
from svreg_core.errors import InputError
from svreg_core.image import Grid, Image, load_image
from svreg_core.outputs.itk import displacement_nifti, write_transform
from svreg_core.outputs.read import Transform, load_transform


def _image(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (1.5 + np.sin(x / 9.0) * np.cos(y / 11.0) + 0.5 * np.sin(z / 7.0 + 1.0)).astype(np.float32)


@pytest.fixture(scope="module")
def case(geo, tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("apply") / "out"
    folder.mkdir()
    f_aff = geo.make_affine(geo.rotation([0.2, 1.0, 0.1], 10.0) @ np.diag([-3.0, 3.5, 3.0]), [30.0, -25.0, -18.0])
    f_shape = (18, 16, 14)
    m_shape, m_aff = geo.covering_grid(f_shape, f_aff, geo.rotation([1.0, 0.3, -0.4], 20.0) @ np.diag([2.5, -4.0, 3.2]),
                                       margin=5)
    centre = geo.grid_centre(f_shape, f_aff)
    rot = geo.rotation([0.5, -0.2, 1.0], 8.0)
    a = geo.make_affine(rot, centre - rot @ centre + np.array([3.0, -2.0, 1.5]))
    field = lambda p: geo.smooth_field(p, 5.0, seed=3, wavelength_mm=90.0)  # noqa: E731
    x = geo.world_points(f_shape, f_aff)
    u = field(x)
    t = (x + u) @ a[:3, :3].T + a[:3, 3]
    y = geo.world_points(m_shape, m_aff)
    a_inv = np.linalg.inv(a)
    z = y @ a_inv[:3, :3].T + a_inv[:3, 3]
    t_inv = geo.invert_displacement(field, z)
    fixed_grid, moving_grid = Grid(f_shape, f_aff), Grid(m_shape, m_aff)
    nib.save(displacement_nifti(t - x, fixed_grid), str(folder / "displacement.nii.gz"))
    nib.save(displacement_nifti(t_inv - y, moving_grid), str(folder / "inverse_displacement.nii.gz"))
    write_transform(folder / "transform.h5", a, u.astype(np.float32), fixed_grid)
    moving = Image(_image(y * 1.05), m_aff)
    labels = Image((np.digitize(moving.data, [1.2, 1.6, 2.0]) * 2).astype(np.int32), m_aff)
    geo.save_nifti(moving.data, m_aff, folder.parent / "moving.nii.gz")
    geo.save_nifti(labels.data, m_aff, folder.parent / "labels.nii.gz")
    return SimpleNamespace(folder=folder, fixed_grid=fixed_grid, moving_grid=moving_grid, affine=a, field=field,
                           moving=moving, labels=labels, tmp=folder.parent)


def _sitk_field(path: Path) -> sitk.Transform:
    return sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))


def _inside_points(grid: Grid, n: int = 200, seed: int = 0) -> np.ndarray:
    """Random RAS points between voxel centres, at least one voxel inside ``grid``."""
    vox = np.random.default_rng(seed).uniform(1.0, np.asarray(grid.shape) - 2.0, (n, 3))
    return nib.affines.apply_affine(grid.affine, vox)


def _sitk_resample(geo, image: Image, reference: Grid, transform: sitk.Transform, interpolator) -> np.ndarray:
    out = sitk.Resample(geo.sitk_image(image.data, image.affine), geo.sitk_image(np.zeros(reference.shape),
                        reference.affine), transform, interpolator, 0.0, sitk.sitkFloat64)
    return geo.sitk_array(out)


def _interior(geo, transform, image: Image, reference: Grid, margin: float = 1.0) -> np.ndarray:
    """Reference voxels whose mapped point lies ``margin`` voxels inside ``image`` (no border effects)."""
    vox = geo.to_voxel(transform.transform_points(reference.world_points()), image.affine)
    return np.all((vox >= margin) & (vox <= np.asarray(image.shape) - 1 - margin), axis=-1)


@pytest.mark.parametrize("name", ["out", "out/displacement.nii.gz", "out/transform.h5"])
def test_points_match_simpleitk(case, geo, name: str) -> None:
    tx = load_transform(case.tmp / name)
    x = _inside_points(case.fixed_grid)
    ours = apply_to_points(tx, x)
    for theirs in (_sitk_field(case.folder / "displacement.nii.gz"),
                   sitk.ReadTransform(str(case.folder / "transform.h5"))):
        np.testing.assert_allclose(ours, geo.lps([theirs.TransformPoint(tuple(p)) for p in geo.lps(x)]), atol=2e-3)
    assert np.abs(ours - x).max() > 5.0  # a mapping far from the identity


def test_h5_is_the_affine_after_the_field(case, geo) -> None:
    tx = load_transform(case.folder / "transform.h5")
    vox = np.random.default_rng(2).integers(1, np.asarray(case.fixed_grid.shape) - 1, (50, 3))
    x = nib.affines.apply_affine(case.fixed_grid.affine, vox)
    a = case.affine
    expected = (x + case.field(x)) @ a[:3, :3].T + a[:3, 3]  # the field is exact at voxel centres
    np.testing.assert_allclose(apply_to_points(tx, x), expected, atol=1e-3)
    assert tx.grid.same_as(case.fixed_grid)


def test_linear_image_matches_simpleitk(case, geo) -> None:
    tx = load_transform(case.folder)
    ours = apply_to_image(tx, case.moving)
    assert ours.grid.same_as(case.fixed_grid)
    theirs = _sitk_resample(geo, case.moving, case.fixed_grid, _sitk_field(case.folder / "displacement.nii.gz"),
                            sitk.sitkLinear)
    inside = _interior(geo, tx, case.moving, case.fixed_grid, margin=0.01)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours.data[inside], theirs[inside], atol=1e-4)


def test_bspline_image_matches_simpleitk(case, geo) -> None:
    tx = load_transform(case.folder / "transform.h5")
    ours = apply_to_image(tx, case.moving, interpolation="bspline")
    theirs = _sitk_resample(geo, case.moving, case.fixed_grid, sitk.ReadTransform(str(case.folder / "transform.h5")),
                            sitk.sitkBSpline)
    inside = _interior(geo, tx, case.moving, case.fixed_grid, margin=3.0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours.data[inside], theirs[inside], atol=2e-3)
    linear = apply_to_image(tx, case.moving)
    assert np.abs(linear.data[inside] - theirs[inside]).max() > 5e-3  # B-spline is not the linear result


def test_labels(case, geo) -> None:
    tx = load_transform(case.folder)
    nearest = apply_to_labels(tx, case.labels, interpolation="nearest")
    theirs = _sitk_resample(geo, case.labels, case.fixed_grid, _sitk_field(case.folder / "displacement.nii.gz"),
                            sitk.sitkNearestNeighbor)
    inside = _interior(geo, tx, case.labels, case.fixed_grid, margin=0.01)
    assert (nearest.data[inside] == theirs[inside]).mean() > 0.99  # ties at half voxels may round either way
    linear = apply_to_labels(tx, case.labels)
    assert linear.data.dtype == np.int32 and set(np.unique(linear.data)) <= set(np.unique(case.labels.data))
    # one-hot linear voting == the largest trilinearly interpolated indicator (SimpleITK, label by label)
    field = _sitk_field(case.folder / "displacement.nii.gz")
    values = np.unique(case.labels.data)
    scores = np.stack([_sitk_resample(geo, Image((case.labels.data == v).astype(np.float32), case.labels.affine),
                                      case.fixed_grid, field, sitk.sitkLinear) for v in values])
    best = values[np.argmax(scores, axis=0)]
    clear = inside & (np.sort(scores, axis=0)[-1] - np.sort(scores, axis=0)[-2] > 1e-3)
    assert (linear.data[clear] == best[clear]).all()


def test_reference_grid(case, geo) -> None:
    centre = geo.grid_centre(case.fixed_grid.shape, case.fixed_grid.affine)
    reference = Grid((10, 9, 8), geo.make_affine(np.diag([2.0, 2.5, 2.2]), centre - 9))
    tx = load_transform(case.folder / "transform.h5")
    ours = apply_to_image(tx, case.moving, reference=reference)
    assert ours.grid.same_as(reference)
    theirs = _sitk_resample(geo, case.moving, reference, sitk.ReadTransform(str(case.folder / "transform.h5")),
                            sitk.sitkLinear)
    inside = _interior(geo, tx, case.moving, reference, margin=0.01)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours.data[inside], theirs[inside], atol=1e-3)


def test_a_reference_too_large_for_the_memory_is_refused_before_any_work(case) -> None:
    """A reference grid of 10^12 voxels (e.g. a wrong voxel size): one plain line, before anything is allocated."""
    huge = Grid((10_000, 10_000, 10_000), case.fixed_grid.affine)
    tx = load_transform(case.folder / "transform.h5")
    assert tx.field_voxels == int(np.prod(case.fixed_grid.shape))
    for apply in (apply_to_image, apply_to_labels):
        with pytest.raises(InputError, match="needs about .* GB of memory and this process may use .* coarser "
                                             "--reference"):
            apply(tx, case.moving, reference=huge)


def test_inverse_from_folder_and_numerical(case, geo) -> None:
    forward = load_transform(case.folder)
    from_file = load_transform(case.folder, inverse=True)
    assert from_file.grid.same_as(case.moving_grid)
    numerical = load_transform(case.folder / "transform.h5", inverse=True)
    x = _inside_points(case.fixed_grid, seed=5)
    y = apply_to_points(forward, x)
    np.testing.assert_allclose(apply_to_points(numerical, y), x, atol=0.05)
    np.testing.assert_allclose(apply_to_points(from_file, y), x, atol=0.2)  # interpolated on the coarser moving grid
    # the inverse warps a fixed-space image onto the moving grid: SimpleITK with the inverse file agrees
    fixed_image = Image(_image(case.fixed_grid.world_points()), case.fixed_grid.affine)
    ours = apply_to_image(from_file, fixed_image)
    assert ours.grid.same_as(case.moving_grid)
    theirs = _sitk_resample(geo, fixed_image, case.moving_grid,
                            _sitk_field(case.folder / "inverse_displacement.nii.gz"), sitk.sitkLinear)
    inside = _interior(geo, from_file, fixed_image, case.moving_grid, margin=0.01)
    assert inside.sum() > 1000  # the moving grid covers the fixed one with a margin
    np.testing.assert_allclose(ours.data[inside], theirs[inside], atol=1e-4)
    with pytest.raises(InputError, match="reference"):  # a numerical inverse has no grid of its own
        apply_to_image(numerical, fixed_image)


def _sitk_points(geo, case, x_ras: np.ndarray) -> np.ndarray:
    tx = sitk.ReadTransform(str(case.folder / "transform.h5"))
    return geo.lps([tx.TransformPoint(tuple(p)) for p in geo.lps(x_ras)])


def test_point_files(case, geo, tmp_path: Path) -> None:
    tx = load_transform(case.folder)
    x = _inside_points(case.fixed_grid, n=4, seed=9)
    expected = _sitk_points(geo, case, x)
    # CSV in RAS and in LPS, extra columns kept
    (tmp_path / "p.csv").write_text("label,x,y,z\n" + "".join(f"p{i},{p[0]},{p[1]},{p[2]}\n" for i, p in enumerate(x)))
    assert transform_points_file(tx, tmp_path / "p.csv", tmp_path / "q.csv") == 4
    rows = [r.split(",") for r in (tmp_path / "q.csv").read_text().splitlines()]
    assert rows[0] == ["label", "x", "y", "z"] and rows[1][0] == "p0"
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], float), expected, atol=2e-3)
    lps = geo.lps(x)
    (tmp_path / "l.csv").write_text("x,y,z\n" + "".join(f"{p[0]},{p[1]},{p[2]}\n" for p in lps))
    transform_points_file(tx, tmp_path / "l.csv", tmp_path / "m.csv", coordinates="lps")
    got = np.loadtxt(tmp_path / "m.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(got, geo.lps(expected), atol=2e-3)
    # Slicer .fcsv (LPS declared) and .mrk.json (RAS declared)
    fcsv = ("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
            "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
            + "".join(f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,F-{i},,\n"
                      for i, p in enumerate(lps)))
    (tmp_path / "p.fcsv").write_text(fcsv)
    transform_points_file(tx, tmp_path / "p.fcsv", tmp_path / "q.fcsv")
    lines = [ln.split(",") for ln in (tmp_path / "q.fcsv").read_text().splitlines() if not ln.startswith("#")]
    np.testing.assert_allclose(np.array([ln[1:4] for ln in lines], float), geo.lps(expected), atol=2e-3)
    assert lines[0][11] == "F-0" and len(lines[0]) == 14
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                      "Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": "Fiducial", "coordinateSystem": "RAS",
                        "controlPoints": [{"id": str(i), "label": f"F-{i}", "position": list(p)}
                                          for i, p in enumerate(x)]}]}
    (tmp_path / "p.mrk.json").write_text(json.dumps(doc))
    transform_points_file(tx, tmp_path / "p.mrk.json", tmp_path / "q.mrk.json")
    out = json.loads((tmp_path / "q.mrk.json").read_text())
    np.testing.assert_allclose([p["position"] for p in out["markups"][0]["controlPoints"]], expected, atol=2e-3)
    assert out["markups"][0]["controlPoints"][1]["label"] == "F-1"
    # read_points: the same files read as RAS arrays, whatever frame they are written in
    for name, kwargs in (("p.csv", {}), ("l.csv", {"coordinates": "lps"}), ("p.fcsv", {}), ("p.mrk.json", {})):
        np.testing.assert_allclose(read_points(tmp_path / name, **kwargs), x, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("frame", ["ras", "lps"])
def test_slicer_control_point_tables_say_their_frame(case, geo, tmp_path: Path, frame: str) -> None:
    """3D Slicer's control point table (Markups: export to CSV) names its columns r, a, s or l, p, s: it was refused
    as having no x, y, z columns; its columns now give the frame, whatever --coordinates says (it is for x, y, z)."""
    tx = load_transform(case.folder)
    x = _inside_points(case.fixed_grid, n=3, seed=4)
    written = x if frame == "ras" else geo.lps(x)
    (tmp_path / "t.csv").write_text(f"label,{','.join(frame)},defined,selected,visible,locked,description\n"
                                    + "".join(f"F-{i},{p[0]},{p[1]},{p[2]},1,1,1,0,\n" for i, p in enumerate(written)))
    np.testing.assert_allclose(read_points(tmp_path / "t.csv", coordinates="lps"), x, atol=1e-9)
    assert transform_points_file(tx, tmp_path / "t.csv", tmp_path / "u.csv", coordinates="lps") == 3
    rows = [r.split(",") for r in (tmp_path / "u.csv").read_text().splitlines()]
    assert rows[0] == ["label", *frame, "defined", "selected", "visible", "locked", "description"]
    assert [r[0] for r in rows[1:]] == ["F-0", "F-1", "F-2"]
    assert all(r[4:] == ["1", "1", "1", "0", ""] for r in rows[1:])
    moved = np.array([r[1:4] for r in rows[1:]], float)
    np.testing.assert_allclose(moved if frame == "ras" else geo.lps(moved), _sitk_points(geo, case, x), atol=2e-3)


@pytest.mark.parametrize("units", ["um", ["um", "UCUM", "micrometer"]])
def test_markups_in_micrometres_are_mapped_in_millimetres(case, geo, tmp_path: Path, units) -> None:
    """A Slicer markup with ``"coordinateUnits": "um"`` (a microscopy scene) was mapped as if in mm, 1000 times off;
    its points are now converted to mm, mapped, and written back in um."""
    tx = load_transform(case.folder)
    x = _inside_points(case.fixed_grid, n=3, seed=5)
    doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": units,
                        "controlPoints": [{"position": list(p * 1000.0)} for p in x]}]}
    (tmp_path / "um.mrk.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(read_points(tmp_path / "um.mrk.json"), x, atol=1e-9)
    transform_points_file(tx, tmp_path / "um.mrk.json", tmp_path / "out.mrk.json")
    out = json.loads((tmp_path / "out.mrk.json").read_text())["markups"][0]
    assert out["coordinateUnits"] == units
    np.testing.assert_allclose(np.array([p["position"] for p in out["controlPoints"]]) / 1000.0,
                               _sitk_points(geo, case, x), atol=2e-3)
    doc["markups"][0]["coordinateUnits"] = "in"
    (tmp_path / "inch.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"inch\.mrk\.json: a markup's coordinateUnits is 'in'; svreg reads mm or um"):
        read_points(tmp_path / "inch.mrk.json")


@pytest.mark.parametrize("kind", ["ROI", "Plane"])
def test_roi_and_plane_markups_are_refused(tmp_path: Path, kind: str) -> None:
    """A Slicer ROI or plane keeps its geometry in "center", "orientation" and "size": only its control points
    were moved, leaving a file whose box or plane disagreed with them; it is refused in one line."""
    doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"position": [1, 2, 3]}]},
                       {"type": kind, "coordinateSystem": "LPS", "center": [1.0, 2.0, 3.0], "size": [10.0, 10.0, 10.0],
                        "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1], "controlPoints": [{"position": [1, 2, 3]}]}]}
    (tmp_path / "box.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        read_points(tmp_path / "box.mrk.json")
    assert str(info.value).startswith(f"box.mrk.json holds a {kind} markup, whose center, orientation and size")


def test_point_file_errors(case, tmp_path: Path) -> None:
    """(Errors of the transform readers: ``outputs/test_read.py``.)"""
    (tmp_path / "p.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match="x, y, z"):
        transform_points_file(load_transform(case.folder), tmp_path / "p.csv", tmp_path / "q.csv")
    with pytest.raises(InputError, match="x, y, z"):
        read_points(tmp_path / "p.csv")
    with pytest.raises(InputError, match="not found"):
        read_points(tmp_path / "none.csv")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("short.csv", "x,y,z\n1,2,3\n\n4,5\n", "short.csv line 4: fewer fields"),  # the blank line 3 counted
    ("nan.csv", "x,y,z\n1,nan,3\n", "line 2: 'nan' is not a finite number"),
    ("latin1.csv", "x,y,z\n1,2,3 \xb5m\n", "latin1.csv is not UTF-8 text (byte 12"),
    ("list.mrk.json", '{"markups": {"controlPoints": []}}', "not a list of markups"),
    ("points.mrk.json", '{"markups": [{"controlPoints": [1, 2]}]}', "'controlPoints' is not a list of points"),
    ("two.mrk.json", '{"markups": [{"controlPoints": [{"position": [1, 2]}]}]}', "'position' is not 3 numbers"),
    ("none.mrk.json", '{"markups": [{"controlPoints": [{"position": [1, null, 2]}]}]}', "None is not a number"),
])
def test_malformed_point_files_give_one_plain_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    """Broken rows and markups are refused with the file and the place named, not a traceback."""
    (tmp_path / name).write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as info:
        read_points(tmp_path / name)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_points_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A spreadsheet's UTF-8 export starts with a byte-order mark; its header still names x, y, z."""
    (tmp_path / "bom.csv").write_bytes("x,y,z\n1,2,3\n".encode("utf-8-sig"))
    np.testing.assert_array_equal(read_points(tmp_path / "bom.csv"), [[1.0, 2.0, 3.0]])


def test_inputs_from_the_wrong_side_are_warned_about(case, geo, tmp_path: Path, capsys) -> None:
    """An image or label map that no output voxel maps into (here: placed 1 m away) gives an all-background output
    and one warning line naming the directions; points outside the transform's grid are counted in a warning;
    inputs of the right side give none."""
    far = case.moving.affine.copy()
    far[:3, 3] += 1000.0
    geo.save_nifti(case.moving.data, far, tmp_path / "far.nii.gz")
    geo.save_nifti(case.labels.data, far, tmp_path / "far_labels.nii.gz")
    for name, extra in (("far.nii.gz", []), ("far_labels.nii.gz", ["--labels"])):
        rc = main(["apply", str(case.folder), str(tmp_path / name), "-o", str(tmp_path / f"out_{name}"), *extra])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 0 and len(lines) == 1 and lines[0].startswith("svreg: warning: no voxel of the output maps into "
                                                                    f"the {'label map' if extra else 'image'}'s")
        assert "--inverse images of the fixed space onto the moving grid" in lines[0]
        assert not np.any(np.asarray(nib.load(str(tmp_path / f"out_{name}")).dataobj))
    inside = _inside_points(case.fixed_grid, n=3, seed=4)
    points = np.vstack([inside, inside[:2] + 1000.0])
    (tmp_path / "p.csv").write_text("x,y,z\n" + "".join(f"{p[0]},{p[1]},{p[2]}\n" for p in points))
    assert main(["apply", str(case.folder), str(tmp_path / "p.csv"), "-o", str(tmp_path / "q.csv")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svreg: warning: 2 of 5 points lie outside the transform's grid")
    (tmp_path / "p.csv").write_text("x,y,z\n" + "".join(f"{p[0]},{p[1]},{p[2]}\n" for p in inside))
    assert main(["apply", str(case.folder), str(tmp_path / "p.csv"), "-o", str(tmp_path / "q.csv"), "--overwrite"]) == 0
    assert main(["apply", str(case.folder), str(case.tmp / "moving.nii.gz"), "-o", str(tmp_path / "w.nii.gz")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_apply(case, geo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "warped.nii.gz"
    assert main(["apply", str(case.folder), str(case.tmp / "moving.nii.gz"), "-o", str(out)]) == 0
    warped = load_image(out)
    np.testing.assert_allclose(warped.data, apply_to_image(load_transform(case.folder), case.moving).data, atol=1e-5)
    assert main(["apply", str(case.folder), str(case.tmp / "labels.nii.gz"), "-o", str(tmp_path / "l.nii.gz"),
                 "--labels", "--reference", str(case.tmp / "moving.nii.gz"), "--inverse"]) == 0
    assert load_image(tmp_path / "l.nii.gz", labels=True).grid.same_as(case.moving_grid)
    assert main(["apply", str(case.folder), str(case.tmp / "moving.nii.gz"), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    (tmp_path / "p.csv").write_text("x,y,z\n1,2,3\n")
    assert main(["apply", str(case.folder / "transform.h5"), str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "q.csv")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "q.csv", delimiter=",", skiprows=1),
                               _sitk_points(geo, case, np.array([[1.0, 2.0, 3.0]]))[0], atol=2e-3)


def test_apply_never_writes_over_its_own_files(case, tmp_path: Path, capsys) -> None:
    """Even with --overwrite, an output naming the transform file, a file inside the transform folder or the
    reference image is refused in one line, and the file is left as it was."""
    (tmp_path / "p.csv").write_text("x,y,z\n1,2,3\n")
    reference = tmp_path / "ref.nii.gz"
    reference.write_bytes((case.tmp / "moving.nii.gz").read_bytes())
    for transform, output, extra, what in (
            (case.folder / "transform.h5", case.folder / "transform.h5", [], "is the transform file"),
            (case.folder, case.folder / "displacement.nii.gz", [], "is inside the transform folder"),
            (case.folder, case.folder / "inverse_displacement.nii.gz", [], "is inside the transform folder"),
            (case.folder, reference, ["--reference", str(reference)], "is the reference image")):
        before = output.read_bytes()
        source = case.tmp / "moving.nii.gz"
        rc = main(["apply", str(transform), str(source), "-o", str(output), "--overwrite", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith(f"svreg: error: the output file {output} {what}") and "\n" not in err
        assert output.read_bytes() == before
    rc = main(["apply", str(case.folder), str(tmp_path / "p.csv"), "-o", str(case.folder / "q.csv")])
    assert rc == 2 and "inside the transform folder" in capsys.readouterr().err
    assert not (case.folder / "q.csv").exists()


@pytest.mark.parametrize("source, output", [("p.fcsv", "cross.csv"), ("p.csv", "cross.mrk.json"),
                                             ("p.mrk.json", "cross.fcsv")])
def test_points_are_written_in_their_own_format_only(case, tmp_path: Path, capsys, source: str,
                                                     output: str) -> None:
    """A .fcsv's lines (LPS) written into a .csv (read as RAS) would be wrong points in a file of another format:
    refused in one line naming the ending to use."""
    (tmp_path / "p.csv").write_text("x,y,z\n1,2,3\n")
    (tmp_path / "p.fcsv").write_text("# CoordinateSystem = LPS\np0,1,2,3\n")
    (tmp_path / "p.mrk.json").write_text(json.dumps({"markups": [{"controlPoints": [{"position": [1, 2, 3]}]}]}))
    rc = main(["apply", str(case.folder), str(tmp_path / source), "-o", str(tmp_path / output)])
    err = capsys.readouterr().err.strip()
    suffix = "." + source.split(".", 1)[1]
    assert rc == 2 and "\n" not in err and f"name an output ending in {suffix} (the same format" in err
    assert not (tmp_path / output).exists()


def test_a_folder_with_only_the_inverse_applies_it(case, geo, tmp_path: Path, capsys) -> None:
    """``svreg register --outputs inverse`` keeps only inverse_displacement.nii.gz: --inverse applies it (as
    SimpleITK does with the file); the forward direction is refused in one line."""
    from svreg_core.outputs.writer import MARKER_FILE

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MARKER_FILE).write_text("")
    (folder / "report.json").write_text("{}")
    (folder / "inverse_displacement.nii.gz").write_bytes((case.folder / "inverse_displacement.nii.gz").read_bytes())
    fixed_image = Image(_image(case.fixed_grid.world_points()), case.fixed_grid.affine)
    geo.save_nifti(fixed_image.data, fixed_image.affine, tmp_path / "fixed.nii.gz")
    assert main(["apply", str(folder), str(tmp_path / "fixed.nii.gz"), "-o", str(tmp_path / "w.nii.gz"),
                 "--inverse"]) == 0
    ours = load_image(tmp_path / "w.nii.gz")
    assert ours.grid.same_as(case.moving_grid)
    theirs = _sitk_resample(geo, fixed_image, case.moving_grid,
                            _sitk_field(case.folder / "inverse_displacement.nii.gz"), sitk.sitkLinear)
    inside = _interior(geo, load_transform(folder, inverse=True), fixed_image, case.moving_grid, margin=0.01)
    assert inside.sum() > 1000
    np.testing.assert_allclose(ours.data[inside], theirs[inside], atol=1e-4)
    capsys.readouterr()
    assert main(["apply", str(folder), str(tmp_path / "fixed.nii.gz"), "-o", str(tmp_path / "f.nii.gz")]) == 2
    assert "kept no transform" in capsys.readouterr().err


@pytest.mark.parametrize("values", ["zeros", "nan"])
def test_reference_is_only_a_grid(case, geo, tmp_path: Path, values: str) -> None:
    """--reference gives the output grid only: an all-zero image or one with NaN voxels is as good a grid (its
    geometry is checked, not its voxels)."""
    data = np.zeros(case.moving_grid.shape, np.float32)
    if values == "nan":
        data[0, 0, 0] = np.nan
    geo.save_nifti(data, case.moving_grid.affine, tmp_path / "ref.nii.gz")
    out = tmp_path / "l.nii.gz"
    assert main(["apply", str(case.folder), str(case.tmp / "labels.nii.gz"), "-o", str(out), "--labels",
                 "--reference", str(tmp_path / "ref.nii.gz"), "--inverse"]) == 0
    assert load_image(out, labels=True).grid.same_as(case.moving_grid)
    geo.save_nifti(np.zeros((4, 5, 6, 2), np.float32), case.moving_grid.affine, tmp_path / "ref4d.nii.gz")
    assert main(["apply", str(case.folder), str(case.tmp / "labels.nii.gz"), "-o", str(tmp_path / "m.nii.gz"),
                 "--labels", "--reference", str(tmp_path / "ref4d.nii.gz"), "--inverse"]) == 2  # geometry checked


def test_an_output_folder_maps_by_its_affine_beyond_its_fields(case, geo, tmp_path: Path) -> None:
    """An output folder's fields hold the registration's affine ``A``: beyond their grids its transform maps by
    ``A`` (``A⁻¹`` for the inverse), as the folder's transform.h5 does in SimpleITK, not by the identity (points a
    few voxels beyond the fixed grid, e.g. of a --reference larger than a cropped fixed image, were up to 10 mm
    off); the numerical inverse of the forward field does the same."""
    folder = tmp_path / "out"
    shutil.copytree(case.folder, folder)
    (folder / "report.json").write_text(json.dumps({"affine_ras": case.affine.tolist()}), encoding="utf-8")
    beyond = np.array([[-3, 5, 5], [20, 8, 7], [9, -3, 6], [9, 8, 17], [-4, -4, -4]], float)  # 3-4 voxels out
    x = nib.affines.apply_affine(case.fixed_grid.affine, beyond)
    expected = nib.affines.apply_affine(case.affine, x)
    np.testing.assert_allclose(_sitk_points(geo, case, x), expected, atol=1e-4)  # ITK: the field is zero there
    np.testing.assert_allclose(apply_to_points(load_transform(folder), x), expected, atol=1e-4)
    n = np.asarray(case.moving_grid.shape)
    y = nib.affines.apply_affine(case.moving_grid.affine, [[-3, n[1] / 2, n[2] / 2], [n[0] + 2, n[1] / 2, n[2] / 2],
                                                           [n[0] / 2, -3, n[2] / 2], [-4, -4, n[2] + 3]])
    back = nib.affines.apply_affine(np.linalg.inv(case.affine), y)
    assert not case.moving_grid.contains(y).any() and not case.fixed_grid.contains(back).any()
    np.testing.assert_allclose(apply_to_points(load_transform(folder, inverse=True), y), back, atol=1e-4)
    (folder / "inverse_displacement.nii.gz").unlink()
    np.testing.assert_allclose(apply_to_points(load_transform(folder, inverse=True), y), back, atol=1e-4)
    # inside the grids nothing changes: the folder maps as its displacement.nii.gz does in SimpleITK
    inside = _inside_points(case.fixed_grid, seed=9)
    field = _sitk_field(folder / "displacement.nii.gz")
    np.testing.assert_allclose(apply_to_points(load_transform(folder), inside),
                               geo.lps([field.TransformPoint(tuple(p)) for p in geo.lps(inside)]), atol=2e-3)


def test_a_source_thinner_than_the_checked_voxels_is_not_called_all_background(case) -> None:
    """The 'output is all background' warning checks every 4th output voxel first: a 2-slice slab between them
    was warned about although the output holds it; now every voxel is checked before warning."""
    slab = Image(np.ones((30, 30, 2), np.float32), np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]))
    reference = Grid((30, 30, 20), np.eye(4))  # slices z = 0, 4, 8, ... are checked first; the slab lies at 1-2
    identity = Transform((np.eye(4),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = apply_to_image(identity, slab, reference=reference)
        labels = apply_to_labels(identity, Image(slab.data.astype(np.int32), slab.affine), reference=reference)
    assert out.data[:, :, 1:3].min() == 1.0 and labels.data[:, :, 1:3].min() == 1
    shift = np.eye(4)
    shift[0, 3] = 40.0  # every output voxel maps 10 mm or more beyond the slab: warned about
    with pytest.warns(UserWarning, match="all background"):
        apply_to_image(Transform((shift,)), slab, reference=reference)


def test_a_single_slice_stays_in_its_plane() -> None:
    """A source one voxel thick along an axis (a single slice) was read at that voxel wherever an output voxel lay
    along the axis, so it filled the whole output; it fades to 0 within a voxel of its plane (linear) or covers the
    output voxels within half a voxel of it, as B-spline images always did."""
    one_mm_up = np.eye(4)
    one_mm_up[2, 3] = 1.0
    slice_ = Image(np.full((30, 30, 1), 3.0, np.float32), one_mm_up)  # the plane z = 1 mm
    half_up = np.eye(4)
    half_up[2, 3] = 0.5
    reference = Grid((30, 30, 8), np.diag([1.0, 1.0, 0.25, 1.0]) @ half_up)  # slices z = 0.5, 0.75, ..., 2.25 mm
    identity = Transform((np.eye(4),))
    distance = np.abs(reference.world_points()[5, 5, :, 2] - 1.0)  # mm from the plane: 0.5, 0.25, 0, ... 1.25
    linear = apply_to_image(identity, slice_, reference=reference).data[5, 5]
    np.testing.assert_allclose(linear, 3.0 * np.clip(1.0 - distance, 0.0, None), atol=1e-6)
    bspline = apply_to_image(identity, slice_, reference=reference, interpolation="bspline").data[5, 5]
    np.testing.assert_allclose(bspline, np.where(distance <= 0.5, 3.0, 0.0), atol=1e-6)
    labels = Image(np.full((30, 30, 1), 7, np.int32), one_mm_up)
    for mode in ("linear", "nearest"):
        warped = apply_to_labels(identity, labels, reference=reference, interpolation=mode).data[5, 5]
        np.testing.assert_array_equal(warped, np.where(distance < 0.5, 7, 0))


def test_outputs_carry_the_nifti_space_of_the_grid_they_are_on(case, geo, tmp_path: Path) -> None:
    """svreg apply's image and labels get the NIfTI space codes of the grid they are written on: the reference
    image's (here 2, aligned), else the transform's own grid's (an output folder whose fixed image was an MNI
    template, code 4; its inverse the moving image's), so tools that read the code place them in that space."""
    folder = Path(shutil.copytree(case.folder, tmp_path / "out"))
    mni, moving_space = Grid(case.fixed_grid.shape, case.fixed_grid.affine, (4, 4)), \
        Grid(case.moving_grid.shape, case.moving_grid.affine, (2, 1))
    for name, grid in (("displacement", mni), ("inverse_displacement", moving_space)):
        field = nib.load(str(case.folder / f"{name}.nii.gz"))
        nib.save(displacement_nifti(np.asarray(field.dataobj)[:, :, :, 0, :] * [-1, -1, 1], grid),
                 str(folder / f"{name}.nii.gz"))
    reference = nib.Nifti1Image(np.zeros((10, 9, 8), np.float32), geo.make_affine(np.diag([2.0, 2.5, 2.2]),
                                geo.grid_centre(case.fixed_grid.shape, case.fixed_grid.affine) - 9))
    reference.set_sform(reference.affine, code=2)
    reference.set_qform(reference.affine, code=2)
    nib.save(reference, str(tmp_path / "reference.nii.gz"))
    runs = {"default": ([], (4, 4)), "reference": (["--reference", str(tmp_path / "reference.nii.gz")], (2, 2)),
            "labels": (["--labels"], (4, 4)), "inverse": (["--inverse"], (2, 1))}
    for out, (flags, expected) in runs.items():
        source = case.tmp / ("labels.nii.gz" if "--labels" in flags else "moving.nii.gz")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the inverse warps a moving-space image: all background, warned
            assert main(["apply", str(folder), str(source), "-o", str(tmp_path / f"{out}_out.nii.gz"), *flags]) == 0
        header = nib.load(str(tmp_path / f"{out}_out.nii.gz")).header
        assert (int(header["sform_code"]), int(header["qform_code"])) == expected, out
