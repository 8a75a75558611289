"""Media towers from a Hugging Face `Gemma4ForConditionalGeneration` checkpoint, strictly.

The text loader (weights/hf.py) skips `model.vision_tower.*` / `model.embed_vision.*` and
`model.audio_tower.*` / `model.embed_audio.*`; this module reads exactly those tensors into a
`models.vision.VisionModel` or a `models.audio.AudioModel`: every missing or unexpected tensor and
every shape mismatch is reported by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..errors import ModelFormatError
from ..gguf.formats import check_readable
from ..models.audio import AudioConfig, AudioModel, audio_config_from_dict
from ..models.vision import VisionConfig, VisionModel, vision_config_from_dict
from .hf import safetensors_files
from .placement import resolve_device, resolve_dtype

__all__ = [
    "VISION_PREFIXES",
    "AUDIO_PREFIXES",
    "load_hf_vision",
    "read_vision_config",
    "has_hf_vision",
    "load_hf_audio",
    "read_audio_config",
    "has_hf_audio",
]

# Checkpoint prefix -> our prefix (VisionModel's attributes mirror the checkpoint).
VISION_PREFIXES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.embed_vision.", "embed_vision."),
)
AUDIO_PREFIXES = (
    ("model.audio_tower.", "audio_tower."),
    ("model.embed_audio.", "embed_audio."),
)


def _read_json(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    check_readable(cfg)
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{cfg}: cannot read config.json ({exc})") from None


def has_hf_vision(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and bool(_read_json(path).get("vision_config"))


def _tower_config(path: Path, key: str, what: str, needs: str) -> tuple[dict, int]:
    """config.json's ``key`` section (vision_config / audio_config) and the text hidden size, or a
    ModelFormatError saying the model has no such tower or is not a Gemma 4."""
    data = _read_json(path)
    section = data.get(key)
    if not section:
        raise ModelFormatError(
            f"{path / 'config.json'}: this model has no {what} tower (no {key}); "
            f"{needs} need a Gemma 4 checkpoint with one"
        )
    if data.get("model_type") != "gemma4":
        raise ModelFormatError(
            f"{path / 'config.json'}: {what} towers of model_type {data.get('model_type')!r} are not supported "
            "(gemma4 only)"
        )
    return section, int((data.get("text_config") or {}).get("hidden_size", 0))


def read_vision_config(path: str | Path) -> VisionConfig:
    path = Path(path)
    vision, hidden = _tower_config(path, "vision_config", "vision", "images (Gemma4ForConditionalGeneration)")
    return vision_config_from_dict(vision, text_hidden_size=hidden, source=str(path))


def _ours(name: str, prefixes=VISION_PREFIXES) -> str | None:
    for src, dst in prefixes:
        if name.startswith(src):
            return dst + name[len(src) :]
    return None


def load_state_strict(
    model: nn.Module, tensors: dict[str, torch.Tensor], source: str, dtype: torch.dtype
) -> None:
    """Check names and shapes against `model` (built on meta) and assign; floats cast to `dtype`."""
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelFormatError(
            f"{source}: unexpected tensor {unexpected[0]}{more}; the weights do not match the config"
        )
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f"{source}: missing tensor {missing[0]}{more}; the checkpoint is incomplete")
    loaded = {}
    for name, want in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise ModelFormatError(
                f"{source}: tensor {name} has shape {list(tensor.shape)}, the config expects {list(want.shape)}"
            )
        loaded[name] = tensor.to(dtype) if want.dtype.is_floating_point else tensor
    model.load_state_dict(loaded, strict=True, assign=True)


def build_vision(config: VisionConfig) -> VisionModel:
    with torch.device("meta"):
        model = VisionModel(config)
    return model


def finish_vision(model: VisionModel, device: str) -> VisionModel:
    # the RoPE table is not in any checkpoint: rebuild it off the meta device
    spatial = model.config.head_dim // 2
    theta = model.config.rope_theta
    model.vision_tower.inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
    model.to(resolve_device(device))
    model.eval()
    model.requires_grad_(False)
    return model


def load_hf_vision(path: str | Path, *, dtype: str = "auto", device: str = "cpu") -> VisionModel:
    """The vision tower + embedder of a HF Gemma 4 directory. Raises ModelFormatError on any mismatch
    or when the model has no vision tower."""
    path = Path(path)
    config = read_vision_config(path)
    want_dtype = _checkpoint_dtype(path, dtype)
    tensors = _read_tensors(path, VISION_PREFIXES)
    model = build_vision(config)
    load_state_strict(model, tensors, str(path), want_dtype)
    return finish_vision(model, device)


# -- audio ------------------------------------------------------------------------------------


def has_hf_audio(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and bool(_read_json(path).get("audio_config"))


def read_audio_config(path: str | Path) -> AudioConfig:
    path = Path(path)
    audio, hidden = _tower_config(path, "audio_config", "audio", "clips (E2B or E4B)")
    return audio_config_from_dict(audio, text_hidden_size=hidden, source=str(path))


def load_hf_audio(path: str | Path, *, dtype: str = "auto", device: str = "cpu") -> AudioModel:
    """The audio tower + embedder of a HF Gemma 4 directory. Raises ModelFormatError on any mismatch
    or when the model has no audio tower."""
    path = Path(path)
    config = read_audio_config(path)
    want_dtype = _checkpoint_dtype(path, dtype)
    tensors = _read_tensors(path, AUDIO_PREFIXES)
    with torch.device("meta"):
        model = AudioModel(config)
    load_state_strict(model, tensors, str(path), want_dtype)
    model.to(resolve_device(device))
    model.eval()
    model.requires_grad_(False)
    return model


def _checkpoint_dtype(path: Path, dtype: str) -> torch.dtype:
    """`dtype` resolved against the checkpoint's own (its text config's, else the top level's)."""
    raw = _read_json(path)
    return resolve_dtype(dtype, (raw.get("text_config") or {}).get("dtype") or raw.get("dtype"))


def _read_tensors(path: Path, prefixes) -> dict[str, torch.Tensor]:
    """The safetensors tensors under `prefixes`, by our names (`_ours`)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in safetensors_files(path):
        check_readable(f)
        try:
            handle = safe_open(str(f), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ModelFormatError(f"{f}: not a readable safetensors file ({exc})") from None
        with handle:
            for name in handle.keys():
                ours = _ours(name, prefixes)
                if ours is not None:
                    tensors[ours] = handle.get_tensor(name)
    return tensors
