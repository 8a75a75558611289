"""Image preprocessing equals transformers' Gemma4ImageProcessorPil (patches, positions, soft-token counts)."""

from __future__ import annotations

import media_reference as mref
import numpy as np
import pytest

from gemma_mtp.media.image import ImageOptions, MediaError, open_image, preprocess_image, target_size

pytest.importorskip("transformers")

OPTIONS = ImageOptions(patch_size=mref.PATCH, pooling_kernel_size=mref.POOL, max_soft_tokens=mref.SOFT_TOKENS)


@pytest.mark.parametrize(
    "size, mode",
    [
        ((37, 23), "RGB"),
        ((120, 72), "RGB"),
        ((200, 150), "RGBA"),
        ((50, 300), "L"),
        ((500, 9), "RGB"),
        ((64, 64), "P"),
    ],
)
def test_patches_equal_transformers_image_processor(size, mode):
    image = mref.test_image(*size, seed=sum(size), mode=mode)
    theirs = mref.image_processor()([image], return_tensors="np")
    ours = preprocess_image(image, OPTIONS)
    n = ours.patches.shape[0]
    assert theirs["num_soft_tokens_per_image"][0] == ours.n_soft_tokens
    np.testing.assert_array_equal(ours.patches, theirs["pixel_values"][0][:n])
    np.testing.assert_array_equal(ours.positions, theirs["image_position_ids"][0][:n])
    assert (theirs["image_position_ids"][0][n:] == -1).all()  # the rest is padding


def test_default_options_target_size_equal_transformers():
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    for h, w in [(480, 640), (1080, 1920), (17, 4000), (4000, 17), (768, 768)]:
        assert target_size(h, w, ImageOptions()) == get_aspect_ratio_preserving_size(h, w, 16, 280 * 9, 3)


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MediaError, match="bad.png: not a readable image"):
        open_image(bad, max_bytes=1 << 20)
    with pytest.raises(MediaError, match="missing.png: cannot read the image"):
        open_image(tmp_path / "missing.png", max_bytes=1 << 20)


def test_oversized_image_is_a_clear_error(tmp_path):
    path = tmp_path / "big.png"
    mref.test_image(64, 64).save(path)
    with pytest.raises(MediaError, match="big.png: image is .* bytes, over the 100-byte limit"):
        open_image(path, max_bytes=100)
