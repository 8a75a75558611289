"""The vision tower + embedder against transformers (fp32, max abs diff <= 1e-4), loaded strictly."""

from __future__ import annotations

import json

import hf_reference as ref
import media_reference as mref
import pytest
import torch

from gemma_mtp.errors import ModelFormatError
from gemma_mtp.media.image import ImageOptions, preprocess_image
from gemma_mtp.weights.towers import load_hf_vision

pytest.importorskip("transformers")

OPTIONS = ImageOptions(patch_size=mref.PATCH, pooling_kernel_size=mref.POOL, max_soft_tokens=mref.SOFT_TOKENS)


@pytest.fixture(scope="module")
def vision_reference(tmp_path_factory):
    return mref.build_e2b_vision(tmp_path_factory.mktemp("e2b_vision") / "model")


def ours_features(model, images):
    out = []
    for image in images:
        p = preprocess_image(image, OPTIONS)
        out += model(torch.from_numpy(p.patches)[None], torch.from_numpy(p.positions)[None])
    return out


@torch.no_grad()
def test_soft_tokens_match_transformers(vision_reference):
    images = [
        mref.test_image(37, 23, seed=1),
        mref.test_image(90, 130, seed=2),
        mref.test_image(300, 40, seed=3),
    ]
    expected = mref.hf_image_features(vision_reference.model, images)
    model = load_hf_vision(vision_reference.path, dtype="float32")
    ours = ours_features(model, images)
    assert len(ours) == len(expected)
    for i, (a, b) in enumerate(zip(ours, expected, strict=True)):
        ref.assert_close(a, b, f"image {i} soft tokens")


@torch.no_grad()
def test_padded_batch_equals_transformers(vision_reference):
    """The processor's padded batch (positions -1) through our tower: padding changes nothing."""
    images = [mref.test_image(37, 23, seed=4), mref.test_image(60, 60, seed=5)]
    batch = mref.image_processor()(images, return_tensors="pt")
    expected = mref.hf_image_features(vision_reference.model, images)
    model = load_hf_vision(vision_reference.path, dtype="float32")
    ours = model(batch["pixel_values"], batch["image_position_ids"])
    for i, (a, b) in enumerate(zip(ours, expected, strict=True)):
        ref.assert_close(a, b, f"padded image {i}")


def test_missing_tower_tensor_is_named(vision_reference, tmp_path):
    from safetensors.torch import load_file, save_file

    dst = ref.copy_checkpoint(vision_reference.path, tmp_path / "broken")
    (weights,) = dst.glob("*.safetensors")
    tensors = load_file(weights)
    del tensors["model.vision_tower.encoder.layers.1.mlp.up_proj.linear.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="missing tensor vision_tower.encoder.layers.1.mlp.up_proj"):
        load_hf_vision(dst)


def test_text_only_model_has_no_vision_tower(reference_models):
    path = reference_models.target("e2b_conditional").path
    assert not json.loads((path / "config.json").read_text()).get("vision_config")
    with pytest.raises(ModelFormatError, match="has no vision tower"):
        load_hf_vision(path)
