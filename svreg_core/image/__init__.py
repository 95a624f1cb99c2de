"""Images with their voxel-to-world geometry: data, I/O, resampling, normalisation."""
from svreg_core.image.grid import Grid
from svreg_core.image.image import Image, crop_to_box, validate_image
from svreg_core.image.io import load_image, save_image

__all__ = ["Grid", "Image", "crop_to_box", "load_image", "save_image", "validate_image"]
