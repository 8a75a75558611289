"""dtype and device choices shared by every loader, the `-ngl` layer split, and the plan that
picks it (`-ngl auto`): how many target layers fit on the device beside the drafter and the KV.

`plan_placement` is a pure function of tensor sizes (`ModelSizes`, from a file's tensor table)
and a stated device capacity, so it is tested without a GPU; `device_capacity` is the device's free
memory, or `GEMMA_MTP_DEVICE_MEMORY` when set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from ..config import FULL, TextConfig
from ..errors import UsageError
from ..gguf.names import ROPE_FREQS

__all__ = [
    "DTYPES",
    "resolve_dtype",
    "resolve_device",
    "place_layers",
    "ModelSizes",
    "Placement",
    "PlacementError",
    "plan_placement",
    "model_sizes",
    "device_capacity",
    "parse_bytes",
    "RESERVE_BYTES",
    "gguf_sizes",
    "kv_bytes",
    "quantized_matrices",
]

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


def place_layers(model: nn.Module, device: torch.device, n_gpu_layers: int | None, n_cpu_moe: int = 0) -> str:
    """Move the model to `device`; with a GPU and `n_gpu_layers` = N < layers, only the first N
    decoder layers go to the GPU and the rest (with embeddings and head) stay on the CPU.
    `n_cpu_moe` = M: the expert stacks of the first M layers stay on the CPU (llama.cpp's
    --n-cpu-moe), their inputs moved there and their outputs back."""
    layers = model.model.layers if hasattr(model, "pre_projection") else model.layers
    if device.type != "cuda" or n_gpu_layers is None or n_gpu_layers < 0 or n_gpu_layers >= len(layers):
        if device.type == "cuda" and n_gpu_layers == 0:
            return "cpu"
        on_gpu = len(layers)
        model.to(device)
        where = str(device)
    else:
        on_gpu = n_gpu_layers
        for layer in layers[:on_gpu]:
            layer.to(device)
        where = f"{device} ({n_gpu_layers}/{len(layers)} layers), cpu (rest)"
    kept = [
        layer for layer in layers[: min(n_cpu_moe, on_gpu)] if getattr(layer, "experts", None) is not None
    ]
    for layer in kept:
        _experts_on_cpu(layer.experts, device)
    return where + (f", experts of {len(kept)} layers on cpu" if kept else "")


def _experts_on_cpu(experts: nn.Module, device: torch.device) -> None:
    experts.to("cpu")
    experts.register_forward_pre_hook(lambda _m, args: tuple(a.to("cpu") for a in args))
    experts.register_forward_hook(lambda _m, _args, out: out.to(device))


# ------------------------------------------------------------------------------- the fit plan

RESERVE_BYTES = 1 << 30  # activations, workspace, allocator slack: llama.cpp's --fit-target default
EXPERTS = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")  # llama.cpp's LLM_FFN_EXPS_REGEX
LAYER = re.compile(r"^blk\.(\d+)\.")
_FLOAT_BYTES = {GGMLQuantizationType.F32: 4, GGMLQuantizationType.F16: 2, GGMLQuantizationType.BF16: 2}
_INT_TYPES = {GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32}
_INT_TYPES |= {GGMLQuantizationType.I64}

# (GGUF name, numpy shape, type): a reader's TensorInfo and a planned tensor both give these
TensorEntry = tuple[str, Sequence[int], GGMLQuantizationType]


class PlacementError(UsageError):
    """Nothing (or not what was asked) fits on the device; the message says what would."""


@dataclass(frozen=True, kw_only=True)
class ModelSizes:
    """A model's bytes on the device: each decoder layer's weights (of which MoE experts), the
    rest (embeddings, head, final norm), and its KV cache per context size."""

    layers: tuple[int, ...]
    experts: tuple[int, ...]
    rest: int
    kv_per_layer: Callable[[int], tuple[int, ...]] = lambda ctx: ()  # ctx -> bytes per layer
    file_bytes: int = 0

    def on_device(self, n_layers: int, ctx: int, n_cpu_moe: int = 0) -> int:
        """Bytes on the device with the first `n_layers` layers there (all of them: the rest too)."""
        n = min(n_layers, len(self.layers))
        weights = sum(self.layers[:n]) - sum(self.experts[: min(n_cpu_moe, n)])
        kv = sum(self.kv_per_layer(ctx)[:n])
        return weights + kv + (self.rest if n == len(self.layers) else 0)


def _tensor_bytes(entry: TensorEntry, dtype_bytes: int, kept_quantized: Callable[[TensorEntry], bool]) -> int:
    name, shape, qtype = entry
    elements = 1
    for d in shape:
        elements *= int(d)
    if qtype in _INT_TYPES:
        return elements * GGML_QUANT_SIZES[qtype][1]
    if qtype in _FLOAT_BYTES or not kept_quantized(entry):
        return elements * dtype_bytes  # loaded (or dequantized) into the model dtype
    block, size = GGML_QUANT_SIZES[qtype]
    return elements // block * size


def quantized_matrices(entry: TensorEntry) -> bool:
    """What the loader keeps as GGUF blocks on a GPU: 2-D matrices and 3-D MoE expert stacks
    (`quant.torch_blocks.TorchBlockExperts`) of a type the torch decoder reads; vectors and other
    types are dequantized to the model dtype."""
    from ..quant.torch_blocks import TORCH_BLOCK_TYPES, torch_kernel_ok

    name, shape, qtype = entry
    if qtype not in TORCH_BLOCK_TYPES:
        return False
    if len(shape) == 3:
        return EXPERTS.search(name) is not None and torch_kernel_ok(qtype, int(shape[-1]))
    return len(shape) == 2


def kv_bytes(text: TextConfig, *, dtype_bytes: int, batch: int = 1, max_draft: int = 16):
    """ctx -> KV bytes per layer, as `cache.KVCache` allocates them (full layers hold ctx + 1
    slots, sliding layers a ring of window + max_draft + 1, KV-shared layers none)."""

    def per_layer(ctx: int) -> tuple[int, ...]:
        ring = min(text.sliding_window + max_draft + 1, ctx)
        return tuple(
            2 * batch * s.kv_heads * ((ctx if s.kind == FULL else ring) + 1) * s.head_dim * dtype_bytes
            if s.owns_kv
            else 0
            for s in text.layers
        )

    return per_layer


def model_sizes(
    tensors: Iterable[TensorEntry],
    n_layers: int,
    *,
    dtype_bytes: int,
    kv_per_layer: Callable[[int], tuple[int, ...]] | None = None,
    kept_quantized: Callable[[TensorEntry], bool] = quantized_matrices,
) -> ModelSizes:
    """A tensor table (`blk.N.*` names are layer N's) -> the bytes each part takes on the device."""
    layers, experts = [0] * n_layers, [0] * n_layers
    rest = file_bytes = 0
    for entry in tensors:
        name, shape, qtype = entry
        if name == ROPE_FREQS:  # not loaded: the rotary tables are rebuilt
            continue
        n = _tensor_bytes(entry, dtype_bytes, kept_quantized)
        file_bytes += _tensor_bytes(entry, _FLOAT_BYTES.get(qtype, 0), lambda _: True)
        match = LAYER.match(name)
        if match is None or int(match.group(1)) >= n_layers:
            rest += n
            continue
        layers[int(match.group(1))] += n
        if EXPERTS.search(name):
            experts[int(match.group(1))] += n
    return ModelSizes(
        layers=tuple(layers),
        experts=tuple(experts),
        rest=rest,
        kv_per_layer=kv_per_layer or (lambda ctx: (0,) * n_layers),
        file_bytes=file_bytes,
    )


@dataclass(frozen=True)
class Placement:
    n_gpu_layers: int  # target layers on the device (all of them: embeddings and head too)
    n_gpu_layers_draft: int
    n_cpu_moe: int
    device_bytes: int  # planned: weights + KV + the reserve
    capacity: int

    def describe(self, n_layers: int) -> str:
        gib = 2**30
        return (
            f"-ngl auto: {self.n_gpu_layers}/{n_layers} target layers on the device, "
            f"{self.device_bytes / gib:.2f} of {self.capacity / gib:.2f} GiB planned"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest n in [lo, hi] with fits(n) (fits is monotone: true up to some n), or None."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def plan_placement(
    target: ModelSizes,
    drafter: ModelSizes | None = None,
    *,
    capacity: int,
    ctx: int,
    n_gpu_layers: int | None = None,
    n_gpu_layers_draft: int | None = None,
    n_cpu_moe: int = 0,
    reserve: int = RESERVE_BYTES,
) -> Placement:
    """How many target layers go on a device of `capacity` free bytes (`n_gpu_layers` None: as
    many as fit, every one with the embeddings and head when all fit; negative: all), beside the
    drafter (all of it unless `n_gpu_layers_draft`), the KV for `ctx` and `reserve`.
    Raises PlacementError, before anything is loaded, when that does not fit, saying what would."""
    n_target, n_draft = len(target.layers), len(drafter.layers) if drafter else 0
    if n_cpu_moe < 0:
        raise UsageError(f"--n-cpu-moe {n_cpu_moe}: use 0 or more")
    draft_layers = n_draft if n_gpu_layers_draft is None or n_gpu_layers_draft < 0 else n_gpu_layers_draft
    draft_bytes = drafter.on_device(draft_layers, ctx) if drafter else 0

    def need(n: int, c: int = ctx, moe: int = n_cpu_moe) -> int:
        return target.on_device(n, c, moe) + draft_bytes + reserve

    if n_gpu_layers is None:
        chosen = _largest(lambda n: need(n) <= capacity, 0, n_target)
        if chosen is None or chosen == 0:
            raise PlacementError(
                _nothing_fits(target, drafter, draft_bytes, capacity, ctx, n_cpu_moe, reserve)
            )
    else:
        chosen = n_target if n_gpu_layers < 0 else min(n_gpu_layers, n_target)
        if need(chosen) > capacity:
            raise PlacementError(
                _does_not_fit(target, drafter, draft_bytes, capacity, ctx, chosen, n_cpu_moe, reserve)
            )
    return Placement(chosen, draft_layers, n_cpu_moe, need(chosen), capacity)


def _head(capacity: int, draft_bytes: int, reserve: int) -> str:
    drafter = f", the drafter takes {_gib(draft_bytes)}" if draft_bytes else ""
    return f"the device has {_gib(capacity)} free{drafter}, {_gib(reserve)} is kept for activations"


def _advice(target, drafter, draft_bytes, capacity, ctx, n, n_cpu_moe, reserve) -> list[str]:
    """What would fit instead of `n` target layers at `ctx`: fewer layers, a smaller -c, experts
    on the CPU, the drafter on the CPU, a smaller file."""
    left = capacity - draft_bytes - reserve
    out = []
    fewer = _largest(lambda m: target.on_device(m, ctx, n_cpu_moe) <= left, 1, max(1, n - 1))
    if fewer is not None and fewer < n:
        out.append(f"-ngl {fewer}")
    smaller_c = _largest(lambda c: target.on_device(n, c, n_cpu_moe) <= left, 2, ctx)
    if smaller_c is not None and smaller_c < ctx:
        out.append(f"-c {smaller_c} (the KV of -c {ctx} takes {_gib(sum(target.kv_per_layer(ctx)[:n]))})")
    if any(target.experts[:n]) and n_cpu_moe < n and target.on_device(n, ctx, n) <= left:
        still = _largest(lambda m: target.on_device(n, ctx, m) > left, n_cpu_moe, n)
        out.append(f"--n-cpu-moe {n_cpu_moe if still is None else still + 1}")
    if draft_bytes and target.on_device(n, ctx, n_cpu_moe) + reserve <= capacity:
        out.append("-ngld 0 (the drafter on the CPU)")
    over = target.on_device(n, ctx, n_cpu_moe) - left
    if over > 0:
        file = f"; the file is {_gib(target.file_bytes)}" if target.file_bytes else ""
        out.append(f"a smaller quant ({n} layers {_gib(over)} smaller{file})")
    return out


def _nothing_fits(target, drafter, draft_bytes, capacity, ctx, n_cpu_moe, reserve) -> str:
    one = target.on_device(1, ctx, n_cpu_moe)
    advice = _advice(target, drafter, draft_bytes, capacity, ctx, 1, n_cpu_moe, reserve)
    return (
        f"-ngl auto: not one target layer fits on the device: {_head(capacity, draft_bytes, reserve)}, "
        f"and the first layer with its KV for -c {ctx} needs {_gib(one)}; "
        f"use {'; or '.join(advice + ['--device cpu'])}"
    )


def _does_not_fit(target, drafter, draft_bytes, capacity, ctx, n, n_cpu_moe, reserve) -> str:
    what = "all" if n == len(target.layers) else str(n)
    advice = _advice(target, drafter, draft_bytes, capacity, ctx, n, n_cpu_moe, reserve)
    return (
        f"-ngl {what}: {n} target layers need {_gib(target.on_device(n, ctx, n_cpu_moe))} for weights "
        f"and KV at -c {ctx}, but {_head(capacity, draft_bytes, reserve)}; "
        f"use {'; or '.join(advice + ['-ngl auto'])}"
    )


def parse_bytes(text: str) -> int:
    """ "24G", "24GiB", "12000M", "1.5T" or a plain byte count -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise UsageError(f"GEMMA_MTP_DEVICE_MEMORY={text!r}: use bytes or a size like 24G, 12000M")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def device_capacity(device: torch.device) -> int:
    """Free bytes on `device`: `GEMMA_MTP_DEVICE_MEMORY` when set (a stated capacity: tests, or
    a share of a GPU), else what CUDA reports free now."""
    stated = os.environ.get("GEMMA_MTP_DEVICE_MEMORY")
    if stated:
        return parse_bytes(stated)
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def gguf_sizes(
    path, *, dtype: str, ctx_batch: int = 1, max_draft: int = 16, quantized: bool | None = None
) -> tuple[ModelSizes, int]:
    """(sizes, dtype bytes) of a GGUF target or drafter from its tensor table and metadata alone
    (nothing is read but the header), for `dtype` as the loader resolves it on a GPU."""
    from ..config import AssistantConfig
    from ..gguf.metadata import config_from_gguf
    from ..gguf.reader import open_gguf, tensor_shape

    gf = open_gguf(path)
    config, _, _ = config_from_gguf(gf)
    entries = [(t.name, tensor_shape(t), t.tensor_type) for t in gf.tensors.values()]
    keeps = dtype in ("auto", "bfloat16")  # the loader's default keeps blocks for these
    if dtype == "auto":  # the loader's rule off the CPU: float32 files stay float32, else bfloat16
        all_f32 = all(q == GGMLQuantizationType.F32 for _, shape, q in entries if len(shape) > 1)
        dtype = "float32" if all_f32 else "bfloat16"
    dtype_bytes = resolve_dtype(dtype).itemsize
    text = config.text if isinstance(config, AssistantConfig) else config
    kv = None
    if not isinstance(config, AssistantConfig):  # a drafter reads the target's KV, owns none
        kv = kv_bytes(text, dtype_bytes=dtype_bytes, batch=ctx_batch, max_draft=max_draft)
    kept = quantized_matrices if quantized or (quantized is None and keeps) else lambda _: False
    sizes = model_sizes(
        entries, text.num_layers, dtype_bytes=dtype_bytes, kv_per_layer=kv, kept_quantized=kept
    )
    return sizes, dtype_bytes
