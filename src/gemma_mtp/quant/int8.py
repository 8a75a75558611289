"""Int8 weights with one bfloat16 scale per output row, for `torch.ops.aten._weight_int8pack_mm`.

The kernel computes `y[m, n] = scale[n] * sum_k x[m, k] * q[n, k]` with bfloat16 activations,
float32 accumulation and a bfloat16 result, reading each int8 weight once for up to 4 rows of x
(its register block), so verifying a few drafted positions costs little more than one.

GGUF blocks have one scale per 32 (or 16) weights, which this format cannot hold: converting a
block type here *re-quantizes* each row to its own scale `s = max|w_row| / 127` (rounded up to a
bfloat16 value). That is lossy: |Δw| <= s / 2 = max|w_row| / 254 per weight, the bfloat16 rounding
step of the row's largest weight, and about the size of Q8_0's own rounding for blocks near the
row maximum. Rows whose weights all sit on the new grid (e.g. one Q8_0 scale per row) stay exact.
`Int8RowWeight.max_error` records the largest |Δw| / max|w_row| actually seen.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from .codes import decode_codes

__all__ = ["Int8RowWeight", "int8_kernel_ok", "HAVE_INT8_KERNEL"]

HAVE_INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")

ROWS_PER_CHUNK = 16384  # rows converted at once (bounds the float32 intermediate)


def int8_kernel_ok(in_features: int) -> bool:
    # the AVX2/AVX-512 loops step k by 8/16 bf16 values and load activation rows aligned
    return in_features % 16 == 0


def _bf16_ceil(s: torch.Tensor) -> torch.Tensor:
    """The smallest bfloat16 value >= s (so that max|w| / scale never exceeds 127)."""
    b = s.to(torch.bfloat16)
    up = torch.nextafter(b, torch.full_like(b, float("inf")))
    return torch.where(b.float() < s, up, b)


class Int8RowWeight(nn.Module):
    """`q` int8 `[N, K]`, `scale` bfloat16 `[N]`: the weight is `q * scale` (computed in float32)."""

    kind = "int8"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, max_error: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.out_features, self.in_features = q.shape
        self.max_error = max_error

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int8RowWeight:
        """Quantize float rows `[N, K]` to int8 with one scale per row."""
        n = w.shape[0]
        q = torch.empty(w.shape, dtype=torch.int8)
        scale = torch.empty(n, dtype=torch.bfloat16)
        worst = 0.0
        for start in range(0, n, ROWS_PER_CHUNK):
            part = w[start : start + ROWS_PER_CHUNK].float()
            amax = part.abs().amax(dim=1)
            s = _bf16_ceil(torch.where(amax > 0, amax / 127, torch.ones_like(amax)))
            sf = s.float()[:, None]
            codes = torch.round(part / sf).clamp_(-127, 127)
            err = ((codes * sf - part).abs().amax(dim=1) / amax.clamp(min=1e-30)).max()
            worst = max(worst, float(err))
            q[start : start + ROWS_PER_CHUNK] = codes.to(torch.int8)
            scale[start : start + ROWS_PER_CHUNK] = s
        return cls(q, scale, worst)

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType) -> Int8RowWeight:
        """Raw GGUF rows (`[N, bytes_per_row]` uint8) -> re-quantized rows, a chunk at a time."""
        parts = [
            cls.from_float(torch.from_numpy(decode_codes(data[s : s + ROWS_PER_CHUNK], qtype).dequantize()))
            for s in range(0, data.shape[0], ROWS_PER_CHUNK)
        ]
        out = cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))
        out.max_error = max(p.max_error for p in parts)
        return out

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` bfloat16, contiguous and 16-byte aligned -> `[M, N]` bfloat16."""
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The kernel's weights for rows `ids` (any shape) as float32 `[*ids.shape, K]`."""
        return self.q[ids].float() * self.scale[ids].float()[..., None]

    def dequantize(self) -> torch.Tensor:
        return self.rows(torch.arange(self.out_features))

    @property
    def nbytes(self) -> int:
        return self.q.numel() + 2 * self.scale.numel()
