"""Building blocks shared by the Gemma 3 and Gemma 4 families (pure modules, no state beyond weights)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import SharedKV
from ..config import RopeSpec
from ..quant.native import fast_cpu_ops

__all__ = [
    "RMSNorm",
    "GatedMLP",
    "Rotary",
    "attention",
    "apply_rope",
    "norm_rope",
    "softcap",
    "SharedKV",
    "ACTIVATIONS",
]

_NO_TENSOR = torch.empty(0)
ROW_ATTENTION_MAX_T = 32  # queries per forward up to which attention runs one row at a time

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


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
        ops = fast_cpu_ops(x, self._parameters.get("weight"))
        if ops is not None:  # float32 inference on the CPU: one fused call
            scale = self._scale()
            return ops.rms_norm(x.contiguous(), _NO_TENSOR if scale is None else scale, self.eps)
        dim = x.shape[-1]
        if x.dtype == torch.float32:
            return F.rms_norm(x, (dim,), self._scale(), self.eps)
        return F.rms_norm(x.float(), (dim,), self._scale(), self.eps).type_as(x)


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, activation: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [B, T, D]."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def norm_rope(
    norm: RMSNorm, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
) -> torch.Tensor:
    """`apply_rope(norm(x), cos, sin)` (no rotation when cos is None) for x [B, T, H, D]."""
    ops = fast_cpu_ops(x, norm.weight, cos)
    if ops is not None:
        scale = norm._scale()
        return ops.head_norm_rope(
            x.contiguous(),
            _NO_TENSOR if scale is None else scale,
            norm.eps,
            _NO_TENSOR if cos is None else cos.contiguous(),
            _NO_TENSOR if sin is None else sin.contiguous(),
        )
    y = norm(x)
    return y if cos is None else apply_rope(y, cos, sin)


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    scale: float,
    logit_cap: float | None = None,
) -> torch.Tensor:
    """q: [B, Hq, T, D]; k, v: [B, Hkv, S, D]; mask: [B, 1, T, S] bool (True = attend) -> [B, T, Hq*D].

    Float32 on the CPU with at most `ROW_ATTENTION_MAX_T` queries (decode, verification of drafts)
    goes through the native one-row-at-a-time kernel: each query's result is then the same in a
    forward over one position or several, which is what makes greedy speculative output equal plain
    output exactly. Longer forwards (prompt prefill) take torch's SDPA.
    """
    if q.shape[2] <= ROW_ATTENTION_MAX_T:
        ops = fast_cpu_ops(q, k, v)
        if ops is not None and mask.device.type == "cpu" and k.shape[0] == q.shape[0]:
            b, _, t, _ = q.shape
            mask = mask.expand(b, 1, t, k.shape[2])  # broadcast dims as SDPA would (stride 0)
            return ops.attend_rows(q.transpose(1, 2), k, v, mask, scale, logit_cap or 0.0)
    if logit_cap is None:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
    else:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = softcap(torch.matmul(q, k.transpose(2, 3)) * scale, logit_cap)
        scores = scores.masked_fill(~mask, -math.inf)
        out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)
