"""GGUF checkpoints: targets (`gemma4`, `gemma3`) and drafters in the three layouts, strict names.

Metadata becomes the same config dataclasses the HF loader makes; tensor names go through the
layout's table in `gguf/names.py`.

On the CPU with bfloat16 activations (the default for quantized files), quantized matrices stay
quantized: linear layers become `quant.QuantLinear` and the tied embedding/head a
`quant.QuantEmbedding`, each in the kernel format `quant/policy.py` names for its GGUF type, so
memory stays near the file size. Everything without an exact kernel is dequantized to the float
dtype. `report.notices` says, per type, which kernel holds it (and how exact it is) and what was
dequantized; nothing is expanded silently.

The 3-D MoE expert stacks stay blocks too (set with `models.moe.Experts.keep_blocks`): on the CPU
for the native kernel (`quant.experts.GGUFBlockExperts`), and where the torch kernel holds a type
(every block type off the CPU; `--quant-kernels torch` on it) for it
(`quant.torch_blocks.TorchBlockExperts`), as `placement.quantized_matrices` plans them; off the CPU the
report also says which types the fused Triton kernel multiplies (`triton_blocks.fused_notice`).
"""

from __future__ import annotations

import ctypes
import gc
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from ..config import AssistantConfig, TextConfig
from ..errors import ModelFormatError, UsageError
from ..gguf.formats import GGUF, model_format
from ..gguf.metadata import config_from_gguf
from ..gguf.names import ROPE_FREQS, SHARED_LAYER_KV, name_map, norm_offset
from ..gguf.reader import FLOAT_TYPES, GGUFFile, TensorInfo, open_gguf, tensor_shape, tensor_values
from ..models.gemma import ScaledEmbedding, rebuild_rotary
from ..models.native_blocks import install_native_layers
from ..native import why_unavailable
from ..quant.experts import GGUFBlockExperts, native_experts_ok
from ..quant.fuse import fuse_model_projections
from ..quant.half import HALF_TYPES, half_kernel_ok
from ..quant.plan import Choice, build_module, choose_kernel, describe_choice, fallback_notice, parse_kernels
from ..quant.torch_blocks import TorchBlockExperts, torch_kernel_ok
from .hf import LoadReport
from .meta import meta_model
from .placement import DTYPES, place_layers, resolve_device, resolve_dtype

__all__ = ["load_gguf_model", "empty_model"]

CHUNK_BYTES = 32 << 20  # quantized bytes dequantized at once
# the expert stacks' parameters -> `Experts.keep_blocks`' arguments
EXPERT_STACKS = {"experts.gate_up_proj": "gate_up", "experts.down_proj": "down"}


def empty_model(config: TextConfig | AssistantConfig) -> nn.Module:
    """The model for `config` on the meta device: names and shapes, no memory."""
    return meta_model(config)


def _auto_dtype(gf: GGUFFile, device: str) -> str:
    """`auto`: float32 for an all-F32 file; for a quantized file on the CPU, float32 activations
    over quantized weights when our q8 kernel is built (its activations are float32 anyway, and
    float32 elementwise ops beat emulated bfloat16 on AVX2), else bfloat16 (half the memory)."""
    types = {t.tensor_type for t in gf.tensors.values() if len(t.shape) > 1}
    if types <= {GGMLQuantizationType.F32}:
        return "float32"
    quantized = bool(types - FLOAT_TYPES)
    if quantized and resolve_device(device).type == "cpu" and why_unavailable() is None:
        return "float32"
    return "bfloat16"


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


def _role(model: nn.Module, ours: str, config: TextConfig | AssistantConfig) -> str | None:
    """`matrix` (a linear layer or the tied head), `lookup` (an embedding only indexed),
    `centroid_table` (a drafter's table whose rows the centroid head gathers) or None."""
    path, _, leaf = ours.rpartition(".")
    if leaf != "weight":
        return None
    module = model.get_submodule(path)
    if isinstance(module, nn.Linear):
        return "matrix" if module.bias is None else None
    if not isinstance(module, ScaledEmbedding):
        return None
    if path == "embed_tokens":  # a target's tied embedding and output head
        return "matrix"
    if path == "model.embed_tokens":  # a drafter's head; the centroid head gathers float rows
        return "centroid_table" if config.use_ordered_embeddings else "matrix"
    return "lookup"


def _wants_quantized(quantized: bool | None, dtype: torch.dtype, device: str, auto: bool) -> bool:
    """Default: keep quantized weights quantized in bfloat16 and for `dtype=auto` (on a GPU through
    the torch kernel); an explicit float32 load dequantizes (the exact reference)."""
    if quantized is None:
        return auto or dtype == torch.bfloat16
    return quantized


