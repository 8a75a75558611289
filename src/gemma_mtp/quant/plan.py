"""Deciding, per GGUF tensor, which quantized module replaces its float module, and building it.

Roles: a `matrix` is the weight of a bias-free `nn.Linear` or a tied embedding that is also the
output head (lookups and a matmul); a `lookup` table is only ever indexed (per-layer embeddings).
Everything else (vectors, norms, 3-D expert stacks, a drafter's centroid-head table, types with no
decoder) stays float and the loader says so. The low-bit types (Q2_K, Q3_K, the IQ types) have no
integer-code form (`codes.py`): only the native gguf kernel reads them, in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from torch import nn

from ..native import why_unavailable
from .blocks import BLOCK_TYPES, GGUFBlockWeight, as_tensor, gguf_kernel_ok, release_pages
from .codes import CODE_TYPES, SYMMETRIC_TYPES, decode_codes
from .half import HalfWeight
from .int4 import HAVE_INT4_KERNEL, Int4GroupWeight, int4_kernel_ok
from .int8 import HAVE_INT8_KERNEL, Int8RowWeight, int8_kernel_ok
from .modules import BlockRows, QuantEmbedding, QuantLinear
from .policy import (
    EXACTNESS,
    FALLBACK_KERNELS,
    FLOAT_REASONS,
    KERNEL_NOTES,
    KINDS,
    MATRIX_KERNELS,
    NATIVE_KINDS,
)
from .q8 import Q8BlockWeight, q8_kernel_ok
from .torch_blocks import TorchBlockWeight, torch_kernel_ok

__all__ = ["Choice", "choose_kernel", "build_module", "describe_choice", "parse_kernels", "fallback_notice"]


@dataclass(frozen=True)
class Choice:
    kind: str  # "gguf", "q8", "int4", "int8", "blocks", "half" (a BF16/F16 matrix as stored) or "float"
    reason: str = ""  # why a quantized tensor stays float


def parse_kernels(kernels: Mapping[str, str] | None) -> dict[GGMLQuantizationType, str]:
    """`{"Q8_0": "int8"}` -> per-type overrides of `MATRIX_KERNELS`, checked."""
    out = dict(MATRIX_KERNELS)
    for name, kind in (kernels or {}).items():
        try:
            qtype = GGMLQuantizationType[name]
        except KeyError:
            raise ValueError(f"kernels: unknown GGUF type {name!r}") from None
        if kind not in KINDS:
            raise ValueError(f"kernels: {name}={kind!r}; use one of {', '.join(KINDS)}")
        if qtype not in CODE_TYPES and qtype not in BLOCK_TYPES and kind != "float":
            raise ValueError(f"kernels: {name} has no quantized kernel here")
        if qtype not in CODE_TYPES and kind not in ("gguf", "torch", "float"):
            raise ValueError(
                f"kernels: {name} has only the gguf kernel here (and the portable torch one); use "
                f"{name}=gguf, {name}=torch or {name}=float"
            )
        out[qtype] = kind
    return out


def choose_kernel(role: str | None, qtype: GGMLQuantizationType, data: np.ndarray, kernels: dict) -> Choice:
    in_place_only = qtype not in CODE_TYPES  # decoded by the native kernel alone
    if in_place_only and qtype not in BLOCK_TYPES:
        return Choice("float", "no kernel for this type")
    block, size = GGML_QUANT_SIZES[qtype]
    width = data.shape[-1] // size * block
    if kernels.get(qtype) == "torch" and role in ("matrix", "lookup") and torch_kernel_ok(qtype, width):
        return Choice("torch")  # torch ops on the blocks: any device, no native module needed
    if role == "lookup":
        if in_place_only and why_unavailable() is not None:
            return Choice(
                "float", f"only the native kernel decodes {qtype.name} blocks ({why_unavailable()})"
            )
        return Choice("blocks")
    if role == "centroid_table":  # the centroid head reads its candidates' rows in place
        if kernels.get(qtype) == "gguf" and why_unavailable() is None and gguf_kernel_ok(qtype, width):
            return Choice("gguf")
        return Choice("float", "the drafter's centroid head gathers rows of a float table")
    if role != "matrix":
        return Choice("float", "not a matrix of a linear layer or the tied head")
    kind = kernels.get(qtype, "float")
    if kind in NATIVE_KINDS and why_unavailable() is not None:
        kind = FALLBACK_KERNELS.get(qtype, "float")
    if (kind == "int4" and not HAVE_INT4_KERNEL) or (kind == "int8" and not HAVE_INT8_KERNEL):
        return Choice("float", f"torch {torch.__version__} has no {kind}pack CPU kernel")
    if kind == "gguf" and not gguf_kernel_ok(qtype, width):
        return Choice("float", f"the gguf kernel has no {qtype.name} blocks of this width")
    if kind in ("gguf", "float"):
        return Choice(kind) if kind == "gguf" else _kept_float(qtype)
    probe = decode_codes(data[:1], qtype)
    if kind == "q8" and not q8_kernel_ok(probe.codes.shape[1]):
        return Choice("float", "the q8 kernel needs rows of a multiple of 32")
    if kind == "int4" and not int4_kernel_ok(probe):
        return Choice("float", f"int4pack needs 32-wide groups ({qtype.name} has {probe.group})")
    if kind == "int8" and not int8_kernel_ok(probe.codes.shape[1]):
        return Choice("float", "int8pack needs rows of a multiple of 16")
    return Choice(kind)


def _kept_float(qtype: GGMLQuantizationType) -> Choice:
    return Choice("float", FLOAT_REASONS.get(qtype, "the kernels table keeps this type float"))


def build_module(
    choice: Choice, old: nn.Module, data: np.ndarray, qtype: GGMLQuantizationType, dtype: torch.dtype
) -> nn.Module:
    """The quantized replacement for `old` (an `nn.Linear` or a scaled embedding)."""
    if choice.kind == "half":
        weight = HalfWeight.from_blocks(data, qtype)
    elif choice.kind == "blocks":
        weight = BlockRows(as_tensor(data), qtype, old.embedding_dim)
    elif choice.kind == "gguf":
        weight = GGUFBlockWeight.from_blocks(data, qtype)
        # a matrix's products (not a table's rows: a head's candidates must match its full rows)
        if isinstance(old, nn.Linear) and weight.repack():
            release_pages(data)
    elif choice.kind == "torch":
        weight = TorchBlockWeight.from_blocks(data, qtype)
    elif choice.kind == "q8":
        weight = Q8BlockWeight.from_blocks(data, qtype)
    elif choice.kind == "int4":
        weight = Int4GroupWeight.from_blocks(data, qtype)
    else:
        weight = Int8RowWeight.from_blocks(data, qtype)
    if isinstance(old, nn.Linear):
        return QuantLinear(weight)
    return QuantEmbedding(weight, old.scale, dtype)


def describe_choice(kind: str, qtype: GGMLQuantizationType, count: int, max_error: float) -> str:
    """One notice line: which kernel holds a type and how exact it is."""
    exact = EXACTNESS.get((kind, qtype in SYMMETRIC_TYPES), EXACTNESS.get((kind, None), ""))
    seen = f"; largest |dw| seen {100 * max_error:.2f}% of the max" if kind in ("int4", "int8") else ""
    kept = "kept as stored" if kind == "half" else "kept quantized"
    return f"{qtype.name} x{count} {kept}: {KERNEL_NOTES[kind]}, {exact}{seen}"


def fallback_notice(kept_kinds: set[str]) -> str | None:
    """Say why torch's kernels stand in for ours, when they do."""
    why = why_unavailable()
    if why is None or not kept_kinds & {"int4", "int8"}:
        return None
    return f"{why}; using torch's weight-only kernels instead (slower)"
