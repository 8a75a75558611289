"""Images and audio into a prompt: decode, preprocess, run the towers, expand the placeholders.

`MediaEncoder` belongs to an Engine whose model has a vision tower (a HF Gemma 4 checkpoint with a
`vision_config`) or an audio tower (`audio_config`), or whose GGUF target comes with llama.cpp's
mmproj GGUF holding either or both; it is built on first use, so text-only work never loads a
tower, and the audio tower loads on the first clip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ModelFormatError
from ..media.audio import AudioOptions, audio_features, read_wav
from ..media.image import ImageOptions, MediaError, open_image, preprocess_image
from ..media.prompt import MediaTokens, PromptMedia, expand_placeholders
from ..models.audio import AudioModel
from ..models.vision import VisionModel

__all__ = [
    "MediaEncoder",
    "ImageInput",
    "AudioInput",
    "MAX_IMAGE_BYTES",
    "MAX_AUDIO_BYTES",
    "image_options_for",
    "audio_options_for",
    "expand_media",
]

ImageInput = str | Path | bytes | Image.Image
AudioInput = str | Path | bytes | np.ndarray  # a WAV file (path or bytes), or mono samples at 16 kHz
MAX_IMAGE_BYTES = 32 << 20  # an image file larger than this is refused, naming the limit
MAX_AUDIO_BYTES = 32 << 20  # (30 s of 16 kHz 16-bit mono is under 1 MB; stereo 48 kHz 32-bit about 12 MB)


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


def audio_options_for(path: Path) -> AudioOptions:
    """The feature extractor's settings saved beside a HF checkpoint (processor_config.json's
    `feature_extractor` and `audio_seq_length`, or preprocessor_config.json), else transformers' defaults."""
    settings: dict[str, Any] = {}
    cap = None
    for name, key in (("processor_config.json", "feature_extractor"), ("preprocessor_config.json", None)):
        file = path / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelFormatError(f"{file}: cannot read ({exc})") from None
            if key is not None:
                cap = data.get("audio_seq_length", cap)
            part = data.get(key) or {} if key else data
            if key is None and "feature_size" not in part:
                continue  # an image processor's file
            settings = {**part, **settings}
    fields = {f: settings[f] for f in AudioOptions.__dataclass_fields__ if f in settings}
    rate = float(settings.get("sampling_rate", AudioOptions.sampling_rate))
    for samples, ms in (("frame_length", "frame_length_ms"), ("hop_length", "hop_length_ms")):
        if samples in settings and ms not in settings:  # the extractor saves lengths in samples
            fields[ms] = 1000.0 * float(settings[samples]) / rate
    if isinstance(fields.get("mel_floor"), list):
        fields["mel_floor"] = float(np.asarray(fields["mel_floor"]).reshape(-1)[0])
    for name in ("per_bin_mean", "per_bin_stddev"):
        if fields.get(name) is not None:
            fields[name] = tuple(float(v) for v in fields[name])
    if cap is not None:
        fields["max_soft_tokens"] = int(cap)
    return AudioOptions(**fields)