def _half_choice(
    model: nn.Module,
    ours: str,
    config,
    qtype: GGMLQuantizationType,
    dtype: torch.dtype,
    device: str,
    table: dict,
) -> Choice:
    """A BF16 / F16 linear layer's matrix stays as stored (`quant.half`) where the float32 CPU load
    would otherwise widen it; `--quant-kernels BF16=float` keeps the float32 copy."""
    if table.get(qtype) == "float" or dtype != torch.float32 or resolve_device(device).type != "cpu":
        return Choice("float")
    path = ours.rpartition(".")[0]
    if _role(model, ours, config) != "matrix" or not isinstance(model.get_submodule(path), nn.Linear):
        return Choice("float")
    return Choice("half") if half_kernel_ok(qtype) else Choice("float")


def _expert_choice(ours: str, t: TensorInfo, table: dict) -> Choice:
    """A 3-D MoE expert stack stays blocks where the native kernel (the CPU's, `quant.experts`) or
    the torch kernel holds its type, else it is dequantized and the report says why."""
    qtype = t.tensor_type
    if not ours.endswith(tuple(EXPERT_STACKS)):
        return Choice("float", "not a matrix of a linear layer or the tied head")
    width = t.data.shape[-1] // GGML_QUANT_SIZES[qtype][1] * GGML_QUANT_SIZES[qtype][0]
    if table.get(qtype) == "gguf" and native_experts_ok(qtype, width):  # the CPU's native kernel
        return Choice("gguf")
    if table.get(qtype) != "torch":
        return Choice(
            "float",
            "not a matrix of a linear layer: MoE expert stacks stay blocks only on the native "
            "kernel (the CPU's default for this type) or the torch kernel (off the CPU, or "
            "--quant-kernels torch)",
        )
    if not torch_kernel_ok(qtype, width):
        return Choice("float", f"no torch decoder for {qtype.name} expert rows of {width}")
    return Choice("torch")


def _device_notices(kept: dict, device_type: str) -> list[str]:
    """Off the CPU: which types of the torch-kernel matrices the fused Triton kernel multiplies."""
    counts = Counter({qtype: len(errors) for (qtype, kind), errors in kept.items() if kind == "torch"})
    if device_type == "cpu" or not counts:
        return []
    from ..quant.triton_blocks import fused_notice

    return [fused_notice(counts)]


def _keep_expert_blocks(model: nn.Module, stacks: dict[str, TorchBlockExperts]) -> None:
    """Hand each layer's expert stacks kept as blocks to its `Experts` (one or both of them)."""
    by_module: dict[str, dict[str, TorchBlockExperts]] = defaultdict(dict)
    for ours, stack in stacks.items():
        path, _, name = ours.rpartition(".")
        by_module[path][EXPERT_STACKS[f"experts.{name}"]] = stack
    for path, kept in by_module.items():
        model.get_submodule(path).keep_blocks(**kept)


def _device_kernels(table: dict, device: str) -> dict:
    """Off the CPU only the torch kernel runs on the blocks: every type another kernel would
    hold goes to it (types kept float stay float)."""
    if resolve_device(device).type == "cpu":
        return table
    return {
        q: "torch" if kind != "float" and torch_kernel_ok(q, GGML_QUANT_SIZES[q][0]) else kind
        for q, kind in table.items()
    }


