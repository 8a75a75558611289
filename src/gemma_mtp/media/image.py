"""Gemma 4 image preprocessing, as transformers' `Gemma4ImageProcessorPil` does it (Pillow + numpy).

An image becomes a grid of `patch_size` patches (each flattened row-major, channels last, values in
[0, 1]) with their (x, y) positions, after an aspect-preserving bicubic resize to the largest size
whose sides are multiples of `pooling_kernel_size * patch_size` and that fits in
`max_soft_tokens * pooling_kernel_size**2` patches. The tower pools `k x k` patches into one soft token.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import GemmaMTPError

__all__ = [
    "ImageOptions",
    "ImagePatches",
    "MediaError",
    "SUPPORTED_SOFT_TOKENS",
    "target_size",
    "preprocess_image",
    "open_image",
]

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)


class MediaError(GemmaMTPError):
    """An image or audio input that cannot be used (unreadable, too large, wrong kind)."""


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    patch_size: int = 16
    pooling_kernel_size: int = 3
    max_soft_tokens: int = 280

    @property
    def max_patches(self) -> int:
        return self.max_soft_tokens * self.pooling_kernel_size**2


@dataclass(frozen=True)
class ImagePatches:
    patches: np.ndarray  # [n_patches, patch_size**2 * 3] float32 in [0, 1]
    positions: np.ndarray  # [n_patches, 2] int64, (x, y)
    n_soft_tokens: int


def target_size(height: int, width: int, options: ImageOptions) -> tuple[int, int]:
    """transformers' `get_aspect_ratio_preserving_size`: (height, width) after the resize."""
    p, k = options.patch_size, options.pooling_kernel_size
    target_px = options.max_patches * p**2
    factor = math.sqrt(target_px / (height * width))
    side = k * p
    h = int(math.floor(factor * height / side)) * side
    w = int(math.floor(factor * width / side)) * side
    if h == 0 and w == 0:
        raise MediaError(f"image of {width}x{height} pixels cannot be resized to a multiple of {side} pixels")
    longest = (options.max_patches // k**2) * side
    if h == 0:
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        h, w = min(int(math.floor(height / width)) * side, longest), side
    return h, w


def to_rgb(image: Image.Image) -> Image.Image:
    """Transparency composited onto white, as transformers' `convert_to_rgb`."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, options: ImageOptions) -> ImagePatches:
    image = to_rgb(image)
    h, w = target_size(image.height, image.width, options)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), resample=Image.Resampling.BICUBIC)
    pixels = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)  # [H, W, 3]
    p = options.patch_size
    rows, cols = h // p, w // p
    patches = pixels.reshape(rows, p, cols, p, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p * p * 3)
    grid_x, grid_y = np.meshgrid(np.arange(cols), np.arange(rows), indexing="xy")
    positions = np.stack([grid_x, grid_y], axis=-1).reshape(rows * cols, 2).astype(np.int64)
    return ImagePatches(patches, positions, rows * cols // options.pooling_kernel_size**2)


def open_image(source: str | Path | bytes, *, max_bytes: int, what: str | None = None) -> Image.Image:
    """Decode an image file (path or bytes) with Pillow; MediaError names the file and the cause."""
    name = what or (str(source) if not isinstance(source, bytes) else "image data")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise MediaError(f"{name}: cannot read the image ({exc.strerror or exc})") from None
        if size > max_bytes:
            raise MediaError(f"{name}: image is {size} bytes, over the {max_bytes}-byte limit")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MediaError(f"{name}: cannot read the image ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise MediaError(f"{name}: image is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{name}: not a readable image ({exc})") from None
    return image
