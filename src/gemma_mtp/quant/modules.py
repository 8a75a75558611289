"""Drop-in modules over quantized weights: `QuantLinear` (for `nn.Linear`), `QuantEmbedding`
(for the models' `ScaledEmbedding`, including the tied output head), and `BlockRows`, GGUF blocks
kept as they are in the file for tables that are only ever looked up (per-layer embeddings).

Our q8 kernel takes any float activations, torch's int4pack/int8pack take bfloat16; a module
returns its input's dtype. Every forward takes the kernel, prompt prefills too: the kernels read
a tile of weights once per 4 rows while it sits in cache, which on a CPU without native bfloat16
(AVX2) measured no slower than dequantizing to float for one GEMM up to a few hundred rows (and
the 262144-row head would need a 0.7 GB float32 copy). It also keeps a row's result independent
of the batch (each row's activations are quantized on their own).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from .. import native, observe
from .blocks import BLOCK_TYPES, GGUFBlockWeight, as_tensor
from .codes import decode_codes
from .int4 import Int4GroupWeight
from .int8 import Int8RowWeight
from .q8 import Q8BlockWeight

__all__ = ["QuantLinear", "QuantEmbedding", "BlockRows"]

ALIGN = 64  # bytes; the AVX-512 int8 kernel loads activation rows with aligned 32-byte loads

KernelWeight = GGUFBlockWeight | Q8BlockWeight | Int8RowWeight | Int4GroupWeight


class BlockRows(nn.Module):
    """GGUF blocks as stored (`data` uint8 `[N, bytes_per_row]`); `rows(ids)` decodes exactly."""

    kind = "blocks"

    def __init__(self, data: torch.Tensor, qtype: GGMLQuantizationType, in_features: int) -> None:
        super().__init__()
        self.register_buffer("data", data)
        self.qtype = qtype
        self.out_features, self.in_features = data.shape[0], in_features
        self.max_error = 0.0

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(device="cpu", dtype=torch.long)
        if self.qtype in BLOCK_TYPES and native.module() is not None:
            return (
                native.module()
                .gguf_rows(self.data, int(self.qtype), flat, self.in_features)
                .view(*ids.shape, -1)
            )
        picked = self.data[flat].numpy()
        w = torch.from_numpy(decode_codes(picked, self.qtype).dequantize())
        return w.view(*ids.shape, self.in_features)

    def dequantize(self) -> torch.Tensor:
        return self.rows(torch.arange(self.out_features))

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.bfloat16).contiguous()
    return x if x.data_ptr() % ALIGN == 0 else x.clone()


def quant_linear(weight: KernelWeight, x: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, W)` for a kernel weight; x `[..., K]` -> `[..., N]` in x's dtype."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, weight.in_features)
    if flat.shape[0] == 0:
        out = flat.new_empty(0, weight.out_features)
    elif weight.kind in ("q8", "gguf", "torch", "half"):  # take any float dtype (torch: returns it)
        out = weight.linear(flat)
    else:
        out = weight.linear(_kernel_input(flat))
    return out.to(x.dtype).view(*lead, weight.out_features)


class QuantLinear(nn.Module):
    """A bias-free `nn.Linear` whose weight stays quantized (`qweight`: int8 or int4 kernel format)."""

    def __init__(self, qweight: KernelWeight) -> None:
        super().__init__()
        self.qweight = qweight
        self.in_features, self.out_features = qweight.in_features, qweight.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if observe.OBSERVER is not None:
            observe.OBSERVER(self, x, None)
        return quant_linear(self.qweight, x)

    @property
    def weight(self) -> torch.Tensor:
        """The float weights the kernel uses, materialized (inspection only: costs the float size)."""
        return self.qweight.dequantize().to(torch.bfloat16)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.qweight.kind}"


class QuantEmbedding(nn.Module):
    """`ScaledEmbedding` over a quantized table: lookups dequantize only the rows asked for; with a
    kernel format, `attend(hidden)` is the tied output head (`hidden @ table.T`)."""

    def __init__(self, table: KernelWeight | BlockRows, scale: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table
        self.scale = scale
        self.dtype = dtype
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.table.rows(tokens).to(self.dtype)
        return rows * torch.tensor(self.scale, dtype=self.dtype)

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        if isinstance(self.table, BlockRows):
            return F.linear(hidden.to(self.dtype), self.table.dequantize().to(self.dtype))
        return quant_linear(self.table, hidden)

    @property
    def weight(self) -> torch.Tensor:
        """The table materialized in the model dtype (inspection only: costs the float size)."""
        return self.table.dequantize().to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kind={self.table.kind}"


def describe(module: nn.Module) -> str | None:
    """ "gguf" / "q8" / "int8" / "int4" / "blocks" for quantized modules, else None."""
    if isinstance(module, QuantLinear):
        return module.qweight.kind
    if isinstance(module, QuantEmbedding):
        return module.table.kind
    return None


def block_rows(data: np.ndarray, qtype: GGMLQuantizationType, in_features: int) -> BlockRows:
    return BlockRows(as_tensor(data), qtype, in_features)
