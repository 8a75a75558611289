"""Block-int8 weights for our native kernel (`gemma_mtp.native`, `native/csrc/q8_mm.cpp`): kind "q8".

`q` int8 `[N, K]` holds each GGUF code (minus the type's offset for the symmetric types), `d`
float32 `[N, K/G]` one scale per group of G = 32 inputs (16 for Q6_K), and for the asymmetric
types (Q4_1, Q5_1, Q4_K, Q5_K) `z` float32 `[N, K/32]` one zero per 32: `w = d * q + z`. That is
exactly what `gguf.quants.dequantize` gives, for every type `codes.py` decodes: the weights are
not re-quantized. The matmul quantizes each row of activations to int8 per block of 32 (scale
max|x| / 127), as llama.cpp does for its dot products, and sums exact int32 products per block,
reading each weight once for up to 4 rows of activations.

Memory: one byte per weight plus 4 bytes per group (about 1.1-1.3 bytes per weight): more than
the 4-6 bit file types, less than bfloat16.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from .. import native
from .codes import decode_codes

__all__ = ["Q8BlockWeight", "q8_kernel_ok"]

ROWS_PER_CHUNK = 8192


def q8_kernel_ok(in_features: int) -> bool:
    return in_features % 32 == 0


class Q8BlockWeight(nn.Module):
    kind = "q8"

    def __init__(self, q: torch.Tensor, d: torch.Tensor, z: torch.Tensor | None, group: int) -> None:
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("d", d)
        self.register_buffer("z", z if z is not None else torch.empty(0, dtype=torch.float32))
        self.group = group
        self.out_features, self.in_features = q.shape
        self.max_error = 0.0  # the weights are the file's, exactly

    @classmethod
    def from_blocks(cls, data: np.ndarray, qtype: GGMLQuantizationType) -> Q8BlockWeight:
        """Raw GGUF rows (`[N, bytes_per_row]` uint8) -> codes, scales and zeros, a chunk at a time."""
        n = data.shape[0]
        first = decode_codes(data[:1], qtype)
        k, group, offset = first.codes.shape[1], first.group, first.symmetric_offset
        if group not in (16, 32) or k % 32:
            raise ValueError(f"q8 needs groups of 16 or 32 and rows of a multiple of 32 ({qtype.name})")
        q = torch.empty(n, k, dtype=torch.int8)
        d = torch.empty(n, k // group, dtype=torch.float32)
        z = None if offset is not None else torch.empty(n, k // 32, dtype=torch.float32)
        for start in range(0, n, ROWS_PER_CHUNK):
            gc = decode_codes(data[start : start + ROWS_PER_CHUNK], qtype)
            stop = start + gc.codes.shape[0]
            codes = gc.codes.astype(np.int16) - (offset or 0)
            q[start:stop] = torch.from_numpy(codes.astype(np.int8))
            d[start:stop] = torch.from_numpy(gc.scale)
            if z is not None:
                z[start:stop] = torch.from_numpy(gc.zero)
        return cls(q, d, z, group)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x `[M, K]` (any float dtype) -> `[M, N]` float32."""
        return native.module().q8_mm(x, self.q, self.d, self.z, self.group)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The weights of rows `ids` (any shape) as float32 `[*ids.shape, K]`, exactly."""
        flat = ids.reshape(-1)
        k, g = self.in_features, self.group
        w = self.q[flat].float().view(-1, k // g, g) * self.d[flat][..., None]
        w = w.view(-1, k)
        if self.z.numel():
            w = (w.view(-1, k // 32, 32) + self.z[flat][..., None]).view(-1, k)
        return w.view(*ids.shape, k)

    def dequantize(self) -> torch.Tensor:
        return torch.cat(
            [
                self.rows(torch.arange(s, min(s + 4096, self.out_features)))
                for s in range(0, self.out_features, 4096)
            ]
        )

    @property
    def nbytes(self) -> int:
        return self.q.numel() + 4 * (self.d.numel() + self.z.numel())
