"""Fusing the projections that read the same input (q/k/v, gate/up) into one kernel call.

At one token per step each kernel call has a fixed cost (activation quantization, a parallel
region, an output allocation); reading q, k and v in one call pays it once, and the parallel
region covers all their rows. GGUF block weights (kind "gguf") fuse whatever their types: the
kernel takes a list of matrices, so nothing is copied. q8 weights fuse when they have the same
group size and the same kind of zero: the fused weight owns the concatenated codes and the
separate modules keep row views of it, so memory does not grow. Either way the separate modules
still work (and inspect) on their own; anything else stays as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import observe
from .blocks import GGUFBlockWeight, GGUFMultiWeight
from .modules import QuantLinear, quant_linear
from .q8 import Q8BlockWeight

__all__ = ["FusedLinear", "fuse_linears", "fuse_model_projections"]


class FusedLinear(nn.Module):
    """`forward(x)` -> the outputs of the fused linears, in order (views of one matmul)."""

    def __init__(self, weight: Q8BlockWeight | GGUFMultiWeight, sizes: list[int]) -> None:
        super().__init__()
        self.weight = weight
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if observe.OBSERVER is not None:
            observe.OBSERVER(self, x, None)
        return quant_linear(self.weight, x).split(self.sizes, dim=-1)


def _fusable(linears: list[nn.Module | None]) -> bool:
    if len(linears) < 2 or any(not isinstance(m, QuantLinear) for m in linears):
        return False
    weights = [m.qweight for m in linears]
    if any(not isinstance(w, Q8BlockWeight) for w in weights):
        return False
    first = weights[0]
    return all(
        w.group == first.group
        and bool(w.z.numel()) == bool(first.z.numel())
        and w.in_features == first.in_features
        for w in weights
    )


def fuse_linears(linears: list[nn.Module | None]) -> FusedLinear | None:
    """One `FusedLinear` over `linears` (q8: each then holds a row view of it), or None."""
    if (
        len(linears) >= 2
        and all(isinstance(m, QuantLinear) and isinstance(m.qweight, GGUFBlockWeight) for m in linears)
        and len({m.in_features for m in linears}) == 1
    ):
        parts = [m.qweight for m in linears]
        return FusedLinear(GGUFMultiWeight(parts), [p.out_features for p in parts])
    if not _fusable(linears):
        return None
    weights = [m.qweight for m in linears]
    q = torch.cat([w.q for w in weights])
    d = torch.cat([w.d for w in weights])
    z = torch.cat([w.z for w in weights]) if weights[0].z.numel() else None
    fused = Q8BlockWeight(q, d, z, weights[0].group)
    start = 0
    for module, w in zip(linears, weights, strict=True):
        stop = start + w.out_features
        view = Q8BlockWeight(q[start:stop], d[start:stop], None if z is None else z[start:stop], w.group)
        module.qweight = view
        start = stop
    return FusedLinear(fused, [w.out_features for w in weights])


def fuse_model_projections(model: nn.Module) -> int:
    """Fuse q/k/v of every attention and gate/up of every gated MLP that qualify; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_qkv") and module.fused_qkv is None:
            parts = [module.q_proj, getattr(module, "k_proj", None), getattr(module, "v_proj", None)]
            parts = [p for p in parts if p is not None]
            fused = fuse_linears(parts)
            if fused is not None:
                module.fused_qkv = fused
                count += 1
        if hasattr(module, "fused_gate_up") and module.fused_gate_up is None:
            fused = fuse_linears([module.gate_proj, module.up_proj])
            if fused is not None:
                module.fused_gate_up = fused
                count += 1
    return count