def _return_freed_memory() -> None:
    """Hand the conversion buffers freed during a load back to the OS: glibc keeps freed heap
    memory mapped otherwise (about 140 MiB after the 270M's quantized load)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _swap(model: nn.Module, ours: str, module: nn.Module) -> None:
    path = ours.rpartition(".")[0]
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _quant_notices(kept: dict, dequantized: Counter, dtype_name: str, reasons: dict) -> list[str]:
    notices = [
        describe_choice(kind, qtype, len(errors), max(errors)) for (qtype, kind), errors in kept.items()
    ]
    fallback = fallback_notice({kind for _, kind in kept})
    if fallback:
        notices.append(fallback)
    for name, n in sorted(dequantized.items()):
        notices.append(f"dequantized {name} x{n} tensors to {dtype_name}: {reasons[name]}")
    return notices


def load_gguf_model(
    path: str | Path,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    n_gpu_layers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    quantized: bool | None = None,
    kernels: Mapping[str, str] | None = None,
    n_cpu_moe: int = 0,
) -> tuple[nn.Module, TextConfig | AssistantConfig, LoadReport]:
    """Load a target or drafter from a .gguf file. Raises ModelFormatError on any mismatch.

    `quantized`: keep quantized matrices in kernel formats (default: on the CPU in bfloat16).
    `kernels`: per-type overrides of `quant.policy.MATRIX_KERNELS`, e.g. `{"Q8_0": "int8"}`.
    """
    if model_format(path) != GGUF:  # or one error: missing, unreadable, not a GGUF file
        raise ModelFormatError(
            f"{path}: is a directory, not a GGUF file; a Hugging Face model directory loads with "
            "weights.hf.load_hf_model"
        )
    gf = open_gguf(path)
    config, layout, notices = config_from_gguf(gf)
    text = config.text if isinstance(config, AssistantConfig) else config
    model = empty_model(config)
    expected = model.state_dict()
    to_ours = {theirs: ours for ours, theirs in name_map(config, layout).items() if ours in expected}
    shared_layers = {s.index for s in text.layers if not s.owns_kv} if not config.is_assistant else set()

    want_dtype = resolve_dtype(_auto_dtype(gf, device) if dtype == "auto" else dtype)
    try:
        table = _device_kernels(parse_kernels(kernels), device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    quantize = _wants_quantized(quantized, want_dtype, device, dtype == "auto")
    report = LoadReport(path=str(gf.path), dtype=want_dtype, device=device, notices=notices)
    loaded: dict[str, torch.Tensor] = {}
    swapped: dict[str, nn.Module] = {}
    stacks: dict[str, TorchBlockExperts] = {}  # expert stacks kept as blocks
    unexpected: list[str] = []
    dequantized: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    kept: dict[tuple, list[float]] = defaultdict(list)
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
        choice = Choice("float")
        if quantize and t.tensor_type not in FLOAT_TYPES and want.dim() == 3:
            choice = _expert_choice(ours, t, table)
        elif quantize and t.tensor_type not in FLOAT_TYPES:
            role = _role(model, ours, config) if want.dim() == 2 else None
            choice = choose_kernel(role, t.tensor_type, t.data, table)
        elif quantize and t.tensor_type in HALF_TYPES and want.dim() == 2:
            choice = _half_choice(model, ours, config, t.tensor_type, want_dtype, device, table)
        if choice.kind != "float" and want.dim() == 3:
            kind = GGUFBlockExperts if choice.kind == "gguf" else TorchBlockExperts
            stacks[ours] = kind.from_blocks(t.data, t.tensor_type)
            kept[t.tensor_type, choice.kind].append(0.0)  # the file's weights: exact
            report.n_bytes += stacks[ours].nbytes
        elif choice.kind != "float":
            old = model.get_submodule(ours.rpartition(".")[0])
            module = build_module(choice, old, t.data, t.tensor_type, want_dtype)
            swapped[ours] = module
            weight = module.qweight if hasattr(module, "qweight") else module.table
            kept[t.tensor_type, choice.kind].append(weight.max_error)
            report.n_bytes += weight.nbytes
        elif want.dtype.is_floating_point:
            values = _float_tensor(t, want_dtype, norm_offset(text.family, ours))
            if t.tensor_type not in FLOAT_TYPES:
                dequantized[t.tensor_type.name] += 1
                reasons.setdefault(t.tensor_type.name, choice.reason)
            loaded[ours] = values
        else:
            loaded[ours] = torch.from_numpy(np.array(tensor_values(t))).to(want.dtype)
        if ours in loaded:
            report.n_bytes += loaded[ours].numel() * loaded[ours].element_size()
        report.n_tensors += 1
        if progress is not None:
            progress(report.n_tensors, len(expected))
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelFormatError(
            f"{gf.path}: unexpected tensor {unexpected[0]}{more} for a {gf.arch} model with this metadata"
        )
    missing = [ours for ours in expected if ours not in loaded and ours not in swapped and ours not in stacks]
    if missing:
        names = {ours: theirs for theirs, ours in to_ours.items()}
        first = f"{names.get(missing[0], missing[0])} ({missing[0]})"
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelFormatError(f"{gf.path}: missing tensor {first}{more}; the file is incomplete")
    dtype_name = next(k for k, v in DTYPES.items() if v == want_dtype)
    file_mib = gf.path.stat().st_size / 2**20
    if quantize and (kept or dequantized):
        report.notices += _quant_notices(kept, dequantized, dtype_name, reasons)
        report.notices += _device_notices(kept, resolve_device(device).type)
        report.notices.append(f"weights take {report.n_bytes / 2**20:.0f} MiB (the file {file_mib:.0f} MiB)")
    elif dequantized:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(dequantized.items()))
        why = (
            "quantized=False"
            if quantized is False
            else f"an explicit --dtype {dtype_name} dequantizes; the default keeps them quantized"
        )
        report.notices.append(
            f"dequantized {kinds} tensors to {dtype_name} ({why}), "
            f"so the weights take {report.n_bytes / 2**20:.0f} MiB instead of the file's {file_mib:.0f} MiB"
        )
    for ours, module in swapped.items():
        _swap(model, ours, module)
    _keep_expert_blocks(model, stacks)
    if swapped:
        fuse_model_projections(model)
    model.load_state_dict(loaded, strict=False, assign=True)
    rebuild_rotary(model, text)
    report.device = place_layers(model, resolve_device(device), n_gpu_layers, n_cpu_moe)
    model.eval()
    model.requires_grad_(False)
    if swapped:
        install_native_layers(model)  # layers over GGUF blocks run as native blocks where they qualify
    if quantize:
        _return_freed_memory()
    return model, config, report
