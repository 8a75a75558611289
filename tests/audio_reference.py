"""A tiny transformers Gemma 4 checkpoint with an audio tower, and test clips.

``build_e2b_audio`` is the E2B-like text model of ``hf_reference`` with a conformer audio tower in
the released structure (subsampling channels 128/32 over 128 mel bins, chunk 12, left context 13,
clipped linears with finite random bounds, logit softcap), small widths. Its feature extractor
(transformers' defaults) is saved beside it.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import hf_reference as ref
import media_reference as mref
import numpy as np
import torch

RATE = 16_000


def audio_kwargs(**overrides):
    kwargs = dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        subsampling_conv_channels=[128, 32],
        conv_kernel_size=5,
        attention_chunk_size=12,
        attention_context_left=13,
        attention_context_right=0,
        attention_logit_cap=50.0,
        use_clipped_linears=True,
        output_proj_dims=24,
    )
    kwargs.update(overrides)
    return kwargs


def build_e2b_audio(path: Path, *, seed: int = 13, vision: bool = False, audio=None) -> ref.Reference:
    """`audio`: overrides of `audio_kwargs`."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    config = Gemma4Config(
        text_config=ref.e2b_text_kwargs(),
        vision_config=mref.vision_kwargs() if vision else None,
        audio_config=audio_kwargs(**(audio or {})),
        image_token_id=mref.IMAGE_TOKEN,
        audio_token_id=mref.AUDIO_TOKEN,
        video_token_id=ref.VOCAB - 3,
        boi_token_id=mref.BOI,
        eoi_token_id=mref.EOI,
        boa_token_id=mref.BOA,
        eoa_token_index=mref.EOA,
    )
    ref._quiet()
    torch.manual_seed(seed)
    with ref.reference_patches():
        model = Gemma4ForConditionalGeneration(config)
    ref.randomize_(model, seed)
    mref._finite_clips(model, seed)
    reference = ref._save_and_reload(model.eval(), Path(path))
    feature_extractor().save_pretrained(path)
    if vision:
        mref.image_processor().save_pretrained(path)
    return reference


def feature_extractor():
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    return Gemma4AudioFeatureExtractor()


def test_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A chirp with harmonics and noise, float32 in [-1, 1] at 16 kHz (not a multiple of 128 samples)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE) + 37
    t = np.arange(n) / RATE
    tone = np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.3 * np.sin(2 * np.pi * 3100 * t)
    return (0.4 * tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def wav_bytes(samples: np.ndarray, *, rate: int = RATE, channels: int = 1) -> bytes:
    """16-bit PCM WAV of `samples` (repeated over `channels`)."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    pcm = np.repeat(pcm[:, None], channels, axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def wav_samples(samples: np.ndarray) -> np.ndarray:
    """What a 16-bit WAV of `samples` decodes to (the reference input for WAV round trips)."""
    return np.clip(np.round(samples * 32767), -32768, 32767).astype(np.float32) / 32768.0


@torch.no_grad()
def hf_audio_features(model, clips) -> list[torch.Tensor]:
    """transformers' projected soft tokens per clip, through its own feature extractor (padding stripped)."""
    batch = feature_extractor()(list(clips), return_tensors="pt")
    out = model.model.get_audio_features(
        batch["input_features"], batch["input_features_mask"], return_dict=True
    )
    return [out.pooler_output[i][out.attention_mask[i]].float() for i in range(len(clips))]


def audio_placeholder(n: int) -> list[int]:
    return [mref.BOA] + [mref.AUDIO_TOKEN] * n + [mref.EOA]


SKIPPED_KEYS = ("GGUF.", "general.name", "general.size_label")  # the file's name, not its content


def gguf_digest(path) -> str:
    """sha256 over a GGUF's tensors (name, type, shape, bytes, in file order) and its metadata keys and
    values (but the name and size label): equal digests, equal content."""
    import hashlib

    from gguf import GGUFReader

    reader = GGUFReader(path)
    digest = hashlib.sha256()
    for t in reader.tensors:
        digest.update(f"{t.name}|{t.tensor_type.name}|{[int(n) for n in t.shape]}|".encode())
        digest.update(np.ascontiguousarray(t.data).tobytes())
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith(SKIPPED_KEYS)}
    digest.update(repr(sorted(fields.items())).encode())
    return digest.hexdigest()
