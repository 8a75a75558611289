"""Media preprocessing for the towers: images (Pillow + numpy) into patches."""

from .image import ImageOptions, ImagePatches, MediaError, open_image, preprocess_image

__all__ = ["ImageOptions", "ImagePatches", "MediaError", "open_image", "preprocess_image"]
