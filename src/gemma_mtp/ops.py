"""The inference ops the models and the speculative rules share, each picking our native kernel or torch.

The one seam between the model code and `gemma_mtp.native`: ``models/`` and ``speculative/`` call
these functions and never ask whether a compiled kernel exists. The native path is taken for
float32 CPU tensors outside autograd (the fused ops are inference-only); everything else (another
dtype or device, training, no compiled module) takes the torch formulation, which is the reference
the native kernels are tested against.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F

from . import native
from .threads import single_thread

__all__ = [
    "ROW_ATTENTION_MAX_T",
    "native_for",
    "rms_norm",
    "apply_rope",
    "head_norm_rope",
    "attention",
    "softcap",
    "argmax_rows",
    "linear",
    "SMALL_MATMUL",
]

NO_TENSOR = torch.empty(0)
ROW_ATTENTION_MAX_T = 32  # queries per forward up to which attention runs one row at a time
# Multiply-adds below which a float CPU matmul runs on the calling thread: torch's BLAS splits even
# a 4x128 @ 128x256 product across threads, and on a loaded 2-core machine that parallel region
# waited 16-32 ms for a parked thread instead of taking 11 µs (benchmarks/bench_small_ops.py).
SMALL_MATMUL = 1 << 20


def native_for(*tensors: torch.Tensor | None) -> ModuleType | None:
    """The compiled module when every tensor given is a float32 CPU tensor outside autograd, else None."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or (grad and t.requires_grad)):
            return None
    return native.module()


def rms_norm(x: torch.Tensor, scale: torch.Tensor | None, eps: float, *, weight=None) -> torch.Tensor:
    """RMS norm over the last dim, computed in float32, times ``scale`` (None: no scale).
    ``weight`` is the parameter ``scale`` derives from (it decides whether autograd is involved)."""
    ops = native_for(x, weight)
    if ops is not None:
        return ops.rms_norm(x.contiguous(), NO_TENSOR if scale is None else scale, eps)
    dim = x.shape[-1]
    if x.dtype == torch.float32:
        return F.rms_norm(x, (dim,), scale, eps)
    return F.rms_norm(x.float(), (dim,), scale, eps).type_as(x)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [B, T, D]."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def head_norm_rope(
    x: torch.Tensor,
    scale: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    *,
    weight=None,
) -> torch.Tensor:
    """`apply_rope(rms_norm(x), cos, sin)` per head (no rotation when cos is None), x [B, T, H, D]."""
    ops = native_for(x, weight, cos)
    if ops is not None:
        return ops.head_norm_rope(
            x.contiguous(),
            NO_TENSOR if scale is None else scale,
            eps,
            NO_TENSOR if cos is None else cos.contiguous(),
            NO_TENSOR if sin is None else sin.contiguous(),
        )
    y = rms_norm(x, scale, eps, weight=weight)
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
        ops = native_for(q, k, v)
        if ops is not None and mask.device.type == "cpu" and k.shape[0] == q.shape[0]:
            b, _, t, _ = q.shape
            mask = mask.expand(b, 1, t, k.shape[2])  # broadcast dims as SDPA would (stride 0)
            return ops.attend_rows(q.transpose(1, 2), k, v, mask, scale, logit_cap or 0.0)
    if logit_cap is None:
        start = causal_start(mask) if q.shape[2] > ROW_ATTENTION_MAX_T else None
        if start is not None:  # SDPA's causal path skips the blocks above the diagonal
            k, v, mask = k[:, :, start:], v[:, :, start:], None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
    else:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = softcap(torch.matmul(q, k.transpose(2, 3)) * scale, logit_cap)
        scores = scores.masked_fill(~mask, -math.inf)
        out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def causal_start(mask: torch.Tensor) -> int | None:
    """S - T when a [B, 1, T, S] mask lets query i see exactly keys S - T .. S - T + i (a first
    prefill: the keys before it empty, the window no shorter than the prompt), else None. Then
    attention over keys [S - T:] with SDPA's is_causal (top-left aligned, square) is the same
    attention; SDPA skips the blocks the mask would zero. One pass over the mask, on its device
    (a host sync: prefills only, never inside a captured step)."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1:
        return None
    t, s = mask.shape[2], mask.shape[3]
    if t < 2 or s < t:
        return None
    want = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril_()
    head, tail = mask[..., : s - t], mask[..., s - t :]
    if head.any() or not torch.equal(tail, want.expand_as(tail)):
        return None
    return s - t


def argmax_rows(scores: torch.Tensor) -> list[int]:
    """The argmax of each row of [N, V] ``scores`` (torch.argmax's rules for ties and NaN)."""
    ops = native_for(scores) if scores.dim() == 2 else None
    return (ops.argmax_rows(scores) if ops is not None else scores.argmax(dim=-1)).tolist()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, with small CPU products kept on the calling thread (`SMALL_MATMUL`)."""
    if x.is_cpu and x.numel() * weight.shape[0] < SMALL_MATMUL and torch.get_num_threads() > 1:
        with single_thread():
            return F.linear(x, weight, bias)
    return F.linear(x, weight, bias)
