"""Building blocks shared by the Gemma 3 and Gemma 4 families (pure modules, no state beyond weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import observe
from ..cache import SharedKV
from ..config import RopeSpec
from ..ops import ROW_ATTENTION_MAX_T, apply_rope, attention, head_norm_rope, linear, rms_norm, softcap

__all__ = [
    "Linear",
    "RMSNorm",
    "GatedMLP",
    "Rotary",
    "attention",
    "apply_rope",
    "norm_rope",
    "softcap",
    "SharedKV",
    "ACTIVATIONS",
    "ROW_ATTENTION_MAX_T",
]

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


class Linear(nn.Linear):
    """`nn.Linear` whose small CPU matmuls stay on the calling thread (`ops.linear`): a decode step's
    projections must not wait at a cross-thread barrier when another process holds a core."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if observe.OBSERVER is not None:
            observe.OBSERVER(self, x, None)
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """RMS norm computed in float32. Gemma 4 scales by `weight`; Gemma 3 by `1 + weight`."""

    def __init__(self, dim: int, eps: float, *, with_scale: bool = True, offset: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = (
            nn.Parameter(torch.ones(dim) if offset == 0.0 else torch.zeros(dim)) if with_scale else None
        )

    def _scale(self) -> torch.Tensor | None:
        """`weight + offset` in float32, recomputed only when the weight changes."""
        weight = self._parameters.get("weight")
        if weight is None:
            return None
        if weight.requires_grad and torch.is_grad_enabled():  # training: keep the graph
            return weight.float() + self.offset
        cached = self.__dict__.get("_scale_cache")
        if cached is None or cached[0] is not weight or cached[1] != weight._version:
            with torch.inference_mode(False):  # a normal tensor even when first made while decoding
                cached = (weight, weight._version, weight.detach().float() + self.offset)
            self.__dict__["_scale_cache"] = cached
        return cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self._scale(), self.eps, weight=self._parameters.get("weight"))


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: str) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)
        self.act = ACTIVATIONS[activation]
        self.fused_gate_up = None  # optional: one module computing gate and up together (quant/fuse.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up is not None:
            gate, up = self.fused_gate_up.forward(x)
        else:
            gate, up = self.gate_proj.forward(x), self.up_proj.forward(x)
        return self.down_proj.forward(self.act(gate) * up)


def rope_inv_freq(spec: RopeSpec, head_dim: int) -> torch.Tensor:
    """Inverse frequencies, length head_dim // 2 (proportional RoPE pads the non-rotated part with 0).
    Always computed on the CPU (also inside a meta-device model build; the caller moves them)."""
    cpu = torch.device("cpu")
    if spec.kind == "proportional":
        n_rot = int(spec.partial_rotary_factor * head_dim // 2)
        rot = 1.0 / (spec.theta ** (torch.arange(0, 2 * n_rot, 2, dtype=torch.float, device=cpu) / head_dim))
        inv = torch.cat([rot, torch.zeros(head_dim // 2 - n_rot, device=cpu)])
    else:
        inv = 1.0 / (spec.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=cpu) / head_dim))
    return inv / spec.factor


class Rotary(nn.Module):
    """cos/sin tables for one (rope spec, head dim) pair, computed from positions on the fly."""

    def __init__(self, spec: RopeSpec, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(spec, head_dim), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.clamp(min=0)[..., None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat([freqs, freqs], dim=-1)  # [B, T, head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def norm_rope(
    norm: RMSNorm, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
) -> torch.Tensor:
    """`apply_rope(norm(x), cos, sin)` (no rotation when cos is None) for x [B, T, H, D]."""
    return head_norm_rope(x, norm._scale(), norm.eps, cos, sin, weight=norm.weight)