class MediaEncoder:
    def __init__(
        self,
        vision: VisionModel | None,
        *,
        tokens: MediaTokens,
        options: ImageOptions | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
        audio: Callable[[], AudioModel] | None = None,
        audio_options: AudioOptions | None = None,
        source: str = "the model",
    ) -> None:
        self.vision = vision
        self.tokens = tokens
        self.options = options or ImageOptions()
        self.max_bytes = max_bytes
        self.audio_options = audio_options or AudioOptions()
        self.source = source
        self._audio_loader = audio
        self._audio: AudioModel | None = None

    @property
    def has_audio(self) -> bool:
        return self._audio_loader is not None

    @property
    def audio(self) -> AudioModel:
        """The audio tower, loaded on first use; MediaError when the model has none."""
        if self._audio is None:
            if self._audio_loader is None:
                raise no_audio_error(self.source)
            with torch.inference_mode(False):  # normal weights, even when first used while encoding
                self._audio = self._audio_loader()
        return self._audio

    def require(self, *, images: bool = False, audio: bool = False) -> None:
        """MediaError naming the tower the model lacks for the media asked for."""
        if images and self.vision is None:
            raise no_vision_error(self.source)
        if audio and not self.has_audio:
            raise no_audio_error(self.source)

    def _image(self, source: ImageInput) -> Image.Image:
        if isinstance(source, Image.Image):
            return source
        return open_image(source, max_bytes=self.max_bytes)

    @torch.inference_mode()
    def soft_tokens(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """One [n_i, text width] tensor per image, in the tower's dtype."""
        if images and self.vision is None:
            raise no_vision_error(self.source)
        out = []
        for source in images:
            p = preprocess_image(self._image(source), self.options)
            out += self.vision(torch.from_numpy(p.patches)[None], torch.from_numpy(p.positions)[None])
        return out

    def audio_samples(self, source: AudioInput) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return source
        return read_wav(source, max_bytes=MAX_AUDIO_BYTES, sampling_rate=self.audio_options.sampling_rate)

    @torch.inference_mode()
    def audio_soft_tokens(self, clips: Sequence[AudioInput]) -> list[torch.Tensor]:
        """One [n_i, text width] tensor per clip (one soft token per 40 ms), in the tower's dtype."""
        out = []
        for source in clips:
            f = audio_features(self.audio_samples(source), self.audio_options)
            soft = self.audio(torch.from_numpy(f.features)[None], torch.from_numpy(f.mask)[None])[0]
            out.append(soft[: f.n_soft_tokens])
        return out

    def prepare(
        self, ids: list[int], images: Sequence[ImageInput], audio: Sequence[AudioInput] = ()
    ) -> tuple[list[int], PromptMedia]:
        """Expand each image and audio placeholder of `ids` and return the soft tokens that fill the slots."""
        self.require(images=bool(images), audio=bool(audio))
        expand_media(ids, [0] * len(images), [0] * len(audio), self.tokens)  # counts: before the towers run
        image_embeds = self.soft_tokens(images)
        audio_embeds = self.audio_soft_tokens(audio)
        expanded, spans, kinds = expand_media(
            ids, [e.shape[0] for e in image_embeds], [e.shape[0] for e in audio_embeds], self.tokens
        )
        queues = {"image": iter(image_embeds), "audio": iter(audio_embeds)}
        return expanded, PromptMedia(spans=spans, embeds=[next(queues[kind]) for kind in kinds])


def expand_media(
    ids: Sequence[int], image_counts: Sequence[int], audio_counts: Sequence[int], tokens: MediaTokens
) -> tuple[list[int], list[tuple[int, int]], list[str]]:
    """`expand_placeholders` for images and audio together: the ids, the slot spans in prompt order,
    and the kind of each span."""
    for kind, counts in (("image", image_counts), ("audio", audio_counts)):
        placeholder = tokens.markers(kind)[0]
        if sum(1 for t in ids if t == placeholder) != len(counts):
            expand_placeholders(ids, counts, tokens, kind=kind)  # raises its MediaError, naming the counts
    remaining = {"image": iter(image_counts), "audio": iter(audio_counts)}
    kind_of = {tokens.image: "image", tokens.audio: "audio"}
    out: list[int] = []
    spans: list[tuple[int, int]] = []
    kinds: list[str] = []
    for t in ids:
        kind = kind_of.get(int(t))
        if kind is None:
            out.append(int(t))
            continue
        placeholder, begin, end = tokens.markers(kind)
        n = next(remaining[kind])
        out.append(begin)
        spans.append((len(out), n))
        kinds.append(kind)
        out.extend([placeholder] * n)
        out.append(end)
    return out, spans, kinds


def no_audio_error(model: str) -> MediaError:
    return MediaError(
        f"{model}: this model has no audio tower, so it cannot take audio; use a Gemma 4 E2B or E4B "
        "checkpoint with one (Gemma4ForConditionalGeneration with an audio_config), or for a GGUF pass "
        "an mmproj file with an audio tower with --mmproj"
    )


def unified_error(model: str) -> MediaError:
    return MediaError(
        f"{model}: the 12B unified Gemma 4 (gemma4_unified) has no vision or audio tower: it feeds raw "
        "image patches and raw 640-sample waveform frames through its own embedders (embed_vision, "
        "embed_audio), which gemma-mtp does not run yet; its text works, and images and audio work "
        "with the E2B/E4B models"
    )


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
    """The media towers of a HF Gemma 4 directory (`model`) or of a llama.cpp mmproj GGUF (`mmproj`):
    vision now, audio on the first clip, ready to encode; `prepare` raises MediaError
    for media whose tower the model lacks. `bidirectional`: the text config's
    `use_bidirectional_attention`; `tokens`: the marker ids for an mmproj (default: the released ids)."""
    from ..weights.towers import has_hf_vision, load_hf_vision

    path = Path(model)
    config = path / "config.json"
    data = json.loads(config.read_text()) if path.is_dir() and config.is_file() else {}
    if data.get("model_type") == "gemma4_unified":
        raise unified_error(model)
    if bidirectional == "vision":
        # those models let image tokens attend to each other on sliding layers; our KV cache
        # masks are causal only, so their soft tokens would be read wrongly
        raise MediaError(
            f"{model}: use_bidirectional_attention 'vision' (image tokens attending to each other) "
            "is not supported yet; images work with the E2B/E4B-style causal models"
        )
    if mmproj is not None:
        return _mmproj_encoder(
            model, mmproj, dtype=dtype, device=device, vocab_size=vocab_size, tokens=tokens
        )
    from ..weights.towers import has_hf_audio, load_hf_audio

    # a model without a tower still gets an encoder: `prepare` names the tower a request lacks
    vision = load_hf_vision(path, dtype=dtype, device=device) if has_hf_vision(path) else None
    with_audio = has_hf_audio(path)
    return MediaEncoder(
        vision,
        tokens=MediaTokens.from_config(data),
        options=image_options_for(path, vision) if vision is not None else None,
        audio=(lambda: load_hf_audio(path, dtype=dtype, device=device)) if with_audio else None,
        audio_options=audio_options_for(path) if with_audio else None,
        source=model,
    )


def _mmproj_encoder(
    model: str, mmproj: str, *, dtype: str, device: str, vocab_size: int | None, tokens: MediaTokens | None
) -> MediaEncoder:
    """The towers an mmproj holds (`clip.has_vision_encoder`, `clip.has_audio_encoder`); the extractor
    settings are transformers' defaults (an mmproj carries only the mel bins, llama.cpp fixes the rest)."""
    from ..gguf.reader import open_gguf
    from ..weights.mmproj import is_vision_mmproj, load_mmproj_vision
    from ..weights.mmproj_audio import is_audio_mmproj, load_mmproj_audio, mel_bins, mmproj_audio_config

    gguf = open_gguf(mmproj)
    has_vision, has_audio = is_vision_mmproj(gguf), is_audio_mmproj(gguf)
    if not has_vision and not has_audio:
        raise ModelFormatError(
            f"{mmproj}: not an mmproj (general.architecture {gguf.arch!r}, neither clip.has_vision_encoder "
            "nor clip.has_audio_encoder); --mmproj takes the towers' file that llama.cpp's converter "
            "writes with --mmproj"
        )
    tokens = tokens or MediaTokens()  # an mmproj names no token ids
    for kind, present in (("image", has_vision), ("audio", has_audio)):
        ids = tokens.markers(kind)
        if present and vocab_size is not None and max(ids) >= vocab_size:
            raise MediaError(
                f"{model}: its vocabulary ({vocab_size} tokens) has no Gemma 4 {kind} tokens "
                f"({', '.join(map(str, sorted(ids)))}); --mmproj needs a Gemma 4 target"
            )
    vision = load_mmproj_vision(mmproj, dtype=dtype, device=device) if has_vision else None
    options = None
    if vision is not None:
        cfg = vision.config
        options = ImageOptions(patch_size=cfg.patch_size, pooling_kernel_size=cfg.pooling_kernel_size)
    audio_options = None
    if has_audio:
        mmproj_audio_config(gguf)  # a bad audio tower is an error now, not at the first clip
        audio_options = AudioOptions(feature_size=mel_bins(gguf))
    return MediaEncoder(
        vision,
        tokens=tokens,
        options=options,
        audio=(lambda: load_mmproj_audio(mmproj, dtype=dtype, device=device)) if has_audio else None,
        audio_options=audio_options,
        source=model,
    )
