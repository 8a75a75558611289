"""Hugging Face checkpoints: config.json + single or sharded safetensors, strict name mapping.

Our module paths mirror the checkpoints' text-model names, so the HF name table is a list of
prefix rules (data, below). Everything outside the text model (vision/audio towers, projectors) is
skipped with one notice; everything else must match exactly: missing, unexpected and misshapen
tensors are reported by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..config import AssistantConfig, TextConfig, load_config
from ..errors import ModelFormatError
from ..gguf.formats import GGUF, check_readable, model_format
from ..models.assistant import AssistantModel
from ..models.gemma import rebuild_rotary
from .meta import meta_model
from .placement import place_layers, resolve_device, resolve_dtype

__all__ = ["load_hf_model", "LoadReport", "TARGET_PREFIXES", "SKIPPED_PREFIXES", "safetensors_files"]

# Checkpoint prefix -> our prefix, tried in order (Gemma{3,4}ForConditionalGeneration, *ForCausalLM).
TARGET_PREFIXES = (
    ("model.language_model.", ""),
    ("language_model.model.", ""),
    ("model.", ""),
)
# Not part of the text model: skipped, and said so once.
SKIPPED_PREFIXES = (
    "model.vision_tower.",
    "model.audio_tower.",
    "model.embed_vision.",
    "model.embed_audio.",
    "model.multi_modal_projector.",
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_embedder.",
    "model.audio_embedder.",
)
# Tied heads: the output projection is the embedding table.
TIED = ("lm_head.weight",)
# KV-shared consumer layers own no K/V; some checkpoints still carry them (transformers ignores them).
SHARED_LAYER_KV = ("self_attn.k_proj.", "self_attn.v_proj.", "self_attn.k_norm.", "self_attn.v_norm.")


@dataclass
class LoadReport:
    path: str
    dtype: torch.dtype
    device: str
    notices: list[str] = field(default_factory=list)
    n_tensors: int = 0
    n_bytes: int = 0


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ModelFormatError(f"{index}: cannot read the shard index ({exc})") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ModelFormatError(f"{f}: shard listed in {index.name} is missing; download it again")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{path}: no *.safetensors weights found next to config.json")
    return files


def _rename(name: str, is_assistant: bool) -> tuple[str, str] | None:
    """Checkpoint name -> (our state_dict name, the checkpoint prefix it had); None to skip."""
    if name in TIED:
        return None
    if is_assistant:
        return name, ""
    for src, dst in TARGET_PREFIXES:
        if name.startswith(src):
            return dst + name[len(src) :], src
    return name, ""


def _skipped_part(name: str) -> str | None:
    for prefix in SKIPPED_PREFIXES:
        if name.startswith(prefix):
            return prefix.rstrip(".").split(".")[-1]
    return None


def _build(config: TextConfig | AssistantConfig) -> nn.Module:
    return meta_model(config)


def load_hf_model(
    path: str | Path,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    n_gpu_layers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, TextConfig | AssistantConfig, LoadReport]:
    """Load a target or assistant from a HF directory. Raises ModelFormatError on any mismatch."""
    path = Path(path)
    if model_format(path) == GGUF:  # or one error: missing, unreadable, neither GGUF nor a directory
        raise ModelFormatError(
            f"{path}: is a GGUF file, not a Hugging Face model directory; load it with "
            "weights.gguf_loader.load_gguf_model"
        )
    if (path / "config.json").is_file():
        check_readable(path / "config.json")
    config = load_config(path)
    files = safetensors_files(path)
    model = _build(config)
    expected = {k: v for k, v in model.state_dict().items()}
    shared_layers = {
        s.index for s in (config.text if config.is_assistant else config).layers if not s.owns_kv
    }

    want_dtype = resolve_dtype(dtype, config.raw.get("torch_dtype") or config.raw.get("dtype"))
    report = LoadReport(path=str(path), dtype=want_dtype, device=device)
    loaded: dict[str, torch.Tensor] = {}
    prefix = ""  # the checkpoint's text-model prefix, to name missing tensors as the file would
    skipped: set[str] = set()
    unexpected: list[str] = []
    for f in files:
        check_readable(f)  # safetensors' own error would call an unreadable file corrupt
        try:
            handle = safe_open(str(f), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise ModelFormatError(f"{f}: not a readable safetensors file ({exc})") from None
        with handle:
            for name in handle.keys():
                part = _skipped_part(name)
                if part is not None:
                    skipped.add(part)
                    continue
                renamed = _rename(name, config.is_assistant)
                if renamed is None:
                    continue
                ours, prefix = renamed
                if ours not in expected:
                    if _is_shared_layer_kv(ours, shared_layers):
                        continue
                    unexpected.append(f"{name} (in {f.name})")
                    continue
                tensor = handle.get_tensor(name)
                want = expected[ours]
                if tuple(tensor.shape) != tuple(want.shape):
                    raise ModelFormatError(
                        f"{f}: tensor {name} has shape {list(tensor.shape)}, the config expects "
                        f"{list(want.shape)}; the weights do not belong to this config.json"
                    )
                if want.dtype.is_floating_point:
                    tensor = tensor.to(want_dtype)
                loaded[ours] = tensor
                report.n_tensors += 1
                report.n_bytes += tensor.numel() * tensor.element_size()
                if progress is not None:
                    progress(len(loaded), len(expected))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelFormatError(
            f"{path}: unexpected tensor {unexpected[0]}{more}; the weights do not match config.json"
        )
    missing = [k for k in expected if k not in loaded]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(
            f"{path}: missing tensor {prefix}{missing[0]}{more}; the checkpoint is incomplete"
        )
    if skipped:
        report.notices.append(
            f"skipped non-text weights: {', '.join(sorted(skipped))} (a Gemma 4 vision tower loads with the first image)"
        )
    model.load_state_dict(loaded, strict=True, assign=True)
    rebuild_rotary(model, model.config.text if isinstance(model, AssistantModel) else model.config)
    dev = resolve_device(device)
    report.device = place_layers(model, dev, n_gpu_layers)
    model.eval()
    model.requires_grad_(False)
    return model, config, report


def _is_shared_layer_kv(name: str, shared_layers: set[int]) -> bool:
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "layers" or not parts[1].isdigit():
        return False
    return int(parts[1]) in shared_layers and any(name.endswith(s + "weight") for s in SHARED_LAYER_KV)
