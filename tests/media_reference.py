"""Tiny transformers Gemma 4 checkpoints with media towers, and test images.

``build_e2b_vision`` is an E2B-like text model (PLE, KV sharing) with a vision tower exercising every
released switch: clipped linears (with finite, randomised bounds, so clamping happens), standardized
soft tokens, grouped-query attention. Image processing uses ``Gemma4ImageProcessorPil`` with
``patch_size=4`` and ``max_soft_tokens=70`` (the smallest supported budget), saved beside the model.
"""

from __future__ import annotations

from pathlib import Path

import hf_reference as ref
import numpy as np
import torch
from PIL import Image

IMAGE_TOKEN, BOI, EOI = ref.VOCAB - 1, ref.VOCAB - 4, ref.VOCAB - 5
AUDIO_TOKEN, BOA, EOA = ref.VOCAB - 2, ref.VOCAB - 6, ref.VOCAB - 7
PATCH, POOL, SOFT_TOKENS = 4, 3, 70


def vision_kwargs(**overrides):
    kwargs = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        patch_size=PATCH,
        pooling_kernel_size=POOL,
        position_embedding_size=256,  # > the longest side in patches (210)
        use_clipped_linears=True,
        standardize=True,
    )
    kwargs.update(overrides)
    return kwargs


@torch.no_grad()
def _finite_clips(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith(("input_min", "output_min")):
            buf.fill_(-1.0 - float(torch.rand((), generator=gen)))
        elif name.endswith(("input_max", "output_max")):
            buf.fill_(1.0 + float(torch.rand((), generator=gen)))


def build_e2b_vision(path: Path, *, seed: int = 7, vision=None) -> ref.Reference:
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    config = Gemma4Config(
        text_config=ref.e2b_text_kwargs(),
        vision_config=vision_kwargs(**(vision or {})),
        audio_config=None,
        image_token_id=IMAGE_TOKEN,
        audio_token_id=AUDIO_TOKEN,
        video_token_id=ref.VOCAB - 3,
        boi_token_id=BOI,
        eoi_token_id=EOI,
        boa_token_id=BOA,
        eoa_token_index=EOA,
    )
    ref._quiet()
    torch.manual_seed(seed)
    with ref.reference_patches():
        model = Gemma4ForConditionalGeneration(config)
    ref.randomize_(model, seed)
    _finite_clips(model, seed)
    reference = ref._save_and_reload(model.eval(), Path(path))
    image_processor().save_pretrained(path)
    return reference


def image_processor():
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(patch_size=PATCH, max_soft_tokens=SOFT_TOKENS, pooling_kernel_size=POOL)


def test_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth colour gradients plus noise: resizing changes every pixel, none is flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / (width + height)], axis=-1)
    pixels = np.clip(base * 200 + rng.integers(0, 55, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (height, width)).astype(np.uint8), "L")
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


@torch.no_grad()
def hf_image_features(model, images) -> list[torch.Tensor]:
    """transformers' projected soft tokens per image, through its own image processor."""
    batch = image_processor()(images, return_tensors="pt")
    out = model.model.get_image_features(batch["pixel_values"], batch["image_position_ids"], return_dict=True)
    return [t.float() for t in out.pooler_output]


def image_placeholder(n: int) -> list[int]:
    return [BOI] + [IMAGE_TOKEN] * n + [EOI]
