"""Outputs in other tools' conventions: NIfTI/ITK transforms (written and read back), the report and its figure."""
from svreg_core.outputs.itk import composite_transform, displacement_nifti, write_transform
from svreg_core.outputs.read import Transform, load_transform
from svreg_core.outputs.writer import OUTPUT_FILES, SELECTABLE_OUTPUTS, write_outputs

__all__ = ["OUTPUT_FILES", "SELECTABLE_OUTPUTS", "Transform", "composite_transform", "displacement_nifti",
           "load_transform", "write_outputs", "write_transform"]
