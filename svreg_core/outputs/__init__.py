"""Outputs in other tools' conventions: NIfTI/ITK transforms, the report and its figure."""
from svreg_core.outputs.itk import composite_transform, displacement_nifti, write_transform
from svreg_core.outputs.writer import OUTPUT_FILES, write_outputs

__all__ = ["OUTPUT_FILES", "composite_transform", "displacement_nifti", "write_outputs", "write_transform"]
