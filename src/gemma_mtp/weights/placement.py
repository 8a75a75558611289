"""dtype and device choices shared by every loader, and the `-ngl` layer split."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError

__all__ = ["DTYPES", "resolve_dtype", "resolve_device", "place_layers"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, checkpoint_dtype: str | None = None) -> torch.dtype:
    """`auto` keeps the checkpoint's floating dtype (float32 when it does not say)."""
    if name == "auto":
        return DTYPES.get(str(checkpoint_dtype), torch.float32)
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r} is not supported; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device {name!r} is not supported; use cpu, cuda or auto")
    return torch.device(name)


def place_layers(model: nn.Module, device: torch.device, n_gpu_layers: int | None) -> str:
    """Move the model to `device`; with a GPU and `n_gpu_layers` = N < layers, only the first N
    decoder layers go to the GPU and the rest (with embeddings and head) stay on the CPU."""
    layers = model.model.layers if hasattr(model, "pre_projection") else model.layers
    if device.type != "cuda" or n_gpu_layers is None or n_gpu_layers < 0 or n_gpu_layers >= len(layers):
        if device.type == "cuda" and n_gpu_layers == 0:
            return "cpu"
        model.to(device)
        return str(device)
    for i, layer in enumerate(layers):
        if i < n_gpu_layers:
            layer.to(device)
    return f"{device} ({n_gpu_layers}/{len(layers)} layers), cpu (rest)"
