"""Images into a prompt: decode, preprocess, run the vision tower, expand the placeholders.

`MediaEncoder` belongs to an Engine whose model has a vision tower (a HF Gemma 4 checkpoint with a
`vision_config`, or a llama.cpp mmproj GGUF); it is built on first use, so text-only work never
loads the tower.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ModelFormatError
from ..media.image import ImageOptions, MediaError, open_image, preprocess_image
from ..media.prompt import MediaTokens, PromptMedia, expand_placeholders
from ..models.vision import VisionModel

__all__ = ["MediaEncoder", "ImageInput", "MAX_IMAGE_BYTES", "image_options_for"]

ImageInput = str | Path | bytes | Image.Image
MAX_IMAGE_BYTES = 32 << 20  # an image file larger than this is refused, naming the limit


def image_options_for(path: Path, vision: VisionModel) -> ImageOptions:
    """The image processor's settings saved beside a HF checkpoint, else the tower's own sizes and
    transformers' default budget (280 soft tokens)."""
    settings: dict[str, Any] = {}
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        file = path / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelFormatError(f"{file}: cannot read ({exc})") from None
            settings = {**(data.get(key) or {} if key else data), **settings}
    cfg = vision.config
    return ImageOptions(
        patch_size=int(settings.get("patch_size", cfg.patch_size)),
        pooling_kernel_size=int(settings.get("pooling_kernel_size", cfg.pooling_kernel_size)),
        max_soft_tokens=int(settings.get("max_soft_tokens", 280)),
    )


class MediaEncoder:
    def __init__(
        self,
        vision: VisionModel,
        *,
        tokens: MediaTokens,
        options: ImageOptions,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        self.vision = vision
        self.tokens = tokens
        self.options = options
        self.max_bytes = max_bytes

    def _image(self, source: ImageInput) -> Image.Image:
        if isinstance(source, Image.Image):
            return source
        return open_image(source, max_bytes=self.max_bytes)

    @torch.inference_mode()
    def soft_tokens(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """One [n_i, text width] tensor per image, in the tower's dtype."""
        out = []
        for source in images:
            p = preprocess_image(self._image(source), self.options)
            out += self.vision(torch.from_numpy(p.patches)[None], torch.from_numpy(p.positions)[None])
        return out

    def prepare(self, ids: list[int], images: Sequence[ImageInput]) -> tuple[list[int], PromptMedia]:
        """Expand each image placeholder of `ids` and return the soft tokens that fill the slots."""
        placeholders = sum(1 for t in ids if t == self.tokens.image)
        if placeholders != len(images):  # before running the tower: a cheap, clear error
            expand_placeholders(ids, [0] * len(images), self.tokens)
        embeds = self.soft_tokens(images)
        expanded, spans = expand_placeholders(ids, [e.shape[0] for e in embeds], self.tokens)
        return expanded, PromptMedia(spans=spans, embeds=embeds)


def no_vision_error(model: str) -> MediaError:
    return MediaError(
        f"{model}: this model has no vision tower, so it cannot take images; use a Gemma 4 checkpoint "
        "with one (Gemma4ForConditionalGeneration), or for a GGUF pass its mmproj file with --mmproj"
    )


def load_media_encoder(
    model: str,
    *,
    dtype: str,
    device: str,
    bidirectional: str | None = None,
    mmproj: str | None = None,
    vocab_size: int | None = None,
    tokens: MediaTokens | None = None,
) -> MediaEncoder:
    """The vision tower of a HF Gemma 4 directory (`model`) or of a llama.cpp mmproj GGUF (`mmproj`),
    ready to encode; MediaError when there is none. `bidirectional`: the text config's
    `use_bidirectional_attention`; `tokens`: the marker ids for an mmproj (default: the released ids)."""
    from ..weights.towers import has_hf_vision, load_hf_vision

    path = Path(model)
    if bidirectional == "vision":
        # those models let image tokens attend to each other on sliding layers; our KV cache
        # masks are causal only, so their soft tokens would be read wrongly
        raise MediaError(
            f"{model}: use_bidirectional_attention 'vision' (image tokens attending to each other) "
            "is not supported yet; images work with the E2B/E4B-style causal models"
        )
    if mmproj is not None:
        from ..weights.mmproj import load_mmproj_vision

        vision = load_mmproj_vision(mmproj, dtype=dtype, device=device)
        tokens = tokens or MediaTokens()  # an mmproj names no token ids
        if vocab_size is not None and max(tokens.image, tokens.boi, tokens.eoi) >= vocab_size:
            raise MediaError(
                f"{model}: its vocabulary ({vocab_size} tokens) has no Gemma 4 image tokens "
                f"({tokens.boi}, {tokens.image}, {tokens.eoi}); --mmproj needs a Gemma 4 target"
            )
        cfg = vision.config
        options = ImageOptions(patch_size=cfg.patch_size, pooling_kernel_size=cfg.pooling_kernel_size)
        return MediaEncoder(vision, tokens=tokens, options=options)
    if not has_hf_vision(path):
        raise no_vision_error(model)
    vision = load_hf_vision(path, dtype=dtype, device=device)
    data = json.loads((path / "config.json").read_text())
    return MediaEncoder(vision, tokens=MediaTokens.from_config(data), options=image_options_for(path, vision))
