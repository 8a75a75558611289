"""GGUF checkpoints: targets (`gemma4`, `gemma3`) and drafters in the three layouts, strict names.

Metadata becomes the same config dataclasses the HF loader makes; tensor names go through the
layout's table in `gguf/names.py`. For now every tensor is dequantized to the requested float
dtype (quantized kernels come later) and the report says so: memory is then the float size, not
the file size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from ..config import AssistantConfig, TextConfig
from ..errors import ModelFormatError
from ..gguf.metadata import config_from_gguf
from ..gguf.names import ROPE_FREQS, SHARED_LAYER_KV, name_map, norm_offset
from ..gguf.reader import FLOAT_TYPES, GGUFFile, TensorInfo, open_gguf, tensor_shape, tensor_values
from ..models.assistant import AssistantModel
from ..models.common import Rotary, rope_inv_freq
from ..models.gemma import GemmaModel
from .hf import LoadReport
from .placement import DTYPES, place_layers, resolve_device, resolve_dtype

__all__ = ["load_gguf_model", "empty_model"]

CHUNK_BYTES = 32 << 20  # quantized bytes dequantized at once


def empty_model(config: TextConfig | AssistantConfig) -> nn.Module:
    """The model for `config` on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        return AssistantModel(config) if isinstance(config, AssistantConfig) else GemmaModel(config)


def _restore_rotary(model: nn.Module, text: TextConfig) -> None:
    """Rotary tables are non-persistent buffers: rebuild them after a meta-device load."""
    specs = {GemmaModel._rope_key(s): s for s in text.layers}
    for name, module in model.named_modules():
        if isinstance(module, Rotary):
            spec = specs[name.split(".")[-1]]
            module.inv_freq = rope_inv_freq(text.rope[spec.kind], spec.head_dim)


def _auto_dtype(gf: GGUFFile) -> str:
    """`auto`: float32 for an all-F32 file, else bfloat16 (half the memory; the fast CPU float path)."""
    types = {t.tensor_type for t in gf.tensors.values() if len(t.shape) > 1}
    return "float32" if types <= {GGMLQuantizationType.F32} else "bfloat16"


def _float_tensor(t: TensorInfo, dtype: torch.dtype, offset: float) -> torch.Tensor:
    """Dequantize into a tensor of `dtype`, a slab of rows at a time: the float32 intermediate of a
    262,144-row embedding would otherwise double the peak memory of a load. `offset` is what the
    file adds to the weights (llama.cpp stores Gemma 3 norms as 1 + w)."""
    if t.data.ndim == 1:  # a vector: one row of blocks
        values = torch.from_numpy(np.require(tensor_values(t), requirements=["C", "W"]))
        return (values - offset).to(dtype)
    out = torch.empty(tensor_shape(t), dtype=dtype)
    n_rows = t.data.shape[0]
    step = max(1, CHUNK_BYTES // max(1, t.n_bytes // n_rows))
    for start in range(0, n_rows, step):
        part = TensorInfo(t.name, t.tensor_type, t.shape, t.data_offset, 0, t.data[start : start + step])
        values = torch.from_numpy(np.require(tensor_values(part, whole=False), requirements=["C", "W"]))
        out[start : start + step] = values - offset if offset else values
    return out


def _shared_layer_kv(gguf_name: str, shared_layers: set[int]) -> bool:
    parts = gguf_name.split(".", 2)
    return (
        len(parts) == 3
        and parts[0] == "blk"
        and parts[1].isdigit()
        and int(parts[1]) in shared_layers
        and parts[2] in SHARED_LAYER_KV
    )


def load_gguf_model(
    path: str | Path,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    n_gpu_layers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, TextConfig | AssistantConfig, LoadReport]:
    """Load a target or drafter from a .gguf file. Raises ModelFormatError on any mismatch."""
    gf = open_gguf(path)
    config, layout, notices = config_from_gguf(gf)
    text = config.text if isinstance(config, AssistantConfig) else config
    model = empty_model(config)
    expected = model.state_dict()
    to_ours = {theirs: ours for ours, theirs in name_map(config, layout).items() if ours in expected}
    shared_layers = {s.index for s in text.layers if not s.owns_kv} if not config.is_assistant else set()

    want_dtype = resolve_dtype(_auto_dtype(gf) if dtype == "auto" else dtype)
    report = LoadReport(path=str(gf.path), dtype=want_dtype, device=device, notices=notices)
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    dequantized: Counter[str] = Counter()
    for name, t in gf.tensors.items():
        ours = to_ours.get(name)
        if ours is None:
            if name != ROPE_FREQS and not _shared_layer_kv(name, shared_layers):
                unexpected.append(name)
            continue
        want = expected[ours]
        shape = tensor_shape(t)
        if shape != tuple(want.shape):
            raise ModelFormatError(
                f"{gf.path}: tensor {name} has shape {list(shape)}, the metadata implies {list(want.shape)} "
                f"(for {ours}); the file is inconsistent"
            )
        if want.dtype.is_floating_point:
            values = _float_tensor(t, want_dtype, norm_offset(text.family, ours))
            if t.tensor_type not in FLOAT_TYPES:
                dequantized[t.tensor_type.name] += 1
        else:
            values = torch.from_numpy(np.array(tensor_values(t))).to(want.dtype)
        loaded[ours] = values
        report.n_tensors += 1
        report.n_bytes += values.numel() * values.element_size()
        if progress is not None:
            progress(len(loaded), len(expected))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelFormatError(
            f"{gf.path}: unexpected tensor {unexpected[0]}{more} for a {gf.arch} model with this metadata"
        )
    missing = [ours for ours in expected if ours not in loaded]
    if missing:
        names = {ours: theirs for theirs, ours in to_ours.items()}
        first = f"{names.get(missing[0], missing[0])} ({missing[0]})"
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f"{gf.path}: missing tensor {first}{more}; the file is incomplete")
    if dequantized:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(dequantized.items()))
        dtype_name = next(k for k, v in DTYPES.items() if v == want_dtype)
        report.notices.append(
            f"dequantized {kinds} tensors to {dtype_name}: quantized kernels are not implemented yet, "
            f"so the weights take {report.n_bytes / 2**20:.0f} MiB instead of the file's "
            f"{gf.path.stat().st_size / 2**20:.0f} MiB"
        )
    model.load_state_dict(loaded, strict=True, assign=True)
    _restore_rotary(model, text)
    report.device = place_layers(model, resolve_device(device), n_gpu_layers)
    model.eval()
    model.requires_grad_(False)
    return model, config, report
